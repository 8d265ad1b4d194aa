"""Fidelity measured the field's way: how close the edited photo stays to the person.

[ours] HyperStyle's protocol (arXiv 2111.15666; also GANInverter's, StyleFeatureEditor's): on
the aligned crop, L2 (mean squared error) and MS-SSIM after resizing to 256 px on [-1, 1],
LPIPS-AlexNet, and identity = cosine of face-recognition embeddings of the picture and the
photo (HyperStyle uses CurricularFace; here the face weights the user gives: MobileFaceNet or
facenet-pytorch's InceptionResnetV1, so figures compare between methods of one run, not with the
paper's column to the digit). Three methods, each measured twice:

- "reconstruction": the strength-0 render before any detail keeping (what the generator makes of
  the face: e4e's figure in the field's table);
- "delivered": what the user gets at strength 0 (the detail-kept result is the photo itself).

Methods: e4e alone (the render as it is), + detail keeping (the default), + refinement (PTI,
``editing.likeness``, then detail keeping). Also per method: seconds per image (inversion, plus
the refinement), and an edit's identity: cosine of the delivered result of ``prompt`` at
``strength`` with the photo (does the edited face still look like the person?).

Per photo, for the refinement: the face-region L2 (within the paste-back mask) before and after,
of the render at the size the refinement tunes (256 px on a CPU: the skip generator's 256 px
image, unclipped) and of the full render shrunk to 256 px and clipped to [-1, 1] (what is pasted:
with random weights the untuned 512 and 1024 px levels add noise the tuning cannot reach), the
identity cosine of the tuned-size render with the photo before and after, the steps and seconds
per step, and how much an edit still changes the refined face relative to the shared generator's
(``edit_kept``: >= 0.5 means edits still work).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..editing.likeness import RefineConfig, ms_ssim_loss
from ..errors import NoFaceError
from ..faces import face_mask
from ..imaging import pil_to_tensor, resize_batch
from ..models.perceptual import load_lpips_network

SIZE = 256  # the protocol's resolution
METHODS = ("e4e", "e4e + detail kept", "e4e + refinement + detail kept")
FaceEmbedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Scores:
    """Means over photos: L2, MS-SSIM, LPIPS (None without it), identity (None without face
    weights)."""

    l2: list[float] = field(default_factory=list)
    ms_ssim: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    identity: list[float] = field(default_factory=list)

    def add(self, picture: torch.Tensor, photo: torch.Tensor, lpips, embed) -> None:
        self.l2.append(float((picture - photo).pow(2).mean()))
        self.ms_ssim.append(1.0 - float(ms_ssim_loss(picture, photo)[0]))
        if lpips is not None:
            self.lpips.append(float(lpips(picture.clamp(-1, 1), photo.clamp(-1, 1)).flatten()[0]))
        if embed is not None:
            self.identity.append(identity(embed, picture, photo))

    def means(self) -> dict[str, float | None]:
        return {k: (float(np.mean(v)) if v else None) for k, v in asdict(self).items()}


@dataclass
class PhotoRefinement:
    """One photo's refinement figures."""

    photo: str
    face_l2_before: float  # the render at the tuned size
    face_l2_after: float
    delivered_l2_before: float  # the full render, shrunk to 256 px and clipped
    delivered_l2_after: float
    identity_before: float | None  # the tuned-size render and the photo
    identity_after: float | None
    steps: int
    seconds: float
    stop: str
    loss: str
    edit_kept: float  # |edit change| on the refined face / on the shared generator's
    curve: list[tuple[float, float]]  # (seconds, L2 at the loss's size) per step

    @property
    def fall(self) -> float:
        return self.face_l2_before / max(self.face_l2_after, 1e-12)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


@dataclass
class FidelityReport:
    reconstruction: dict[str, Scores]
    delivered: dict[str, Scores]
    edit_identity: dict[str, list[float]]
    seconds: dict[str, list[float]]
    refinements: list[PhotoRefinement]
    skipped: list[str]
    notes: list[str]

    def rows(self) -> list[dict]:
        rows = []
        for method in METHODS:
            for view, scores in (
                ("reconstruction", self.reconstruction),
                ("delivered", self.delivered),
            ):
                means = scores[method].means()
                edit = self.edit_identity[method]
                rows.append(
                    {
                        "method": method,
                        "view": view,
                        **means,
                        "edit_identity": float(np.mean(edit)) if edit else None,
                        "seconds_per_image": float(np.mean(self.seconds[method])),
                    }
                )
        return rows

    def to_json(self) -> str:
        return json.dumps(
            {
                "rows": self.rows(),
                "refinements": [
                    {**asdict(r), "fall": r.fall, "seconds_per_step": r.seconds_per_step}
                    for r in self.refinements
                ],
                "skipped": self.skipped,
                "notes": self.notes,
            },
            indent=2,
        )


def identity(embed: FaceEmbedder, a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the face embeddings of two aligned crops [1, 3, H, W] in [-1, 1]."""
    ea, eb = embed(a).flatten(1).float(), embed(b).flatten(1).float()
    return float(torch.nn.functional.cosine_similarity(ea, eb)[0])


def face_region(size: int = SIZE) -> torch.Tensor:
    """The paste-back mask over an aligned crop [size, size] (0..1): where "the face" is."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    return torch.from_numpy(face_mask(centres[None, :], centres[:, None]))


def measure_fidelity(
    pipe,
    photos: Sequence[str | Path],
    *,
    refine: RefineConfig | None = None,
    prompt: str = "smiling",
    strength: float = 1.0,
    face_embedder: FaceEmbedder | None = None,
    allow_download: bool = False,
    single_face: bool = False,
    progress: Callable[[str], None] = print,
) -> FidelityReport:
    """Measure every photo (its largest face) as the module doc says. Photos without a usable
    face (or, with ``single_face``, with several) are skipped and named."""
    lpips = load_lpips_network("alex", allow_download=allow_download)
    notes = []
    if lpips is None:
        notes.append("LPIPS unavailable (its AlexNet backbone is not here): column empty")
    if face_embedder is None:
        notes.append("identity needs face weights (--face-weights): column empty")
    reconstruction = {m: Scores() for m in METHODS}
    delivered = {m: Scores() for m in METHODS}
    edit_identity: dict[str, list[float]] = {m: [] for m in METHODS}
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    refinements, skipped = [], []
    mask = face_region()
    for path in photos:
        started = time.perf_counter()
        try:
            inversion = pipe.invert(path)
        except NoFaceError as exc:
            skipped.append(f"{Path(path).name}: {exc}")
            continue
        invert_s = time.perf_counter() - started
        if single_face and len(inversion.faces) > 1:
            skipped.append(f"{Path(path).name}: {len(inversion.faces)} faces")
            continue
        photo = inversion.crop(SIZE)
        full = pipe.reconstruct(inversion).cpu()
        untuned = resize_batch(full, SIZE).clamp(-1, 1)
        edit = pipe.edit(inversion.wplus, prompt, strength=strength, n_samples=1)
        edited = pipe.render_edit(edit).cpu()

        kept_start = time.perf_counter()
        kept_zero = _delivered_crop(pipe, inversion, full, full, "keep")
        keep_s = time.perf_counter() - kept_start
        views = {
            "e4e": (
                untuned,
                _delivered_crop(pipe, inversion, full, None, "none"),
                _delivered_crop(pipe, inversion, edited, None, "none"),
            ),
            "e4e + detail kept": (
                untuned,
                kept_zero,
                _delivered_crop(pipe, inversion, edited, full, "keep"),
            ),
        }
        seconds["e4e"].append(invert_s)
        seconds["e4e + detail kept"].append(invert_s + keep_s)
        refined = pipe.refine(inversion, refine, allow_download=allow_download)
        tuned_full = pipe.reconstruct(inversion).cpu()
        tuned = resize_batch(tuned_full, SIZE).clamp(-1, 1)
        tuned_edited = pipe.render_edit(edit, tuning=inversion.tuning).cpu()
        views["e4e + refinement + detail kept"] = (
            tuned,
            _delivered_crop(pipe, inversion, tuned_full, tuned_full, "keep"),
            _delivered_crop(pipe, inversion, tuned_edited, tuned_full, "keep"),
        )
        seconds["e4e + refinement + detail kept"].append(invert_s + refined.seconds + keep_s)
        for method, (recon, zero, edited_crop) in views.items():
            reconstruction[method].add(recon, photo, lpips, face_embedder)
            delivered[method].add(zero, photo, lpips, face_embedder)
            if face_embedder is not None:
                edit_identity[method].append(identity(face_embedder, edited_crop, photo))
        change_shared = float((edited - full).abs().mean())
        change_tuned = float((tuned_edited - tuned_full).abs().mean())
        at = refined.resolution  # the tuned size: its render, unclipped, as the tuning sees it
        level = [pipe.render(inversion.wplus, max_resolution=at), pipe.reconstruct(inversion, at)]
        level = [x.cpu() for x in level]
        level_l2 = [_masked_l2(x, inversion.crop(at), face_region(at)) for x in level]
        ids = [
            identity(face_embedder, resize_batch(x, SIZE).clamp(-1, 1), photo)
            if face_embedder is not None
            else None
            for x in level
        ]
        record = PhotoRefinement(
            photo=Path(path).name,
            face_l2_before=level_l2[0],
            face_l2_after=level_l2[1],
            delivered_l2_before=_masked_l2(untuned, photo, mask),
            delivered_l2_after=_masked_l2(tuned, photo, mask),
            identity_before=ids[0],
            identity_after=ids[1],
            steps=refined.steps,
            seconds=refined.seconds,
            stop=refined.stop,
            loss=refined.loss,
            edit_kept=change_tuned / max(change_shared, 1e-12),
            curve=refined.curve,
        )
        refinements.append(record)
        said = "" if ids[0] is None else f"; identity {ids[0]:.2f} -> {ids[1]:.2f}"
        progress(
            f"{record.photo}: face L2 at {at} px {record.face_l2_before:.4f} -> "
            f"{record.face_l2_after:.4f} ({record.fall:.1f}x lower; pasted render "
            f"{record.delivered_l2_before:.4f} -> {record.delivered_l2_after:.4f}){said}; "
            f"{record.steps} steps in {record.seconds:.0f} s ({record.seconds_per_step:.2f} "
            f"s/step, {record.stop}); edit kept {record.edit_kept:.2f}"
        )
    return FidelityReport(
        reconstruction, delivered, edit_identity, seconds, refinements, skipped, notes
    )


def _delivered_crop(pipe, inversion, renders, reconstruction, detail) -> torch.Tensor:
    """A strength's result as the crop view delivers it, at the protocol's size."""
    (picture,) = pipe.deliver(inversion, renders, reconstruction, detail=detail, paste=False)
    return pil_to_tensor(picture, SIZE)


def _masked_l2(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    diff = (a - b).pow(2).mean(dim=1)[0]
    return float((diff * mask).sum() / mask.sum())


def format_report(report: FidelityReport, labels: Sequence[str] = ()) -> str:
    def fmt(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    lines = [*labels]
    lines += [
        "| method | view | identity | MS-SSIM | LPIPS | L2 | seconds / image | edit: identity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows():
        lines.append(
            f"| {row['method']} | {row['view']} | {fmt(row['identity'], 2)} | "
            f"{fmt(row['ms_ssim'], 2)} | {fmt(row['lpips'], 2)} | {fmt(row['l2'], 4)} | "
            f"{fmt(row['seconds_per_image'], 1)} | {fmt(row['edit_identity'], 2)} |"
        )
    if report.refinements:
        refs = report.refinements
        falls = [r.fall for r in refs]
        steps = [r.seconds_per_step for r in refs]
        kept = [r.edit_kept for r in refs]

        def span(values, digits=2, unit=""):
            return f"{min(values):.{digits}f}-{max(values):.{digits}f}{unit} (median {np.median(values):.{digits}f}{unit})"

        lines += [
            "",
            f"refinement over {len(refs)} photo(s), loss {refs[0].loss}:",
            f"- face-region L2 of the tuned-size render fell {span(falls, 1, 'x')}",
            f"- pasted render's face-region L2: {span([r.delivered_l2_before for r in refs], 4)} -> "
            f"{span([r.delivered_l2_after for r in refs], 4)}",
            f"- {span([r.steps for r in refs], 0)} steps, {span(steps)} s per step",
            f"- edits kept {span(kept)} of their change (>= 0.5: edits still work)",
        ]
        if refs[0].identity_before is not None:
            lines.append(
                f"- identity of the tuned-size render: {span([r.identity_before for r in refs])} -> "
                f"{span([r.identity_after for r in refs])}"
            )
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"skipped {s}" for s in report.skipped]
    return "\n".join(lines)
