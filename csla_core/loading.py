"""``load_pipeline(...)``: files -> models -> ``CSLAPipeline``. The one factory.

Nothing is loaded at import; every model is built once, here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import weights
from .errors import CSLAError, WeightsError
from .models.builders import CLIP_MODEL_NAME, random_clip, random_mappers, random_models
from .models.e4e import Encoder4Editing, EncoderConfig
from .models.stylegan2 import Generator, GeneratorConfig
from .pipeline import PRECISIONS, CSLAPipeline
from .runtime import (
    COMPACT_FP32,
    choose_precision,
    exact_cuda_fp32,
    release_free_memory,
    tune_cpu_allocator,
)

if TYPE_CHECKING:
    from .models.mappers import CSLAMappers

logger = logging.getLogger(__name__)


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


def _frozen(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return module.eval().requires_grad_(False).to(device)


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


def find_mappers(
    path: str | os.PathLike | None,
    directory: Path,
    repo: str | None,
    allow_download: bool,
    fingerprints: dict[str, str],
) -> Path | None:
    """Mappers, in order: an explicit path (a file, or a folder holding mappers.safetensors) or
    CSLA_MAPPERS; mappers made for these models (``fingerprints``) in the checkpoint folder or
    the user's cache (``CSLA_CACHE``: a mounted volume keeps them across restarts); a hub repo
    given by ``repo`` or ``CSLA_MAPPERS_REPO`` (none is official, so none is pinned);
    csla_mappers.safetensors in the checkpoint folder. None when there are none: edits then
    use the optimisation fallback (and the app makes them)."""
    if path is not None and Path(path).is_dir():
        path = Path(path) / "mappers.safetensors"
    if path is not None or os.environ.get(weights.CSLA_MAPPERS.env_var):
        return weights.find_local(weights.CSLA_MAPPERS, path=path).path
    made_here = weights.mappers_for_models(fingerprints, directory)
    if made_here is not None:
        return made_here
    repo = repo or os.environ.get("CSLA_MAPPERS_REPO")
    if repo:
        found = _download_mappers(repo, allow_download, fingerprints)
        if found is not None:
            return found
    local = weights.find_local(weights.CSLA_MAPPERS, directory=directory)
    return local.path if local is not None else None


def _download_mappers(repo: str, allow_download: bool, fingerprints: dict[str, str]) -> Path | None:
    """Mappers from a hub model repo: the file made for these models (what the app uploads
    after calibrating), else ``mappers.safetensors`` (``train --push-to-hub``). None when the
    repo has neither, or does not exist yet (the app then calibrates and uploads)."""
    if not allow_download or weights.hub_offline():
        raise WeightsError(
            f"CSLA mappers from {repo} were asked for, but downloads are off; put "
            f"{weights.CSLA_MAPPERS.filename} in the checkpoint folder instead, or allow "
            "downloads."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    for name in (weights.mappers_filename(fingerprints), "mappers.safetensors"):
        try:
            return Path(hf_hub_download(repo, name))
        except LocalEntryNotFoundError as exc:  # the hub could not be reached: make them here
            logger.warning("CSLA mappers from %s could not be fetched (%s)", repo, exc)
            return None
        except EntryNotFoundError:
            continue
        except RepositoryNotFoundError:
            logger.warning("the mappers repo %s does not exist (yet)", repo)
            return None
        except Exception as exc:  # auth and the like: the user named this repo, so say so
            raise WeightsError(f"Could not download CSLA mappers from {repo}: {exc}") from exc
    logger.warning(
        "%s holds no mappers for these models (%s)", repo, weights.mappers_filename(fingerprints)
    )
    return None


def load_mappers_for(pipe: CSLAPipeline, path: Path, device: torch.device) -> CSLAMappers:
    """Mappers from ``path``, refused when they were made for other models than ``pipe``'s."""
    mappers = weights.load_mappers(path, device=device)
    if not weights.check_mappers_models(mappers.config.meta, pipe.fingerprints, path):
        logger.warning("%s does not record which models it was made for; using it as it is", path)
    return mappers


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
    precision: str = "auto",
    tiny_clip: bool = False,
    tune_allocator: bool = True,
    with_mappers: bool = True,
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
    ``precision``: "auto" (default: bf16 on CPUs with native bf16 where it measures faster,
    else fp32-compact; ``runtime.choose_precision``), "fp32" (exact), "fp32-compact" (fp32
    maths, the encoder's style blocks and CLIP stored in bf16: ``store_compact``), "bf16" or
    "fp16" (CUDA). On a CPU bf16 weights are stored once in bf16 (``use_cpu_precision``); on a
    GPU reduced precision runs under autocast. Each stays within 2e-2 of fp32.
    ``size`` and ``tiny_clip`` (random weights only): a smaller generator, and a small random CLIP
    with the real tokenizer instead of ViT-B/32, for fast tests of everything around the models.
    ``with_mappers=False``: no mappers, as on a first run before any exist (edits use the
    optimisation fallback). Otherwise mappers are found as ``find_mappers`` says; with random
    weights and none found, untrained ones. Mappers made for other models are refused.
    ``tune_allocator`` (default on): keep freed tensor memory in the process for reuse
    (``csla_core.runtime.tune_cpu_allocator``; glibc only, process-wide): faster CPU renders,
    and the process keeps its memory high-water mark (docs/performance.md, "The allocator").
    False leaves the C library's allocator as it is.
    """
    if tune_allocator:
        tune_cpu_allocator()
    device = usable_device(device)
    choice = choose_precision(precision, device.type)
    if tiny_clip and not random_weights:
        raise ValueError("tiny_clip=True is for random_weights=True only")
    if random_weights:
        generator, encoder, latent_avg = random_models(seed, size)
        clip = random_clip(seed, device, tiny=tiny_clip) if with_clip else None
        sources = {"generator": "random", "encoder": "random"}
        sources.update({"clip": "random"} if clip is not None else {})
    else:
        paths = {"e4e": e4e_path, "stylegan2": stylegan2_path, "clip": clip_path}
        generator, encoder, latent_avg, clip, sources = _models_from_files(
            paths, checkpoint_dir, with_encoder, with_clip, allow_download, device
        )
        latent_avg = _latent_avg_rows(latent_avg, generator)
    pipe = CSLAPipeline(
        generator=_frozen(generator, device),
        encoder=_frozen(encoder, device) if encoder is not None else None,
        latent_avg=latent_avg.to(device),
        device=device,
        random_weights=random_weights,
        sources=sources,
        clip=clip,
        precision=choice.precision,
        precision_reason=choice.reason,
    )
    if device.type == "cpu":
        use_cpu_precision(pipe)
    elif pipe.precision == COMPACT_FP32:
        store_compact(pipe)
    if device.type == "cuda" and PRECISIONS[pipe.precision] == torch.float32:
        pipe.precision_reason += f"; {exact_cuda_fp32()}"
    logger.info("precision %s (%s)", pipe.precision, pipe.precision_reason)
    if clip is None or not with_mappers:
        release_free_memory()
        return pipe
    folder = weights.checkpoint_dir(checkpoint_dir)
    found = None
    # With random weights only mappers asked for by name: a search could pick up files of
    # earlier runs, and random-weights runs (tests, benchmarks) must not depend on them.
    if (
        not random_weights
        or mappers_path is not None
        or mappers_repo
        or os.environ.get(weights.CSLA_MAPPERS.env_var)
    ):
        found = find_mappers(mappers_path, folder, mappers_repo, allow_download, pipe.fingerprints)
    if found is not None:
        pipe.use_mappers(load_mappers_for(pipe, found, device), str(found))
    elif random_weights:  # untrained mappers: every CSLA code path runs (outputs are noise)
        pipe.use_mappers(random_mappers(seed, generator, clip, latent_avg).to(device), "random")
    # The checkpoints' and the float32 originals' memory is free now: back to the system (about
    # 0.9 GB, which the tuned allocator would otherwise keep for good).
    release_free_memory()
    return pipe


def use_cpu_precision(pipe: CSLAPipeline) -> None:
    """Store the models' weights once in the pipeline's precision, for the CPU's native
    kernels: the generator's convolutions channels-last (``Generator.prepare_synthesis``), the
    e4e encoder's style blocks stacked (``Encoder4Editing.prepare_heads``; its backbone stays
    float32) and CLIP cast whole. Fingerprints are taken first, from the weights as loaded, so
    mappers made in either precision belong to the same models.
    """
    dtype = PRECISIONS[pipe.precision]
    if dtype != torch.float32:
        pipe.fingerprints  # noqa: B018 - computed before the weights are rounded
    pipe.generator.prepare_synthesis(dtype)
    if pipe.precision == COMPACT_FP32:
        store_compact(pipe)
        return
    if pipe.encoder is not None:
        pipe.encoder.prepare_heads(dtype)
    if pipe.clip is not None and dtype != torch.float32:
        pipe.clip.cast(dtype)


def store_compact(pipe: CSLAPipeline) -> None:
    """fp32-compact: float32 maths everywhere, but the models that run once per photo or prompt
    keep their large weights in bf16, widened layer by layer as they run: the e4e encoder's
    style blocks (231 M weights) and CLIP (150 M). About 0.75 GB less memory; the
    generator, which makes every image and is tuned by "Refine likeness", stays exact."""
    pipe.fingerprints  # noqa: B018 - computed before the weights are rounded
    if pipe.encoder is not None:
        pipe.encoder.prepare_heads(torch.bfloat16, compute_dtype=torch.float32)
    if pipe.clip is not None:
        pipe.clip.store_narrow(torch.bfloat16)


def _models_from_files(
    paths: dict[str, str | os.PathLike | None],
    checkpoint_dir: str | os.PathLike | None,
    with_encoder: bool,
    with_clip: bool,
    allow_download: bool,
    device: torch.device,
) -> tuple[Generator, Encoder4Editing | None, torch.Tensor | None, object, dict[str, str]]:
    """(generator, encoder, latent_avg, CLIP, sources) read from the weight files."""
    folder = weights.checkpoint_dir(checkpoint_dir)
    wanted: dict[weights.WeightSpec, str | os.PathLike | None] = {}
    stylegan2_asked = paths["stylegan2"] is not None or bool(
        os.environ.get(weights.STYLEGAN2_FFHQ.env_var)
    )
    if stylegan2_asked:
        wanted[weights.STYLEGAN2_FFHQ] = paths["stylegan2"]
    if with_encoder or not stylegan2_asked:  # the e4e file also carries the generator
        wanted[weights.E4E_FFHQ] = paths["e4e"]
    if with_clip:
        wanted[weights.CLIP_VIT_B32] = paths["clip"]
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
        from .models.clip import ClipEmbedder

        clip = ClipEmbedder.from_pretrained(
            str(files[weights.CLIP_VIT_B32]), CLIP_MODEL_NAME, device=device
        )
        sources["clip"] = str(files[weights.CLIP_VIT_B32])
    return generator, encoder, latent_avg, clip, sources
