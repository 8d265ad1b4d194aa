"""``CSLAPipeline``: the façade over already-built models (made by ``csla_core.loading``). It
owns the models, the device and the latent average, and offers invert / render and, through the
CSLA mappers, edit / generate.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .editing.detail import Detail, edit_change
from .editing.likeness import RefineConfig, Refinement
from .editing.result import BASELINE_METHOD, MAPPERS_METHOD, EditResult, StrengthSearch
from .editing.strength import DEFAULT_TARGET_CLIP_GAIN, is_auto
from .errors import CSLAError
from .imaging import pil_to_tensor, resize_batch, tensor_to_pil
from .models.e4e import Encoder4Editing
from .models.stylegan2 import Generator, Impl, NoiseMode, SynthesisTuning, auto_impl
from .models.tuning import TunedGenerator

if TYPE_CHECKING:  # faces pulls in facenet-pytorch; import it only when photos are used
    from PIL import Image

    from .editing.editor import TextEditor
    from .faces import AlignedFace, Face
    from .models.clip import ClipEmbedder
    from .models.mappers import CSLAMappers

RANDOM_WEIGHTS_NOTICE = (
    "RANDOM-WEIGHTS MODE: the models are untrained (development / tests / benchmarks); "
    "images are noise, not faces. Run `python -m csla_core download` for the real weights."
)
ENCODER_INPUT_SIZE = 256
# What each precision computes in ("fp32-compact" only stores some weights in bf16).
PRECISIONS = {
    "fp32": torch.float32,
    "fp32-compact": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@dataclass
class Inversion:
    """A photo's face, aligned and encoded. Tensors live on CPU (cheap to cache per session)."""

    wplus: torch.Tensor  # [1, n_latent, 512], latent_avg included
    aligned: AlignedFace  # the FFHQ crop and its transform back into the photo
    faces: list[Face]  # every face found, largest first
    face_index: int
    photo: Image.Image  # the decoded, upright RGB photo
    refinement: Refinement | None = None  # ``CSLAPipeline.refine``: the generator tuned to it

    @property
    def tuning(self) -> SynthesisTuning | None:
        """What every render of this face applies (None until refined)."""
        return None if self.refinement is None else self.refinement.delta

    def crop(self, size: int) -> torch.Tensor:
        """The aligned crop at ``size`` px: [1, 3, size, size] in [-1, 1]."""
        return pil_to_tensor(self.aligned.image, size)


@dataclass
class CSLAPipeline:
    generator: Generator
    encoder: Encoder4Editing | None
    latent_avg: torch.Tensor  # [n_latent, style_dim], on the device
    device: torch.device
    random_weights: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    clip: ClipEmbedder | None = None
    mappers: CSLAMappers | None = None  # None: edits fall back to the optimisation baseline
    baseline_steps: int = 40  # optimisation steps of the fallback editor (StyleCLIP uses ~300)
    # "fp32" (reference numerics), "fp32-compact" (fp32 maths, some weights stored in bf16:
    # ``loading.store_compact``), "bf16" or "fp16" (CUDA), as ``runtime.choose_precision``
    # chose it. On a CPU the weights are stored in it (``loading.use_cpu_precision``); on a GPU
    # it is autocast. Returned tensors are float32 either way.
    precision: str = "fp32"
    precision_reason: str = "asked for"
    synthesis: Impl | None = None  # None: by device (see ``impl``)
    face_detector: object | None = None  # created on first use of a photo
    _editor: TextEditor | None = field(default=None, repr=False)
    _fingerprints: dict[str, str] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ info
    @property
    def notice(self) -> str:
        """Text every front end shows beside outputs ("" for real weights)."""
        return RANDOM_WEIGHTS_NOTICE if self.random_weights else ""

    def use_mappers(self, mappers: CSLAMappers | None, source: str) -> None:
        """Edit with these mappers from now on (None: the optimisation fallback); e.g. when
        calibration finishes while the app runs."""
        self.mappers, self._editor = mappers, None
        if mappers is None:
            self.sources.pop("mappers", None)
        else:
            self.sources["mappers"] = source

    @property
    def fingerprints(self) -> dict[str, str]:
        """Content hashes of the generator and CLIP (``weights.model_fingerprint``): which
        models mappers are made for. Computed once (about 0.6 s for ViT-B/32 on a CPU)."""
        if self._fingerprints is None:
            from .weights import model_fingerprint

            self._fingerprints = {"generator": model_fingerprint(self.generator)}
            if self.clip is not None:
                self._fingerprints["clip"] = model_fingerprint(self.clip)
        return self._fingerprints

    @property
    def impl(self) -> Impl:
        """Synthesis code every render uses (``stylegan2.Impl``): ``synthesis`` when set, else
        by device: "fast" on CPU, "batched" on GPU. "reference" is the same maths, tested
        against the golden data; the others are tested against it."""
        return self.synthesis or auto_impl(self.device)

    def autocast(self):
        """The precision context every model call runs in (on a CPU the weights' dtype
        decides: nothing to enter)."""
        if PRECISIONS[self.precision] == torch.float32 or self.device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    # ------------------------------------------------------------------ core operations
    @torch.inference_mode()
    def invert_aligned(self, image: torch.Tensor) -> torch.Tensor:
        """Aligned face(s) [B, 3, H, W] in [-1, 1] -> W+ [B, n_latent, 512] (latent_avg added).

        Inputs of another size are resized (antialiased) to the encoder's 256 x 256.
        """
        if self.encoder is None:
            raise CSLAError("This pipeline was loaded without the e4e encoder; it cannot invert.")
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}")
        image = resize_batch(image.to(self.device, torch.float32), ENCODER_INPUT_SIZE)
        with self.autocast():
            codes = self.encoder(image)
        return codes.float() + self.latent_avg

    @torch.inference_mode()
    def styles(self, wplus: torch.Tensor) -> list[torch.Tensor]:
        """W / W+ -> StyleSpace (26 tensors [B, C_i] at 1024 px)."""
        return self.generator.styles_from_wplus(wplus.to(self.device))

    @torch.inference_mode()
    def render(
        self,
        wplus: torch.Tensor,
        noise_mode: NoiseMode = "const",
        max_resolution: int | None = None,
        generator: torch.Generator | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """W / W+ -> images [B, 3, R, R] in the generator's range (nominally [-1, 1]);
        ``tuning``: a refined face's (``Inversion.tuning``)."""
        with self.autocast():
            images = self.generator(
                wplus.to(self.device),
                noise_mode,
                max_resolution,
                generator,
                impl=self.impl,
                tuning=_on(tuning, self.device),
            )
        return images.float()

    @torch.inference_mode()
    def render_styles(
        self,
        styles: Sequence[torch.Tensor],
        noise_mode: NoiseMode = "const",
        max_resolution: int | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """StyleSpace -> images (for edits made in S)."""
        with self.autocast():
            images = self.generator.synthesize(
                [s.to(self.device) for s in styles],
                noise_mode,
                max_resolution,
                None,
                self.impl,
                tuning=_on(tuning, self.device),
            )
        return images.float()

    # ------------------------------------------------------------------ text
    def _require_clip(self) -> ClipEmbedder:
        if self.clip is None:
            raise CSLAError(
                "This pipeline was loaded without CLIP (with_clip=False); text edits need it."
            )
        return self.clip

    def editor(self, tuning: SynthesisTuning | None = None) -> TextEditor:
        """The CSLA editor (mappers + CLIP + generator), built on first use; with ``tuning``,
        one whose renders (ranking, auto strength) are the refined face's."""
        from .editing.editor import TextEditor

        if self.mappers is None:
            raise CSLAError("No trained CSLA mappers are loaded.")
        if self._editor is None:
            self._editor = TextEditor(
                self.generator, self._require_clip(), self.mappers, self.latent_avg
            )
        if tuning is None:
            return self._editor
        return self._editor.with_generator(self._generator(tuning))

    def _generator(self, tuning: SynthesisTuning | None) -> Generator:
        """The generator, or a view of it that renders with ``tuning`` (nothing copied)."""
        if tuning is None:
            return self.generator
        return TunedGenerator(self.generator, _on(tuning, self.device))  # type: ignore[return-value]

    @property
    def embedding_resolution(self) -> int:
        """The size of the render ``image_embedding`` embeds."""
        return min(256, self.generator.size)

    @torch.inference_mode()
    def image_embedding(
        self,
        wplus: torch.Tensor,
        render: torch.Tensor | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """CLIP embedding [1, D] of a code's render (the anchor of every edit; cache it).
        ``render``: that render at ``embedding_resolution``, where one was made already (the
        app's reconstruction preview), so it is not rendered twice."""
        clip = self._require_clip()
        if render is None:
            render = self.render(wplus[:1], max_resolution=self.embedding_resolution, tuning=tuning)
        elif render.shape[-1] != self.embedding_resolution:
            raise ValueError(
                f"the render to embed must be {self.embedding_resolution} px, "
                f"got {render.shape[-1]} px"
            )
        return clip.encode_images(render[:1]).cpu()

    def edit(
        self,
        wplus: torch.Tensor,
        target_prompt: str,
        *,
        source_prompt: str | None = None,
        strength: float | str = 1.0,
        n_samples: int = 4,
        diversity: float = 0.5,
        seed: int = 0,
        image_embedding: torch.Tensor | None = None,
        rank: bool = False,
        target_clip_gain: float = DEFAULT_TARGET_CLIP_GAIN,
        optimised: MutableMapping[tuple, EditResult] | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> EditResult:
        """``n_samples`` different edits of one code [1, n_latent, 512] towards the prompt.

        Strength 0 returns the input unchanged; a negative strength reverses the edit.
        ``strength="auto"`` picks, for the edit as a whole, the strength at which the
        unperturbed edit raises the CLIP similarity to the prompt by ``target_clip_gain``
        (default 0.04), measured on 256 px renders in at most 8 renders (see
        ``csla_core.editing.strength``); ``EditResult.strength`` and ``strength_search`` report it,
        and a notice says when the target is out of reach within strength +-3.
        Pass ``image_embedding`` (from ``image_embedding(wplus)``) to skip re-rendering the
        input on every slider move. ``rank=True`` draws twice as many candidates and keeps the
        ones CLIP scores highest (slower; and the kept set may change with the strength, so the
        default keeps sample k the same direction at every strength, which sliders need).
        Without mappers (the optimisation fallback), ``optimised``, a mapping the caller keeps
        per input code, holds each prompt's optimum, so another strength costs no optimisation.
        ``tuning``: a refined face's (``Inversion.tuning``): its renders rank the samples, find
        the auto strength and guide the fallback's optimisation.
        """
        clip = self._require_clip()
        notices = []
        search = None
        if isinstance(strength, str):
            if not is_auto(strength):
                raise ValueError(f"strength must be a number or 'auto', got {strength!r}")
            if self.mappers is None:
                raise CSLAError(
                    "strength 'auto' needs trained CSLA mappers; give a number instead."
                )
            search = self._auto_strength(
                wplus, target_prompt, source_prompt, image_embedding, target_clip_gain, tuning
            )
            strength = search.strength
            if not search.reached:
                notices.append(search.describe())
        if self.mappers is None:
            return self._baseline_edit(
                wplus, target_prompt, source_prompt, strength, seed, optimised, tuning
            )
        with torch.inference_mode(), self.autocast():
            result = self.editor(tuning).edit(
                wplus.to(self.device),
                target_prompt,
                source_prompt=source_prompt,
                strength=strength,
                n_samples=n_samples,
                diversity=diversity,
                seed=seed,
                image_embedding=image_embedding.to(self.device)
                if image_embedding is not None
                else None,
                rank=rank,
            )
        if result.truncated:
            notices.append(f"The prompt was cut to CLIP's {clip.context_length} tokens.")
        result = result.to_cpu()
        result.notices, result.strength_search = notices, search
        return result

    def _auto_strength(
        self, wplus, target_prompt, source_prompt, image_embedding, target_gain, tuning
    ) -> StrengthSearch:
        from .editing.strength import calibrate_prompt_strength

        with torch.inference_mode(), self.autocast():
            return calibrate_prompt_strength(
                self.editor(tuning),
                wplus.to(self.device),
                target_prompt,
                source_prompt,
                target_gain=target_gain,
                image_embedding=None
                if image_embedding is None
                else image_embedding.to(self.device),
            )

    def _baseline_edit(
        self, wplus, target_prompt, source_prompt, strength, seed, optimised, tuning
    ) -> EditResult:
        from .editing.optimise import LatentOptimiser, OptimisationConfig

        clip = self._require_clip()
        optimiser = LatentOptimiser(
            self._generator(tuning), clip, OptimisationConfig(steps=self.baseline_steps)
        )
        # The optimisation is the slow part (about a minute at 1024 on 2 cores); another
        # strength only rescales its result, so with the caller's cache a slider move costs a
        # render, not an optimisation.
        key = (target_prompt, source_prompt or "", self.baseline_steps)
        optimum = None if optimised is None else optimised.get(key)
        if optimum is None and float(strength) == 0.0:  # the input itself: nothing to optimise
            start = self.generator.to_wplus(wplus.float()).cpu()
            optimum = EditResult(
                wplus=start,
                styles=None,
                method=BASELINE_METHOD,
                target_prompt=target_prompt,
                delta_w=torch.zeros_like(start),
            )
        if optimum is None:
            optimum = optimiser.optimise(wplus.to(self.device), target_prompt).to_cpu()
            if optimised is not None:
                optimised[key] = optimum
        result = optimiser.scale(optimum, wplus.to(self.device), strength, source_prompt, seed)
        notices = [
            f"No trained CSLA mappers found: this edit used {self.baseline_steps} steps of CLIP-guided "
            "optimisation (slower, one result). See the README to train or download mappers."
        ]
        if result.truncated:
            notices.append(f"The prompt was cut to CLIP's {clip.context_length} tokens.")
        # Rendered from W+ (its styles are those of the edited W+ anyway).
        result = result.to_cpu(keep_styles=False)
        result.notices = notices
        return result

    @torch.inference_mode()
    def render_edit(
        self,
        edit: EditResult,
        max_resolution: int | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """Images [n, 3, R, R] of an edit (from its StyleSpace codes when it has them)."""
        if edit.styles is not None:
            return self.render_styles(edit.styles, max_resolution=max_resolution, tuning=tuning)
        return self.render(edit.wplus, max_resolution=max_resolution, tuning=tuning)

    def generate(
        self, prompt: str, n: int = 4, seed: int = 0, diversity: float = 0.5
    ) -> EditResult:
        """Text-to-image: ``n`` W+ codes for a prompt (render them with ``render_edit``)."""
        clip = self._require_clip()
        with torch.inference_mode(), self.autocast():
            wplus = self.editor().generate(prompt, n=n, seed=seed, diversity=diversity).float()
        notices = []
        if clip.encode_text_with_info([prompt]).any_truncated:
            notices.append(f"The prompt was cut to CLIP's {clip.context_length} tokens.")
        return EditResult(
            wplus=wplus.cpu(),
            styles=None,
            method=MAPPERS_METHOD,
            target_prompt=prompt,
            diversity=float(diversity),
            seed=int(seed),
            notices=notices,
        )

    def invert_clip(self, image: torch.Tensor) -> torch.Tensor:
        """The paper's CLIP-based (coarse) inversion: [B, 3, H, W] in [-1, 1] -> W+ (CPU)."""
        with torch.inference_mode(), self.autocast():
            return self.editor().invert_clip(image.to(self.device)).float().cpu()

    # ------------------------------------------------------------------ photos
    def _detector(self):
        if self.face_detector is None:
            from .faces import get_default_detector

            self.face_detector = get_default_detector(self.device)
        return self.face_detector

    def detect_faces(self, photo) -> list[Face]:
        """Every face in a photo (path, bytes, PIL or array), largest first."""
        from .faces import load_image

        return self._detector().detect(load_image(photo))

    def invert(self, photo, face_index: int = 0) -> Inversion:
        """Photo -> faces -> FFHQ-aligned crop -> e4e -> W+ (with the crop and its transform).

        ``photo``: path, bytes, file object, PIL image or uint8 array; any mode, EXIF-rotated.
        """
        from .faces import align_face, crop_to_tensor, load_image, select_face

        image = load_image(photo)
        detector = self._detector()
        faces = detector.detect(image)
        # Landmarks re-detected on an upright crop: tilted heads align as well as upright ones.
        face = detector.refine(image, select_face(faces, face_index))
        aligned = align_face(image, face, output_size=self.generator.size)
        wplus = self.invert_aligned(crop_to_tensor(aligned.image, ENCODER_INPUT_SIZE)).cpu()
        return Inversion(
            wplus=wplus, aligned=aligned, faces=faces, face_index=face_index, photo=image
        )

    def paste(self, inversion: Inversion, face: Image.Image | torch.Tensor) -> Image.Image:
        """An edited face (PIL, or a [1, 3, H, W] tensor in [-1, 1]) blended back into the
        original photo at its full resolution (the render as it is: ``detail="none"``)."""
        from .faces import paste_back

        if isinstance(face, torch.Tensor):
            face = tensor_to_pil(face[:1])[0]
        return paste_back(inversion.photo, face, inversion.aligned)

    def reconstruct(self, inversion: Inversion, max_resolution: int | None = None) -> torch.Tensor:
        """The face's own code rendered (with its refinement): [1, 3, R, R]; "keep" detail
        measures an edit's change against it."""
        return self.render(inversion.wplus, max_resolution=max_resolution, tuning=inversion.tuning)

    def deliver(
        self,
        inversion: Inversion,
        renders: torch.Tensor,
        reconstruction: torch.Tensor | None = None,
        *,
        detail: Detail = "keep",
        paste: bool = True,
    ) -> list[Image.Image]:
        """Edited renders [n, 3, R, R] as the user sees them: the photo with each edit pasted
        back (``paste``), or the aligned crop at R px. ``detail="keep"``: the photo's own
        pixels wherever an edit does not change the face (``editing.detail``; needs the face's
        ``reconstruction`` at R px, else it is rendered); "none": the renders as they are.
        A strength-0 edit with "keep" gives the photo (or the crop) back unchanged."""
        from .faces import paste_back, paste_change

        renders = renders.detach().float().cpu()
        size = renders.shape[-1]
        if detail == "keep" and reconstruction is None:
            reconstruction = self.reconstruct(inversion, size).cpu()
        if detail == "none" and paste:  # the plain paste of the render, as it always was
            return [
                paste_back(inversion.photo, face, inversion.aligned)
                for face in tensor_to_pil(renders)
            ]
        change = edit_change(
            renders, None if reconstruction is None else reconstruction.cpu(), detail
        )
        if not paste:
            return tensor_to_pil(change.apply(inversion.crop(size)))
        pictures = []
        for k in range(len(change)):
            added = (127.5 * (change.added[k] + change.taken[k])).permute(1, 2, 0).numpy()
            taken = change.taken[k, 0].numpy()
            pictures.append(paste_change(inversion.photo, added, taken, inversion.aligned))
        return pictures

    def refine(
        self,
        inversion: Inversion,
        config: RefineConfig | None = None,
        *,
        allow_download: bool = False,
        **hooks,
    ) -> Refinement:
        """Refine likeness: tune the generator to this face (pivotal tuning,
        ``editing.likeness``) and keep the result in ``inversion.refinement``, so every later
        render of the face applies it; the shared generator is not changed. ``config``:
        ``RefineConfig.for_device`` by default (CPU: 256 px, 60 s). ``allow_download``: fetch
        LPIPS's AlexNet if it is not here (else the MS-SSIM fallback). ``hooks``:
        ``progress``, ``cancelled``, ``between_steps`` (``refine_generator``)."""
        refinement = self.tune(
            inversion.wplus,
            inversion.crop(self.generator.size),
            config,
            allow_download=allow_download,
            **hooks,
        )
        inversion.refinement = refinement
        return refinement

    def tune(
        self,
        wplus: torch.Tensor,
        crop: torch.Tensor,
        config: RefineConfig | None = None,
        *,
        allow_download: bool = False,
        **hooks,
    ) -> Refinement:
        """``refine``'s tuning alone: code [1, n_latent, 512] and aligned crop [1, 3, H, W] in
        [-1, 1] -> the ``Refinement`` (its delta on the CPU), changing nothing else (a ZeroGPU
        call hands it back as its result)."""
        from .editing.likeness import perceptual_loss, refine_generator

        return refine_generator(
            self.generator,
            wplus,
            crop,
            config or RefineConfig.for_device(self.device),
            perceptual=perceptual_loss(allow_download),
            latent_avg=self.latent_avg,
            autocast=self._tuning_autocast,
            impl=self.impl,
            **hooks,
        )

    def _tuning_autocast(self):
        """Tuning computes as the renders do: on a CPU in the weights' dtype (``autocast``),
        on a GPU in float32, or in bf16 where asked for; fp16 would need loss scaling."""
        if self.precision == "bf16" and self.device.type != "cpu":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _on(tuning: SynthesisTuning | None, device: torch.device) -> SynthesisTuning | None:
    """``tuning`` with its tensors on ``device`` (kept on the CPU between renders)."""
    to = getattr(tuning, "to", None)
    return tuning if to is None else to(device)
