"""First run without mappers: the service edits with the fallback while mappers are calibrated
in the background, calibration yields to requests, and the next edit after it is a CSLA edit
(no restart)."""

from __future__ import annotations

import time

import torch

from csla_core import load_pipeline
from csla_core.editing.result import BASELINE_METHOD, MAPPERS_METHOD
from csla_core.service import MapperPreparation
from csla_core.training.calibrate import CalibrationConfig
from csla_core.training.config import TrainConfig


def _wait(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_calibration_in_the_background_switches_edits_to_csla(tmp_path):
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True,
                         with_mappers=False)  # fmt: skip
    pipe.baseline_steps = 2
    wplus = pipe.latent_avg[None]
    assert pipe.mappers is None and pipe.edit(wplus, "smiling").method == BASELINE_METHOD
    config = CalibrationConfig(
        n_samples=16, chunk=4, min_samples=4, mappers=TrainConfig(max_resolution=32)
    )
    finished = []
    prep = MapperPreparation(pipe, config, output_dir=tmp_path,
                             on_done=lambda p, r: finished.append(r))  # fmt: skip
    assert "0/16 samples" in prep.status.message and "fallback" in prep.status.message
    with prep.serving():  # a request in progress: calibration renders one chunk, then waits
        prep.start()
        _wait(lambda: prep.status.done == 4)
        time.sleep(0.5)
        assert prep.status.done == 4 and prep.status.state == "running"
    _wait(lambda: prep.status.state != "running")
    assert prep.status.state == "done" and finished and "ready" in prep.status.message
    edit = pipe.edit(wplus, "smiling", n_samples=3)
    assert edit.method == MAPPERS_METHOD and edit.wplus.shape[0] == 3
    assert pipe.sources["mappers"] == str(tmp_path / "mappers.safetensors")
    assert not torch.equal(edit.wplus[0], edit.wplus[1])  # several different edits


def test_a_failed_calibration_is_reported_and_the_fallback_keeps_working(tmp_path):
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True,
                         with_mappers=False)  # fmt: skip
    pipe.baseline_steps = 2
    config = CalibrationConfig(n_samples=4, chunk=4, min_samples=4,
                               mappers=TrainConfig(max_resolution=32, hidden_dim=8))  # fmt: skip
    prep = MapperPreparation(pipe, config, output_dir=tmp_path).start()
    prep.thread.join(120)
    assert prep.status.state == "failed" and "fallback" in prep.status.message
    assert pipe.mappers is None
    assert pipe.edit(pipe.latent_avg[None], "smiling").method == BASELINE_METHOD


def test_zero_gpu_calibrates_in_slices_that_resume_the_saved_bank(tmp_path):
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True,
                         with_mappers=False)  # fmt: skip
    config = CalibrationConfig(
        n_samples=12, chunk=4, min_samples=4, mappers=TrainConfig(max_resolution=32)
    )
    prep = MapperPreparation(pipe, config, output_dir=tmp_path)
    slices = []
    # Each slice renders one chunk, then stops; its report is applied where the app runs.
    while not prep.apply(prep.run_slice(seconds=0.0)):
        slices.append(prep.status.done)
        assert pipe.mappers is None and len(slices) < 10
    assert slices == [4, 8] and prep.status.state == "done" and pipe.mappers is not None


def test_a_slice_run_elsewhere_hands_its_mappers_to_the_apps_process(tmp_path):
    """ZeroGPU runs a slice in a forked worker: its pipeline is a copy. The app's process
    takes the mappers from the slice's file and report, not from the worker's memory."""
    import copy

    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True,
                         with_mappers=False)  # fmt: skip
    config = CalibrationConfig(
        n_samples=8, chunk=8, min_samples=4, mappers=TrainConfig(max_resolution=32)
    )
    prep = MapperPreparation(pipe, config, output_dir=tmp_path)
    worker = copy.copy(prep)  # the forked worker's view: another pipeline object
    worker.pipe = copy.copy(pipe)
    report = worker.run_slice(seconds=600.0)
    assert report.state == "done" and worker.pipe.mappers is not None
    assert pipe.mappers is None and prep.status.state == "running"  # nothing came back by itself
    assert prep.apply(report) and pipe.mappers is not None and prep.status.state == "done"
    assert pipe.sources["mappers"] == report.path


def test_api_results_say_when_the_fallback_made_them():
    from pathlib import Path

    from csla_core.service import EditingService, EditRequest, session_cache

    photo = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
    pipe = load_pipeline(random_weights=True, device="cpu", size=32, tiny_clip=True,
                         with_mappers=False)  # fmt: skip
    pipe.baseline_steps = 2
    service = EditingService(pipe)
    request = EditRequest.clean(str(photo), "smiling", samples=1)
    steps = list(service.edit_steps(session_cache(None), request))
    assert "optimisation fallback" in steps[-1].items[0][1]
