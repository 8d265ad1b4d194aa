"""Data-free training of the CSLA mappers.

[paper] No dataset: the generator samples its own images, CLIP's image encoder embeds them, and
the mappers learn to bring the CLIP residual back to the latent residual that made the image.
A temporal relative manipulation-centre strategy and "temporal relative consistency" are used.

[ours] The concrete loop (every term and weight is a ``TrainConfig`` option):
1. z ~ N(0, I) (seeded per step, so a resumed run sees the same data) -> w (optional truncation
   towards w_avg, optional style mixing into W+) -> image rendered at ``max_resolution`` (CLIP
   only needs 224 px, so 256 instead of 1024 saves ~90% of the synthesis) -> CLIP embedding f.
2. The centre statistics (``ClipCentre``) fold in the batch; x = (f - c) / std.
3. Losses, in standardised target units (residual / per-coordinate std):
   ``w_l2``/``w_cos``   regression of the W+ residual (L2 + cosine, DeltaEdit's 1/1);
   ``s_l2``/``s_cos``   the same for the S residual after adaptive style mixing;
   ``s_direct``         L2 on the direct S branch before mixing (keeps both estimates useful);
   ``relative``         relative consistency: M((f_i - f_j)/std) should give w_i - w_j (and
                        s_i - s_j) for pairs within the batch, so the mapping is additive and
                        edit directions do not depend on the centre;
   ``similarity``       the pairwise cosine structure of predicted W+ residuals matches the
                        targets';
   ``clip_consistency`` render the predicted latent and match its CLIP embedding (costly:
                        a differentiable render + CLIP pass; off by default);
   ``gate_sparsity``    mean A2 gate (prefer the W-derived styles); off by default.
   With ``centre="temporal"`` (C3) the regression residuals are taken against the previous
   step's samples instead of the centre (f_t - f_{t-1} -> w_t - w_{t-1}).
4. Adam; periodic checkpoints (safetensors mapper + a tensors-only ``state.pt`` loaded with
   ``weights_only=True``); ``accelerate`` handles devices and multi-GPU (``accelerate launch``).

Throughput of sample generation (z -> image -> CLIP, no grad) is measured separately from the
optimisation and reported as ``samples_per_s``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..errors import CSLAError, WeightsError
from ..models.clip import ClipEmbedder
from ..models.mappers import (
    CENTRE_STRATEGIES,
    MIXING_MODES,
    CSLAMappers,
    MapperOutput,
    cosine_loss,
    flatten_styles,
    mapper_config_for,
)
from ..models.stylegan2 import Generator
from ..weights import model_fingerprint, models_meta


@dataclass
class TrainConfig:
    """Every option of the data-free training. Defaults are for real models on a GPU."""

    steps: int = 20_000
    batch_size: int = 16
    lr: float = 0.1  # [ours] Adam; x lr_mul 0.01 of the equalised layers = 1e-3 effective
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    # sampling
    truncation: float = 1.0  # psi towards w_avg for sampled w (1 = none)
    mix_prob: float = 0.0  # [ours] probability of a two-code style-mixed W+ sample
    max_resolution: int | None = 256  # render size fed to CLIP (None = full size)
    noise_mode: str = "const"
    latent_avg_samples: int = 4096  # z samples for w_avg (the W / S residual centre)
    scale_samples: int = 4096  # z samples for the per-coordinate target stds (no rendering)
    fixed_mean_samples: int = 1024  # rendered samples for the C0 "fixed_mean" centre
    pool_size: int = 0  # [ours] replay pool of rendered samples; 0 = fresh samples every step
    pool_refresh: int = 0  # fresh samples replacing the oldest pool entries per step
    # mapper architecture (see MapperConfig)
    centre: str = "ema"
    mixing: str = "both"
    wplus: bool = True
    map_s: bool = True
    hidden_dim: int = 512
    depth: int = 4
    lr_mul: float = 0.01
    input_pixelnorm: bool = False
    mixing_hidden: int = 256
    stats_momentum: float = 0.02
    # loss weights
    w_l2: float = 1.0
    w_cos: float = 1.0
    s_l2: float = 1.0
    s_cos: float = 1.0
    s_direct: float = 0.5
    relative: float = 1.0
    similarity: float = 0.1
    clip_consistency: float = 0.0
    clip_consistency_batch: int = 4
    gate_sparsity: float = 0.0
    # bookkeeping
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 3
    eval_samples: int = 512  # held-out samples for the final error ratio (0 = skip)
    eval_seed: int = 987_654_321
    # [ours] Start from these mappers (e.g. calibrated ones: `train` calibrates first by default);
    # the trained result replaces them only if it is better on the held-out samples.
    init_mappers: str = ""
    mixed_precision: str = "no"
    cpu: bool = False  # force CPU even when a GPU is visible
    clip_model_name: str = "unknown"

    @classmethod
    def tiny(cls, **overrides: object) -> TrainConfig:
        """[ours] CPU preset for the tiny random models (what the tests use)."""
        base: dict[str, object] = dict(
            steps=300,
            batch_size=64,
            lr=1.0,
            max_resolution=8,
            truncation=0.7,
            latent_avg_samples=2048,
            scale_samples=2048,
            fixed_mean_samples=256,
            pool_size=512,
            pool_refresh=0,
            hidden_dim=128,
            depth=3,
            mixing_hidden=32,
            save_every=200,
            eval_samples=256,
            cpu=True,
            clip_model_name="tiny-random",
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if self.centre not in CENTRE_STRATEGIES:
            raise CSLAError(f"centre must be one of {CENTRE_STRATEGIES}, got {self.centre!r}")
        if self.mixing not in MIXING_MODES:
            raise CSLAError(f"mixing must be one of {MIXING_MODES}, got {self.mixing!r}")
        if self.batch_size < 2:
            raise CSLAError("batch_size must be >= 2 (the relative terms need pairs)")


class Samples(NamedTuple):
    wplus: torch.Tensor  # [B, n_latent, D]
    features: torch.Tensor  # [B, clip_dim], normalised CLIP image embeddings


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed % (2**63))


def _aux_seed(seed: int, purpose: int) -> int:
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
) -> Samples:
    """One batch of data-free training samples: W+ codes and their renders' CLIP embeddings."""
    wplus = sample_latents(
        generator, n, rng, truncation=truncation, latent_avg=latent_avg, mix_prob=mix_prob
    )
    feats = render_features(
        generator, clip, wplus, max_resolution=max_resolution, noise_mode=noise_mode
    )
    return Samples(wplus, feats)


def _sampling(cfg: TrainConfig) -> dict[str, object]:
    return {
        "truncation": cfg.truncation,
        "mix_prob": cfg.mix_prob,
        "max_resolution": cfg.max_resolution,
        "noise_mode": cfg.noise_mode,
    }


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
            _seeded(seed),
            latent_avg=latent_avg[:1],
            truncation=truncation,
            max_resolution=max_resolution,
            noise_mode=noise_mode,
        )
    device = latent_avg.device
    wplus, feats = samples.wplus.to(device), samples.features.to(device)
    styles_fn = _styles_fn(generator, latent_avg)
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


def _styles_fn(
    generator: Generator, latent_avg: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    # The modulation layers are affine, so the S residual of a W+ residual is linear in it:
    # S(w_avg + dw) - S(w_avg) = S(dw) - S(0).
    zero = torch.zeros(1, generator.n_latent, generator.style_dim, device=latent_avg.device)
    with torch.no_grad():
        base = flatten_styles(generator.styles_from_wplus(zero))

    def fn(dw: torch.Tensor) -> torch.Tensor:
        return flatten_styles(generator.styles_from_wplus(dw)) - base

    return fn


class _Pool:
    """Ring buffer of rendered samples (``pool_size`` > 0): trades freshness for speed."""

    def __init__(self, samples: Samples) -> None:
        self.wplus, self.features = samples.wplus.clone(), samples.features.clone()
        self.cursor = 0

    def replace(self, fresh: Samples) -> None:
        n = len(fresh.wplus)
        idx = (torch.arange(n) + self.cursor) % len(self.wplus)
        self.wplus[idx.to(self.wplus.device)] = fresh.wplus
        self.features[idx.to(self.features.device)] = fresh.features
        self.cursor = int((self.cursor + n) % len(self.wplus))

    def draw(self, n: int, rng: torch.Generator) -> Samples:
        idx = torch.randint(0, len(self.wplus), (n,), generator=rng).to(self.wplus.device)
        return Samples(self.wplus[idx], self.features[idx])


def _pairwise_cos(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.flatten(1), dim=1, eps=1e-8)
    return x @ x.T


def _regression(
    out: MapperOutput, dw_t: torch.Tensor, ds_t: torch.Tensor | None, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    terms = {"w_l2": F.mse_loss(out.dw, dw_t), "w_cos": cosine_loss(out.dw, dw_t)}
    if out.ds is not None and ds_t is not None:
        terms["s_l2"] = F.mse_loss(out.ds, ds_t)
        terms["s_cos"] = cosine_loss(out.ds, ds_t)
        if out.ds_direct is not None and out.gates is not None:
            terms["s_direct"] = F.mse_loss(out.ds_direct, ds_t)
    return terms


def _weighted(terms: dict[str, torch.Tensor], cfg: TrainConfig, scale: float = 1.0) -> torch.Tensor:
    return sum(scale * getattr(cfg, k) * v for k, v in terms.items())  # type: ignore[return-value]


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def _resolve_resume(resume: str | Path, output_dir: Path) -> Path:
    if str(resume) == "latest":
        found = _checkpoint_dirs(output_dir)
        if not found:
            raise WeightsError(f"no checkpoint to resume under {output_dir / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / "state.pt").is_file() or not (path / "mappers.safetensors").is_file():
        raise WeightsError(
            f"{path} is not a CSLA training checkpoint (mappers.safetensors + state.pt)"
        )
    return path


# Rendered sample sets keyed by everything that decides them (see ``train``'s sample_cache).
SampleCache = dict[tuple, "Samples"]


def train(
    generator: Generator,
    clip: ClipEmbedder,
    config: TrainConfig,
    *,
    output_dir: str | Path,
    resume: str | Path | None = None,
    accelerator: Accelerator | None = None,
    sample_cache: SampleCache | None = None,
) -> dict[str, float]:
    """Train CSLA mappers data-free; writes ``output_dir/mappers.safetensors`` (+ .json).

    Returns stats: final losses, ``samples_per_s`` (sample generation throughput of this
    process: z -> render -> CLIP, no grad), ``steps_per_s``, and on the main process the
    held-out ``ratio_w``/``ratio_s`` (if ``eval_samples``; see ``heldout_error``).
    ``sample_cache``: a dict shared by runs of the same generator and CLIP (the ablation); the
    replay pool and the fixed-mean samples are rendered once and reused by runs that sample
    alike (same seed, sizes, sampling options). Per-step fresh batches are never cached.
    """
    # The generator is frozen while training; its requires_grad flags are restored afterwards.
    flags = [(p, p.requires_grad) for p in generator.parameters()]
    try:
        return _train(generator, clip, config, Path(output_dir), resume, accelerator, sample_cache)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _cached_sample(
    cache: SampleCache | None,
    n: int,
    seed: int,
    latent_avg: torch.Tensor,
    cfg: TrainConfig,
    render: Callable[[], Samples],
) -> Samples:
    if cache is None:
        return render()
    key = (
        n,
        seed,
        latent_avg.detach().cpu().numpy().tobytes(),
        tuple(sorted(_sampling(cfg).items())),
    )
    if key not in cache:
        cache[key] = render()
    return cache[key]


def _train(
    generator: Generator,
    clip: ClipEmbedder,
    config: TrainConfig,
    output_dir: Path,
    resume: str | Path | None,
    accelerator: Accelerator | None,
    sample_cache: SampleCache | None = None,
) -> dict[str, float]:
    cfg = config
    acc = accelerator or Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
    device = acc.device
    generator = generator.to(device).eval().requires_grad_(False)
    clip = clip.to(device)
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(cfg.seed)

    mappers, latent_avg, styles_fn = _initial_mappers(generator, clip, cfg, device, sample_cache)
    initial = _start_from(cfg.init_mappers, mappers) if cfg.init_mappers and not resume else None

    optimizer = torch.optim.Adam(mappers.parameters(), lr=cfg.lr, betas=cfg.betas)
    start_step, prev = _resume_from(resume, output_dir, mappers, optimizer, device)
    mappers.train()
    model, optimizer = acc.prepare(mappers, optimizer)
    core: CSLAMappers = acc.unwrap_model(model)

    timed_sample = _SampleTimer(generator, clip, latent_avg, cfg, device)
    pool = _replay_pool(cfg, sample_cache, latent_avg, timed_sample, rank, world)

    bar = tqdm(
        range(start_step, cfg.steps),
        initial=start_step,
        total=cfg.steps,
        desc="csla train",
        disable=not acc.is_local_main_process,
        dynamic_ncols=True,
    )
    logs: dict[str, float] = {}
    t_train = time.perf_counter()
    for step in bar:
        step_seed = (cfg.seed * 1_000_003 + step) * max(world, 1) + rank
        if pool is None:
            batch = timed_sample(cfg.batch_size, step_seed)
        else:
            if cfg.pool_refresh > 0:
                pool.replace(timed_sample(cfg.pool_refresh, step_seed))
            batch = pool.draw(cfg.batch_size, _seeded(step_seed + 7))
        core.centre.update(acc.gather(batch.features))
        loss, terms = _step_loss(
            model, core, generator, clip, batch, prev, latent_avg, styles_fn, cfg
        )
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        optimizer.step()
        prev = Samples(batch.wplus.detach(), batch.features.detach())

        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            logs = {k: float(v) for k, v in terms.items()}
            logs["loss"] = float(loss.detach())
            logs["samples_per_s"] = timed_sample.rate
            bar.set_postfix(
                {
                    k: f"{v:.3g}"
                    for k, v in logs.items()
                    if k in ("loss", "w_l2", "s_l2", "relative", "samples_per_s")
                }
            )
        if cfg.save_every > 0 and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(acc, core, optimizer, step + 1, prev, cfg, output_dir)
    train_seconds = time.perf_counter() - t_train
    steps_done = cfg.steps - start_step

    stats: dict[str, float] = dict(logs)
    stats["samples_per_s"] = timed_sample.rate
    stats["generated_samples"] = float(timed_sample.count)
    stats["steps"] = float(cfg.steps)
    stats["steps_per_s"] = steps_done / train_seconds if train_seconds > 0 else float("nan")
    return _finish(acc, core, optimizer, prev, cfg, output_dir, generator, clip, stats, initial)


def _initial_mappers(
    generator: Generator,
    clip: ClipEmbedder,
    cfg: TrainConfig,
    device: torch.device,
    sample_cache: SampleCache | None,
) -> tuple[CSLAMappers, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Untrained mappers with their latent centre, target scales and CLIP-space centre set;
    also the latent average [n_latent, D] and the W+ -> S residual function."""
    with torch.no_grad():
        latent_avg_w = generator.mean_latent(
            cfg.latent_avg_samples, _seeded(_aux_seed(cfg.seed, 1))
        )
        latent_avg = generator.to_wplus(latent_avg_w)[0].clone()
        styles_fn = _styles_fn(generator, latent_avg)
        probe = sample_latents(
            generator,
            cfg.scale_samples,
            _seeded(_aux_seed(cfg.seed, 2)),
            truncation=cfg.truncation,
            latent_avg=latent_avg[:1],
            mix_prob=cfg.mix_prob,
        )
        dw_probe = probe - latent_avg[None]
        w_std = dw_probe.std(0)
        s_std = styles_fn(dw_probe).std(0)
    mcfg = mapper_config_for(
        generator,
        clip.embed_dim,
        wplus=cfg.wplus,
        hidden_dim=cfg.hidden_dim,
        depth=cfg.depth,
        lr_mul=cfg.lr_mul,
        input_pixelnorm=cfg.input_pixelnorm,
        map_s=cfg.map_s,
        mixing=cfg.mixing,
        mixing_hidden=cfg.mixing_hidden,
        centre=cfg.centre,
        stats_momentum=cfg.stats_momentum,
        meta={"clip_model": cfg.clip_model_name, "trainer": "csla_core.training.loop"},
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every process and every run
    mappers = CSLAMappers(mcfg).to(device)
    with torch.no_grad():
        mappers.latent_avg.copy_(latent_avg)
        # Floors keep near-constant coordinates from exploding the standardised targets.
        mappers.w_mapper.w_scale.copy_(w_std.clamp_min(1e-3 * float(w_std.mean()) + 1e-12))
        if mappers.s_mapper is not None:
            mappers.s_mapper.s_scale.copy_(s_std.clamp_min(1e-3 * float(s_std.mean()) + 1e-12))
        if cfg.centre == "wavg_image":
            img = generator(latent_avg[None], max_resolution=cfg.max_resolution)
            mappers.centre.set_centre(clip.encode_images(img)[0])
        elif cfg.centre == "text":
            mappers.centre.set_centre(clip.neutral_embedding())
        elif cfg.centre == "fixed_mean":
            mean_seed = _aux_seed(cfg.seed, 3)
            mean_samples = _cached_sample(
                sample_cache,
                cfg.fixed_mean_samples,
                mean_seed,
                latent_avg,
                cfg,
                lambda: sample_batch(
                    generator,
                    clip,
                    cfg.fixed_mean_samples,
                    _seeded(mean_seed),
                    latent_avg=latent_avg[:1],
                    **_sampling(cfg),
                ),
            )  # type: ignore[arg-type]
            mappers.centre.set_centre(mean_samples.features.mean(0))
            mappers.centre.update(mean_samples.features)
    return mappers, latent_avg, styles_fn


def _resume_from(
    resume: str | Path | None,
    output_dir: Path,
    mappers: CSLAMappers,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[int, Samples | None]:
    """Load a checkpoint into ``mappers`` and ``optimizer``; the step to go on from and the
    previous step's samples (the temporal centre needs them)."""
    start_step = 0
    prev: Samples | None = None
    if resume is not None:
        ckpt = _resolve_resume(resume, output_dir)
        loaded = CSLAMappers.load(ckpt / "mappers.safetensors", device=device)
        if loaded.config.to_json() != mappers.config.to_json():
            raise WeightsError(f"checkpoint {ckpt} was trained with a different mapper config")
        mappers.load_state_dict(loaded.state_dict())
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        if "prev_wplus" in state:
            prev = Samples(state["prev_wplus"].to(device), state["prev_features"].to(device))
    return start_step, prev


class _SampleTimer:
    """Draws training samples and keeps the sample-generation throughput (``samples_per_s``)."""

    def __init__(
        self,
        generator: Generator,
        clip: ClipEmbedder,
        latent_avg: torch.Tensor,
        cfg: TrainConfig,
        device: torch.device,
    ) -> None:
        self.generator, self.clip, self.latent_avg, self.cfg = generator, clip, latent_avg, cfg
        self.device = device
        self.seconds, self.count = 0.0, 0

    def __call__(self, n: int, seed: int) -> Samples:
        t0 = time.perf_counter()
        s = sample_batch(
            self.generator,
            self.clip,
            n,
            _seeded(seed),
            latent_avg=self.latent_avg[:1],
            **_sampling(self.cfg),  # type: ignore[arg-type]
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.count += n
        return s

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")


def _replay_pool(
    cfg: TrainConfig,
    sample_cache: SampleCache | None,
    latent_avg: torch.Tensor,
    timed_sample: _SampleTimer,
    rank: int,
    world: int,
) -> _Pool | None:
    """The replay pool (``pool_size`` > 0), rendered in chunks of at least 64 samples, each from
    its own seed per process; None: fresh samples every step."""
    if cfg.pool_size <= 0:
        return None
    chunks = []
    per = max(1, math.ceil(cfg.pool_size / max(cfg.batch_size, 64)))
    for i in range(per):
        n = min(cfg.pool_size - i * max(cfg.batch_size, 64), max(cfg.batch_size, 64))
        seed = _aux_seed(cfg.seed, 100 + i * world + rank)
        chunks.append(
            _cached_sample(
                sample_cache,
                n,
                seed,
                latent_avg,
                cfg,
                lambda n=n, seed=seed: timed_sample(n, seed),
            )
        )
    return _Pool(
        Samples(torch.cat([c.wplus for c in chunks]), torch.cat([c.features for c in chunks]))
    )


def _start_from(path: str, mappers: CSLAMappers) -> dict[str, torch.Tensor]:
    """Load the weights of the mappers at ``path`` (made with the same architecture) into
    ``mappers``; returns a copy of them (kept if training does not improve on them)."""
    init = CSLAMappers.load(path)
    if asdict(init.config) | {"meta": {}} != asdict(mappers.config) | {"meta": {}}:
        raise CSLAError(f"{path} has another architecture than this training's config")
    mappers.load_state_dict(init.state_dict())
    return {k: v.detach().clone() for k, v in init.state_dict().items()}


def _finish(
    acc: Accelerator,
    core: CSLAMappers,
    optimizer: torch.optim.Optimizer,
    prev: Samples | None,
    cfg: TrainConfig,
    output_dir: Path,
    generator: Generator,
    clip: ClipEmbedder,
    stats: dict[str, float],
    initial: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """The last checkpoint, the trained mappers and their config, and the held-out error.
    With ``initial`` (the starting mappers' weights), the better of the two is kept."""
    _save_checkpoint(acc, core, optimizer, cfg.steps, prev, cfg, output_dir)
    core.eval()
    core.config.meta.update(
        models_meta({"generator": model_fingerprint(generator), "clip": model_fingerprint(clip)})
    )
    if cfg.eval_samples > 0 and acc.is_main_process:
        options = dict(n=cfg.eval_samples, seed=cfg.eval_seed, truncation=cfg.truncation,
                       max_resolution=cfg.max_resolution, noise_mode=cfg.noise_mode)  # fmt: skip
        held = heldout_error(generator, clip, core, **options)
        if initial is not None:
            trained_state = {k: v.clone() for k, v in core.state_dict().items()}
            core.load_state_dict(initial)
            before = heldout_error(generator, clip, core, **options)
            if before["ratio_w"] + before["ratio_s"] < held["ratio_w"] + held["ratio_s"]:
                held, stats["kept"] = before, "initial mappers (training did not improve them)"
            else:
                core.load_state_dict(trained_state)
                stats["kept"] = "trained mappers"
            stats["initial_ratio_w"], stats["initial_ratio_s"] = (
                before["ratio_w"],
                before["ratio_s"],
            )
        stats.update(held)
    if acc.is_main_process:
        core.save(output_dir / "mappers.safetensors")
        (output_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    if acc.is_main_process:
        (output_dir / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    acc.wait_for_everyone()
    return stats


def _step_loss(
    model: torch.nn.Module,
    core: CSLAMappers,
    generator: Generator,
    clip: ClipEmbedder,
    batch: Samples,
    prev: Samples | None,
    latent_avg: torch.Tensor,
    styles_fn: Callable[[torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    w_scale = core.w_scale
    s_scale = core.s_scale if core.s_mapper is not None else None

    def targets(dw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ds = styles_fn(dw) / s_scale if s_scale is not None else None
        return dw / w_scale, ds

    # Main regression: against the centre, or against the previous samples (C3 temporal).
    use_prev = cfg.centre == "temporal" and prev is not None and len(prev.wplus) == len(batch.wplus)
    if use_prev:
        x = core.centre.standardise(batch.features, centre=prev.features)  # type: ignore[union-attr]
        dw_abs = batch.wplus - prev.wplus  # type: ignore[union-attr]
        base_w = prev.wplus  # type: ignore[union-attr]
    else:
        x = core.centre.standardise(batch.features)
        dw_abs = batch.wplus - latent_avg[None]
        base_w = latent_avg[None].expand_as(batch.wplus)
    dw_t, ds_t = targets(dw_abs)
    out: MapperOutput = model(x, styles_fn)
    terms = _regression(out, dw_t, ds_t, cfg)
    loss = _weighted(terms, cfg)

    if cfg.relative > 0:
        # Relative consistency: pair each sample with its neighbour in the batch.
        j = torch.roll(torch.arange(len(x), device=x.device), 1)
        x_rel = core.centre.standardise_delta(batch.features - batch.features[j])
        rel_t = targets(batch.wplus - batch.wplus[j])
        rel = _regression(model(x_rel, styles_fn), *rel_t, cfg)
        terms["relative"] = _weighted(rel, cfg)
        loss = loss + cfg.relative * terms["relative"]
    if cfg.similarity > 0:
        terms["similarity"] = F.mse_loss(_pairwise_cos(out.dw), _pairwise_cos(dw_t))
        loss = loss + cfg.similarity * terms["similarity"]
    if cfg.gate_sparsity > 0 and out.gates is not None:
        terms["gate_sparsity"] = out.gates.mean()
        loss = loss + cfg.gate_sparsity * terms["gate_sparsity"]
    if cfg.clip_consistency > 0:
        k = min(cfg.clip_consistency_batch, len(x))
        w_pred = base_w[:k] + out.dw[:k] * w_scale
        img = generator(w_pred, noise_mode=cfg.noise_mode, max_resolution=cfg.max_resolution)  # type: ignore[arg-type]
        f_pred = clip.encode_images(img)
        terms["clip_consistency"] = cosine_loss(f_pred, batch.features[:k])
        loss = loss + cfg.clip_consistency * terms["clip_consistency"]
    return loss, {k: v.detach() for k, v in terms.items()}


def _save_checkpoint(
    acc: Accelerator,
    core: CSLAMappers,
    optimizer: torch.optim.Optimizer,
    step: int,
    prev: Samples | None,
    cfg: TrainConfig,
    output_dir: Path,
) -> None:
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    ckpt = output_dir / "checkpoints" / f"step-{step:07d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    core.save(ckpt / "mappers.safetensors")
    # Tensors, numbers and strings only: reloadable with torch.load(weights_only=True).
    state: dict[str, object] = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_json(),
    }
    if prev is not None:
        state["prev_wplus"] = prev.wplus.detach().cpu()
        state["prev_features"] = prev.features.detach().cpu()
    torch.save(state, ckpt / "state.pt")
    for old in _checkpoint_dirs(output_dir)[: -max(cfg.keep_checkpoints, 1)]:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


# ---------------------------------------------------------------------- hub
def model_card(output_dir: str | Path, repo_id: str) -> str:
    """A README model card for the trained mappers (config and measured stats)."""
    output_dir = Path(output_dir)
    stats_path, cfg_path = output_dir / "train_stats.json", output_dir / "train_config.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    lines = [
        "---",
        "library_name: pytorch",
        "tags: [stylegan2, clip, image-editing, csla]",
        "---",
        "",
        f"# {repo_id}: CSLA mappers",
        "",
        "CLIP-residual -> StyleGAN2 W+/S residual mappers trained data-free, an implementation of",
        "*Bridging CLIP and StyleGAN through Latent Alignment for Image Editing*",
        "(arXiv 2210.04506). Weights: `mappers.safetensors` (config in the metadata and in",
        "`mappers.json`). Load with `csla_core.models.mappers.CSLAMappers.load(path)`.",
        "",
        "## Training",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
        "## Measured",
        "```json",
        json.dumps(stats, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(
    output_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = True
) -> str:
    """Upload the mapper, its config and a generated model card to a Hugging Face model repo."""
    from huggingface_hub import HfApi  # imported here: only this optional step needs it

    output_dir = Path(output_dir)
    if not (output_dir / "mappers.safetensors").is_file():
        raise WeightsError(f"nothing to upload: {output_dir / 'mappers.safetensors'} is missing")
    (output_dir / "README.md").write_text(model_card(output_dir, repo_id))
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        repo_type="model",
        allow_patterns=[
            "mappers.safetensors",
            "mappers.json",
            "README.md",
            "train_config.json",
            "train_stats.json",
        ],
        commit_message="Upload CSLA mappers",
    )
    return f"https://huggingface.co/{repo_id}"
