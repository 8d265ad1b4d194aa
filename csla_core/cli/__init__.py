"""Command line: ``python -m csla_core <command> ...``.

Every command prints a one-line, readable message and exits with status 2 on a user-facing
problem (missing weights, bad photo, ...) instead of a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import CSLAError

# command -> (module, function, one-line help). Modules import lazily so `--help` stays instant.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": (
        "csla_core.cli",
        "download_command",
        "download every weight file (pinned, verified)",
    ),
    "align": ("csla_core.faces.core", "align_command", "detect faces and write the FFHQ-aligned crop"),
    "invert": ("csla_core.cli", "invert_command", "photo -> W+ code (.pt) and reconstruction"),
    "edit": (
        "csla_core.cli",
        "edit_command",
        "edit the face in a photo (or a folder) from a prompt",
    ),
    "generate": ("csla_core.cli", "generate_command", "text-to-image through the CSLA mappers"),
    "train": (
        "csla_core.training.loop",
        "train_command",
        "data-free CSLA mapper training (--tiny: CPU demo)",
    ),
    "ablate": (
        "csla_core.evaluation.ablation",
        "ablate_command",
        "train one mapper per centre strategy / mixing mode and compare them",
    ),
    "evaluate": (
        "csla_core.evaluation.metrics",
        "evaluate_command",
        "CLIP score, identity, diversity, time: CSLA vs baseline",
    ),
    "edit-latent": (
        "csla_core.editing.editor",
        "edit_command",
        "edit a W+ code file or a random face (--tiny ok)",
    ),
    "generate-latent": (
        "csla_core.editing.editor",
        "generate_command",
        "text-to-image to W+ files (--tiny ok)",
    ),
    "bench": ("csla_core.evaluation.bench", "bench_command", "per-stage timings at real sizes"),
}


def _add_weight_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-dir", help="folder with weight files (default ./checkpoints)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="fp16/bf16: reduced-precision inference (GPU), within 2e-2 of fp32",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained models, no files needed (development only: outputs are noise)",
    )


def download_command(argv: list[str] | None = None) -> int:
    from .. import weights

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
    for key in args.only or list(specs):
        spec = specs[key]
        print(f"{spec.filename}: {spec.description}\n  from {spec.hub.url}")
        path = weights.download(
            spec, force=args.force, local_dir=Path(args.to) if args.to else None
        )
        print(f"  ok: {path}")
    return 0


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def _photos(path: str) -> list[Path]:
    """A photo, or every image in a folder (sorted)."""
    target = Path(path)
    if target.is_dir():
        photos = sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            raise CSLAError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder {target}"
            )
        return photos
    if not target.is_file():
        raise CSLAError(f"{target} does not exist")
    return [target]


def _pipeline_from(args: argparse.Namespace, **options):
    from ..loading import load_pipeline

    pipe = load_pipeline(
        device=args.device,
        random_weights=args.random_weights,
        checkpoint_dir=args.checkpoint_dir,
        mappers_path=getattr(args, "mappers", None),
        precision=args.precision,
        **options,
    )
    if pipe.notice:
        print(pipe.notice)
    return pipe


def edit_command(argv: list[str] | None = None) -> int:
    from ..editing.strength import DEFAULT_TARGET_CLIP_GAIN, parse_strength

    parser = argparse.ArgumentParser(
        prog="python -m csla_core edit",
        description="Edit the face in a photo (or every photo in a folder) towards a text prompt; "
        "writes several different edits per photo, pasted back into the photo.",
    )
    parser.add_argument("photo", help="a photo, or a folder of photos")
    parser.add_argument("prompt", help='the edit, e.g. "smiling" or "grey hair"')
    parser.add_argument("--source-prompt", default=None, help='neutral text (default "a face")')
    parser.add_argument(
        "--strength",
        type=parse_strength,
        default=1.0,
        help="0 = unchanged, < 0 reverses; 'auto': the strength reaching --target-clip-gain",
    )
    parser.add_argument(
        "--target-clip-gain",
        type=float,
        default=DEFAULT_TARGET_CLIP_GAIN,
        help="CLIP-similarity gain --strength auto aims for (default %(default)s)",
    )
    parser.add_argument("--samples", type=int, default=4, help="different edits per photo")
    parser.add_argument(
        "--diversity", type=float, default=0.5, help="how different the samples are"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--face", type=int, default=0, help="which face (0 = largest)")
    parser.add_argument(
        "--crop", action="store_true", help="write the aligned 1024 crop, not the photo"
    )
    parser.add_argument("--mappers", help="trained CSLA mappers (.safetensors)")
    parser.add_argument("-o", "--output", default="outputs", help="output folder")
    _add_weight_options(parser)
    args = parser.parse_args(argv)
    if args.samples < 1:
        raise CSLAError("--samples must be at least 1")
    photos = _photos(args.photo)
    pipe = _pipeline_from(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    from ..imaging import tensor_to_pil

    failures = 0
    for photo in tqdm(photos, desc="photos", unit="photo", disable=len(photos) == 1):
        try:
            inversion = pipe.invert(photo, face_index=args.face)
            result = pipe.edit(
                inversion.wplus,
                args.prompt,
                source_prompt=args.source_prompt,
                strength=args.strength,
                n_samples=args.samples,
                diversity=args.diversity,
                seed=args.seed,
                target_clip_gain=args.target_clip_gain,
            )
            for notice in result.notices:
                print(f"note: {notice}")
            if result.strength_search is not None and result.strength_search.reached:
                print(f"{photo}: {result.strength_search.describe()}")
            faces = tensor_to_pil(pipe.render_edit(result))
            for k, face in enumerate(faces):
                picture = face if args.crop else pipe.paste(inversion, face)
                picture.save(out / f"{photo.stem}_edit{k}.png")
            print(
                f"{photo}: {len(faces)} edit(s) ({result.method}) -> {out}/{photo.stem}_edit*.png"
            )
        except CSLAError as exc:
            failures += 1
            print(f"{photo}: {exc}", file=sys.stderr)
    return 2 if failures else 0


def generate_command(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csla_core generate", description="Text-to-image through the CSLA mappers."
    )
    parser.add_argument("prompt")
    parser.add_argument("-n", "--n", type=int, default=4, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diversity", type=float, default=0.5)
    parser.add_argument("--mappers", help="trained CSLA mappers (.safetensors)")
    parser.add_argument("-o", "--output", default="outputs", help="output folder")
    _add_weight_options(parser)
    args = parser.parse_args(argv)
    pipe = _pipeline_from(args)
    from ..imaging import tensor_to_pil

    result = pipe.generate(args.prompt, n=args.n, seed=args.seed, diversity=args.diversity)
    for notice in result.notices:
        print(f"note: {notice}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(tensor_to_pil(pipe.render_edit(result))):
        image.save(out / f"generate{k}.png")
    print(f"{args.n} image(s) -> {out}/generate*.png")
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
    parser.add_argument(
        "--clip", action="store_true", help="also the paper's CLIP-based inversion (needs mappers)"
    )
    _add_weight_options(parser)
    args = parser.parse_args(argv)

    import torch

    from ..imaging import tensor_to_pil
    from ..loading import load_pipeline

    pipe = load_pipeline(
        device=args.device,
        random_weights=args.random_weights,
        checkpoint_dir=args.checkpoint_dir,
        with_clip=args.clip,  # e4e inversion needs no CLIP
        precision=args.precision,
    )
    if pipe.notice:
        print(pipe.notice)
    inversion = pipe.invert(args.photo, face_index=args.face)
    print(f"{len(inversion.faces)} face(s) found; using face {inversion.face_index}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"wplus": inversion.wplus.cpu()}, f"{args.output}.pt")
    inversion.aligned.image.save(f"{args.output}_crop.png")
    tensor_to_pil(pipe.render(inversion.wplus))[0].save(f"{args.output}_reconstruction.png")
    print(f"wrote {args.output}.pt, {args.output}_crop.png, {args.output}_reconstruction.png")
    if args.clip:
        from ..imaging import pil_to_tensor

        clip_code = pipe.invert_clip(pil_to_tensor(inversion.aligned.image, 256))
        tensor_to_pil(pipe.render(clip_code))[0].save(f"{args.output}_clip_reconstruction.png")
        print(f"wrote {args.output}_clip_reconstruction.png (CLIP-based inversion, coarse)")
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
