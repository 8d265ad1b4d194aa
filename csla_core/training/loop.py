"""Data-free training of the CSLA mappers: the loop, its checkpoints and its result.

[paper] No dataset: the generator samples its own images, CLIP's image encoder embeds them, and
the mappers learn to bring the CLIP residual back to the latent residual that made the image.
A temporal relative manipulation-centre strategy and "temporal relative consistency" are used.

[ours] The concrete loop (every term and weight is a ``TrainConfig`` option, ``config.py``):
1. Samples: z -> W+ -> render at a reduced size -> CLIP embedding f, seeded per step so a
   resumed run sees the same data (``sampling.py``).
2. The centre statistics (``ClipCentre``) fold in the batch; x = (f - c) / std.
3. The loss terms, in standardised target units (``losses.py``).
4. Adam; periodic checkpoints (safetensors mapper + a tensors-only ``state.pt`` loaded with
   ``weights_only=True``); ``accelerate`` handles devices and multi-GPU (``accelerate launch``).

Throughput of sample generation (z -> image -> CLIP, no grad) is measured separately from the
optimisation and reported as ``samples_per_s``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..errors import CSLAError, WeightsError
from ..models.clip import ClipEmbedder
from ..models.mappers import CSLAMappers, mapper_config_for
from ..models.stylegan2 import Generator
from ..weights import load_mappers, model_fingerprint, models_meta, save_mappers
from .config import TrainConfig
from .losses import step_loss
from .sampling import (
    SampleCache,
    Samples,
    SampleTimer,
    aux_seed,
    cached_sample,
    heldout_error,
    replay_pool,
    sample_batch,
    sample_latents,
    sampling_options,
    seeded,
    styles_residual_fn,
)


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

    mappers, latent_avg, styles_fn = initial_mappers(generator, clip, cfg, device, sample_cache)
    initial = _start_from(cfg.init_mappers, mappers) if cfg.init_mappers and not resume else None

    optimizer = torch.optim.Adam(mappers.parameters(), lr=cfg.lr, betas=cfg.betas)
    start_step, prev = _resume_from(resume, output_dir, mappers, optimizer, device)
    mappers.train()
    model, optimizer = acc.prepare(mappers, optimizer)
    core: CSLAMappers = acc.unwrap_model(model)

    # The samples' renders in the run's mixed precision too (accelerate applies it to the
    # mappers only): on a GPU they are most of a step's time.
    timed_sample = SampleTimer(generator, clip, latent_avg, cfg, device, acc.autocast)
    pool = replay_pool(cfg, sample_cache, latent_avg, timed_sample, rank, world)

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
            batch = pool.draw(cfg.batch_size, seeded(step_seed + 7))
        core.centre.update(acc.gather(batch.features))
        loss, terms = step_loss(
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


def initial_mappers(
    generator: Generator,
    clip: ClipEmbedder,
    cfg: TrainConfig,
    device: torch.device,
    sample_cache: SampleCache | None,
) -> tuple[CSLAMappers, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Untrained mappers with their latent centre, target scales and CLIP-space centre set;
    also the latent average [n_latent, D] and the W+ -> S residual function. Calibration
    starts from the same mappers, so training can continue from calibrated ones."""
    with torch.no_grad():
        latent_avg_w = generator.mean_latent(cfg.latent_avg_samples, seeded(aux_seed(cfg.seed, 1)))
        latent_avg = generator.to_wplus(latent_avg_w)[0].clone()
        styles_fn = styles_residual_fn(generator, latent_avg)
        probe = sample_latents(
            generator,
            cfg.scale_samples,
            seeded(aux_seed(cfg.seed, 2)),
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
            mean_seed = aux_seed(cfg.seed, 3)
            mean_samples = cached_sample(
                sample_cache,
                cfg.fixed_mean_samples,
                mean_seed,
                latent_avg,
                cfg,
                lambda: sample_batch(
                    generator,
                    clip,
                    cfg.fixed_mean_samples,
                    seeded(mean_seed),
                    latent_avg=latent_avg[:1],
                    **sampling_options(cfg),
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
        loaded = load_mappers(ckpt / "mappers.safetensors", device=device)
        if loaded.config.to_json() != mappers.config.to_json():
            raise WeightsError(f"checkpoint {ckpt} was trained with a different mapper config")
        mappers.load_state_dict(loaded.state_dict())
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        if "prev_wplus" in state:
            prev = Samples(state["prev_wplus"].to(device), state["prev_features"].to(device))
    return start_step, prev


def _start_from(path: str, mappers: CSLAMappers) -> dict[str, torch.Tensor]:
    """Load the weights of the mappers at ``path`` (made with the same architecture) into
    ``mappers``; returns a copy of them (kept if training does not improve on them)."""
    init = load_mappers(path)
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
        save_mappers(core, output_dir / "mappers.safetensors")
        (output_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    if acc.is_main_process:
        (output_dir / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    acc.wait_for_everyone()
    return stats


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
    save_mappers(core, ckpt / "mappers.safetensors")
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
