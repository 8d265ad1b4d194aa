"""Evaluation: CLIP score, identity, LPIPS, diversity, time per edit; CSLA vs the baseline.

[paper] CSLA is compared with StyleCLIP's methods and other text-driven editors on faces,
qualitatively and quantitatively. [ours] The metrics here (what users need: several
plausible edits, identity kept, fast):
- ``clip_score``: cosine between the CLIP embedding of the edited render and the target text
  (template-averaged); ``clip_gain``: the same minus the unedited render's score.
- ``identity``: cosine of face embeddings of the unedited and the edited render, from an
  injected face-embedding callable (``identity.load_face_embedder``: a MobileFaceNet
  checkpoint or a facenet-pytorch ``InceptionResnetV1`` state dict, local files);
  "unavailable" without one.
- ``lpips``: perceptual distance to the unedited render, only if the ``lpips`` package and its
  backbone weights are present locally (nothing is downloaded); else "unavailable"
  (``lpips_unavailable_reason``: the backbone comes from download.pytorch.org).
- ``diversity``: mean pairwise (1 - cosine) of the CLIP image embeddings of the samples of one
  edit (0 = all samples look the same to CLIP); the baseline yields one sample: "n/a".
- ``seconds_per_edit``: wall time of one edit call (CSLA: all its samples together).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..editing.editor import TextEditor
from ..editing.optimise import OptimisationConfig, optimise_latent
from ..models.clip import ClipEmbedder
from ..models.perceptual import load_lpips_network
from ..models.stylegan2 import Generator

UNAVAILABLE = "unavailable"
MetricValue = float | str
FaceEmbedder = Callable[[torch.Tensor], torch.Tensor]  # [B,3,H,W] in [-1,1] -> [B, E]
PairMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # images, images -> [B]
DEFAULT_PROMPTS: tuple[str, ...] = ("a smiling face", "a face with glasses", "an old face")


@torch.no_grad()
def clip_score(clip: ClipEmbedder, images: torch.Tensor, prompt: str) -> torch.Tensor:
    """[B] cosine similarity of each image ([-1, 1]) to the prompt's text embedding."""
    text = clip.encode_text([prompt])[0]
    return clip.encode_images(images) @ text.to(clip.device)


@torch.no_grad()
def identity_similarity(
    face_embedder: FaceEmbedder | None, images_a: torch.Tensor, images_b: torch.Tensor
) -> torch.Tensor | None:
    """[B] cosine of face embeddings of paired images, or None without an embedder."""
    if face_embedder is None:
        return None
    ea = F.normalize(face_embedder(images_a).flatten(1).float(), dim=1)
    eb = F.normalize(face_embedder(images_b).flatten(1).float(), dim=1)
    return (ea * eb).sum(dim=1)


def load_lpips(net: str = "alex") -> PairMetric | None:
    """LPIPS distance if the ``lpips`` package and its backbone weights are local; else None
    (``lpips_unavailable_reason`` says why)."""
    network = load_lpips_network(net)
    if network is None:
        return None

    @torch.no_grad()
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return network.to(a.device)(a.clamp(-1, 1), b.clamp(-1, 1)).flatten()

    return distance


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of rows of ``x`` [N, ...] (0 for N < 2)."""
    flat = x.flatten(1).float()
    if len(flat) < 2:
        return 0.0
    d = torch.cdist(flat, flat)
    n = len(flat)
    return float(d.sum() / (n * (n - 1)))


def clip_diversity(embeddings: torch.Tensor) -> float:
    """Mean pairwise (1 - cosine) of embeddings [N, D] (0 for N < 2)."""
    e = F.normalize(embeddings.float(), dim=1)
    n = len(e)
    if n < 2:
        return 0.0
    sim = e @ e.T
    return float((n * n - sim.sum()) / (n * (n - 1)))


@dataclass
class EvalTable:
    """One row per method; values are floats or "unavailable" / "n/a"."""

    rows: list[dict[str, MetricValue]] = field(default_factory=list)
    columns: tuple[str, ...] = (
        "method",
        "clip_score",
        "clip_gain",
        "identity",
        "lpips",
        "diversity",
        "seconds_per_edit",
        "edits",
    )

    def to_markdown(self) -> str:
        def fmt(v: MetricValue) -> str:
            return f"{v:.4f}" if isinstance(v, float) else str(v)

        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in self.columns) + " |")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows}, indent=2)

    def row(self, method: str) -> dict[str, MetricValue]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)


class _Acc:
    """Running means of per-edit metric values."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, key: str, value: torch.Tensor | float | None) -> None:
        if value is None:
            return
        v = float(value.float().mean()) if isinstance(value, torch.Tensor) else float(value)
        self.values.setdefault(key, []).append(v)

    def mean(self, key: str, missing: str = UNAVAILABLE) -> MetricValue:
        vals = self.values.get(key)
        return sum(vals) / len(vals) if vals else missing


def evaluate(
    generator: Generator,
    clip: ClipEmbedder,
    *,
    editor: TextEditor | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    n_images: int = 4,
    n_samples: int = 4,
    strength: float = 1.0,
    diversity: float = 0.5,
    seed: int = 0,
    truncation: float = 0.7,
    baseline: OptimisationConfig | None = None,
    render_resolution: int | None = 256,
    identity_fn: FaceEmbedder | None = None,
    lpips_fn: PairMetric | None = None,
) -> EvalTable:
    """Edit ``n_images`` random faces (seeded, truncated) with every prompt; one row per method.

    Rows: "CSLA" (if ``editor``; "unavailable" values otherwise) and "optimisation baseline"
    (if ``baseline`` is given; StyleCLIP-style, slower).
    """
    device = generator.input.input.device
    with torch.no_grad():
        rng = torch.Generator().manual_seed(seed)
        z = torch.randn(n_images, generator.style_dim, generator=rng).to(device)
        w_avg = generator.mean_latent(2048, torch.Generator().manual_seed(seed + 1))
        w = w_avg + truncation * (generator.mapping(z) - w_avg)
        sources = generator.to_wplus(w).clone()

    def render(wplus: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return generator(wplus, max_resolution=render_resolution)

    def score_edit(
        acc: _Acc, src_img: torch.Tensor, edited: torch.Tensor, prompt: str, seconds: float
    ) -> torch.Tensor:
        imgs = render(edited)
        with torch.no_grad():
            emb = clip.encode_images(imgs)
        text = clip.encode_text([prompt])[0].to(emb.device)
        base = float(clip_score(clip, src_img, prompt)[0])
        acc.add("clip_score", emb @ text)
        acc.add("clip_gain", (emb @ text) - base)
        acc.add("identity", identity_similarity(identity_fn, src_img.expand_as(imgs), imgs))
        if lpips_fn is not None:
            acc.add("lpips", lpips_fn(src_img.expand_as(imgs), imgs))
        acc.add("seconds_per_edit", seconds)
        acc.add("edits", 1.0)
        return emb

    csla, base_acc = _Acc(), _Acc()
    for i in range(n_images):
        src = sources[i : i + 1]
        src_img = render(src)
        f_src = clip.encode_images(src_img) if editor is not None else None
        for prompt in prompts:
            if editor is not None:
                t0 = time.perf_counter()
                res = editor.edit(
                    src,
                    prompt,
                    strength=strength,
                    n_samples=n_samples,
                    diversity=diversity,
                    seed=seed + i,
                    image_embedding=f_src,
                )
                emb = score_edit(csla, src_img, res.wplus, prompt, time.perf_counter() - t0)
                csla.add("diversity", clip_diversity(emb))
            if baseline is not None:
                t0 = time.perf_counter()
                opt = optimise_latent(generator, clip, src, prompt, baseline)
                score_edit(base_acc, src_img, opt.wplus, prompt, time.perf_counter() - t0)

    table = EvalTable()

    def make_row(name: str, acc: _Acc, diversity_missing: str) -> dict[str, MetricValue]:
        row: dict[str, MetricValue] = {"method": name}
        for key in ("clip_score", "clip_gain", "identity", "lpips", "seconds_per_edit"):
            row[key] = acc.mean(key)
        row["diversity"] = acc.mean("diversity", diversity_missing)
        row["edits"] = float(len(acc.values.get("edits", [])))
        return row

    table.rows.append(
        make_row("CSLA", csla, UNAVAILABLE)
        if editor is not None
        else {"method": "CSLA", **{c: UNAVAILABLE for c in table.columns[1:]}}
    )
    if baseline is not None:
        table.rows.append(make_row("optimisation baseline", base_acc, "n/a (1 sample)"))
    return table
