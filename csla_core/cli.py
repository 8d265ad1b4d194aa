"""Command line: ``python -m csla_core <command> ...``.

Every command prints a one-line, readable message and exits with status 2 on a user-facing
problem (missing weights, bad photo, ...) instead of a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from .errors import CSLAError

# command -> (module, function, one-line help). Modules import lazily so `--help` stays instant.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": (
        "csla_core.cli",
        "download_command",
        "download every weight file (pinned, verified)",
    ),
    "align": ("csla_core.faces", "align_command", "detect faces and write the FFHQ-aligned crop"),
    "invert": ("csla_core.cli", "invert_command", "photo -> W+ code (.pt) and reconstruction"),
    "bench": ("csla_core.bench", "bench_command", "per-stage timings at real sizes"),
}


def _add_weight_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-dir", help="folder with weight files (default ./checkpoints)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained models, no files needed (development only: outputs are noise)",
    )


def download_command(argv: list[str] | None = None) -> int:
    from . import weights

    specs = {s.key: s for s in weights.ALL_SPECS if s.hub is not None}
    parser = argparse.ArgumentParser(
        prog="python -m csla_core download",
        description="Download the pinned weight files into the Hugging Face cache (or --to DIR) and verify them.",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(specs), help="only this file (repeatable)"
    )
    parser.add_argument(
        "--to", metavar="DIR", help="put the files in this folder instead of the hub cache"
    )
    parser.add_argument("--force", action="store_true", help="download again even if present")
    args = parser.parse_args(argv)
    from pathlib import Path

    for key in args.only or list(specs):
        spec = specs[key]
        print(f"{spec.filename}: {spec.description}\n  from {spec.hub.url}")
        path = weights.download(
            spec, force=args.force, local_dir=Path(args.to) if args.to else None
        )
        print(f"  ok: {path}")
    return 0


def invert_command(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csla_core invert",
        description="Invert the face in a photo to a W+ code with e4e.",
    )
    parser.add_argument("photo")
    parser.add_argument(
        "-o",
        "--output",
        default="inversion",
        help="output prefix (writes PREFIX.pt, PREFIX_crop.png, PREFIX_reconstruction.png)",
    )
    parser.add_argument("--face", type=int, default=0, help="which face (0 = largest)")
    _add_weight_options(parser)
    args = parser.parse_args(argv)

    import torch

    from .imaging import tensor_to_pil
    from .pipeline import load_pipeline

    pipe = load_pipeline(
        device=args.device,
        random_weights=args.random_weights,
        checkpoint_dir=args.checkpoint_dir,
        with_clip=False,  # inversion needs no CLIP
    )
    if pipe.notice:
        print(pipe.notice)
    inversion = pipe.invert(args.photo, face_index=args.face)
    print(f"{len(inversion.faces)} face(s) found; using face {inversion.face_index}")
    torch.save({"wplus": inversion.wplus.cpu()}, f"{args.output}.pt")
    inversion.aligned.image.save(f"{args.output}_crop.png")
    tensor_to_pil(pipe.render(inversion.wplus))[0].save(f"{args.output}_reconstruction.png")
    print(f"wrote {args.output}.pt, {args.output}_crop.png, {args.output}_reconstruction.png")
    return 0


def _resolve(name: str) -> Callable[[list[str]], int]:
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: python -m csla_core <command> [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command: {argv[0]}", file=sys.stderr)
            return 2
        return 0
    try:
        return _resolve(argv[0])(argv[1:])
    except CSLAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
