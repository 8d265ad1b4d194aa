"""Data-free calibration: usable CSLA mappers from the generator and CLIP alone, in minutes.

[ours] The recipe, chosen by measurement on the tiny models (README, "Calibration"):
1. A sample bank, rendered once with the trainer's own sampling: z -> W+ -> render at
   ``max_resolution`` -> CLIP image embedding. Saved chunk by chunk, so an interrupted run
   resumes where it stopped (a chunk is seconds of work).
2. A closed-form fit: ridge regression, with an intercept, from the standardised CLIP residual
   (the mapper's own centre and scale, set from the bank) to the standardised W+ residual, in
   float64, with the ridge strength chosen by exact leave-one-out error (one SVD). The S
   residual is linear in the W+ residual (the modulations are affine), so the S map is the W+
   map passed through the generator's W+ -> S residual map.
3. The linear map placed into the mapper MLPs exactly (``place_linear``), so the result is an
   ordinary mappers file that ``--mappers`` loads and training can continue from. The adaptive
   style mixing starts as the identity (self-modulation is zero-initialised; the gates weigh
   two equal estimates).
An MLP refinement on the bank was measured too and gained nothing over the fit.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import CSLAError
from ..models.clip import ClipEmbedder
from ..models.mappers import CSLAMappers, GroupMLP
from ..models.ops import ACTIVATION_GAIN
from ..models.stylegan2 import Generator
from ..pipeline import CSLAPipeline
from ..weights import (
    mappers_cache_dir,
    mappers_filename,
    model_fingerprint,
    models_meta,
    save_mappers,
)
from .config import TrainConfig
from .loop import initial_mappers
from .sampling import Autocast, Samples, aux_seed, sample_batch, sampling_options, seeded

BANK_DIR = "bank"
MAPPERS_FILE = "mappers.safetensors"
# Leave-one-out ridge strengths, relative to the bank size (lambda = rel * n).
RIDGE_GRID = tuple(10.0**k for k in range(-9, 2))


@dataclass
class CalibrationConfig:
    """What calibration renders and fits. ``mappers`` sets the architecture and sampling
    (a ``TrainConfig``: the same mappers training makes, so training can continue from them)."""

    n_samples: int = 1000  # bank size; about 10 min at full size on 2 CPU cores
    chunk: int = 16  # samples per saved bank file (what an interruption can lose)
    minutes: float | None = 9.0  # stop rendering when this is spent (keeps at least min_samples)
    min_samples: int = 64
    # False: when the time is spent, stop without fitting (CalibrationPaused); a later run
    # resumes the bank (ZeroGPU runs calibration in slices of a GPU slot this way).
    fit_partial: bool = True
    seed: int = 0
    margin: float = 4.0  # the placed map is exact for inputs within margin x the bank's range
    mappers: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def tiny(cls, **overrides: object) -> CalibrationConfig:
        """The tiny CPU models (tests, demos): 512 samples, 8 px renders."""
        return cls(**{"n_samples": 512, "chunk": 64, "mappers": TrainConfig.tiny(), **overrides})


class CalibrationPaused(Exception):
    """The time was spent before the bank was complete (``fit_partial=False``); the bank so
    far is saved and the next run resumes it."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"calibration paused at {done}/{total} samples")
        self.done, self.total = done, total


@dataclass
class CalibrationResult:
    mappers: CSLAMappers
    path: Path
    n_samples: int
    loo_ratio_w: float  # leave-one-out W+ error over the trivial predictor's (below 1: useful)
    ridge: float  # the chosen ridge strength (relative to the bank size)
    seconds: dict[str, float]  # "bank", "fit"
    samples_per_s: float


Progress = Callable[[int, int], None]  # (samples in the bank, samples wanted)


def calibrate(
    generator: Generator,
    clip: ClipEmbedder,
    config: CalibrationConfig | None = None,
    *,
    output_dir: str | Path,
    progress: Progress | None = None,
    between_chunks: Callable[[], None] | None = None,
    show_bar: bool = True,
    fingerprints: dict[str, str] | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> CalibrationResult:
    """Calibrate mappers for ``generator`` and ``clip``; writes ``output_dir/mappers.safetensors``.

    A rerun with the same ``output_dir`` and config reuses the bank already saved there.
    ``between_chunks`` runs after each bank chunk (the app yields to requests there).
    ``autocast``: the context the bank is rendered in (``calibrate_pipeline`` passes the
    pipeline's, so a GPU pipeline in fp16 or bf16 renders its bank in it).
    """
    cfg = config or CalibrationConfig()
    out = Path(output_dir)
    device = generator.input.input.device
    train_cfg = replace(cfg.mappers, seed=cfg.seed)
    mappers, latent_avg, styles_fn = initial_mappers(generator, clip, train_cfg, device, None)
    started = time.perf_counter()
    bank = render_bank(
        generator, clip, cfg, train_cfg, latent_avg, out / BANK_DIR, progress, between_chunks,
        show_bar, autocast,
    )  # fmt: skip
    bank_s = time.perf_counter() - started
    started = time.perf_counter()
    mappers.centre.update(bank.features)  # the first update sets the running mean and variance
    x = mappers.centre.standardise(bank.features)
    w_scale = mappers.w_mapper.w_scale
    dw = ((bank.wplus - latent_avg[None]) / w_scale).flatten(1)
    fit = fit_ridge(x, dw)
    b_w, c_w = fit.weight, fit.bias  # [clip_dim, n_latent * D], [n_latent * D]
    s_rows = None
    if mappers.s_mapper is not None:
        # S of the predicted W+ residual: x @ (S of each row of b_w) + S of the bias.
        rows = torch.cat([b_w, c_w[None]]).view(-1, *w_scale.shape) * w_scale
        s_rows = styles_fn(rows) / mappers.s_mapper.s_scale
    place_mappers(mappers, b_w, c_w, s_rows, x, cfg.margin)
    mappers.config.meta.update(
        trainer="csla_core.training.calibrate",
        samples=str(len(x)),
        **models_meta(
            fingerprints
            or {"generator": model_fingerprint(generator), "clip": model_fingerprint(clip)}
        ),
    )
    fit_s = time.perf_counter() - started
    path = save_mappers(mappers.eval(), out / MAPPERS_FILE)
    return CalibrationResult(
        mappers=mappers,
        path=path,
        n_samples=len(x),
        loo_ratio_w=fit.loo_ratio,
        ridge=fit.ridge,
        seconds={"bank": bank_s, "fit": fit_s},
        samples_per_s=len(x) / bank_s if bank_s > 0 else math.inf,
    )


@torch.no_grad()
def render_bank(
    generator: Generator,
    clip: ClipEmbedder,
    cfg: CalibrationConfig,
    train_cfg: TrainConfig,
    latent_avg: torch.Tensor,
    folder: Path,
    progress: Progress | None = None,
    between_chunks: Callable[[], None] | None = None,
    show_bar: bool = True,
    autocast: Autocast = contextlib.nullcontext,
) -> Samples:
    """The bank, chunk by chunk: chunks already in ``folder`` are read, the rest rendered and
    saved as they are made. Chunk i always holds the same samples (its own seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_chunks = math.ceil(cfg.n_samples / cfg.chunk)
    deadline = None if cfg.minutes is None else time.monotonic() + 60 * cfg.minutes
    parts: list[Samples] = []
    done = rendered = 0
    bar = tqdm(total=cfg.n_samples, desc="csla calibrate", unit="sample", disable=not show_bar)
    for i in range(n_chunks):
        size = min(cfg.chunk, cfg.n_samples - i * cfg.chunk)
        path = folder / f"chunk_{i:05d}_{size}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            part = Samples(saved["wplus"], saved["features"])
        else:
            if deadline is not None and time.monotonic() > deadline:
                if not cfg.fit_partial:
                    if rendered:  # each run renders at least one chunk
                        bar.close()
                        raise CalibrationPaused(done, cfg.n_samples)
                elif done >= cfg.min_samples:
                    break  # the time budget is spent: fit on what there is
            part = sample_batch(
                generator,
                clip,
                size,
                seeded(aux_seed(cfg.seed, 100 + i)),
                latent_avg=latent_avg[:1],
                autocast=autocast,
                **sampling_options(train_cfg),  # type: ignore[arg-type]
            )
            part = Samples(part.wplus.cpu(), part.features.cpu())
            rendered += 1
            partial = path.with_suffix(".tmp")
            torch.save({"wplus": part.wplus, "features": part.features}, partial)
            partial.replace(path)  # a killed run never leaves a half-written chunk behind
        parts.append(part)
        done += size
        bar.update(size)
        if progress is not None:
            progress(done, cfg.n_samples)
        if between_chunks is not None:
            between_chunks()
    bar.close()
    return Samples(
        torch.cat([p.wplus for p in parts]).to(latent_avg.device),
        torch.cat([p.features for p in parts]).to(latent_avg.device),
    )


@dataclass(frozen=True)
class RidgeFit:
    weight: torch.Tensor  # [in, out]
    bias: torch.Tensor  # [out]
    ridge: float  # lambda / n
    loo_ratio: float  # leave-one-out mean squared error over the targets' variance


def fit_ridge(x: torch.Tensor, y: torch.Tensor, grid: tuple[float, ...] = RIDGE_GRID) -> RidgeFit:
    """Ridge regression y ~ x @ W + b (float64), lambda chosen by exact leave-one-out error.

    With the SVD x - mean = U S V^T and d = S^2 / (S^2 + lambda), the fit's hat matrix is
    U diag(d) U^T + 1/n and the leave-one-out residual of sample i is r_i / (1 - h_i); its
    squared norm is expanded so that no [n, out] residual is formed per lambda.
    """
    x, y = x.detach().double(), y.detach().double()
    n = x.shape[0]
    x_mean, y_mean = x.mean(0), y.mean(0)
    yc = y - y_mean
    u, s, vt = torch.linalg.svd(x - x_mean, full_matrices=False)
    uty = u.T @ yc  # [k, out]
    y_sq = yc.pow(2).sum(1)  # [n]
    q = yc @ uty.T  # [n, k]
    m = uty @ uty.T  # [k, k]
    best: tuple[float, float] | None = None
    for rel in grid:
        lam = rel * n
        d = s * s / (s * s + lam)
        h = (u * u) @ d + 1.0 / n
        if float(h.max()) > 1 - 1e-6:  # (near-)interpolation: leave-one-out is meaningless
            continue
        ud = u * d
        resid = y_sq - 2 * (ud * q).sum(1) + ((ud @ m) * ud).sum(1)
        loo = float((resid.clamp_min(0) / (1 - h).pow(2)).mean())
        if math.isfinite(loo) and (best is None or loo < best[1]):
            best = (lam, loo)
    if best is None:
        raise ValueError(f"cannot fit: the bank ({n} samples) is too small for its features")
    lam, loo = best
    inv = torch.where(s > 1e-9 * s.max(), s / (s * s + lam), torch.zeros_like(s))
    weight = vt.T @ (inv[:, None] * uty)
    variance = float(y_sq.mean())
    return RidgeFit(
        weight.float(),
        (y_mean - x_mean @ weight).float(),
        lam / n,
        loo / variance if variance > 0 else 0.0,
    )


@torch.no_grad()
def place_mappers(
    mappers: CSLAMappers,
    w_weight: torch.Tensor,
    w_bias: torch.Tensor,
    s_rows: torch.Tensor | None,
    x_bank: torch.Tensor,
    margin: float,
) -> None:
    """Each level group's MLP computes its slice of the linear W+ map, and of the S map
    (``s_rows``: its weight rows, then its bias as the last row)."""
    offset = margin * float(x_bank.abs().max()) + 1.0
    dim = mappers.config.style_dim
    for (a, b), net in zip(mappers.w_mapper.groups, mappers.w_mapper.nets):
        cols = slice(a * dim, b * dim)
        place_linear(net, w_weight[:, cols], w_bias[cols], offset)
    if mappers.s_mapper is None or s_rows is None:
        return
    start = 0
    for size, net in zip(mappers.s_mapper.sizes, mappers.s_mapper.nets):
        cols = slice(start, start + size)
        place_linear(net, s_rows[:-1, cols], s_rows[-1, cols], offset)
        start += size


@torch.no_grad()
def place_linear(mlp: GroupMLP, weight: torch.Tensor, bias: torch.Tensor, offset: float) -> None:
    """Make ``mlp`` compute x @ weight + bias exactly for |x| < ``offset``.

    The first layer computes x + offset, which stays in the leaky ReLU's identity region; the
    hidden layers pass it on (undoing the activation gain); the last layer applies the map and
    removes the offset. Needs depth >= 2 and hidden >= in (the defaults: 4 and 512 = CLIP's 512).
    """
    layers = [layer for layer in mlp.net if hasattr(layer, "weight")]
    d_in, hidden = layers[0].weight.shape[1], layers[0].weight.shape[0]
    if len(layers) < 2 or hidden < d_in:
        raise ValueError(f"place_linear needs depth >= 2 and hidden >= {d_in}, got {hidden}")
    gain = ACTIVATION_GAIN

    def set_layer(layer, w_eff: torch.Tensor, b_eff: torch.Tensor) -> None:
        layer.weight.copy_(w_eff / layer.scale)  # EqualLinear scales at run time
        layer.bias.copy_(b_eff / layer.lr_mul)

    identity = torch.zeros(hidden, d_in)
    identity[:d_in] = torch.eye(d_in)
    first_bias = torch.zeros(hidden)
    first_bias[:d_in] = offset
    set_layer(layers[0], identity, first_bias)
    passing = torch.zeros(hidden, hidden)
    passing[:d_in, :d_in] = torch.eye(d_in) / gain
    for layer in layers[1:-1]:
        set_layer(layer, passing, torch.zeros(hidden))
    readout = torch.zeros(weight.shape[1], hidden)
    readout[:, :d_in] = weight.T / gain
    set_layer(layers[-1], readout, bias - offset * weight.sum(0))


def calibrate_pipeline(
    pipe: CSLAPipeline,
    config: CalibrationConfig | None = None,
    *,
    output_dir: str | Path | None = None,
    progress: Progress | None = None,
    between_chunks: Callable[[], None] | None = None,
    show_bar: bool = True,
) -> CalibrationResult:
    """Calibrate mappers for a loaded pipeline's generator and CLIP and edit with them from now
    on. Without ``output_dir`` they are kept where ``load_pipeline`` finds them at the next
    start: the user's cache, named by the models' fingerprints (the bank beside them, so an
    interrupted calibration resumes)."""
    if pipe.clip is None:
        raise CSLAError("calibration needs CLIP: load the pipeline with with_clip=True")
    name = mappers_filename(pipe.fingerprints)
    work = Path(output_dir) if output_dir else mappers_cache_dir() / Path(name).stem
    result = calibrate(
        pipe.generator, pipe.clip, config, output_dir=work, progress=progress,
        between_chunks=between_chunks, show_bar=show_bar, fingerprints=pipe.fingerprints,
        autocast=pipe.autocast,
    )  # fmt: skip
    path = result.path
    if output_dir is None:  # the file load_pipeline looks for; written whole, then renamed
        path = mappers_cache_dir() / name
        partial = path.with_name(path.name + ".partial")
        shutil.copyfile(result.path, partial)
        partial.replace(path)
        result = replace(result, path=path)
    pipe.use_mappers(result.mappers.to(pipe.device), str(path))
    return result
