"""``python -m csla_core bench``: per-stage timings at real sizes with random weights.

Compute cost does not depend on weight values, so random full-size models measure what users
get, with no download. Each figure is the median of several runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    stage: str
    median_s: float
    runs: int
    note: str = ""


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


def _photo(megapixels: float):
    """A real photo of about ``megapixels`` MP: scikit-image's public-domain astronaut, scaled
    so the face keeps a typical portrait proportion, on a wider canvas (4:3)."""
    from PIL import Image
    from skimage import data

    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = height * 4 // 3
    face = Image.fromarray(data.astronaut()).resize((height, height), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (width, height), (90, 90, 100))
    canvas.paste(face, ((width - height) // 2, 0))
    return canvas


def run_benchmarks(device: str = "cpu", repeats: int = 3, preview: int = 256) -> dict:
    from .faces import benchmark_detect_align
    from .imaging import tensor_to_pil
    from .pipeline import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline(random_weights=True, device=device)
    load_s = time.perf_counter() - start
    timings: list[Timing] = [Timing("load models (random weights, no file I/O)", load_s, 1)]

    wplus = pipe.latent_avg[None].clone()
    image = torch.zeros(1, 3, 256, 256)
    gen = pipe.generator

    def add(
        stage: str, fn: Callable[[], object], baseline: float | None = None, note: str = ""
    ) -> float:
        seconds = time_call(fn, repeats)
        if baseline:
            note = f"{baseline / seconds:.2f}x the reference path" + (f"; {note}" if note else "")
        timings.append(Timing(stage, seconds, repeats, note))
        return seconds

    with torch.inference_mode():
        ref_full = add("generator 1024, reference path", lambda: gen(wplus, impl="reference"))
        add("generator 1024, fast path", lambda: gen(wplus, impl="fast"), ref_full)
        ref_prev = add(
            f"generator preview {preview}, reference path",
            lambda: gen(wplus, max_resolution=preview, impl="reference"),
        )
        add(
            f"generator preview {preview}, fast path",
            lambda: gen(wplus, max_resolution=preview, impl="fast"),
            ref_prev,
        )
        add("encoder e4e 256", lambda: pipe.invert_aligned(image))
        prompts = iter(f"a smiling face {i}" for i in range(10_000))  # defeat the text cache
        add("CLIP text encoding (prompt templates)", lambda: pipe.clip.encode_text([next(prompts)]))

    for megapixels in (12, 1):
        photo = _photo(megapixels)
        figures = benchmark_detect_align(photo, repeats)
        timings.append(
            Timing(
                f"face detection + alignment, {megapixels} MP photo",
                figures["detect_align_s"],
                repeats,
                f"{photo.size[0]}x{photo.size[1]}; paste-back {figures['paste_back_s']:.3f}s",
            )
        )

    photo = _photo(1)
    session: dict = {}

    def upload_to_first_edit() -> None:
        inversion = pipe.invert(photo)
        session["inversion"] = inversion
        session["embedding"] = pipe.image_embedding(inversion.wplus)
        result = pipe.edit(
            inversion.wplus, "smiling", n_samples=1, image_embedding=session["embedding"]
        )
        pipe.paste(inversion, tensor_to_pil(pipe.render_edit(result))[0])

    def slider_move(strength: list[float] = [0.5]) -> None:  # noqa: B006 - a counter
        strength[0] = -strength[0]  # a new strength each time
        inversion = session["inversion"]
        result = pipe.edit(
            inversion.wplus,
            "smiling",
            strength=strength[0],
            n_samples=1,
            image_embedding=session["embedding"],
        )
        pipe.render_edit(result)

    def four_edits() -> None:
        inversion = session["inversion"]
        result = pipe.edit(
            inversion.wplus, "smiling", n_samples=4, image_embedding=session["embedding"]
        )
        pipe.render_edit(result)

    add(
        "photo upload -> first edited 1024 image",
        upload_to_first_edit,
        note="1 MP photo, pasted back",
    )
    add("slider move (re-render one 1024 edit)", slider_move)
    add("4 diverse edits at 1024", four_edits)
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(pipe.device),
        },
        "timings": [asdict(t) for t in timings],
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def format_report(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"CSLA bench: {machine['platform']}, torch {machine['torch']}, "
        f"{machine['threads']} threads, device {machine['device']} (random weights, real sizes)",
        f"{'stage':<48} {'median':>10}  runs  note",
    ]
    for t in report["timings"]:
        lines.append(f"{t['stage']:<48} {t['median_s']:>9.3f}s  {t['runs']:>4}  {t['note']}")
    lines.append(f"{'peak resident memory':<48} {report['peak_rss_gb']:>8.2f}GB")
    return "\n".join(lines)


def bench_command(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csla_core bench", description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the figures as JSON ('-' = stdout)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmarks(device=args.device, repeats=args.repeats)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
    return 0
