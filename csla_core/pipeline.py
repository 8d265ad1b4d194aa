"""``load_pipeline(...)``: the one entry point. It returns a ``CSLAPipeline`` that owns the models,
the device and the latent average, and offers invert / render (and, through the CSLA mappers,
edit / generate).

Nothing is loaded at import; every model is built once, in ``load_pipeline``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import weights
from .auto_strength import AUTO, DEFAULT_TARGET_CLIP_GAIN, StrengthSearch
from .e4e import Encoder4Editing, EncoderConfig
from .errors import CSLAError, WeightsError
from .imaging import resize_batch, tensor_to_pil
from .runtime import tune_cpu_allocator
from .stylegan2 import IMPLS, Generator, GeneratorConfig, Impl, NoiseInjection, NoiseMode

if TYPE_CHECKING:  # faces pulls in facenet-pytorch; import it only when photos are used
    from PIL import Image

    from .clip_space import ClipEmbedder
    from .editing import TextEditor
    from .faces import AlignedFace, Face
    from .mappers import CSLAMappers

RANDOM_WEIGHTS_NOTICE = (
    "RANDOM-WEIGHTS MODE: the models are untrained (development / tests / benchmarks); "
    "images are noise, not faces. Run `python -m csla_core download` for the real weights."
)
ENCODER_INPUT_SIZE = 256
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# QuickGELU is what OpenAI's CLIP was trained with: plain 'ViT-B-32' (GELU) gives other embeddings.
CLIP_MODEL_NAME = "ViT-B-32-quickgelu"
CLIP_TOKENIZER_NAME = "ViT-B-32"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def usable_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device (None: the GPU if there is one), or a CSLAError saying why
    it cannot be used here, rather than torch's driver traceback on the first model call."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CSLAError(f"{device!r} is not a device: use cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CSLAError(
                f"{device} was asked for, but this PyTorch sees no CUDA GPU (no driver, or a "
                "CPU-only build): use --device cpu, or leave the device out to pick it."
            )
        if device.index is not None and device.index >= count:
            raise CSLAError(f"{device} was asked for, but there are only {count} CUDA GPU(s).")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CSLAError(f"{device} was asked for, but Apple's MPS is not available here.")
    return device


@dataclass
class Inversion:
    """A photo's face, aligned and encoded. Tensors live on CPU (cheap to cache per session)."""

    wplus: torch.Tensor  # [1, n_latent, 512], latent_avg included
    aligned: AlignedFace  # the FFHQ crop and its transform back into the photo
    faces: list[Face]  # every face found, largest first
    face_index: int
    photo: Image.Image  # the decoded, upright RGB photo


@dataclass
class EditOutput:
    """Edited codes for one input (or generated codes for a prompt), on CPU."""

    wplus: torch.Tensor  # [n, n_latent, 512]
    styles: list[torch.Tensor] | None  # StyleSpace [n, C_i] x 26 when the edit is made in S
    method: str  # "CSLA mappers" or "optimisation baseline (slower)"
    notices: list[str] = field(default_factory=list)  # things the user should be told
    clip_scores: torch.Tensor | None = None  # [n] CLIP similarity to the target, when ranked
    strength: float | None = None  # the strength used (the chosen one with strength="auto")
    strength_search: StrengthSearch | None = None  # how "auto" chose it (target, gain, renders)


MAPPERS_METHOD = "CSLA mappers"
BASELINE_METHOD = "optimisation baseline (no trained mappers: slower)"


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
    # "fp32" (default, reference numerics), "fp16" (CUDA) or "bf16": reduced precision runs the
    # generator and encoder under torch.autocast; weights and returned tensors stay float32.
    precision: str = "fp32"
    face_detector: object | None = None  # created on first use of a photo
    _editor: TextEditor | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ info
    @property
    def notice(self) -> str:
        """Text every front end shows beside outputs ("" for real weights)."""
        return RANDOM_WEIGHTS_NOTICE if self.random_weights else ""

    @property
    def impl(self) -> Impl:
        """Synthesis code used by every render (``stylegan2.Impl``): "fast" (CPU default),
        "batched" (GPU default) or "reference" (the same maths; the reference path is tested
        against the golden data, the others against it)."""
        return self.generator.default_impl

    @impl.setter
    def impl(self, value: Impl) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        self.generator.default_impl = value

    def autocast(self):
        """The precision context every model call runs in."""
        if self.precision == "fp32":
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
    ) -> torch.Tensor:
        """W / W+ -> images [B, 3, R, R] in the generator's range (nominally [-1, 1])."""
        with self.autocast():
            images = self.generator(wplus.to(self.device), noise_mode, max_resolution, generator)
        return images.float()

    @torch.inference_mode()
    def render_styles(
        self,
        styles: Sequence[torch.Tensor],
        noise_mode: NoiseMode = "const",
        max_resolution: int | None = None,
    ) -> torch.Tensor:
        """StyleSpace -> images (for edits made in S)."""
        with self.autocast():
            images = self.generator.synthesize(
                [s.to(self.device) for s in styles], noise_mode, max_resolution, None
            )
        return images.float()

    # ------------------------------------------------------------------ text
    def _require_clip(self) -> ClipEmbedder:
        if self.clip is None:
            raise CSLAError(
                "This pipeline was loaded without CLIP (with_clip=False); text edits need it."
            )
        return self.clip

    def editor(self) -> TextEditor:
        """The CSLA editor (mappers + CLIP + generator), built on first use."""
        from .editing import TextEditor

        if self.mappers is None:
            raise CSLAError("No trained CSLA mappers are loaded.")
        if self._editor is None:
            self._editor = TextEditor(
                self.generator, self._require_clip(), self.mappers, self.latent_avg
            )
        return self._editor

    @torch.inference_mode()
    def image_embedding(self, wplus: torch.Tensor) -> torch.Tensor:
        """CLIP embedding [1, D] of a code's render (the anchor of every edit; cache it)."""
        clip = self._require_clip()
        image = self.render(wplus[:1], max_resolution=min(256, self.generator.size))
        return clip.encode_images(image).cpu()

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
    ) -> EditOutput:
        """``n_samples`` different edits of one code [1, n_latent, 512] towards the prompt.

        Strength 0 returns the input unchanged; a negative strength reverses the edit.
        ``strength="auto"`` picks, for the edit as a whole, the strength at which the
        unperturbed edit raises the CLIP similarity to the prompt by ``target_clip_gain``
        (default 0.04), measured on 256 px renders in at most 8 renders (see
        ``csla_core.auto_strength``); ``EditOutput.strength`` and ``strength_search`` report it,
        and a notice says when the target is out of reach within strength +-3.
        Pass ``image_embedding`` (from ``image_embedding(wplus)``) to skip re-rendering the
        input on every slider move. ``rank=True`` draws twice as many candidates and keeps the
        ones CLIP scores highest (slower; and the kept set may change with the strength, so the
        default keeps sample k the same direction at every strength, which sliders need).
        """
        clip = self._require_clip()
        notices = []
        search = None
        if isinstance(strength, str):
            if strength != AUTO:
                raise ValueError(f"strength must be a number or {AUTO!r}, got {strength!r}")
            if self.mappers is None:
                raise CSLAError(
                    "strength 'auto' needs trained CSLA mappers; give a number instead."
                )
            search = self._auto_strength(
                wplus, target_prompt, source_prompt, image_embedding, target_clip_gain
            )
            strength = search.strength
            if not search.reached:
                notices.append(search.describe())
        if self.mappers is None:
            return self._baseline_edit(wplus, target_prompt, source_prompt, strength, seed)
        with torch.inference_mode(), self.autocast():
            result = self.editor().edit(
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
        return EditOutput(
            wplus=result.wplus.float().cpu(),
            styles=[st.float().cpu() for st in result.styles],
            method=MAPPERS_METHOD,
            notices=notices,
            clip_scores=None if result.clip_scores is None else result.clip_scores.cpu(),
            strength=float(strength),
            strength_search=search,
        )

    def _auto_strength(
        self, wplus, target_prompt, source_prompt, image_embedding, target_gain
    ) -> StrengthSearch:
        from .auto_strength import calibrate_prompt_strength

        with torch.inference_mode(), self.autocast():
            return calibrate_prompt_strength(
                self.editor(),
                wplus.to(self.device),
                target_prompt,
                source_prompt,
                target_gain=target_gain,
                image_embedding=None
                if image_embedding is None
                else image_embedding.to(self.device),
            )

    def _baseline_edit(self, wplus, target_prompt, source_prompt, strength, seed) -> EditOutput:
        from .baselines import LatentOptimiser, OptimisationConfig

        clip = self._require_clip()
        optimiser = LatentOptimiser(
            self.generator, clip, OptimisationConfig(steps=self.baseline_steps)
        )
        result = optimiser.edit(wplus.to(self.device), target_prompt, source_prompt, strength, seed)
        notices = [
            f"No trained CSLA mappers found: this edit used {self.baseline_steps} steps of CLIP-guided "
            "optimisation (slower, one result). See the README to train or download mappers."
        ]
        if result.truncated:
            notices.append(f"The prompt was cut to CLIP's {clip.context_length} tokens.")
        return EditOutput(
            wplus=result.wplus.detach().cpu(),
            styles=None,
            method=BASELINE_METHOD,
            notices=notices,
            strength=float(strength),
        )

    @torch.inference_mode()
    def render_edit(self, edit: EditOutput, max_resolution: int | None = None) -> torch.Tensor:
        """Images [n, 3, R, R] of an edit (from its StyleSpace codes when it has them)."""
        if edit.styles is not None:
            return self.render_styles(edit.styles, max_resolution=max_resolution)
        return self.render(edit.wplus, max_resolution=max_resolution)

    def generate(
        self, prompt: str, n: int = 4, seed: int = 0, diversity: float = 0.5
    ) -> EditOutput:
        """Text-to-image: ``n`` W+ codes for a prompt (render them with ``render_edit``)."""
        clip = self._require_clip()
        with torch.inference_mode(), self.autocast():
            wplus = self.editor().generate(prompt, n=n, seed=seed, diversity=diversity).float()
        notices = []
        if clip.encode_text_with_info([prompt]).any_truncated:
            notices.append(f"The prompt was cut to CLIP's {clip.context_length} tokens.")
        return EditOutput(wplus=wplus.cpu(), styles=None, method=MAPPERS_METHOD, notices=notices)

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
        original photo at its full resolution."""
        from .faces import paste_back

        if isinstance(face, torch.Tensor):
            face = tensor_to_pil(face[:1])[0]
        return paste_back(inversion.photo, face, inversion.aligned)


# ---------------------------------------------------------------------- construction
def _seeded_build(seed: int, build):
    """Build a module from a fixed seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _frozen(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module.eval().requires_grad_(False)
    if isinstance(module, Generator):
        # The fast path is a per-sample CPU arrangement; on a GPU the batched path's grouped
        # convolutions render a batch of samples in one go.
        module.default_impl = "fast" if device.type == "cpu" else "batched"
    return module.to(device)


def _random_models(seed: int, size: int) -> tuple[Generator, Encoder4Editing, torch.Tensor]:
    generator = _seeded_build(seed, lambda: Generator(GeneratorConfig(size=size)))
    # Untrained noise strengths are zero, which would make every noise mode look the same;
    # trained models have non-zero ones, so give them a typical value.
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, NoiseInjection):
                module.weight.fill_(0.1)
    encoder = _seeded_build(seed + 1, lambda: Encoder4Editing(EncoderConfig(stylegan_size=size)))
    with torch.no_grad():
        w_avg = generator.mean_latent(4096, torch.Generator().manual_seed(seed + 2))
    return generator, encoder, w_avg.expand(generator.n_latent, -1).clone()


def _latent_avg_rows(latent_avg: torch.Tensor | None, generator: Generator) -> torch.Tensor:
    if latent_avg is None:
        with torch.no_grad():
            latent_avg = generator.mean_latent(10_000, torch.Generator().manual_seed(0))
    latent_avg = latent_avg.detach().float().reshape(-1, generator.style_dim)
    if latent_avg.shape[0] == 1:
        latent_avg = latent_avg.expand(generator.n_latent, -1)
    if latent_avg.shape[0] != generator.n_latent:
        raise WeightsError(
            f"latent_avg has {latent_avg.shape[0]} rows, expected 1 or {generator.n_latent}."
        )
    return latent_avg.clone()


def _generator_from_state(state: dict) -> Generator:
    config = GeneratorConfig(**weights.generator_config_from_state(state))
    generator = Generator(config)
    weights.load_state_strict(generator, state, "StyleGAN2 generator")
    return generator


def _random_clip(seed: int, device: torch.device, tiny: bool = False):
    import open_clip

    from .clip_space import ClipEmbedder, build_tiny_clip

    if tiny:
        return build_tiny_clip(seed + 3, embed_dim=64, image_size=32).to(device)
    model = _seeded_build(seed + 3, lambda: open_clip.create_model(CLIP_MODEL_NAME))
    return ClipEmbedder(model, open_clip.get_tokenizer(CLIP_TOKENIZER_NAME)).to(device)


def _random_mappers(seed: int, generator: Generator, clip, latent_avg: torch.Tensor):
    from .mappers import CSLAMappers, mapper_config_for

    config = mapper_config_for(generator, clip.embed_dim, meta={"weights": "random"})
    mappers = _seeded_build(seed + 4, lambda: CSLAMappers(config))
    mappers.latent_avg.copy_(latent_avg)
    return mappers.eval().requires_grad_(False)


def find_mappers(
    path: str | os.PathLike | None, directory: Path, repo: str | None, allow_download: bool
) -> Path | None:
    """Trained mappers: explicit path / CSLA_MAPPERS / checkpoint folder, else a hub repo given
    by ``repo`` or ``CSLA_MAPPERS_REPO`` (no official mappers exist: the repo is the user's
    choice, so it is not pinned). None when there are none: edits then use the baseline."""
    local = weights.find_local(weights.CSLA_MAPPERS, path=path, directory=directory)
    if local is not None:
        return local.path
    repo = repo or os.environ.get("CSLA_MAPPERS_REPO")
    if not repo:
        return None
    if not allow_download or weights.hub_offline():
        raise WeightsError(
            f"CSLA mappers from {repo} were asked for, but downloads are off; put "
            f"{weights.CSLA_MAPPERS.filename} in {directory.resolve()}/ instead."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, weights.CSLA_MAPPERS.filename))
    except Exception as exc:  # any hub failure means the same thing to the user
        raise WeightsError(f"Could not download CSLA mappers from {repo}: {exc}") from exc


def load_pipeline(
    *,
    device: str | torch.device | None = None,
    random_weights: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    e4e_path: str | os.PathLike | None = None,
    stylegan2_path: str | os.PathLike | None = None,
    clip_path: str | os.PathLike | None = None,
    mappers_path: str | os.PathLike | None = None,
    mappers_repo: str | None = None,
    with_encoder: bool = True,
    with_clip: bool = True,
    allow_download: bool = True,
    size: int = 1024,
    seed: int = 0,
    precision: str = "fp32",
    tiny_clip: bool = False,
    tune_allocator: bool = True,
) -> CSLAPipeline:
    """Build the pipeline.

    - ``random_weights=True``: the same full-size architectures, untrained and seeded; nothing is
      read or downloaded. Every front end shows ``pipeline.notice``.
    - otherwise: e4e's ``e4e_ffhq_encode.pt`` gives encoder, generator and latent_avg in one
      file; ``stylegan2_path`` (rosinality ``{'g_ema', 'latent_avg'}``) replaces the generator,
      and with ``with_encoder=False`` it is all that is read (generator-only use; without it,
      ``with_encoder=False`` takes the generator from the e4e file and skips the encoder). CLIP is
      open_clip's ``ViT-B-32-quickgelu`` with OpenAI's weights (``with_clip=False`` skips it:
      inversion and rendering need no CLIP).
    Files are found as described in ``csla_core.weights`` (argument, env var, checkpoint folder,
    hub cache, pinned download); when several are missing, one error names them all.
    ``precision``: "fp32" (default), "fp16" (CUDA) or "bf16" (autocast; within 2e-2 of fp32).
    ``size`` and ``tiny_clip`` (random weights only): a smaller generator, and a small random CLIP
    with the real tokenizer instead of ViT-B/32, for fast tests of everything around the models.
    ``tune_allocator`` (default on): keep freed tensor memory in the process for reuse
    (``csla_core.runtime.tune_cpu_allocator``; glibc only, process-wide): a 1024 render on 2
    CPU cores takes 0.43 s instead of 0.65 s, and the process keeps its memory high-water mark
    (0.1-0.3 GB more for the app serving 1024 px edits). False leaves the C library's allocator
    as it is.
    """
    if tune_allocator:
        tune_cpu_allocator()
    device = usable_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if tiny_clip and not random_weights:
        raise ValueError("tiny_clip=True is for random_weights=True only")
    if random_weights:
        generator, encoder, latent_avg = _random_models(seed, size)
        sources = {"generator": "random", "encoder": "random"}
        clip = mappers = None
        if with_clip:
            clip = _random_clip(seed, device, tiny=tiny_clip)
            mappers = _random_mappers(seed, generator, clip, latent_avg).to(device)
            sources.update(clip="random", mappers="random")
        return CSLAPipeline(
            generator=_frozen(generator, device),
            encoder=_frozen(encoder, device),
            latent_avg=latent_avg.to(device),
            device=device,
            random_weights=True,
            sources=sources,
            clip=clip,
            mappers=mappers,
            precision=precision,
        )

    folder = weights.checkpoint_dir(checkpoint_dir)
    wanted: dict[weights.WeightSpec, str | os.PathLike | None] = {}
    stylegan2_asked = stylegan2_path is not None or bool(
        os.environ.get(weights.STYLEGAN2_FFHQ.env_var)
    )
    if stylegan2_asked:
        wanted[weights.STYLEGAN2_FFHQ] = stylegan2_path
    if with_encoder or not stylegan2_asked:  # the e4e file also carries the generator
        wanted[weights.E4E_FFHQ] = e4e_path
    if with_clip:
        wanted[weights.CLIP_VIT_B32] = clip_path
    files = weights.resolve_many(wanted, directory=folder, allow_download=allow_download)

    sources: dict[str, str] = {}
    generator = encoder = latent_avg = None
    if weights.STYLEGAN2_FFHQ in files:
        state, latent_avg = weights.read_stylegan2_checkpoint(files[weights.STYLEGAN2_FFHQ])
        generator = _generator_from_state(state)
        sources["generator"] = str(files[weights.STYLEGAN2_FFHQ])
        del state
    if weights.E4E_FFHQ in files:
        e4e_file = files[weights.E4E_FFHQ]
        ckpt = weights.read_e4e_checkpoint(e4e_file)
        if generator is None:
            generator = _generator_from_state(ckpt.generator_state)
            sources["generator"] = str(e4e_file)
        if with_encoder:
            e4e_size = weights.generator_config_from_state(ckpt.generator_state)["size"]
            encoder = Encoder4Editing(EncoderConfig(stylegan_size=e4e_size))
            weights.load_state_strict(encoder, ckpt.encoder_state, "e4e encoder")
            sources["encoder"] = str(e4e_file)
        # e4e's latent_avg is the one its encoder was trained against: it wins.
        latent_avg = ckpt.latent_avg
        del ckpt
    assert generator is not None
    if encoder is not None and encoder.n_styles != generator.n_latent:
        raise WeightsError(
            f"The encoder predicts {encoder.n_styles} W+ rows but the generator takes "
            f"{generator.n_latent}: the two files are for different resolutions."
        )
    clip = None
    if weights.CLIP_VIT_B32 in files:
        from .clip_space import ClipEmbedder

        clip = ClipEmbedder.from_pretrained(
            str(files[weights.CLIP_VIT_B32]), CLIP_MODEL_NAME, device=device
        )
        sources["clip"] = str(files[weights.CLIP_VIT_B32])
    mappers = None
    mappers_file = (
        find_mappers(mappers_path, folder, mappers_repo, allow_download) if with_clip else None
    )
    if mappers_file is not None:
        from .mappers import CSLAMappers

        mappers = CSLAMappers.load(mappers_file, device=device)
        sources["mappers"] = str(mappers_file)
    return CSLAPipeline(
        generator=_frozen(generator, device),
        encoder=_frozen(encoder, device) if encoder is not None else None,
        latent_avg=_latent_avg_rows(latent_avg, generator).to(device),
        device=device,
        sources=sources,
        clip=clip,
        mappers=mappers,
        precision=precision,
    )
