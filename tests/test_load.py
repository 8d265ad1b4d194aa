"""Load and queue limits of the app, on 127.0.0.1 only.

- the queue configuration: one queue group for every event that runs a model (so the app's
  ``concurrency_limit`` bounds model calls across endpoints), ``max_size`` 64;
- model calls of different endpoints never overlap (concurrency limit 1), checked with a stand-in
  pipeline that records how many of its calls run at once;
- requests beyond the queue's size are refused at once with "Queue is full" (no hang) while the
  queued ones all complete;
- a load test: the command ``python scripts/load_test.py`` (it starts the app in a subprocess),
  8 ``gradio_client`` users each with their own photo; zero failures, every result is the user's
  own photo outside the face, the server's resident memory flat after the warm-up. Short by
  default (each user: one warm-up request + one more, the app around small random models);
  ``CSLA_LOAD_TEST_SECONDS=180`` runs ``python app.py --random-weights`` (full-size random models)
  with the timed phase that long instead (``CSLA_LOAD_TEST_USERS`` changes the number of users).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # app.py and csla_app/ live at the repository root
    sys.path.insert(0, str(REPO))

from app_helpers import launch_on_loopback as launch  # noqa: E402
from pipeline_stubs import FakeInversion  # noqa: E402

import app  # noqa: E402
from csla_app import gradio_fixes  # noqa: E402
from csla_core.imaging import tensor_to_pil  # noqa: E402

MODEL_EVENTS = {"invert", "select_face", "edit_photo", "edit_on_release", "edit", "sweep"}
MODEL_EVENTS |= {"generate", "edit_preview"}
LOAD_SECONDS = float(os.environ.get("CSLA_LOAD_TEST_SECONDS") or 0)
LOAD_USERS = int(os.environ.get("CSLA_LOAD_TEST_USERS") or 8)
# Allowed growth of the server's RSS from the end of the warm-up to the end of the run.
RSS_GROWTH_LIMIT_MB = 300
# Long form: allowed rise of the server's RSS after the first tenth of the timed phase, several
# times the rise measured (docs/app.md).
RSS_PLATEAU_LIMIT_MB = 150


class StubPipeline:
    """What the app's editing service calls on a pipeline, instantly (flat images), recording how
    many model calls run at the same time. ``gate``: when set, ``invert`` waits for it."""

    def __init__(self, size: int = 64, call_s: float = 0.0):
        self.generator = SimpleNamespace(size=size)
        self.device = torch.device("cpu")
        self.notice = ""
        self.size, self.call_s = size, call_s
        self.lock = threading.Lock()
        self.active = self.max_active = self.calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def _call(self, wait: bool = False) -> None:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.entered.set()
            if wait and self.gate is not None:
                assert self.gate.wait(timeout=180), "the gate was never opened"
            time.sleep(self.call_s)
        finally:
            with self.lock:
                self.active -= 1

    def invert(self, photo, face_index=0):
        self._call(wait=True)
        with Image.open(photo) as image:
            rgb = image.convert("RGB")
        face = SimpleNamespace(box=np.array([1, 1, 9, 9]), width=8.0, height=8.0)
        return FakeInversion(
            wplus=torch.zeros(1, 4, 8),
            aligned=SimpleNamespace(image=Image.new("RGB", (self.size, self.size))),
            faces=[face],
            face_index=face_index,
            photo=rgb,
        )

    clip = object()  # edits are anchored on an image embedding

    @property
    def embedding_resolution(self):
        return min(256, self.size)

    def image_embedding(self, wplus, render=None, tuning=None):
        self._call()
        return torch.ones(1, 8)

    def edit(self, wplus, prompt, *, strength=1.0, n_samples=1, **kwargs):
        self._call()
        return SimpleNamespace(strength=strength, n=n_samples, method="stub", notices=[])

    def generate(self, prompt, n, seed):
        self._call()
        return SimpleNamespace(strength=0.0, n=n, method="stub", notices=[])

    def render(self, wplus, max_resolution=None, tuning=None):
        self._call()
        side = max_resolution or self.size
        return torch.zeros(wplus.shape[0], 3, side, side)

    def render_edit(self, edit, max_resolution=None, tuning=None):
        self._call()
        side = max_resolution or self.size
        return torch.full((edit.n, 3, side, side), max(-1.0, min(1.0, edit.strength / 3)))

    def deliver(self, inversion, renders, reconstruction=None, *, detail="keep", paste=True):
        return [inversion.photo.copy() for _ in renders] if paste else tensor_to_pil(renders)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (120, 90, 60)).save(path)
    return path


@pytest.fixture
def downloads(tmp_path):
    return str(tmp_path / "downloads")


# ------------------------------------------------------------------------------- configuration


def test_queue_configuration():
    demo = app.build_demo(StubPipeline())
    assert demo._queue.max_size == app.MAX_QUEUE_SIZE == 64
    assert demo._queue.default_concurrency_limit == 1
    ids = {fn.api_name: fn.concurrency_id for fn in demo.fns.values()}
    assert MODEL_EVENTS <= set(ids)
    assert {ids[name] for name in MODEL_EVENTS} == {app.MODEL_CONCURRENCY_ID}
    assert all(
        fn.concurrency_limit == "default" for fn in demo.fns.values() if fn.api_name in MODEL_EVENTS
    )
    # Events without a model call (examples, gallery clicks) are not held up by the model queue.
    assert all(ids[name] != app.MODEL_CONCURRENCY_ID for name in set(ids) - MODEL_EVENTS)


def test_model_calls_of_different_endpoints_never_overlap(photo, downloads):
    from gradio_client import Client, handle_file

    stub = StubPipeline(call_s=0.05)
    demo = app.build_demo(stub)
    url = launch(demo)
    try:
        calls = [
            ("/edit", (handle_file(str(photo)), "smiling", 1.0, 0, 2)),
            ("/edit", (handle_file(str(photo)), "angry", -1.0, 1, 1)),
            ("/invert", (handle_file(str(photo)),)),
            ("/generate", ("a face", 2, 0)),
            ("/sweep", ()),
            ("/edit_photo", ()),
        ]
        jobs = []
        for api_name, args in calls:
            client = Client(url, verbose=False, download_files=downloads)
            if api_name == "/sweep":
                job = client.submit(
                    photo=handle_file(str(photo)), prompt="smiling", frames=3, api_name=api_name
                )
            elif api_name == "/edit_photo":
                job = client.submit(
                    photo=handle_file(str(photo)), prompt="smiling", samples=2, api_name=api_name
                )
            else:
                job = client.submit(*args, api_name=api_name)
            jobs.append(job)
        for job in jobs:
            job.result(timeout=120)
    finally:
        demo.close()
    assert stub.calls >= 15
    assert stub.max_active == 1  # concurrency_limit=1 holds across all model endpoints


def test_requests_beyond_the_queue_size_are_refused_at_once(photo, downloads):
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    stub = StubPipeline()
    stub.gate = threading.Event()
    demo = app.build_demo(stub)
    url = launch(demo)
    extra = 6
    try:
        first_client = Client(url, verbose=False, download_files=downloads)
        first = first_client.submit(handle_file(str(photo)), "smiling", 1.0, 0, 1, api_name="/edit")
        assert stub.entered.wait(timeout=60)  # the first request is running, held by the gate
        client = Client(url, verbose=False, download_files=downloads, max_workers=100)
        started = time.monotonic()
        jobs = [
            client.submit(handle_file(str(photo)), "smiling", 1.0, i, 1, api_name="/edit")
            for i in range(app.MAX_QUEUE_SIZE + extra)
        ]
        # The queue holds MAX_QUEUE_SIZE waiting requests; the others are refused, quickly.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(job.done() for job in jobs) < extra:
            time.sleep(0.1)
        refused = [job for job in jobs if job.done()]
        refused_after = time.monotonic() - started
        assert len(refused) == extra, f"{len(refused)} refused after {refused_after:.1f} s"
        for job in refused:
            error = job.exception()
            assert isinstance(error, QueueError) and "Queue is full" in str(error), error
        stub.gate.set()  # the waiting ones now run, one after the other
        assert len(first.result(timeout=120)) == 1
        waiting = [job for job in jobs if job not in refused]
        assert len(waiting) == app.MAX_QUEUE_SIZE
        for job in waiting:
            assert len(job.result(timeout=180)) == 1
    finally:
        if stub.gate is not None:
            stub.gate.set()
        demo.close()
    print(f"\n{extra} requests beyond the queue refused within {refused_after:.1f} s")


def test_result_images_are_written_whole_under_their_content_name(tmp_path):
    from gradio import processing_utils

    app.build_demo(StubPipeline())  # installs the fix
    save = gradio_fixes.save_pil_to_cache_atomically
    assert processing_utils.save_pil_to_cache is save
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    first = save(image, str(tmp_path), format="png")
    again = save(image, str(tmp_path), format="png")
    other = save(Image.new("RGB", (64, 48)), str(tmp_path), format="png")
    assert first == again != other and Path(first).name == "image.png"
    with Image.open(first) as saved:
        assert saved.size == (64, 48) and saved.getpixel((0, 0)) == (10, 200, 30)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["image.png"] * 2


def test_identical_results_of_concurrent_users_are_served_whole(photo, downloads):
    """Users with the same photo, prompt and seed get the same image, in the same cache file."""
    from gradio_client import Client, handle_file

    demo = app.build_demo(StubPipeline())
    url = launch(demo)
    try:
        clients = [Client(url, verbose=False, download_files=downloads) for _ in range(12)]
        jobs = [
            c.submit(handle_file(str(photo)), "smiling", 1.0, 0, 4, api_name="/edit")
            for c in clients
            for _ in range(2)
        ]
        results = [job.result(timeout=120) for job in jobs]
    finally:
        demo.close()
    for result in results:
        assert len(result) == 4
        for item in result:
            with Image.open(item["image"]) as image:
                image.load()  # a truncated download fails here
                assert image.size == (48, 40)


# ------------------------------------------------------------------------------------ load


def test_load_8_users_get_their_own_results_and_memory_stays_flat(tmp_path):
    log, figures = tmp_path / "app.log", tmp_path / "load.json"
    command = [sys.executable, str(REPO / "scripts" / "load_test.py"), "--users", str(LOAD_USERS)]
    command += ["--samples", "2", "--max-resolution", "64", "--timeout", "240"]
    command += ["--app-log", str(log), "--json", str(figures)]
    # Short form: small random models (the app's own build_demo); long form: python app.py.
    command += ["--seconds", str(LOAD_SECONDS)] if LOAD_SECONDS else ["--requests", "1"]
    command += [] if LOAD_SECONDS else ["--small-models"]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=LOAD_SECONDS + 1800
    )
    print("\n" + done.stdout + done.stderr[-3000:])
    assert figures.exists(), done.stderr[-3000:]
    report = json.loads(figures.read_text())
    assert "Traceback" not in log.read_text()
    assert not report["failures"] and done.returncode == 0, report["failures"]
    assert report["warmup_requests"] == LOAD_USERS
    assert report["requests"] >= LOAD_USERS
    assert report["rss_growth_after_warmup_mb"] < RSS_GROWTH_LIMIT_MB, done.stdout
    if LOAD_SECONDS:  # long form: flat from the first tenth of the run to its end
        timeline = report["rss_timeline_mb"]
        assert max(timeline) - timeline[0] < RSS_PLATEAU_LIMIT_MB, done.stdout
