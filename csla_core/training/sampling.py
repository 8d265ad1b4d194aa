"""Data-free training samples: z -> W+ -> render -> CLIP image embedding, all seeded.

[paper] No dataset: the generator samples its own images and CLIP's image encoder embeds them.
[ours] z ~ N(0, I) is drawn on the CPU from a seeded generator (so a run, a resumed run and
every device see the same data) -> w (optional truncation towards w_avg, optional style mixing
into W+) -> image rendered at ``max_resolution`` (CLIP only needs 224 px, so 256 instead of
1024 saves ~90% of the synthesis) -> CLIP embedding. Also here: the optional replay pool, the
cache of rendered sample sets shared by runs, the timer behind ``samples_per_s``, and the
held-out error of a mapper on fresh samples.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..models.clip import ClipEmbedder
from ..models.mappers import CSLAMappers, flatten_styles
from ..models.stylegan2 import Generator
from .config import TrainConfig


class Samples(NamedTuple):
    wplus: torch.Tensor  # [B, n_latent, D]
    features: torch.Tensor  # [B, clip_dim], normalised CLIP image embeddings


# Rendered sample sets keyed by everything that decides them (see ``train``'s sample_cache).
SampleCache = dict[tuple, "Samples"]
# The precision context the renders and CLIP run in: ``CSLAPipeline.autocast`` or accelerate's
# (autocast in fp16 or bf16 on a GPU). The mapping network stays outside it, so the W+ codes,
# the mappers' regression targets, are float32 whatever it is.
Autocast = Callable[[], AbstractContextManager]


def seeded(seed: int) -> torch.Generator:
    """A CPU random generator seeded with ``seed`` (any int: reduced into torch's range)."""
    return torch.Generator().manual_seed(seed % (2**63))


def aux_seed(seed: int, purpose: int) -> int:
    """Seeds for w_avg, scales, pool, ...: far from the per-step seeds (seed * 1e6 + step)."""
    return 2**48 + seed * 1000 + purpose


@torch.no_grad()
def sample_latents(
    generator: Generator,
    n: int,
    rng: torch.Generator,
    *,
    truncation: float = 1.0,
    latent_avg: torch.Tensor | None = None,
    mix_prob: float = 0.0,
) -> torch.Tensor:
    """z -> W+ [n, n_latent, D] with optional truncation and style mixing (z drawn on CPU)."""
    device = generator.input.input.device
    z = torch.randn(n, generator.style_dim, generator=rng).to(device)
    w = generator.mapping(z)
    if truncation != 1.0:
        if latent_avg is None:
            raise ValueError("truncation needs latent_avg")
        w = latent_avg[:1] + truncation * (w - latent_avg[:1])
    wplus = generator.to_wplus(w).clone()
    if mix_prob > 0:
        mix = torch.rand(n, generator=rng) < mix_prob
        if bool(mix.any()):
            w2 = generator.mapping(torch.randn(n, generator.style_dim, generator=rng).to(device))
            if truncation != 1.0:
                w2 = latent_avg[:1] + truncation * (w2 - latent_avg[:1])  # type: ignore[index]
            cut = torch.randint(1, generator.n_latent, (n,), generator=rng)
            rows = torch.arange(generator.n_latent)[None] >= cut[:, None]
            sel = (rows & mix[:, None]).to(device)
            wplus = torch.where(sel[..., None], w2[:, None], wplus)
    return wplus


@torch.no_grad()
def render_features(
    generator: Generator,
    clip: ClipEmbedder,
    wplus: torch.Tensor,
    *,
    max_resolution: int | None,
    noise_mode: str = "const",
    chunk: int = 64,
) -> torch.Tensor:
    """W+ -> CLIP image embeddings of the renders (no grad), in chunks."""
    out = []
    for part in wplus.split(chunk):
        img = generator(part, noise_mode=noise_mode, max_resolution=max_resolution)  # type: ignore[arg-type]
        out.append(clip.encode_images(img))
    return torch.cat(out)


def sample_batch(
    generator: Generator,
    clip: ClipEmbedder,
    n: int,
    rng: torch.Generator,
    *,
    latent_avg: torch.Tensor,
    truncation: float = 1.0,
    mix_prob: float = 0.0,
    max_resolution: int | None = 256,
    noise_mode: str = "const",
    autocast: Autocast = contextlib.nullcontext,
) -> Samples:
    """One batch of data-free training samples: W+ codes and their renders' CLIP embeddings
    (float32; the renders in the ``autocast`` context)."""
    wplus = sample_latents(
        generator, n, rng, truncation=truncation, latent_avg=latent_avg, mix_prob=mix_prob
    )
    with autocast():
        feats = render_features(
            generator, clip, wplus, max_resolution=max_resolution, noise_mode=noise_mode
        )
    return Samples(wplus, feats.float())


def sampling_options(cfg: TrainConfig) -> dict[str, object]:
    """The ``sample_batch`` keyword arguments a training config decides, so every caller
    (training, calibration, evaluation) samples exactly as training does."""
    return {
        "truncation": cfg.truncation,
        "mix_prob": cfg.mix_prob,
        "max_resolution": cfg.max_resolution,
        "noise_mode": cfg.noise_mode,
    }


def styles_residual_fn(
    generator: Generator, latent_avg: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """W+ residual [B, n_latent, D] -> flat S residual [B, C]: the regression targets of the
    S mapper, computed from the W+ residual alone."""
    # The modulation layers are affine, so the S residual of a W+ residual is linear in it:
    # S(w_avg + dw) - S(w_avg) = S(dw) - S(0).
    zero = torch.zeros(1, generator.n_latent, generator.style_dim, device=latent_avg.device)
    with torch.no_grad():
        base = flatten_styles(generator.styles_from_wplus(zero))

    def fn(dw: torch.Tensor) -> torch.Tensor:
        return flatten_styles(generator.styles_from_wplus(dw)) - base

    return fn


@torch.no_grad()
def heldout_error(
    generator: Generator,
    clip: ClipEmbedder,
    mappers: CSLAMappers,
    *,
    n: int = 256,
    seed: int = 987_654_321,
    truncation: float = 1.0,
    max_resolution: int | None = 256,
    noise_mode: str = "const",
    samples: Samples | None = None,
) -> dict[str, float]:
    """Held-out residual-prediction error vs the trivial predictor (the best constant).

    ratio_w = mean ||dw_pred - dw||^2 / mean ||mean(dw) - dw||^2 over fresh samples (and the
    same for S after style mixing). Below 1 means the mapper beats guessing the average.
    """
    latent_avg = mappers.latent_avg
    if samples is None:
        samples = sample_batch(
            generator,
            clip,
            n,
            seeded(seed),
            latent_avg=latent_avg[:1],
            truncation=truncation,
            max_resolution=max_resolution,
            noise_mode=noise_mode,
        )
    device = latent_avg.device
    wplus, feats = samples.wplus.to(device), samples.features.to(device)
    styles_fn = styles_residual_fn(generator, latent_avg)
    pred = mappers.map_embedding(feats, styles_fn)
    dw = wplus - latent_avg[None]
    stats = {
        "n": float(len(dw)),
        "mse_w": F.mse_loss(pred.dw, dw).item(),
        "trivial_mse_w": F.mse_loss(dw.mean(0, keepdim=True).expand_as(dw), dw).item(),
        "cos_w": F.cosine_similarity(pred.dw.flatten(1), dw.flatten(1)).mean().item(),
    }
    stats["ratio_w"] = stats["mse_w"] / max(stats["trivial_mse_w"], 1e-20)
    if pred.ds is not None:
        ds = styles_fn(dw)
        stats["mse_s"] = F.mse_loss(pred.ds, ds).item()
        stats["trivial_mse_s"] = F.mse_loss(ds.mean(0, keepdim=True).expand_as(ds), ds).item()
        stats["ratio_s"] = stats["mse_s"] / max(stats["trivial_mse_s"], 1e-20)
    return stats


def cached_sample(
    cache: SampleCache | None,
    n: int,
    seed: int,
    latent_avg: torch.Tensor,
    cfg: TrainConfig,
    render: Callable[[], Samples],
) -> Samples:
    """``render()``, or the samples an earlier run rendered with the same size, seed, latent
    average and sampling options (``cache`` None: always rendered)."""
    if cache is None:
        return render()
    key = (
        n,
        seed,
        latent_avg.detach().cpu().numpy().tobytes(),
        tuple(sorted(sampling_options(cfg).items())),
    )
    if key not in cache:
        cache[key] = render()
    return cache[key]


class SamplePool:
    """Ring buffer of rendered samples (``pool_size`` > 0): trades freshness for speed."""

    def __init__(self, samples: Samples) -> None:
        self.wplus, self.features = samples.wplus.clone(), samples.features.clone()
        self.cursor = 0

    def replace(self, fresh: Samples) -> None:
        """Overwrite the oldest entries with ``fresh`` samples."""
        n = len(fresh.wplus)
        idx = (torch.arange(n) + self.cursor) % len(self.wplus)
        self.wplus[idx.to(self.wplus.device)] = fresh.wplus
        self.features[idx.to(self.features.device)] = fresh.features
        self.cursor = int((self.cursor + n) % len(self.wplus))

    def draw(self, n: int, rng: torch.Generator) -> Samples:
        """``n`` entries drawn uniformly with replacement."""
        idx = torch.randint(0, len(self.wplus), (n,), generator=rng).to(self.wplus.device)
        return Samples(self.wplus[idx], self.features[idx])


class SampleTimer:
    """Draws training samples and keeps the sample-generation throughput (``samples_per_s``)."""

    def __init__(
        self,
        generator: Generator,
        clip: ClipEmbedder,
        latent_avg: torch.Tensor,
        cfg: TrainConfig,
        device: torch.device,
        autocast: Autocast = contextlib.nullcontext,
    ) -> None:
        self.generator, self.clip, self.latent_avg, self.cfg = generator, clip, latent_avg, cfg
        self.device, self.autocast = device, autocast
        self.seconds, self.count = 0.0, 0

    def __call__(self, n: int, seed: int) -> Samples:
        t0 = time.perf_counter()
        s = sample_batch(
            self.generator,
            self.clip,
            n,
            seeded(seed),
            latent_avg=self.latent_avg[:1],
            autocast=self.autocast,
            **sampling_options(self.cfg),  # type: ignore[arg-type]
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.count += n
        return s

    @property
    def rate(self) -> float:
        """Samples generated per second so far (NaN before the first)."""
        return self.count / self.seconds if self.seconds > 0 else float("nan")


def replay_pool(
    cfg: TrainConfig,
    sample_cache: SampleCache | None,
    latent_avg: torch.Tensor,
    timed_sample: SampleTimer,
    rank: int,
    world: int,
) -> SamplePool | None:
    """The replay pool (``pool_size`` > 0), rendered in chunks of at least 64 samples, each from
    its own seed per process; None: fresh samples every step."""
    if cfg.pool_size <= 0:
        return None
    chunks = []
    per = max(1, math.ceil(cfg.pool_size / max(cfg.batch_size, 64)))
    for i in range(per):
        n = min(cfg.pool_size - i * max(cfg.batch_size, 64), max(cfg.batch_size, 64))
        seed = aux_seed(cfg.seed, 100 + i * world + rank)
        chunks.append(
            cached_sample(
                sample_cache,
                n,
                seed,
                latent_avg,
                cfg,
                lambda n=n, seed=seed: timed_sample(n, seed),
            )
        )
    return SamplePool(
        Samples(torch.cat([c.wplus for c in chunks]), torch.cat([c.features for c in chunks]))
    )
