"""Commands that measure: ``evaluate`` (CSLA vs the optimisation baseline), ``check-mappers``
(do the mappers find the published smile / age directions) and ``bench`` (per-stage timings
at real sizes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import (
    add_device_option,
    add_model_options,
    add_precision_option,
    add_samples_option,
    build_models,
    build_pipeline,
    finite_float,
    hidden_alias,
    load_mappers,
)


def evaluate_command(argv: list[str] | None = None) -> int:
    """Print the CSLA vs baseline table (markdown)."""
    from ..editing.editor import TextEditor
    from ..editing.optimise import OptimisationConfig
    from ..evaluation.metrics import DEFAULT_PROMPTS, evaluate, load_lpips
    from ..models.face_id import load_face_embedder
    from ..models.perceptual import lpips_unavailable_reason

    p = argparse.ArgumentParser(
        prog="python -m csla_core evaluate", description="CSLA vs optimisation"
    )
    add_model_options(p, tiny=True)
    p.add_argument("--mappers", type=Path, default=None, help="trained CSLA mappers")
    p.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    p.add_argument("--n-images", type=int, default=4, help="random faces edited per prompt")
    add_samples_option(p, 4, "CSLA samples per edit", aliases=("--n-samples",))
    p.add_argument("--strength", type=finite_float("strength"), default=1.0)
    p.add_argument("--diversity", type=finite_float("spread (diversity)"), default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-steps", type=int, default=300, help="0 skips the baseline")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="render size for scoring (default 8 with --tiny, else 256)",
    )
    p.add_argument(
        "--identity-weights",
        type=Path,
        default=None,
        help="face-recognition weights for identity similarity: a MobileFaceNet "
        "checkpoint or a facenet-pytorch InceptionResnetV1 state dict",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    hidden_alias(p, "--output", dest="json", type=Path)
    args = p.parse_args(argv)
    generator, clip, _ = build_models(args)
    res = args.resolution or (8 if args.tiny else 256)
    editor = None
    if args.mappers is not None:
        editor = TextEditor(
            generator, clip, load_mappers(args.mappers, generator), render_resolution=res
        )
    baseline = (
        OptimisationConfig(steps=args.baseline_steps, max_resolution=res)
        if args.baseline_steps > 0
        else None
    )
    identity = load_face_embedder(args.identity_weights) if args.identity_weights else None
    lpips_fn = load_lpips()
    if lpips_fn is None:
        print(f"note: LPIPS unavailable: {lpips_unavailable_reason()}")
    table = evaluate(
        generator,
        clip,
        editor=editor,
        prompts=args.prompts,
        n_images=args.n_images,
        n_samples=args.samples,
        strength=args.strength,
        diversity=args.diversity,
        seed=args.seed,
        baseline=baseline,
        render_resolution=res,
        identity_fn=identity,
        lpips_fn=lpips_fn,
    )
    print(table.to_markdown())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(table.to_json() + "\n")
    return 0


def check_mappers_command(argv: list[str] | None = None) -> int:
    """Print the cosine of each check prompt's W change with its InterFaceGAN direction."""
    from ..errors import CSLAError
    from ..evaluation.check import check_mappers, format_checks

    p = argparse.ArgumentParser(
        prog="python -m csla_core check-mappers",
        description="Edit the average face by 'smiling' and 'an old person' and compare the W "
        "change with e4e's published InterFaceGAN smile and age directions (real models only).",
    )
    p.add_argument("--mappers", type=Path, default=None, help="trained CSLA mappers")
    p.add_argument("--strength", type=finite_float("strength"), default=1.0)
    add_model_options(p, precision=True)
    args = p.parse_args(argv)
    pipe = build_pipeline(args, mappers_path=args.mappers, with_encoder=False)
    if pipe.mappers is None:
        raise CSLAError("no CSLA mappers found: give --mappers, or make them first (`train`)")
    print(format_checks(check_mappers(pipe, args.strength), pipe.random_weights))
    return 0


def fidelity_command(argv: list[str] | None = None) -> int:
    """L2, MS-SSIM, LPIPS, identity and time: e4e, + detail kept, + refinement."""
    from ..editing.likeness import RefineConfig
    from ..evaluation.bench import peak_rss_gb
    from ..evaluation.fidelity import format_report, measure_fidelity
    from ..models.face_id import load_face_embedder
    from ..runtime import cpu_description
    from ..weights import hub_offline
    from .photos import photos_in

    p = argparse.ArgumentParser(
        prog="python -m csla_core fidelity",
        description="How close results stay to the person, the field's way (HyperStyle's "
        "protocol: aligned crop at 256 px on [-1, 1]): e4e alone, + the photo's detail kept, "
        "+ refinement (pivotal tuning). Prints a markdown table and each photo's refinement.",
    )
    p.add_argument(
        "photos",
        nargs="+",
        help="photos, or folders of photos and their subfolders (largest face each)",
    )
    p.add_argument(
        "--face-weights",
        type=Path,
        default=None,
        help="face-recognition weights for the identity column: a MobileFaceNet checkpoint or "
        "facenet-pytorch InceptionResnetV1 state dict (local file)",
    )
    p.add_argument("--prompt", default="smiling", help="the edit of the edit-identity column")
    p.add_argument("--strength", type=finite_float("strength"), default=1.0)
    p.add_argument(
        "--refine-seconds",
        type=finite_float("refinement time budget"),
        default=None,
        help="refinement time budget (default: 60 s on a CPU, PTI's 350 steps on a GPU)",
    )
    p.add_argument("--steps", type=int, default=None, help="refinement steps at most")
    p.add_argument(
        "--plain-l2",
        action="store_true",
        help="refine with L2 alone (no perceptual term): the comparison for the loss",
    )
    p.add_argument("--single-face", action="store_true", help="skip photos with more than one face")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    add_model_options(p, precision=True)
    args = p.parse_args(argv)
    pipe = build_pipeline(args)
    loaded_gb = peak_rss_gb()
    overrides: dict = {}
    if args.refine_seconds is not None:
        overrides["seconds"] = args.refine_seconds
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.plain_l2:
        overrides["perceptual_weight"] = 0.0
    config = RefineConfig.for_device(pipe.device, **overrides)
    embed = load_face_embedder(args.face_weights) if args.face_weights else None
    photos = [photo for path in args.photos for photo in photos_in(path, recursive=True)]
    report = measure_fidelity(
        pipe,
        photos,
        refine=config,
        prompt=args.prompt,
        strength=args.strength,
        face_embedder=embed,
        allow_download=not hub_offline(),
        single_face=args.single_face,
    )
    import torch

    labels = [
        f"fidelity of {len(report.refinements)} photo(s); device {pipe.device}, precision "
        f"{pipe.precision}, torch {torch.__version__}"
        + (f", {cpu_description()}" if pipe.device.type == "cpu" else ""),
        f"refinement: {config.steps} steps at most"
        + (f", {config.seconds:g} s" if config.seconds else "")
        + f", at {config.resolution or pipe.generator.size} px"
        + (" (L2 only)" if args.plain_l2 else ""),
    ]
    if pipe.random_weights:
        labels.insert(0, "RANDOM WEIGHTS: these figures measure the machinery, not the models.")
    print("\n" + format_report(report, labels))
    print(
        f"peak resident memory: {peak_rss_gb():.2f} GB ({loaded_gb:.2f} GB once the models were loaded)"
    )
    if args.json:
        args.json.write_text(report.to_json() + "\n")
    return 0


def bench_command(argv: list[str] | None = None) -> int:
    import torch

    from ..evaluation import bench

    parser = argparse.ArgumentParser(prog="python -m csla_core bench", description=bench.__doc__)
    add_device_option(parser, "cpu", "cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--size", type=int, default=1024, help="generator size (smaller: a quick smoke run only)"
    )
    parser.add_argument("--preview", type=int, default=256, help="preview render size")
    add_precision_option(parser)
    parser.add_argument(
        "--baseline",
        default="fp32",
        help="also run the bench in this precision, in its own process, and print both side "
        "by side when it differs from the one in force (default fp32; 'none': skip)",
    )
    parser.add_argument(
        "--other-torch",
        metavar="PYTHON",
        help="also run the bench with this interpreter (another torch release, e.g. a virtual "
        "environment's bin/python), in the same precision, and print both side by side, saying "
        "where a figure differs between the releases",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the figures as JSON ('-' = stdout)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..runtime import choose_precision

    in_force = choose_precision(args.precision, torch.device(args.device).type).precision
    baseline = None
    options = ["--device", args.device, "--repeats", str(args.repeats)]
    options += ["--size", str(args.size), "--preview", str(args.preview)]
    options += ["--threads", str(args.threads)] if args.threads else []
    if args.other_torch:  # the same precision with the other release, first: a quiet machine
        baseline = bench.run_baseline(in_force, options, python=args.other_torch)
    elif args.baseline != "none" and args.baseline != in_force:
        baseline = bench.run_baseline(args.baseline, options)  # first: a quiet machine
    report = bench.run_benchmarks(
        device=args.device,
        repeats=args.repeats,
        precision=args.precision,
        size=args.size,
        preview=args.preview,
    )
    if baseline is not None:
        report["baseline"] = baseline
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(bench.format_report(report))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
    return 0


def compare_calibration_command(argv: list[str] | None = None) -> int:
    from ..evaluation.calibration import compare_calibration, format_calibration

    p = argparse.ArgumentParser(
        prog="python -m csla_core compare-calibration",
        description="Calibration by bank size vs the full trainer, on the tiny models (README).",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 2048], help="bank sizes")
    p.add_argument("--steps", type=int, default=300, help="training steps of the baseline")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = compare_calibration(args.seeds, args.sizes, args.steps)
    print(format_calibration(rows))
    if args.json:
        from dataclasses import asdict

        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0
