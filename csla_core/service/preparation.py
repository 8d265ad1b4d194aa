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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..pipeline import CSLAPipeline
from ..training.calibrate import (
    CalibrationConfig,
    CalibrationPaused,
    CalibrationResult,
    calibrate_pipeline,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparationStatus:
    state: str  # "running", "done" or "failed"
    done: int  # bank samples so far
    total: int
    eta_s: float | None  # seconds left, once there is a rate to go by
    message: str  # what the page shows


class MapperPreparation:
    """Calibrates mappers for ``pipe`` in a daemon thread (``start``); ``serving()`` marks a
    request in progress. ``on_done(pipe, result)`` runs in the thread once the mappers are in
    use (the app logs the real-model self-check there)."""

    def __init__(
        self,
        pipe: CSLAPipeline,
        config: CalibrationConfig | None = None,
        *,
        output_dir: str | Path | None = None,
        on_done: Callable[[CSLAPipeline, CalibrationResult], None] | None = None,
    ) -> None:
        # Small chunks: a request waits at most for the chunk being rendered (a few seconds).
        self.config = config or CalibrationConfig(chunk=4)
        self.pipe, self.output_dir, self.on_done = pipe, output_dir, on_done
        self._serving = 0
        self._idle = threading.Condition()
        self._state, self._error = "running", ""
        self._done, self._started = 0, time.monotonic()
        self._first_done: tuple[int, float] | None = None  # (samples, time) at the first chunk
        self.result: CalibrationResult | None = None
        self.thread = threading.Thread(target=self._run, name="csla-calibration", daemon=True)

    def start(self) -> MapperPreparation:
        self.thread.start()
        return self

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self._idle:
            self._serving += 1
        try:
            yield
        finally:
            with self._idle:
                self._serving -= 1
                self._idle.notify_all()

    def _wait_for_idle(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._serving == 0)

    def _progress(self, done: int, total: int) -> None:
        self._done = done
        if self._first_done is None:  # samples read back from a saved bank cost nothing
            self._first_done = (done, time.monotonic())

    def run_slice(self, seconds: float) -> bool:
        """Calibrate for about ``seconds`` in the caller's thread (a ZeroGPU slot), then stop;
        True once the mappers are in use. The next slice resumes the saved bank."""
        if self._state != "running":
            return self._state == "done"
        config = replace(self.config, minutes=seconds / 60, fit_partial=False)
        try:
            self._calibrate(config, between_chunks=None)
        except CalibrationPaused:
            return False
        return self._state == "done"

    def _run(self) -> None:
        self._calibrate(self.config, between_chunks=self._wait_for_idle)

    def _calibrate(self, config: CalibrationConfig, between_chunks) -> None:
        try:
            self.result = calibrate_pipeline(
                self.pipe,
                config,
                output_dir=self.output_dir,
                progress=self._progress,
                between_chunks=between_chunks,
                show_bar=False,
            )
            logger.info(
                "CSLA mappers ready (%d samples, %.0f s): %s",
                self.result.n_samples,
                sum(self.result.seconds.values()),
                self.result.path,
            )
            # Edits already use the mappers; "done" is said once this thread's work is over.
            if self.on_done is not None:
                self.on_done(self.pipe, self.result)
            self._state = "done"
        except CalibrationPaused:
            raise
        except Exception as exc:  # reported on the page; the fallback keeps working
            self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("calibration failed")

    @property
    def status(self) -> PreparationStatus:
        total = self.config.n_samples
        eta = None
        if self._first_done is not None and self._done > self._first_done[0]:
            rate = (self._done - self._first_done[0]) / (time.monotonic() - self._first_done[1])
            eta = (total - self._done) / rate if rate > 0 else None
        if self._state == "done":
            message = "CSLA mappers for these models are ready: edits use them."
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
        return PreparationStatus(self._state, self._done, total, eta, message)
