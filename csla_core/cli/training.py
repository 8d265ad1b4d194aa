"""Commands that train mappers: ``train`` (data-free training) and ``ablate`` (one mapper per
centre strategy / mixing mode, compared)."""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, fields, replace
from pathlib import Path

from .options import (
    add_model_options,
    add_output_option,
    add_samples_option,
    build_models,
    build_pipeline,
    finite_float,
    hidden_alias,
    train_device_is_cpu,
)

# TrainConfig fields that get no flag of their own: set by the command, not the user.
_NOT_FLAGS = ("betas", "cpu", "clip_model_name", "init_mappers")


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _add_cpu_alias(parser: argparse.ArgumentParser) -> None:
    hidden_alias(parser, "--cpu", dest="device", action="store_const", const="cpu")


def build_train_parser() -> argparse.ArgumentParser:
    from ..training.config import TrainConfig

    p = argparse.ArgumentParser(
        prog="python -m csla_core train", description="Data-free CSLA mapper training"
    )
    add_model_options(p, tiny=True)
    _add_cpu_alias(p)
    add_output_option(
        p,
        "runs/csla",
        "run folder: mappers, configs, stats, checkpoints",
        aliases=("--output-dir",),
    )
    p.add_argument("--resume", default=None, help="checkpoint folder, or 'latest'")
    p.add_argument(
        "--init",
        default="calibrate",
        help="where training starts: 'calibrate' (default: calibrate first, in minutes, and keep "
        "the trained mappers only if they are better), 'none' (untrained), or a mappers file",
    )
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None)
    options = p.add_argument_group("training options (defaults: TrainConfig, or its tiny preset)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            options.add_argument(flag, type=_parse_bool, default=None, metavar="BOOL")
        elif f.name == "max_resolution":
            options.add_argument(flag, type=int, default=None)
        else:
            options.add_argument(flag, type=type(default), default=None)
    return p


def train_command(argv: list[str] | None = None) -> int:
    from ..training.config import TrainConfig
    from ..training.hub import push_to_hub
    from ..training.loop import train

    args = build_train_parser().parse_args(argv)
    generator, clip, clip_name = build_models(args)
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None
    }
    overrides["clip_model_name"] = clip_name
    cpu = train_device_is_cpu(args.device)
    if cpu is not None:
        overrides["cpu"] = cpu
    config = TrainConfig.tiny(**overrides) if args.tiny else TrainConfig(**overrides)
    start_calibrated = args.init == "calibrate" and args.resume is None
    if start_calibrated and (config.hidden_dim < clip.embed_dim or config.depth < 2):
        print(
            f"note: calibration needs mappers with depth >= 2 and hidden_dim >= CLIP's "
            f"{clip.embed_dim}; this training starts untrained"
        )
        start_calibrated = False
    if start_calibrated:
        from ..training.calibrate import CalibrationConfig, calibrate

        calibration = (CalibrationConfig.tiny if args.tiny else CalibrationConfig)(mappers=config)
        start = calibrate(generator, clip, calibration, output_dir=args.output / "calibration")
        print(f"calibrated mappers to start from: {start.path}")
        config = replace(config, init_mappers=str(start.path))
    elif args.init not in ("calibrate", "none"):
        config = replace(config, init_mappers=args.init)
    stats = train(generator, clip, config, output_dir=args.output, resume=args.resume)
    print(json.dumps(stats, indent=2))
    if args.push_to_hub:
        print(push_to_hub(args.output, args.push_to_hub))
    return 0


def build_ablate_parser() -> argparse.ArgumentParser:
    from ..evaluation.ablation import DEFAULT_EDIT_PROMPT, DEFAULT_SWEEPS

    p = argparse.ArgumentParser(
        prog="python -m csla_core ablate",
        description="Train one mapper per CLIP-centre strategy / style-mixing mode (same seed, "
        "steps and data) and compare held-out errors and edit quality.",
    )
    add_model_options(p, tiny=True)
    _add_cpu_alias(p)
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_SWEEPS),
        metavar="OPTION=V1,V2",
        help="sweeps, each varying one training option (default: every centre "
        "strategy and every mixing mode)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="OPTION=VALUE",
        help="base training options shared by every variant, e.g. batch_size=32",
    )
    p.add_argument("--heldout", type=int, default=256, help="held-out samples for the scores")
    p.add_argument("--prompt", default=DEFAULT_EDIT_PROMPT, help="prompt of the clip_gain edit")
    p.add_argument("--edit-faces", type=int, default=8, help="faces edited for clip_gain")
    add_output_option(
        p,
        None,
        "keep each variant's mappers here (default: a temporary folder)",
        aliases=("--output-dir",),
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return p


def ablate_command(argv: list[str] | None = None) -> int:
    from ..evaluation.ablation import format_table, parse_settings, parse_variants, run_ablation
    from ..training.config import TrainConfig

    args = build_ablate_parser().parse_args(argv)
    base_options: dict[str, object] = {"seed": args.seed, **parse_settings(args.set)}
    if args.steps is not None:
        base_options["steps"] = args.steps
    cpu = train_device_is_cpu(args.device)
    if cpu is not None:
        base_options["cpu"] = cpu
    variants = parse_variants(args.variants)
    generator, clip, clip_name = build_models(args)
    base_options["clip_model_name"] = clip_name
    base = TrainConfig.tiny(**base_options) if args.tiny else TrainConfig(**base_options)
    with tempfile.TemporaryDirectory(prefix="csla-ablate-") as tmp:
        rows = run_ablation(
            generator,
            clip,
            variants,
            base,
            args.output or tmp,
            n_heldout=args.heldout,
            edit_prompt=args.prompt,
            edit_faces=args.edit_faces,
        )
    print(
        f"{base.steps} steps per variant, seed {base.seed}, batch {base.batch_size}, "
        f"{args.heldout} held-out samples; ratios: 1 = trivial predictor, lower is better"
    )
    print(format_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"config": asdict(base), "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def calibrate_command(argv: list[str] | None = None) -> int:
    from ..training.calibrate import CalibrationConfig, calibrate, calibrate_pipeline

    p = argparse.ArgumentParser(
        prog="python -m csla_core calibrate",
        description="Make CSLA mappers for the loaded generator and CLIP, data-free, in minutes "
        "(a sample bank and a closed-form fit; an interrupted run resumes). Without -o they go "
        "to your cache, where edit, generate and the app find them.",
    )
    add_model_options(p, tiny=True, precision=True)
    p.add_argument("-o", "--output", type=Path, default=None, help="folder (default: the cache)")
    add_samples_option(p, None, "bank size (default 1000; --tiny 512)")
    p.add_argument(
        "--minutes",
        type=finite_float("minutes"),
        default=None,
        help="stop rendering after this long",
    )
    args = p.parse_args(argv)
    overrides = {"minutes": args.minutes}
    if args.samples is not None:
        overrides["n_samples"] = args.samples
    if args.tiny:
        config = CalibrationConfig.tiny(**overrides)
        generator, clip, _ = build_models(args)
        result = calibrate(generator, clip, config, output_dir=args.output or "runs/calibrated")
    else:
        pipe = build_pipeline(args, with_encoder=False, with_mappers=False)
        config = CalibrationConfig(**overrides)
        result = calibrate_pipeline(pipe, config, output_dir=args.output)
    print(
        f"{result.n_samples} samples in {result.seconds['bank']:.0f} s "
        f"({result.samples_per_s:.2f} samples/s), fit in {result.seconds['fit']:.1f} s; "
        f"leave-one-out W+ error {result.loo_ratio_w:.3f} of the trivial predictor's"
    )
    print(f"mappers: {result.path}")
    return 0
