"""``python -m csla_core bench``: per-stage timings at real sizes with random weights.

Compute cost does not depend on weight values, so random full-size models measure what users
get, with no download. Each figure is the median of several runs after a warm-up run.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..faces import (
    DEFAULT_OUTPUT_SIZE,
    Face,
    FaceDetector,
    align_face,
    get_default_detector,
    paste_back,
    select_face,
    to_rgb,
)
from ..runtime import allocator_settings, cpu_description, minor_page_faults

# Targets for 2 CPU cores (seconds per stage), checked by name in the report: in fp32, and
# with native bf16 (AVX512-BF16 or AMX), where the precision issue sets tighter ones.
CPU_TARGETS_S = {
    "generator 1024, fast path": 1.2,
    "generator preview 256, fast path": 0.5,
    "encoder e4e 256": 0.8,
    "face detection + alignment, 12 MP photo": 1.0,
    "photo upload -> first edited 1024 image": 3.0,
    "slider move (re-render one 1024 edit)": 1.2,
    "4 diverse edits at 1024": 4.0,
}
BF16_CPU_TARGETS_S = {
    **CPU_TARGETS_S,
    "generator 1024, fast path": 0.3,
    "generator preview 256, fast path": 0.12,
    "photo upload -> first edited 1024 image": 1.5,
    "slider move (re-render one 1024 edit)": 0.4,
    "4 diverse edits at 1024": 1.5,
}
RSS_TARGET_GB = 3.5
# The fast 1024 render against the reference path as the reference implementation runs it.
SPEEDUP_TARGETS = {"fp32": 5.0, "fp32-compact": 5.0, "bf16": 8.0}
SPEEDUP_STAGE = "generator 1024, fast path"
PARITY_TOLERANCE = 2e-2  # relative L2 difference of a fast path's render from the reference's


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


def _append_note(timing: Timing, note: str) -> None:
    timing.note = f"{timing.note}; {note}" if timing.note else note


def _reference_default_allocator(
    size: int, resolutions: list[int], repeats: int, device_type: str
) -> dict[int, float]:
    """Reference-path render times from ``csla_core.evaluation.bench_baseline`` in a fresh
    process (CPU only: on a GPU the allocator is the CUDA caching allocator in both cases)."""
    if device_type != "cpu":
        return {}
    options = {
        "size": size,
        "resolutions": resolutions,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }
    command = [sys.executable, "-m", "csla_core.evaluation.bench_baseline", json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the baseline process failed:\n{done.stderr[-2000:]}")
    return {int(r): float(s) for r, s in json.loads(done.stdout).items()}


def benchmark_detect_align(
    image: Image.Image,
    repeats: int = 3,
    *,
    detector: FaceDetector | None = None,
    output_size: int = DEFAULT_OUTPUT_SIZE,
) -> dict[str, Any]:
    """Median seconds of detect, refine, align (largest face) and paste-back of the unedited crop.

    ``detect_align_s`` is detect + refine + align, i.e. photo to encoder-ready crop.
    """
    detector = detector or get_default_detector()
    rgb = image if image.mode == "RGB" else to_rgb(image)
    start = time.perf_counter()
    detector.mtcnn, detector.refine_mtcnn  # noqa: B018 - built outside the timed runs
    init_s = time.perf_counter() - start
    names = ("detect_s", "refine_s", "align_s", "paste_back_s", "detect_align_s")
    times: dict[str, list[float]] = {name: [] for name in names}
    faces: list[Face] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        faces = detector.detect(rgb)
        t1 = time.perf_counter()
        face = detector.refine(rgb, select_face(faces, 0))
        t2 = time.perf_counter()
        aligned = align_face(rgb, face, output_size)
        t3 = time.perf_counter()
        paste_back(rgb, aligned.image, aligned)
        t4 = time.perf_counter()
        for name, seconds in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t3 - t0)):
            times[name].append(seconds)
    report: dict[str, Any] = {name: statistics.median(v) for name, v in times.items()}
    report.update(
        image_size=rgb.size,
        megapixels=rgb.width * rgb.height / 1e6,
        faces=len(faces),
        repeats=max(1, repeats),
        detector_init_s=init_s,
        torch_threads=torch.get_num_threads(),
    )
    return report


def _label(resolution: int | None, preview: int, size: int) -> str:
    return f"preview {preview}" if resolution else str(size)


def run_benchmarks(
    device: str = "cpu",
    repeats: int = 3,
    preview: int = 256,
    precision: str = "auto",
    size: int = 1024,
) -> dict:
    """Every stage's median time. ``size`` < 1024 (with a smaller ``preview``) is a quick smoke
    run of the same stages; the issue's targets are checked at the real size only."""
    from ..loading import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline(random_weights=True, device=device, precision=precision, size=size)
    load_s = time.perf_counter() - start
    bench = _Bench(pipe, repeats, preview, size)
    bench.timings.append(Timing("load models (random weights, no file I/O)", load_s, 1))
    # The order matters: the product's memory peak is read before the reference path runs.
    fast_renders = bench.model_stages()
    bench.face_stages()
    bench.session_stages()
    product_rss_gb = peak_rss_gb()
    parity = bench.reference_stages(fast_renders)
    bench.default_allocator_stages(fast_renders)
    return bench.report(parity, product_rss_gb)


class _Bench:
    """One bench run: the pipeline, the stages measured so far and the targets that apply."""

    def __init__(self, pipe, repeats: int, preview: int, size: int) -> None:
        self.pipe, self.repeats, self.preview, self.size = pipe, repeats, preview, size
        self.precision = pipe.precision
        real = pipe.device.type == "cpu" and size == 1024 and preview == 256
        self.targets = {}
        if real and self.precision in SPEEDUP_TARGETS:
            self.targets = BF16_CPU_TARGETS_S if self.precision == "bf16" else CPU_TARGETS_S
        self.timings: list[Timing] = []
        self.wplus = pipe.latent_avg[None].clone()
        self.gen = pipe.generator

    def add(
        self, stage: str, fn: Callable[[], object], baseline: float | None = None, note: str = ""
    ) -> float:
        with self.pipe.autocast():
            seconds = time_call(fn, self.repeats)
        if baseline:
            note = f"{baseline / seconds:.2f}x the reference path" + (f"; {note}" if note else "")
        self.record(stage, seconds, note)
        return seconds

    def record(self, stage: str, seconds: float, note: str = "") -> None:
        target = self.targets.get(stage)
        if target is not None:
            verdict = "met" if seconds <= target else "MISSED"
            note = f"target <= {target:g}s {verdict}" + (f"; {note}" if note else "")
        self.timings.append(Timing(stage, seconds, self.repeats, note))

    def stage(self, name: str) -> Timing:
        return next(t for t in self.timings if t.stage == name)

    def label(self, resolution: int | None) -> str:
        return _label(resolution, self.preview, self.size)

    def model_stages(self) -> dict[int | None, float]:
        """Generator, encoder, CLIP and training-sample timings; returns the fast renders'."""
        from ..training.sampling import sample_batch

        pipe, gen, wplus, size = self.pipe, self.gen, self.wplus, self.size
        image = torch.zeros(1, 3, 256, 256, device=pipe.device)
        with torch.inference_mode():
            fast_renders = {
                resolution: self.add(
                    f"generator {self.label(resolution)}, fast path",
                    lambda r=resolution: gen(wplus, max_resolution=r, impl="fast"),
                )
                for resolution in (None, self.preview)
            }
            for resolution, seconds in fast_renders.items():
                gflop = gen.synthesis_flops(resolution) / 1e9
                _append_note(
                    self.stage(f"generator {self.label(resolution)}, fast path"),
                    f"{gflop:.1f} GFLOP of convolutions, {gflop / seconds:.0f} GFLOP/s",
                )
            if pipe.device.type == "cpu":  # what fresh memory costs (csla_core.runtime)
                before = minor_page_faults()
                gen(wplus, impl="fast")
                faults = minor_page_faults() - before
                # small renders never fault: the verdict is for the real size only
                verdict = _allocator_verdict(faults) if self.targets else ""
                full = self.stage(f"generator {size}, fast path")
                _append_note(full, f"page faults per render: {faults}{verdict}")
            else:  # the GPU renders diverse samples as one batch
                batch = wplus.expand(4, -1, -1).contiguous()
                self.add(
                    f"generator {size}, batch of 4, batched path",
                    lambda: gen(batch, impl="batched"),
                )
            self.add("encoder e4e 256", lambda: pipe.invert_aligned(image))
            prompts = iter(f"a smiling face {i}" for i in range(10_000))  # defeat the text cache
            self.add(
                "CLIP text encoding (prompt templates)",
                lambda: pipe.clip.encode_text([next(prompts)]),
            )
            # The image tower CLIP inversion and the calibration bank use, on one 256 px image.
            picture = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
            self.add("CLIP image encoding (1 image)", lambda: pipe.clip.encode_images(picture))
            # Data-free training's data: z -> w -> render at 256 -> CLIP image embedding.
            train_batch = 4 if pipe.device.type == "cpu" else 32
            rng = torch.Generator().manual_seed(0)
            seconds = self.add(
                f"training samples (batch {train_batch}, 256 px -> CLIP)",
                lambda: sample_batch(
                    gen, pipe.clip, train_batch, rng, latent_avg=pipe.latent_avg[:1]
                ),
            )
            self.timings[-1].note = f"{train_batch / seconds:.1f} samples/s"
        return fast_renders

    def face_stages(self) -> None:
        for megapixels in (12, 1):
            photo = _photo(megapixels)
            figures = benchmark_detect_align(photo, self.repeats)
            self.record(
                f"face detection + alignment, {megapixels} MP photo",
                figures["detect_align_s"],
                f"{photo.size[0]}x{photo.size[1]}; paste-back {figures['paste_back_s']:.3f}s",
            )

    def session_stages(self) -> None:
        """What a user of the app waits for: upload -> first edit, a slider move, 4 edits, with
        the photo's detail kept (the default; the first edit renders the face's reconstruction
        for it, later ones reuse it), and a step of "Refine likeness"."""
        from ..editing.detail import keep_detail

        pipe, size = self.pipe, self.size
        photo = _photo(1)
        session: dict = {}

        def upload_to_first_edit() -> None:
            inversion = pipe.invert(photo)
            session["inversion"] = inversion
            session["embedding"] = pipe.image_embedding(inversion.wplus)
            result = pipe.edit(
                inversion.wplus, "smiling", n_samples=1, image_embedding=session["embedding"]
            )
            session["reconstruction"] = pipe.reconstruct(inversion).cpu()
            pipe.deliver(inversion, pipe.render_edit(result), session["reconstruction"])

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
            session["renders"] = pipe.render_edit(result).cpu()

        self.add(
            f"photo upload -> first edited {size} image",
            upload_to_first_edit,
            note="1 MP photo, its detail kept, pasted back",
        )
        self.add(f"slider move (re-render one {size} edit)", slider_move)
        self.add(f"4 diverse edits at {size}", four_edits)
        renders, reconstruction = session["renders"], session["reconstruction"]
        inversion = session["inversion"]
        keep = self.add(
            f"keep the photo's detail, 4 results at {size}",
            lambda: keep_detail(renders, reconstruction).apply(inversion.crop(size)),
        )
        _append_note(self.stage(f"keep the photo's detail, 4 results at {size}"),
                     f"{1000 * keep / 4:.1f} ms per result")  # fmt: skip
        self.add(
            f"4 results kept and pasted into the photo at {size}",
            lambda: pipe.deliver(inversion, renders, reconstruction),
            note="1 MP photo",
        )
        self.refinement_stage(inversion)

    def refinement_stage(self, inversion) -> None:
        """Seconds per "Refine likeness" step (Adam on the synthesis weights, through the
        pipeline's synthesis path), as a multiple of a forward render at the loss's size."""
        from ..editing.likeness import RefineConfig

        pipe = self.pipe
        config = RefineConfig.for_device(pipe.device, steps=self.repeats + 1, seconds=None)
        resolution = min(config.resolution or self.size, self.size)
        refinement = pipe.tune(inversion.wplus, inversion.crop(self.size), config)
        # The first step also builds Adam's state: the median of the later ones.
        gaps = [b - a for (a, _), (b, _) in zip(refinement.curve, refinement.curve[1:])]
        step_s = sorted(gaps)[len(gaps) // 2]
        with torch.inference_mode():
            forward_s = time_call(
                lambda: pipe.render(inversion.wplus, max_resolution=resolution), self.repeats
            )
        self.record(
            f"refine likeness, one step at {resolution} px",
            step_s,
            f"{step_s / forward_s:.2f}x a {resolution} px render ({forward_s:.3f}s); "
            f"{refinement.loss}",
        )

    def reference_stages(self, fast_renders: dict[int | None, float]) -> dict[str, float]:
        """The reference and batched paths in this process, and each path's parity with the
        reference. They run last: the reference path's single-channel filtering needs far more
        memory (oneDNN pads each one-channel image to a block of 16), which users never run."""
        gen, wplus = self.gen, self.wplus
        parity: dict[str, float] = {}
        with torch.inference_mode():
            for resolution, fast_s in fast_renders.items():
                label = self.label(resolution)
                reference = self.add(
                    f"generator {label}, reference path",
                    lambda r=resolution: gen(wplus, max_resolution=r, impl="reference"),
                )
                self.add(
                    f"generator {label}, batched path",
                    lambda r=resolution: gen(wplus, max_resolution=r, impl="batched"),
                    reference,
                )
                fast = self.stage(f"generator {label}, fast path")
                _append_note(fast, f"{reference / fast_s:.2f}x the reference path in this process")
            # The speed-ups must not change the picture: relative L2 difference at full size, in
            # the pipeline's precision, against the reference path in fp32.
            exact = gen(wplus, impl="reference").float()
            for impl in ("batched", "fast"):
                with self.pipe.autocast():
                    out = gen(wplus, impl=impl).float()
                parity[impl] = float((out - exact).norm() / exact.norm())
        return parity

    def default_allocator_stages(self, fast_renders: dict[int | None, float]) -> None:
        """The baseline the speed-up target is about: the reference path as the reference
        implementation runs it, in a fresh process with the C library's allocator defaults."""
        resolutions = {None: self.size, self.preview: self.preview}
        default_times = _reference_default_allocator(
            self.size, list(resolutions.values()), self.repeats, self.pipe.device.type
        )
        for resolution, fast_s in fast_renders.items():
            label = self.label(resolution)
            seconds = default_times.get(resolutions[resolution])
            if seconds is None:
                continue
            self.record(
                f"generator {label}, reference path, default allocator", seconds, "own process"
            )
            fast = self.stage(f"generator {label}, fast path")
            ratio = seconds / fast_s
            verdict = ""
            if self.targets and fast.stage == SPEEDUP_STAGE:
                target = SPEEDUP_TARGETS[self.precision]
                verdict = f" (target >= {target:g}x {'met' if ratio >= target else 'MISSED'})"
            _append_note(fast, f"{ratio:.2f}x the reference path as it runs{verdict}")

    def report(self, parity: dict[str, float], product_rss_gb: float) -> dict:
        timings = self.timings
        order = {t.stage: i for i, t in enumerate(timings)}
        timings.sort(key=lambda t: (not t.stage.startswith("generator"), order[t.stage]))
        return {
            "machine": {
                "platform": platform.platform(),
                "cpu": cpu_description(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": _device_name(self.pipe.device),
                "allocator": allocator_settings().reason,
            },
            "precision": self.precision,
            "precision_reason": self.pipe.precision_reason,
            "targets_checked": bool(self.targets),
            "timings": [asdict(t) for t in timings],
            "parity_vs_reference": parity,
            "peak_rss_gb": round(product_rss_gb, 3),
            "peak_rss_with_reference_path_gb": round(peak_rss_gb(), 3),
        }


def _device_name(device: torch.device) -> str:
    """The device, with the GPU's name where it is one (docs/performance.md's figures name
    it)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _allocator_verdict(faults: int) -> str:
    """Whether the allocator tuning works here, judged by a warm render's page faults (an
    untuned 1024 render takes about 165,000; a tuned, warm one none)."""
    if not allocator_settings().applied:
        return " (allocator not tuned)"
    if faults < 1000:
        return " (allocator tuning effective)"
    return f" (allocator tuning NOT effective with torch {torch.__version__}: renders are slower)"


def format_report(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"CSLA bench: {machine['platform']}, torch {machine['torch']}, "
        f"{machine['threads']} threads, device {machine['device']} (random weights, real sizes)",
        f"cpu: {machine['cpu']}",
        f"allocator: {machine['allocator']}",
        f"precision: {report['precision']} ({report.get('precision_reason', '')})",
        f"{'stage':<48} {'median':>10}  runs  note",
    ]
    for t in report["timings"]:
        lines.append(f"{t['stage']:<48} {t['median_s']:>9.3f}s  {t['runs']:>4}  {t['note']}")
    rss = report["peak_rss_gb"]
    verdict = ""
    if report["targets_checked"]:
        verdict = f"target <= {RSS_TARGET_GB:g}GB {'met' if rss <= RSS_TARGET_GB else 'MISSED'}"
    lines.append(f"{'peak resident memory (all models, fast path)':<48} {rss:>8.2f}GB  {verdict}")
    lines.append(
        f"{'peak resident memory, reference path included':<48} "
        f"{report['peak_rss_with_reference_path_gb']:>8.2f}GB"
    )
    for impl, error in report["parity_vs_reference"].items():
        verdict = "met" if error <= PARITY_TOLERANCE else "MISSED"
        lines.append(
            f"{impl} path ({report['precision']}) vs reference path at full size: relative "
            f"difference {error:.1e} (target <= {PARITY_TOLERANCE:g} {verdict})"
        )
    if "baseline" in report:
        lines += ["", format_side_by_side(report["baseline"], report)]
    return "\n".join(lines)


def run_baseline(precision: str, argv: list[str], python: str | None = None) -> dict:
    """The bench in ``precision`` (``argv``: the other bench options), in its own process so
    that its memory and allocator state are its own; ``python``: another interpreter (another
    torch: its environment must have this project's requirements). Returns its report."""
    command = [python or sys.executable, "-m", "csla_core", "bench", *argv]
    command += ["--precision", precision, "--baseline", "none", "--json", "-"]
    root = Path(__file__).resolve().parents[2]  # where `-m csla_core` finds this code
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"the {precision} bench process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


# Two torch releases' figures "differ" beyond this ratio either way (run-to-run spread on these
# virtual machines reaches 10-30 % for single stages).
TORCH_DIFFERS = 1.25


def format_side_by_side(before: dict, after: dict) -> str:
    """Every stage in both runs (two precisions, or two torch releases) and the speed-up, plus
    each run's peak memory; between torch releases, the stages whose times differ beyond
    ``TORCH_DIFFERS`` say so."""
    a, b = before["precision"], after["precision"]
    torches = before["machine"]["torch"] != after["machine"]["torch"]
    if torches:
        a, b = f"torch {before['machine']['torch']}", f"torch {after['machine']['torch']}"
    times = {t["stage"]: t["median_s"] for t in before["timings"]}
    lines = [f"{'stage, side by side':<48} {a:>9} {b:>9}  speed-up"]
    for t in after["timings"]:
        if t["stage"] in times and "reference path" not in t["stage"]:
            old, new = times[t["stage"]], t["median_s"]
            ratio = old / new
            differs = torches and not 1 / TORCH_DIFFERS <= ratio <= TORCH_DIFFERS
            note = "  differs between the torch releases" if differs else ""
            lines.append(f"{t['stage']:<48} {old:>8.3f}s {new:>8.3f}s  {ratio:.2f}x{note}")
    lines.append(
        f"{'peak resident memory (fast path)':<48} {before['peak_rss_gb']:>7.2f}GB "
        f"{after['peak_rss_gb']:>7.2f}GB"
    )
    return "\n".join(lines)
