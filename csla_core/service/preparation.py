"""First run: make mappers for the loaded models in the background while the app serves.

Until they exist edits use the optimisation fallback (labelled); when calibration finishes the
pipeline switches to them (``CSLAPipeline.use_mappers``), so the next edit is a CSLA edit with
no restart. Calibration yields to requests: between bank chunks it waits while any request is
being served, so a user never waits for more than the chunk in progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..pipeline import CSLAPipeline
from ..runtime import release_free_memory
from ..training.calibrate import (
    CalibrationConfig,
    CalibrationPaused,
    CalibrationResult,
    calibrate_pipeline,
)
from .background import RequestGate
from .storage import MapperStorage, mapper_storage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparationStatus:
    state: str  # "running", "done" or "failed"
    done: int  # bank samples so far
    total: int
    eta_s: float | None  # seconds left, once there is a rate to go by
    message: str  # what the page shows


@dataclass(frozen=True)
class SliceReport:
    """What one calibration slice did, as plain values: on ZeroGPU the slice runs in a forked
    worker, whose changes to the pipeline never reach the app's process, so ``apply`` makes
    them there (the mappers are read back from ``path``)."""

    state: str  # "running", "done" or "failed"
    done: int
    path: str | None = None
    error: str = ""


class MapperPreparation:
    """Calibrates mappers for ``pipe`` in a daemon thread (``start``), waiting between chunks
    while ``gate`` is busy (``serving()`` marks a request in progress), or in slices
    (``apply(run_slice(seconds))``, ZeroGPU). Once the mappers are in use, ``storage`` keeps
    them for the next start and ``on_done(pipe, result)`` runs (the app logs the real-model
    self-check there)."""

    def __init__(
        self,
        pipe: CSLAPipeline,
        config: CalibrationConfig | None = None,
        *,
        output_dir: str | Path | None = None,
        on_done: Callable[[CSLAPipeline, CalibrationResult | None], None] | None = None,
        gate: RequestGate | None = None,
        storage: MapperStorage | None = None,
    ) -> None:
        # Small chunks: a request waits at most for the chunk being rendered (a few seconds).
        self.config = config or CalibrationConfig(chunk=4)
        self.pipe, self.output_dir, self.on_done = pipe, output_dir, on_done
        self.gate = gate or RequestGate()
        self.storage = storage or mapper_storage()
        self._state, self._error, self._kept = "running", "", ""
        self._done, self._started = 0, time.monotonic()
        self._first_done: tuple[int, float] | None = None  # (samples, time) at the first chunk
        self.result: CalibrationResult | None = None
        self.thread = threading.Thread(target=self._run, name="csla-calibration", daemon=True)

    def start(self) -> MapperPreparation:
        self.thread.start()
        return self

    def serving(self):
        """A request in progress (the gate's ``serving()``)."""
        return self.gate.serving()

    def _progress(self, done: int, total: int) -> None:
        self._done = done
        if self._first_done is None:  # samples read back from a saved bank cost nothing
            self._first_done = (done, time.monotonic())

    def run_slice(self, seconds: float) -> SliceReport:
        """Calibrate for about ``seconds`` in the caller's thread (a ZeroGPU slot), then stop;
        the next slice resumes the saved bank. Give the report to ``apply`` in the app's
        process."""
        if self._state != "running":
            return SliceReport(self._state, self._done, None, self._error)
        config = replace(self.config, minutes=seconds / 60, fit_partial=False)
        try:
            result = self._calibrate(config, between_chunks=None)
        except CalibrationPaused:
            return SliceReport("running", self._done)
        if result is None:
            return SliceReport("failed", self._done, None, self._error)
        return SliceReport("done", self._done, str(result.path))

    def apply(self, report: SliceReport) -> bool:
        """A slice's outcome in this process: progress, and once done the mappers in use (read
        from the slice's file when the slice ran elsewhere) and kept. True once done."""
        if self._state != "running":
            return self._state == "done"
        self._progress(report.done, self.config.n_samples)
        if report.state == "failed":
            self._state, self._error = "failed", report.error
        elif report.state == "done" and report.path:
            if self.pipe.mappers is None:
                from ..loading import load_mappers_for

                mappers = load_mappers_for(self.pipe, Path(report.path), self.pipe.device)
                self.pipe.use_mappers(mappers, report.path)
            self._finish(Path(report.path))
        return self._state == "done"

    def _run(self) -> None:
        result = self._calibrate(self.config, between_chunks=self.gate.wait_for_idle)
        if result is not None:
            self._finish(result.path)

    def _calibrate(self, config: CalibrationConfig, between_chunks) -> CalibrationResult | None:
        """The mappers made and in use in this process, or None (failed; said on the page)."""
        try:
            self.result = calibrate_pipeline(
                self.pipe,
                config,
                output_dir=self.output_dir,
                progress=self._progress,
                between_chunks=between_chunks,
                show_bar=False,
            )
        except CalibrationPaused:
            raise
        except Exception as exc:  # reported on the page; the fallback keeps working
            self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("calibration failed")
            return None
        logger.info(
            "CSLA mappers ready (%d samples, %.0f s): %s",
            self.result.n_samples,
            sum(self.result.seconds.values()),
            self.result.path,
        )
        return self.result

    def _finish(self, path: Path) -> None:
        """Mappers in use: keep them for the next start, then "done" (edits already use them)."""
        release_free_memory()  # the bank and the fit's working memory
        self._kept = self.storage.keep(path, self.pipe.fingerprints)
        if self.on_done is not None:
            try:
                self.on_done(self.pipe, self.result)
            except Exception:  # a diagnostic: never worth failing the preparation for
                logger.exception("after calibration")
        self._state = "done"

    @property
    def status(self) -> PreparationStatus:
        total = self.config.n_samples
        eta = None
        if self._first_done is not None and self._done > self._first_done[0]:
            rate = (self._done - self._first_done[0]) / (time.monotonic() - self._first_done[1])
            eta = (total - self._done) / rate if rate > 0 else None
        if self._state == "done":
            message = "CSLA mappers for these models are ready: edits use them."
            message += f" {self._kept}" if self._kept else ""
        elif self._state == "failed":
            message = (
                f"Preparing CSLA failed ({self._error}); edits keep using the optimisation "
                "fallback. See the log, or run `python -m csla_core calibrate`."
            )
        else:
            left = "" if eta is None else f", about {max(1, round(eta / 60))} min left"
            message = (
                f"Preparing CSLA for these models (first run only): {self._done}/{total} "
                f"samples{left}. Meanwhile edits use the optimisation fallback (slower, one "
                "result); the next edit after this finishes is a CSLA edit."
            )
            keeping = self.storage.message
            message += f" {keeping}" if keeping else ""
        return PreparationStatus(self._state, self._done, total, eta, message)
