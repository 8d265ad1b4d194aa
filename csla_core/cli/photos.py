"""Commands on photos: ``download``, ``align``, ``invert``, ``edit``, ``generate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import weights
from ..errors import CSLAError
from ..service.request import clean_detail
from .options import (
    add_model_options,
    add_output_option,
    add_samples_option,
    build_pipeline,
    finite_float,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def download_command(argv: list[str] | None = None) -> int:
    specs = {s.key: s for s in weights.ALL_SPECS if s.hub is not None}
    parser = argparse.ArgumentParser(
        prog="python -m csla_core download",
        description="Download the pinned weight files into the Hugging Face cache (or -o DIR) "
        "and verify them.",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(specs), help="only this file (repeatable)"
    )
    add_output_option(
        parser, None, "put the files in this folder instead of the hub cache", aliases=("--to",)
    )
    parser.add_argument("--force", action="store_true", help="download again even if present")
    args = parser.parse_args(argv)
    for key in args.only or list(specs):
        spec = specs[key]
        print(f"{spec.filename}: {spec.description}\n  from {spec.hub.url}")
        path = weights.download(spec, force=args.force, local_dir=args.output)
        print(f"  ok: {path}")
    return 0


def align_command(argv: list[str] | None = None) -> int:
    """List the faces in a photo and write the FFHQ-aligned crop of one of them."""
    from ..faces import (
        DEFAULT_OUTPUT_SIZE,
        align_face,
        get_default_detector,
        load_image,
        select_face,
    )

    parser = argparse.ArgumentParser(
        prog="python -m csla_core align",
        description="Detect the faces in a photo and write an FFHQ-aligned crop of one of them.",
    )
    parser.add_argument("photo", type=Path, help="the photo (JPEG, PNG, WebP, ...)")
    add_output_option(
        parser, None, "where to write the crop (default: PHOTO_aligned.png next to the photo)"
    )
    parser.add_argument("--face", type=int, default=0, help="which face, 0 = largest (default 0)")
    parser.add_argument("--size", type=int, default=DEFAULT_OUTPUT_SIZE, help="crop side in px")
    parser.add_argument(
        "--no-refine",
        action="store_true",
        help="skip the second landmark pass on the upright crop (faster, less exact)",
    )
    parser.add_argument(
        "--no-ffhq-correction",
        action="store_true",
        help="use MTCNN's eye points as FFHQ's eye centres, without the fitted correction",
    )
    args = parser.parse_args(argv)
    if args.size < 8:
        raise CSLAError("--size must be at least 8")
    output: Path = args.output or args.photo.with_name(f"{args.photo.stem}_aligned.png")
    image = load_image(args.photo)
    detector = get_default_detector()
    faces = detector.detect(image)
    print(f"{args.photo}: {image.width}x{image.height}, {len(faces)} face(s)")
    for i, face in enumerate(faces):
        print(f"  face {i}: {face.describe()}")
    face = select_face(faces, args.face)
    if not args.no_refine:
        face = detector.refine(image, face)
    aligned = align_face(image, face, args.size, ffhq_correction=not args.no_ffhq_correction)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        aligned.image.save(output)
    except (OSError, ValueError) as exc:
        raise CSLAError(f"Cannot write {output}: {exc}") from exc
    print(f"wrote face {args.face} as {args.size}x{args.size} crop to {output}")
    return 0


def photos_in(path: str, recursive: bool = False) -> list[Path]:
    """A photo, or every image in a folder (and its subfolders with ``recursive``), sorted."""
    target = Path(path)
    if target.is_dir():
        found = target.rglob("*") if recursive else target.iterdir()
        photos = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            raise CSLAError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder {target}"
            )
        return photos
    if not target.is_file():
        raise CSLAError(f"{target} does not exist")
    return [target]


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
        type=finite_float("target CLIP gain"),
        default=DEFAULT_TARGET_CLIP_GAIN,
        help="CLIP-similarity gain --strength auto aims for (default %(default)s)",
    )
    add_samples_option(parser, 4, "different edits per photo")
    parser.add_argument(
        "--diversity",
        type=finite_float("spread (diversity)"),
        default=0.5,
        help="how different the samples are",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--face", type=int, default=0, help="which face (0 = largest)")
    parser.add_argument(
        "--crop", action="store_true", help="write the aligned 1024 crop, not the photo"
    )
    parser.add_argument(
        "--detail",
        type=clean_detail,
        default="keep",
        help="keep (default): the photo's own pixels wherever the edit leaves the face alone "
        "(strength 0 writes the photo back); none: the generator's face as rendered",
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="refine likeness first: tune the generator to each face (pivotal tuning; about a "
        "minute per face on a CPU)",
    )
    parser.add_argument(
        "--refine-seconds",
        type=finite_float("refinement time budget"),
        default=None,
        help="time budget of --refine (default: 60 s on a CPU, PTI's 350 steps on a GPU)",
    )
    parser.add_argument("--mappers", help="CSLA mappers (.safetensors, or a folder holding one)")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="no mappers: CLIP-guided optimisation (slower, one result) instead of calibrating",
    )
    add_output_option(parser, "outputs", "output folder")
    add_model_options(parser, precision=True)
    args = parser.parse_args(argv)
    if args.samples < 1:
        raise CSLAError("--samples must be at least 1")
    if args.refine_seconds is not None and args.refine_seconds <= 0:
        raise CSLAError("--refine-seconds must be a positive number of seconds")
    photos = photos_in(args.photo)
    pipe = build_pipeline(args, mappers_path=args.mappers, with_mappers=not args.baseline)
    if not args.baseline:
        _ensure_mappers(pipe)
    args.output.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    failures = 0
    for photo in tqdm(photos, desc="photos", unit="photo", disable=len(photos) == 1):
        try:
            _edit_photo(pipe, photo, args)
        except CSLAError as exc:  # a folder keeps going past a bad photo; the exit code says so
            failures += 1
            print(f"{photo}: {exc}", file=sys.stderr)
    return 2 if failures else 0


def _ensure_mappers(pipe) -> None:
    """Mappers for the loaded models: calibrated now (once; kept in the cache) if there are none."""
    if pipe.mappers is not None:
        return
    from ..training.calibrate import calibrate_pipeline

    print(
        "No CSLA mappers for these models yet: making them now, once (about 10 min on 2 CPU "
        "cores; kept for the next run). `edit --baseline` skips this."
    )
    result = calibrate_pipeline(pipe)
    print(f"mappers ready: {result.path}")


def _edit_photo(pipe, photo: Path, args: argparse.Namespace) -> None:
    inversion = pipe.invert(photo, face_index=args.face)
    if args.refine:
        _refine(pipe, inversion, photo, args.refine_seconds)
    result = pipe.edit(
        inversion.wplus,
        args.prompt,
        source_prompt=args.source_prompt,
        strength=args.strength,
        n_samples=args.samples,
        diversity=args.diversity,
        seed=args.seed,
        target_clip_gain=args.target_clip_gain,
        tuning=inversion.tuning,
    )
    for notice in result.notices:
        print(f"note: {notice}")
    if result.strength_search is not None and result.strength_search.reached:
        print(f"{photo}: {result.strength_search.describe()}")
    renders = pipe.render_edit(result, tuning=inversion.tuning)
    pictures = pipe.deliver(inversion, renders, detail=args.detail, paste=not args.crop)
    for k, picture in enumerate(pictures):
        picture.save(args.output / f"{photo.stem}_edit{k}.png")
    print(
        f"{photo}: {len(pictures)} edit(s) ({result.method}, detail {args.detail}) -> "
        f"{args.output}/{photo.stem}_edit*.png"
    )


def _refine(pipe, inversion, photo: Path, seconds: float | None) -> None:
    """Refine likeness of the photo's face, with a progress bar."""
    from tqdm import tqdm

    from ..editing.likeness import RefineConfig

    overrides = {} if seconds is None else {"seconds": seconds}
    config = RefineConfig.for_device(pipe.device, **overrides)
    total = int(config.seconds) if config.seconds is not None else config.steps
    with tqdm(
        total=total, desc=f"refining {photo.name}", unit="s" if config.seconds else "step"
    ) as bar:

        def progress(step) -> None:
            bar.n = min(total, int(step.seconds if config.seconds else step.step))
            bar.set_postfix_str(f"step {step.step}, L2 {step.l2:.4f}")

        refinement = pipe.refine(
            inversion, config, allow_download=not weights.hub_offline(), progress=progress
        )
    print(f"{photo}: refined ({refinement.loss}): {refinement.describe()}")


def generate_command(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csla_core generate", description="Text-to-image through the CSLA mappers."
    )
    parser.add_argument("prompt")
    add_samples_option(parser, 4, "number of images", aliases=("--n",))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diversity", type=finite_float("spread (diversity)"), default=0.5)
    parser.add_argument("--mappers", help="CSLA mappers (.safetensors, or a folder holding one)")
    add_output_option(parser, "outputs", "output folder")
    add_model_options(parser, precision=True)
    args = parser.parse_args(argv)
    pipe = build_pipeline(args, mappers_path=args.mappers)
    _ensure_mappers(pipe)
    from ..imaging import tensor_to_pil

    result = pipe.generate(args.prompt, n=args.samples, seed=args.seed, diversity=args.diversity)
    for notice in result.notices:
        print(f"note: {notice}")
    args.output.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(tensor_to_pil(pipe.render_edit(result))):
        image.save(args.output / f"generate{k}.png")
    print(f"{args.samples} image(s) -> {args.output}/generate*.png")
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
    add_model_options(parser, precision=True)
    args = parser.parse_args(argv)

    import torch

    from ..imaging import pil_to_tensor, tensor_to_pil

    pipe = build_pipeline(args, with_clip=args.clip)  # e4e inversion needs no CLIP
    inversion = pipe.invert(args.photo, face_index=args.face)
    print(f"{len(inversion.faces)} face(s) found; using face {inversion.face_index}")
    prefix = args.output
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"wplus": inversion.wplus.cpu()}, f"{prefix}.pt")
    inversion.aligned.image.save(f"{prefix}_crop.png")
    tensor_to_pil(pipe.render(inversion.wplus))[0].save(f"{prefix}_reconstruction.png")
    print(f"wrote {prefix}.pt, {prefix}_crop.png, {prefix}_reconstruction.png")
    if args.clip:
        clip_code = pipe.invert_clip(pil_to_tensor(inversion.aligned.image, 256))
        tensor_to_pil(pipe.render(clip_code))[0].save(f"{prefix}_clip_reconstruction.png")
        print(f"wrote {prefix}_clip_reconstruction.png (CLIP-based inversion, coarse)")
    return 0
