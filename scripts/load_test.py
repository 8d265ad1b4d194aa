"""Bounded load test of the portrait editor's ``/edit`` API, on loopback only.

    python scripts/load_test.py                          # 8 users for 180 s (CSLA_LOAD_TEST_SECONDS)
    python scripts/load_test.py --seconds 60 --users 4
    python scripts/load_test.py --requests 2             # each user: 1 warm-up + 2 requests
    python scripts/load_test.py --requests 1 --small-models   # what tests/test_load.py runs

It starts ``python app.py --random-weights --no-download --max-resolution N`` on 127.0.0.1 (a free
port), or uses ``--url`` (which must be a loopback address). Each simulated user is its own
``gradio_client.Client`` (its own session) with its own photo: the astronaut (assets/astronaut.jpg,
scikit-image's public-domain picture) flipped and / or tinted differently, plus a faint noise
pattern seeded by the user's number, so that every pixel identifies whose photo it is. A result
counts as correct when it has the photo's size and most of its pixels (everything outside the
pasted face) are exactly the user's own upload and not somebody else's.

Phases: start-up (server RSS measured when idle) -> warm-up (every user makes one request at the
same time; RSS measured again) -> the timed / counted phase -> RSS at the end. The server's RSS is
also sampled every second. Everything is bounded: the number of requests or the duration, a
per-request timeout and an overall deadline; the server is stopped at the end.

Printed: requests, failures, latency percentiles (p50 / p90 / max, measured by the client, so they
include the time spent waiting in the queue), requests per minute, and the server's memory.
``--json PATH`` writes the same figures as JSON; ``--app-log PATH`` keeps the app's output there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the app's own launch helpers (csla_app/ beside app.py)
    sys.path.insert(0, str(REPO))

from csla_app.launch import app_environment, free_port  # noqa: E402

ASTRONAUT = REPO / "assets" / "astronaut.jpg"
PROMPTS = ["smiling", "grey hair", "wearing glasses", "angry", "a face with a beard", "surprised"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OWN_MIN = 0.6  # at least this share of a result's pixels must equal the user's own upload ...
OTHER_MAX = 0.3  # ... and at most this share anybody else's


# ------------------------------------------------------------------------------------ photos


def _variant(base: np.ndarray, index: int) -> np.ndarray:
    """The astronaut for user ``index``: flipped and / or tinted, plus a seeded noise pattern."""
    image = base.astype(np.int16)
    if index % 2 == 1:
        image = image[:, ::-1]
    tints = [(0, 0, 0), (0, 0, 0), (24, 0, -24), (-24, 0, 24), (0, 20, 0), (16, 16, 16)]
    tints += [(-16, -16, -16), (20, -10, 0)]
    image = image + np.array(tints[index % len(tints)], np.int16)
    noise = np.random.default_rng(1000 + index).integers(-6, 7, size=image.shape, dtype=np.int16)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_photos(folder: str | os.PathLike, users: int) -> list[Path]:
    """One distinct PNG (lossless, so the pixels can be checked exactly) per user."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(ASTRONAUT) as image:
        base = np.asarray(image.convert("RGB"))
    paths = []
    for index in range(users):
        path = folder / f"user{index}.png"
        Image.fromarray(_variant(base, index), "RGB").save(path, compress_level=1)
        paths.append(path)
    return paths


def load_pixels(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(np.asarray(image.convert("RGB")))
    return out


def whose(result: np.ndarray, uploads: Sequence[np.ndarray]) -> list[float]:
    """For every upload, the share of the result's pixels exactly equal to it (0 if sizes differ)."""
    shares = []
    for upload in uploads:
        if upload.shape != result.shape:
            shares.append(0.0)
        else:
            shares.append(float(np.all(upload == result, axis=-1).mean()))
    return shares


def check_result(result: np.ndarray, uploads: Sequence[np.ndarray], own: int) -> str | None:
    """None when ``result`` is the user's own photo outside the face; else what is wrong."""
    shares = whose(result, uploads)
    best = int(np.argmax(shares))
    others = max((s for i, s in enumerate(shares) if i != own), default=0.0)
    if shares[own] < OWN_MIN or best != own or others > OTHER_MAX:
        return (
            f"result matches user {best} ({shares[best]:.2f} of pixels); own photo "
            f"{shares[own]:.2f}, best other {others:.2f}"
        )
    return None


# ------------------------------------------------------------------------------------ server


def require_loopback(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to send load to {host!r}: loopback addresses only")


# ``--small-models``: the app's own build_demo and launch options around a random pipeline with
# a 64 px generator and a small CLIP (the same code paths, a fraction of the start-up time and
# compute), for the short form of the test in CI.
SMALL_MODELS_APP = """
import sys
import app
import csla_core
pipe = csla_core.load_pipeline(random_weights=True, device="cpu", size=64, tiny_clip=True)
app.build_demo(pipe, max_resolution=int(sys.argv[1])).launch(**app.launch_options())
"""


def start_app(
    max_resolution: int = 64,
    log_path: str | os.PathLike | None = None,
    timeout_s: float = 180,
    small_models: bool = False,
    precision: str = "auto",
    refine_seconds: float | None = None,
) -> tuple[subprocess.Popen, str]:
    """``python app.py --random-weights`` on 127.0.0.1; (process, url) once it answers.
    ``small_models``: the same app around small random models (SMALL_MODELS_APP)."""
    port = free_port()
    env = app_environment(port, CSLA_DEVICE="cpu")
    if refine_seconds is not None:
        env["CSLA_REFINE_SECONDS"] = str(refine_seconds)
    command = [
        sys.executable,
        str(REPO / "app.py"),
        "--random-weights",
        "--no-download",
        "--max-resolution",
        str(max_resolution),
        "--precision",
        precision,
    ]
    if small_models:
        command = [sys.executable, "-c", SMALL_MODELS_APP, str(max_resolution)]
    log = open(log_path or os.devnull, "wb")  # the child keeps its own copy
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode} at start-up")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as response:
                response.read()
            return process, url
        except OSError:
            time.sleep(0.5)
    stop_app(process)
    raise RuntimeError(f"the app did not answer within {timeout_s:.0f} s")


def stop_app(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def rss_of(pid: int) -> Callable[[], int]:
    import psutil

    process = psutil.Process(pid)
    return lambda: process.memory_info().rss


class RssSampler(threading.Thread):
    """(monotonic time, probe()) every ``every_s`` seconds until stopped (at most ``max_s``)."""

    def __init__(self, probe: Callable[[], int], every_s: float = 1.0, max_s: float = 3600):
        super().__init__(daemon=True)
        self.probe, self.every_s, self.max_s = probe, every_s, max_s
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.is_set() and time.monotonic() - start < self.max_s:
            try:
                self.samples.append((time.monotonic(), self.probe()))
            except Exception:  # the process has gone: nothing more to sample
                return
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


# ------------------------------------------------------------------------------------ load


@dataclass
class Report:
    users: int
    warmup_requests: int = 0
    requests: int = 0  # after the warm-up
    failures: list[str] = field(default_factory=list)  # warm-up included
    latencies_s: list[float] = field(default_factory=list)  # after the warm-up
    warmup_latencies_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    rss_start_mb: float | None = None
    rss_after_warmup_mb: float | None = None
    rss_end_mb: float | None = None
    rss_max_mb: float | None = None
    rss_timeline_mb: list[float] = field(default_factory=list)  # timed phase, at each tenth
    requests_per_user: list[int] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else None

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("latencies_s")
        data.pop("warmup_latencies_s")
        data["failed"] = len(self.failures)
        data["p50_s"] = self.percentile(50)
        data["p90_s"] = self.percentile(90)
        data["max_s"] = max(self.latencies_s) if self.latencies_s else None
        data["warmup_max_s"] = max(self.warmup_latencies_s) if self.warmup_latencies_s else None
        data["requests_per_min"] = (
            60 * self.requests / self.duration_s if self.duration_s > 0 else None
        )
        if self.rss_end_mb is not None and self.rss_after_warmup_mb is not None:
            data["rss_growth_after_warmup_mb"] = self.rss_end_mb - self.rss_after_warmup_mb
        return data

    def text(self) -> str:
        s = self.summary()

        def fmt(value, unit=""):
            return "-" if value is None else f"{value:.2f}{unit}"

        lines = [
            f"users {self.users}: {s['warmup_requests']} warm-up requests, then {s['requests']} "
            f"requests in {self.duration_s:.0f} s ({fmt(s['requests_per_min'])} per minute)",
            f"failures: {s['failed']}",
            f"latency after warm-up (client side, queue included): p50 {fmt(s['p50_s'], ' s')}, "
            f"p90 {fmt(s['p90_s'], ' s')}, max {fmt(s['max_s'], ' s')} (warm-up max "
            f"{fmt(s['warmup_max_s'], ' s')})",
            f"server RSS: start {fmt(self.rss_start_mb, ' MB')}, after warm-up "
            f"{fmt(self.rss_after_warmup_mb, ' MB')}, end {fmt(self.rss_end_mb, ' MB')}, max "
            f"{fmt(self.rss_max_mb, ' MB')}",
            "server RSS at each tenth of the timed phase (MB): "
            + ", ".join(f"{v:.0f}" for v in self.rss_timeline_mb),
            f"requests per user: {self.requests_per_user}",
        ]
        lines += [f"  failure: {f}" for f in self.failures[:20]]
        return "\n".join(lines)


def one_request(
    client,
    photos: Sequence[Path],
    uploads: Sequence[np.ndarray],
    index: int,
    rng: random.Random,
    samples: int,
    timeout_s: float,
    refine: bool = False,
) -> tuple[float, str | None]:
    """User ``index`` edits their photo once: (seconds taken, the problem or None); ``refine``:
    with /edit's refine parameter (the face is refined in the user's session first)."""
    from gradio_client import handle_file

    prompt = rng.choice(PROMPTS)
    strength = round(rng.uniform(-2.0, 2.0), 1)
    started = time.perf_counter()
    try:
        job = client.submit(
            handle_file(str(photos[index])),
            prompt,
            strength,
            rng.randrange(1000),
            samples,
            *(("keep", True) if refine else ()),
            api_name="/edit",
        )
        result = job.result(timeout=timeout_s)
    except Exception as exc:
        return time.perf_counter() - started, f"user {index}: {type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started
    if len(result) != samples:
        return elapsed, f"user {index}: {len(result)} images instead of {samples}"
    # Identical images (strength 0: every sample is the photo) are one downloaded file.
    paths = list(dict.fromkeys(item["image"] for item in result))
    try:
        problem = None
        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            problem = problem or check_result(pixels, uploads, index)
    except Exception as exc:
        problem = f"unreadable result: {type(exc).__name__}: {exc}"
    finally:
        for path in paths:  # downloads stay few (long runs)
            Path(path).unlink(missing_ok=True)
    if problem:
        return elapsed, f"user {index} ({prompt!r}, strength {strength}): {problem}"
    return elapsed, None


def record_rss(
    report: Report, samples: list[tuple[float, int]], started: float, ended: float
) -> None:
    """The server's peak RSS, and its RSS at each tenth of the timed phase."""
    values = [rss for _t, rss in samples]
    if values:
        report.rss_max_mb = max(values) / 2**20
    timed = [(t, rss) for t, rss in samples if started <= t <= ended]
    for tenth in range(1, 11):
        moment = started + (ended - started) * tenth / 10
        before = [rss for t, rss in timed if t <= moment]
        if before:
            report.rss_timeline_mb.append(round(before[-1] / 2**20, 1))


def run_load(
    url: str,
    photos: Sequence[Path],
    *,
    requests_per_user: int | None = None,
    seconds: float | None = None,
    samples: int = 2,
    rss_probe: Callable[[], int] | None = None,
    request_timeout_s: float = 300,
    download_dir: str | os.PathLike | None = None,
    seed: int = 0,
    refine: bool = False,
) -> Report:
    """Every photo is one user; one warm-up request each, then ``requests_per_user`` requests each
    or as many as fit in ``seconds`` (a request is only started before the deadline).
    ``refine``: each user's warm-up refines their face, which every later request then uses."""
    from gradio_client import Client

    require_loopback(url)
    if (requests_per_user is None) == (seconds is None):
        raise ValueError("give exactly one of requests_per_user and seconds")
    users = len(photos)
    uploads = load_pixels(photos)
    report = Report(users=users, requests_per_user=[0] * users)
    lock = threading.Lock()
    mb = (lambda: rss_probe() / 2**20) if rss_probe else (lambda: None)
    sampler = RssSampler(rss_probe) if rss_probe else None
    report.rss_start_mb = mb()
    if sampler:
        sampler.start()
    download_root = Path(download_dir or tempfile.mkdtemp(prefix="csla-load-"))
    warmed = threading.Barrier(users + 1)
    go = threading.Event()
    state = {"deadline": None, "end": None}

    def user(index: int) -> None:
        try:
            run_user(index)
        except Exception as exc:  # a bug of this script must not pass for a quiet user
            with lock:
                report.failures.append(f"user {index} stopped: {type(exc).__name__}: {exc}")

    def run_user(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = None
        try:
            client = Client(url, verbose=False, download_files=str(download_root / f"u{index}"))
            elapsed, problem = one_request(
                client, photos, uploads, index, rng, samples, request_timeout_s, refine
            )
            with lock:
                report.warmup_requests += 1
                report.warmup_latencies_s.append(elapsed)
                if problem:
                    report.failures.append(f"warm-up: {problem}")
        except Exception as exc:
            with lock:
                report.failures.append(f"user {index} could not start: {exc!r}")
        try:
            warmed.wait(timeout=request_timeout_s * 2)
        except threading.BrokenBarrierError:
            pass
        go.wait(timeout=request_timeout_s * 2)
        if client is None:
            return
        done = 0
        while True:
            if requests_per_user is not None and done >= requests_per_user:
                break
            if state["deadline"] is not None and time.monotonic() >= state["deadline"]:
                break
            elapsed, problem = one_request(
                client, photos, uploads, index, rng, samples, request_timeout_s
            )
            done += 1
            with lock:
                report.requests += 1
                report.requests_per_user[index] += 1
                report.latencies_s.append(elapsed)
                if problem:
                    report.failures.append(problem)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for thread in threads:
        thread.start()
    try:
        warmed.wait(timeout=request_timeout_s * 2)
    except threading.BrokenBarrierError:
        report.failures.append("the warm-up did not finish in time")
    report.rss_after_warmup_mb = mb()
    started = time.monotonic()
    if seconds is not None:
        state["deadline"] = started + seconds
    go.set()
    budget = (seconds or 0) + request_timeout_s * ((requests_per_user or 1) + 1)
    for thread in threads:
        thread.join(timeout=max(1.0, started + budget - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        report.failures.append("some users were still waiting at the overall deadline")
    ended = time.monotonic()
    report.duration_s = ended - started
    report.rss_end_mb = mb()
    if sampler:
        sampler.stop()
        record_rss(report, sampler.samples, started, ended)
    if min(report.requests_per_user, default=0) == 0:
        report.failures.append(f"a user made no request: {report.requests_per_user}")
    return report


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("CSLA_LOAD_TEST_SECONDS") or 180),
        help="duration after the warm-up (default: CSLA_LOAD_TEST_SECONDS or 180)",
    )
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per user instead of a duration"
    )
    parser.add_argument("--samples", type=int, default=2, help="images per request")
    parser.add_argument("--max-resolution", type=int, default=64, help="render size of the app")
    parser.add_argument("--url", default=None, help="a running app (loopback only)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument(
        "--app-log", default=None, help="the started app's output (default: a temporary folder)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="per request, seconds")
    parser.add_argument(
        "--small-models",
        action="store_true",
        help="a 64 px generator and a small CLIP instead of the full-size random models",
    )
    parser.add_argument(
        "--precision", default="auto", help="the app's --precision (auto, fp32, bf16)"
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="each user's warm-up request refines their face (/edit's refine), which their "
        "later requests then use",
    )
    parser.add_argument(
        "--refine-seconds",
        type=float,
        default=20.0,
        help="the app's refinement time budget with --refine (default 20 s: the memory of a "
        "refined face does not depend on it)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 64:
        parser.error("--users must be 1..64")

    work = Path(tempfile.mkdtemp(prefix="csla-load-"))
    photos = make_photos(work / "photos", args.users)
    app_log = Path(args.app_log) if args.app_log else work / "app.log"
    process = None
    url = args.url
    try:
        if url is None:
            started = time.monotonic()
            process, url = start_app(
                args.max_resolution,
                log_path=app_log,
                small_models=args.small_models,
                precision=args.precision,
                refine_seconds=args.refine_seconds if args.refine else None,
            )
            print(f"app ready at {url} after {time.monotonic() - started:.1f} s (log {app_log})")
        require_loopback(url)
        probe = rss_of(process.pid) if process is not None else None
        report = run_load(
            url,
            photos,
            requests_per_user=args.requests,
            seconds=None if args.requests is not None else args.seconds,
            samples=args.samples,
            rss_probe=probe,
            request_timeout_s=args.timeout,
            download_dir=work / "downloads",
            refine=args.refine,
        )
    finally:
        if process is not None:
            stop_app(process)
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.summary(), indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
