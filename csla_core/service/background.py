"""Long jobs that step aside for requests: the first-run calibration and likeness refinement.

Priority: a request's model call > a refinement step > a calibration chunk. ``RequestGate``
counts what is being served (``serving()``); a refinement holds the gate while it computes and
lets go between its steps until no request is left (``pause()``); calibration waits between its
chunks while anything holds it (``wait_for_idle()``). So a user waits at most for one step (about
a second) or one chunk in progress, never for a whole job.

``RefinementWorker`` runs refinements one at a time in a daemon thread; each is a ``Job`` the
caller polls (the app's refine button shows its progress) and may cancel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)


class RequestGate:
    """How many model calls are in progress, and a place for background work to wait."""

    def __init__(self) -> None:
        self._serving = 0
        self._idle = threading.Condition()

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

    def wait_for_idle(self) -> None:
        """Block while anything is being served."""
        with self._idle:
            self._idle.wait_for(lambda: self._serving == 0)

    def pause(self) -> None:
        """For a job inside ``serving()``: step aside until nothing else is served."""
        with self._idle:
            self._serving -= 1
            self._idle.notify_all()
            self._idle.wait_for(lambda: self._serving == 0)
            self._serving += 1

    @property
    def busy(self) -> bool:
        return self._serving > 0


class Job:
    """One background task: ``progress`` (the latest value the task reported), ``done``,
    ``result`` or ``error``; ``cancel()`` asks the task to stop at its next step."""

    def __init__(self, task: Callable[[Job], Any], name: str) -> None:
        self.task, self.name = task, name
        self.progress: Any = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.started: float | None = None
        self._done = threading.Event()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _run(self) -> None:
        self.started = time.monotonic()
        try:
            self.result = self.task(self)
        except BaseException as exc:  # handed to whoever polls the job
            self.error = exc
            logger.exception("background job %s failed", self.name)
        finally:
            self._done.set()


class RefinementWorker:
    """Runs jobs one at a time, in submission order, in a daemon thread (started on first use)."""

    def __init__(self, gate: RequestGate) -> None:
        self.gate = gate
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, task: Callable[[Job], Any], name: str = "refinement") -> Job:
        job = Job(task, name)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="csla-refine", daemon=True)
                self._thread.start()
        self._jobs.put(job)
        return job

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job.cancelled:
                job._done.set()
                continue
            with self.gate.serving():  # calibration waits while a refinement runs
                job._run()
