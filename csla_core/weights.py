"""Where every weight file comes from, and how it is read safely.

Resolution order for each file (first hit wins):
1. an explicit path given by argument;
2. an environment variable (``CSLA_E4E``, ``CSLA_STYLEGAN2``, ``CSLA_CLIP``, ``CSLA_MAPPERS``);
3. the checkpoint folder (argument, else ``CSLA_CHECKPOINT_DIR``, else ``./checkpoints``);
4. the Hugging Face hub cache (e.g. filled by a Space's ``preload_from_hub``);
5. a download from the pinned hub repo and revision, unless offline (``HF_HUB_OFFLINE=1``
   or ``allow_download=False``).
Nothing is ever downloaded at import. Files with a known size and sha256 are checked before
use; checkpoints are read with ``torch.load(weights_only=True)`` (no code execution). CSLA
mapper files are written and read here too (``save_mappers`` / ``load_mappers``: safetensors
with the config in the metadata), so the model modules do no file I/O.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import WeightsError
from .models.mappers import CSLAMappers, MapperConfig

logger = logging.getLogger(__name__)
DEFAULT_CHECKPOINT_DIR = Path("checkpoints")


@dataclass(frozen=True)
class HubFile:
    """A file pinned to one revision of a hub repository."""

    repo_id: str
    filename: str
    revision: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/{self.revision}/{self.filename}"


@dataclass(frozen=True)
class WeightSpec:
    """One weight file the product can use."""

    key: str
    filename: str
    description: str
    env_var: str
    hub: HubFile | None = None
    size: int | None = None
    sha256: str | None = None
    required: bool = True


E4E_FFHQ = WeightSpec(
    key="e4e",
    filename="e4e_ffhq_encode.pt",
    description="e4e FFHQ encoder + StyleGAN2 FFHQ-1024 generator + latent_avg (one file)",
    env_var="CSLA_E4E",
    hub=HubFile(
        "public-data/e4e", "e4e_ffhq_encode.pt", "fdd18714fc6b639487adbd901f16f67eb24ba786"
    ),
    size=1_201_649_680,
    sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
)

# Optional: a rosinality-format generator, for generator-only use (no official hub copy pinned).
STYLEGAN2_FFHQ = WeightSpec(
    key="stylegan2",
    filename="stylegan2-ffhq-config-f.pt",
    description="StyleGAN2 FFHQ-1024 generator, rosinality format {'g_ema', 'latent_avg'} (optional)",
    env_var="CSLA_STYLEGAN2",
    required=False,
)

# OpenAI's CLIP ViT-B/32 in open_clip format; used with the 'ViT-B-32-quickgelu' architecture,
# whose QuickGELU activation is what reproduces OpenAI's embeddings.
CLIP_VIT_B32 = WeightSpec(
    key="clip",
    filename="open_clip_vit_b32_openai.safetensors",
    description="CLIP ViT-B/32 (OpenAI weights, open_clip format) for 'ViT-B-32-quickgelu'",
    env_var="CSLA_CLIP",
    hub=HubFile(
        "timm/vit_base_patch32_clip_224.openai",
        "open_clip_model.safetensors",
        "ab5b8ef490e86faa07d3523926b842c765de1de5",
    ),
)

CSLA_MAPPERS = WeightSpec(
    key="mappers",
    filename="csla_mappers.safetensors",
    description="trained CSLA mappers (safetensors + JSON config); without them edits use the "
    "slower CLIP-guided optimisation baseline",
    env_var="CSLA_MAPPERS",
    required=False,
)

ALL_SPECS = (E4E_FFHQ, CLIP_VIT_B32, STYLEGAN2_FFHQ, CSLA_MAPPERS)


def checkpoint_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("CSLA_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def how_to_get(spec: WeightSpec, directory: Path) -> str:
    """One paragraph telling a user what the file is and how to provide it."""
    lines = [f"- {spec.filename}: {spec.description}"]
    if spec.hub is not None:
        lines.append(f"    download: python -m csla_core download --only {spec.key}")
        lines.append(f"    or by hand from {spec.hub.url}")
    lines.append(f"    put it in {directory.resolve()}/ or point {spec.env_var} at it")
    return "\n".join(lines)


def missing_weights_error(specs: list[WeightSpec], directory: Path, reason: str) -> WeightsError:
    body = "\n".join(how_to_get(spec, directory) for spec in specs)
    return WeightsError(
        f"Model weights not found ({reason}).\n{body}\n"
        "For development without weights, use random-weights mode "
        "(load_pipeline(random_weights=True) or --random-weights)."
    )


# ---------------------------------------------------------------------- integrity
_VERIFIED: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None when it is).

    A safetensors file is an 8-byte header length, a JSON header giving every tensor's byte range,
    then the data: a file cut short (an interrupted copy) is shorter than its header says.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, 100 << 20):
                return f"its header claims {length:,} bytes but the file has {size:,}"
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (struct.error, ValueError, TypeError, KeyError, IndexError) as exc:
        return f"its header cannot be read ({type(exc).__name__})"
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"it has {size:,} bytes where its header describes {expected:,}"
    return None


# Tests only: the sha256 of one file to accept in place of a pinned one (random values in the
# real format, for an offline start). It names that file's exact content, so it can never let
# another file through, and an accepted file is logged.
UNPINNED_SHA256_ENV = "CSLA_TEST_ACCEPT_SHA256"


def _accepted_for_tests(path: Path, spec: WeightSpec) -> bool:
    wanted = os.environ.get(UNPINNED_SHA256_ENV, "").strip().lower()
    if not wanted or (spec.size is None and spec.sha256 is None):
        return False
    if sha256_of(path) != wanted:
        return False
    logger.warning(
        "%s is not the pinned %s: accepted because %s names it (tests only)",
        path,
        spec.filename,
        UNPINNED_SHA256_ENV,
    )
    return True


def verify_file(path: Path, spec: WeightSpec) -> None:
    """Check size and sha256 where the spec knows them, and that a safetensors file is whole;
    memoised per (path, size, mtime)."""
    stat = path.stat()
    if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
        raise WeightsError(
            f"{path} is incomplete or corrupt ({problem}). Delete it and run "
            f"`python -m csla_core download --only {spec.key}`."
        )
    wrong_size = spec.size is not None and stat.st_size != spec.size
    if wrong_size and _accepted_for_tests(path, spec):
        return
    if spec.size is not None and stat.st_size != spec.size:
        raise WeightsError(
            f"{path} has {stat.st_size:,} bytes, expected {spec.size:,} for {spec.filename}: "
            "the file is incomplete or a different file. Delete it and run "
            f"`python -m csla_core download --only {spec.key}`."
        )
    if spec.sha256 is None:
        return
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(memo_key) == spec.sha256:
        return
    actual = sha256_of(path)
    if actual != spec.sha256 and not _accepted_for_tests(path, spec):
        raise WeightsError(
            f"{path} failed its checksum (sha256 {actual[:16]}..., expected {spec.sha256[:16]}...): "
            "it is corrupt or a different file. Delete it and run "
            f"`python -m csla_core download --only {spec.key}`."
        )
    _VERIFIED[memo_key] = spec.sha256


# ---------------------------------------------------------------------- resolution
def _from_hub_cache(spec: WeightSpec) -> Path | None:
    if spec.hub is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.hub.repo_id, spec.hub.filename, revision=spec.hub.revision)
    return Path(cached) if isinstance(cached, str) else None


def download(spec: WeightSpec, *, force: bool = False, local_dir: Path | None = None) -> Path:
    """Fetch a pinned file from the hub (with huggingface_hub's progress bar), then verify it.

    huggingface_hub writes to a uniquely named ``.incomplete`` file and renames it only when
    complete, so an interrupted download never leaves a truncated file that looks finished; the
    next call starts it again. A bad copy (wrong size, hash, or a cut-off safetensors file) is
    fetched once more from scratch, then reported.

    ``local_dir`` (``download --to DIR``): the file ends up as ``DIR/<spec.filename>``, the name
    the checkpoint folder is searched for (renamed in the same folder: atomic). A verified file
    already there is kept.
    """
    if spec.hub is None:
        raise WeightsError(f"{spec.filename} has no pinned download source; provide it by hand.")
    target = Path(local_dir) / spec.filename if local_dir is not None else None
    if target is not None and target.is_file() and not force:
        try:
            verify_file(target, spec)
            return target
        except WeightsError:
            pass  # incomplete or another file: downloaded again below
    from huggingface_hub import hf_hub_download

    def fetch(force_download: bool) -> Path:
        try:
            return Path(
                hf_hub_download(
                    spec.hub.repo_id,
                    spec.hub.filename,
                    revision=spec.hub.revision,
                    force_download=force_download,
                    local_dir=local_dir,
                )
            )
        except Exception as exc:  # network, auth, offline mode: all mean "could not download"
            raise WeightsError(
                f"Could not download {spec.hub.filename} from {spec.hub.url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    path = fetch(force)
    try:
        verify_file(path, spec)
    except WeightsError:
        if force:
            raise
        # A bad copy in the cache (cut-off transfer, proxy page): fetch it once more from scratch.
        path = fetch(True)
        verify_file(path, spec)
    if target is not None and path.resolve() != target.resolve():
        os.replace(path, target)  # the hub's name -> ours, in the same folder
        path = target
    return path


@dataclass(frozen=True)
class LocalFile:
    path: Path
    origin: str  # "argument", "environment", "checkpoint folder" or "hub cache"

    @property
    def chosen_by_user(self) -> bool:
        """A file the user named explicitly may be their own variant: not held to our hash."""
        return self.origin in ("argument", "environment")


def find_local(
    spec: WeightSpec, *, path: str | os.PathLike | None = None, directory: Path | None = None
) -> LocalFile | None:
    """Steps 1-4 of the resolution order; None when the file is nowhere local."""
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsError(f"{spec.filename}: the given path {explicit} does not exist.")
        return LocalFile(explicit, "argument")
    env = os.environ.get(spec.env_var)
    if env:
        from_env = Path(env).expanduser()
        if not from_env.is_file():
            raise WeightsError(f"{spec.env_var}={env} does not point to a file ({spec.filename}).")
        return LocalFile(from_env, "environment")
    local = checkpoint_dir(directory) / spec.filename
    if local.is_file():
        return LocalFile(local, "checkpoint folder")
    cached = _from_hub_cache(spec)
    return LocalFile(cached, "hub cache") if cached is not None else None


def offline_reason(specs: list[WeightSpec], allow_download: bool) -> str:
    """Why these missing files cannot be downloaded now ("" when they can)."""
    if hub_offline():
        return "offline: HF_HUB_OFFLINE is set"
    if not allow_download:
        return "downloads disabled"
    if any(spec.hub is None for spec in specs):
        return "no download source for " + ", ".join(s.filename for s in specs if s.hub is None)
    return ""


def resolve_many(
    wanted: Mapping[WeightSpec, str | os.PathLike | None],
    *,
    directory: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> dict[WeightSpec, Path]:
    """Verified local paths for several files (spec -> explicit path or None).

    When some are missing and cannot be downloaded, one error names all of them, so a user
    fixes everything in one go. Files found in the checkpoint folder or the hub cache are
    checked against the pinned size and sha256; files the user names explicitly are not.
    """
    folder = checkpoint_dir(directory)
    found = {spec: find_local(spec, path=path, directory=folder) for spec, path in wanted.items()}
    missing = [spec for spec, local in found.items() if local is None]
    reason = offline_reason(missing, allow_download) if missing else ""
    if reason:
        raise missing_weights_error(missing, folder, reason)
    resolved = {}
    failed: dict[WeightSpec, WeightsError] = {}
    for spec, local in found.items():
        if local is None:
            try:
                resolved[spec] = download(spec)
            except WeightsError as exc:  # keep going: the message should name every file
                failed[spec] = exc
            continue
        if not local.chosen_by_user:
            verify_file(local.path, spec)
        resolved[spec] = local.path
    if failed:
        first = next(iter(failed.values()))
        raise missing_weights_error(list(failed), folder, f"download failed: {first}")
    return resolved


def resolve(
    spec: WeightSpec,
    *,
    path: str | os.PathLike | None = None,
    directory: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> Path:
    """A verified local path to ``spec``'s file, downloading it only when allowed and needed."""
    return resolve_many({spec: path}, directory=directory, allow_download=allow_download)[spec]


# ---------------------------------------------------------------------- reading checkpoints
def _unreadable(path: Path, exc: BaseException) -> WeightsError:
    detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "no detail"
    return WeightsError(
        f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {detail}). It may "
        "be truncated or another kind of file; delete it and download it again."
    )


def load_checkpoint(path: str | os.PathLike) -> Mapping:
    """Read a PyTorch checkpoint safely: plain tensors and containers only, never code."""
    path = Path(path)
    # Memory-map zip checkpoints: tensors are paged in as they are copied into the model,
    # instead of holding a second full copy of a 1.2 GB file in memory.
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # garbage bytes, not a request to build objects
            raise _unreadable(path, exc) from exc
        raise WeightsError(
            f"Refused to load {path}: it is not a plain weights file (it asks to run code or "
            f"build objects: {str(exc).splitlines()[0][:200]}). Only tensors and plain containers "
            "are accepted; re-download the file from its official source."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary.")
    return obj


@dataclass
class E4ECheckpoint:
    encoder_state: dict[str, torch.Tensor]
    generator_state: dict[str, torch.Tensor]
    latent_avg: torch.Tensor  # [n_latent, 512]
    opts: dict


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_e4e_checkpoint(path: str | os.PathLike) -> E4ECheckpoint:
    """e4e format: {'state_dict': encoder.* + decoder.*, 'latent_avg': [18, 512], 'opts': dict}."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{path} is not an e4e checkpoint: expected a 'state_dict' entry, found keys "
            f"{sorted(ckpt)[:8]}."
        )
    encoder_state = _strip_prefix(state, "encoder.")
    generator_state = _strip_prefix(state, "decoder.")
    latent_avg = ckpt.get("latent_avg")
    if not encoder_state or not generator_state or not isinstance(latent_avg, torch.Tensor):
        raise WeightsError(
            f"{path} is not an e4e checkpoint: it needs encoder.* and decoder.* weights and a "
            f"latent_avg tensor (found {len(encoder_state)} encoder keys, {len(generator_state)} "
            f"decoder keys, latent_avg={'present' if latent_avg is not None else 'missing'})."
        )
    opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), Mapping) else {}
    return E4ECheckpoint(encoder_state, generator_state, latent_avg, dict(opts))


def read_stylegan2_checkpoint(path: str | os.PathLike) -> tuple[dict, torch.Tensor | None]:
    """rosinality format: {'g_ema': state_dict, 'latent_avg'?: [512]} -> (state, latent_avg)."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("g_ema")
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{path} is not a rosinality StyleGAN2 checkpoint: no 'g_ema' entry (keys: "
            f"{sorted(ckpt)[:8]})."
        )
    latent_avg = ckpt.get("latent_avg")
    return dict(state), latent_avg if isinstance(latent_avg, torch.Tensor) else None


def generator_config_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """Infer size, style_dim, n_mlp and channel_multiplier from a generator state dict."""
    try:
        n_mlp = sum(1 for k in state if k.startswith("style.") and k.endswith(".weight"))
        style_dim = state["style.1.weight"].shape[0]
        n_to_rgbs = sum(1 for k in state if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
        size = 2 ** (n_to_rgbs + 2)
        # Channels at 64 px are 256 * channel_multiplier (the first to_rgbs entry past 32 px).
        if size >= 64:
            channel_multiplier = state["convs.6.conv.weight"].shape[1] // 256
        else:
            channel_multiplier = 2
    except (KeyError, IndexError) as exc:
        raise WeightsError(f"not a StyleGAN2 generator state dict (missing {exc}).") from exc
    if not 8 <= size <= 4096:
        raise WeightsError(f"not a StyleGAN2 generator state dict (it implies {size} px images).")
    return {
        "size": size,
        "style_dim": style_dim,
        "n_mlp": n_mlp,
        "channel_multiplier": channel_multiplier,
    }


def load_state_strict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str
) -> None:
    """``load_state_dict(strict=True)`` with a readable error naming the mismatching keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise WeightsError(f"The {what} weights do not fit the model: {'; '.join(detail)}.")
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------- model fingerprints
def model_fingerprint(module: torch.nn.Module) -> str:
    """A content hash of a model's weights (SHA-256 of every parameter and buffer, by name,
    dtype and shape): mappers record the generator and CLIP they were made for with it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # Bytes without a copy (0-d tensors and bool/bfloat16 need the flat uint8 view).
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# Mapper metadata keys holding the fingerprints of the models the mappers were made for.
MAPPER_MODEL_KEYS = {"generator": "generator_sha256", "clip": "clip_sha256"}


def models_meta(fingerprints: Mapping[str, str]) -> dict[str, str]:
    """The mapper metadata that records which models they are made for."""
    return {key: fingerprints[role] for role, key in MAPPER_MODEL_KEYS.items()}


def mappers_cache_dir() -> Path:
    """Where mappers made on this machine are kept (``CSLA_CACHE``, default ~/.cache/csla)."""
    root = os.environ.get("CSLA_CACHE") or Path.home() / ".cache" / "csla"
    return Path(root).expanduser() / "mappers"


def mappers_filename(fingerprints: Mapping[str, str]) -> str:
    """The file name of mappers made for these models: found again at the next start."""
    return (
        f"csla_mappers-g{fingerprints['generator'][:12]}-c{fingerprints['clip'][:12]}.safetensors"
    )


def mappers_for_models(fingerprints: Mapping[str, str], directory: Path) -> Path | None:
    """Mappers made for these models in the checkpoint folder or the user's cache, if any."""
    name = mappers_filename(fingerprints)
    for folder in (checkpoint_dir(directory), mappers_cache_dir()):
        if (folder / name).is_file():
            return folder / name
    return None


def check_mappers_models(
    meta: Mapping[str, str], fingerprints: Mapping[str, str], path: os.PathLike | str
) -> bool:
    """Refuse mappers made for other models (WeightsError naming both). False when the file
    records no models (made before they were recorded): it is used as it is."""
    recorded = {role: meta.get(key) for role, key in MAPPER_MODEL_KEYS.items()}
    if not all(recorded.values()):
        return False
    wrong = [role for role, value in recorded.items() if value != fingerprints.get(role)]
    if wrong:
        made = ", ".join(f"{r} {recorded[r][:12]}" for r in MAPPER_MODEL_KEYS)
        loaded = ", ".join(f"{r} {fingerprints[r][:12]}" for r in MAPPER_MODEL_KEYS)
        raise WeightsError(
            f"The CSLA mappers in {path} were made for other models ({made}) than the ones "
            f"loaded ({loaded}). Make mappers for these models with `python -m csla_core "
            "calibrate`, or give the matching mappers with --mappers."
        )
    return True


# The "format" metadata entry of a mappers file (its config is the "csla_config" entry).
MAPPERS_FORMAT_TAG = "csla-mappers-v1"


def save_mappers(mappers: CSLAMappers, path: str | os.PathLike) -> Path:
    """Write ``mappers`` to ``path`` (.safetensors, config in its metadata) and a sidecar
    ``.json`` with the config; returns the path written."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in mappers.state_dict().items()}
    config = mappers.config.to_json()
    save_file(tensors, str(path), metadata={"format": MAPPERS_FORMAT_TAG, "csla_config": config})
    path.with_suffix(".json").write_text(json.dumps(json.loads(config), indent=2) + "\n")
    return path


def load_mappers(path: str | os.PathLike, device: str | torch.device = "cpu") -> CSLAMappers:
    """Mappers from a file written by ``save_mappers`` (or a folder holding
    ``mappers.safetensors``), in eval mode on ``device``. Never unpickles anything."""
    path = Path(path)
    if path.is_dir():
        path = path / "mappers.safetensors"
    if not path.is_file():
        raise WeightsError(f"no CSLA mapper file at {path}; train one with `train` first")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != MAPPERS_FORMAT_TAG or "csla_config" not in meta:
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise WeightsError(f"{path} has no CSLA mapper config (metadata or .json)")
        config = MapperConfig.from_json(sidecar.read_text())
    else:
        config = MapperConfig.from_json(meta["csla_config"])
    model = CSLAMappers(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match its config: {exc}") from exc
    return model.to(device).eval()


# ---------------------------------------------------------------------- shipped edit directions
DATA_DIR = Path(__file__).resolve().parent / "data"
# Published InterFaceGAN directions in FFHQ StyleGAN2's W (data/NOTICE.md): name -> file.
REFERENCE_DIRECTIONS = {"smile": "interfacegan_smile.pt", "age": "interfacegan_age.pt"}


def read_reference_direction(name: str) -> torch.Tensor:
    """A shipped W-space edit direction [512], unit norm (``REFERENCE_DIRECTIONS``)."""
    tensor = torch.load(
        DATA_DIR / REFERENCE_DIRECTIONS[name], map_location="cpu", weights_only=True
    )
    return tensor.reshape(-1).float()
