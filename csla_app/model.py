"""``PortraitEditor``: the object the app's events call, one method per UI action.

It wraps one ``EditingService`` (shared by every session; a session's own state is the
``gr.State`` cache each method receives and returns) and turns the service's steps into the
components' updates. Errors become messages (``friendly``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# ZeroGPU: `spaces` must come before torch initialises CUDA (app.py imports it first).
import spaces

# isort: split
import gradio as gr

import csla_core
from csla_core.service import (
    EditingService,
    MapperPreparation,
    SessionCache,
    SliceReport,
    compare_pair,
    session_cache,
)
from csla_core.training.calibrate import CalibrationConfig, CalibrationResult

from .errors import friendly
from .settings import EditSettings

LOG = logging.getLogger("csla.app")
PROGRESS = gr.Progress()  # the handlers' progress-tracker default (gradio fills it per request)
GPU_DURATION_S = 60  # ZeroGPU time slot per model call
EDIT_GPU_DURATION_S = 120  # an edit may fall back to the optimisation baseline (no mappers)
CALIBRATION_SLICE_S = 45  # ZeroGPU: calibration work per GPU slot (the slot is GPU_DURATION_S)
ZERO_GPU_REFINE_S = 40  # ZeroGPU: a refinement's tuning budget within its GPU_DURATION_S slot


def zero_gpu(name: str, fn: Callable) -> Callable:
    """``spaces.GPU`` around one model call of the service (a no-op outside ZeroGPU)."""
    return spaces.GPU(duration=EDIT_GPU_DURATION_S if name == "edit" else GPU_DURATION_S)(fn)


def _no_faces() -> tuple:
    """(face choice, annotated photo) for no photo: one hidden choice, nothing shown."""
    return gr.update(choices=[("#0", 0)], value=0, visible=False), gr.update(visible=False)


class PortraitEditor:
    """The UI's actions on a loaded pipeline, or on the error that prevented loading it (then
    every action that needs a model says what to download).

    ``max_resolution`` caps the rendered size (a power of two; None = the generator's size).
    The edit actions yield (results, before/after, status, cache, strength, auto strength);
    the analysis actions (face choice, annotated photo, crop, reconstruction, cache).
    """

    def __init__(
        self,
        pipe_or_error: csla_core.CSLAPipeline | BaseException,
        *,
        max_resolution: int | None = None,
        sweep_dir: str | os.PathLike | None = None,
        prepare_mappers: bool = True,
        calibration: CalibrationConfig | None = None,
        refine_seconds: float | None = None,
        allow_download: bool = False,
    ):
        # First run: no mappers for these models yet, so they are made while the app serves.
        pipe = pipe_or_error if isinstance(pipe_or_error, csla_core.CSLAPipeline) else None
        self.preparation = None
        if prepare_mappers and pipe is not None and pipe.mappers is None and pipe.clip is not None:
            self.preparation = MapperPreparation(pipe, calibration, on_done=_log_self_check)
        zero = spaces.config.Config.zero_gpu
        self.service = EditingService(
            pipe_or_error,
            max_resolution=max_resolution,
            sweep_dir=sweep_dir,
            wrap_model_call=zero_gpu,
            preparation=self.preparation,
            # ZeroGPU lends the GPU to a call in a forked worker: a refinement is one such call.
            background_refinement=not zero,
            refine_seconds=refine_seconds or (ZERO_GPU_REFINE_S if zero else None),
            allow_download=allow_download,
        )
        # On ZeroGPU the GPU is only lent to events: the page's timer runs calibration slices.
        if self.preparation is not None:
            if zero:
                LOG.info("first-run calibration: in GPU calls only (ZeroGPU slices of %d s)",
                         CALIBRATION_SLICE_S)  # fmt: skip
            else:
                LOG.info("first-run calibration: in the background, yielding to requests")
                self.preparation.start()

    # -- what the layout shows
    @property
    def error(self) -> BaseException | None:
        """Why the models could not be loaded (None when they were)."""
        return self.service.error if self.service.pipe is None else None

    @property
    def notice(self) -> str:
        return self.service.notice

    @property
    def default_frames(self) -> int:
        return self.service.default_frames

    @property
    def preparing(self) -> str:
        """The first-run calibration's progress for the page ("" when there is none)."""
        return self.service.preparing

    def preparation_tick(self) -> tuple:
        """The page's timer: the progress line, and whether to keep ticking."""
        if self.preparation is None:
            return gr.update(visible=False), gr.Timer(active=False)
        if spaces.config.Config.zero_gpu:
            # The slice runs in ZeroGPU's forked worker: its report is applied here.
            self.preparation.apply(self._calibration_slice())
        status = self.preparation.status
        return gr.update(value=status.message, visible=True), gr.Timer(
            active=status.state == "running"
        )

    @spaces.GPU(duration=GPU_DURATION_S)
    def _calibration_slice(self) -> SliceReport:
        return self.preparation.run_slice(CALIBRATION_SLICE_S)

    # -- photo and face
    @friendly
    def new_photo(self, photo: str | None, cache: Any, progress: Any = PROGRESS) -> Iterator:
        """A new photo: the previous photo's outputs cleared at once, then its first face."""
        yield from self._analyse(photo, 0, cache, progress, reset=True)

    @friendly
    def select_face(
        self, photo: str | None, face_index: int | None, cache: Any, progress: Any = PROGRESS
    ) -> Iterator:
        """Another face of the same photo chosen."""
        yield from self._analyse(photo, face_index, cache, progress, reset=False)

    def _analyse(
        self, photo: str | None, face_index: int | None, cache: Any, progress: Any, reset: bool
    ) -> Iterator:
        """Detect, align, invert; the reconstruction at preview size, then full size."""
        cache = session_cache(cache)
        if not photo:
            yield *_no_faces(), None, None, "", cache
            return
        self.service.require()
        # Clear the previous outputs first: a failure below must not leave them on the page.
        yield *(_no_faces() if reset else (gr.skip(), gr.skip())), None, None, "", cache
        for step in self.service.analysis_steps(cache, photo, face_index, progress):
            radio = gr.update(choices=step.choices, value=step.chosen, visible=step.several)
            faces = gr.update(value=step.annotated, visible=step.several)
            yield radio, faces, step.crop, step.reconstruction, step.likeness, cache

    @friendly
    def refine(
        self, photo: str | None, face_index: int | None, cache: Any, progress: Any = PROGRESS
    ) -> Iterator:
        """Refine likeness: tune the model to the chosen face (progress on the page; the
        Cancel button stops it); every later edit of the face uses the result."""
        cache = session_cache(cache)
        for update in self.service.refine_steps(cache, photo, face_index, progress):
            picture = gr.skip() if update.reconstruction is None else update.reconstruction
            yield picture, update.status, cache

    # -- edits
    @friendly
    def edit(self, progress: Any = PROGRESS, *, cache: Any, **settings: Any) -> Iterator:
        """Edit button / Enter: the edits; with "auto strength" the slider moves to the strength
        found."""
        edit, cache = EditSettings(**settings), session_cache(cache)
        for step in self._edit_steps(edit, cache, progress):
            used = step.strength if edit.auto else gr.skip()
            yield step.items, step.pair, step.status, cache, used, gr.skip()

    @friendly
    def preview(self, progress: Any = PROGRESS, *, cache: Any, **settings: Any) -> Iterator:
        """The strength slider moving: preview-size renders, only of a face this session has
        already inverted."""
        yield from self._slider(EditSettings(**settings), session_cache(cache), progress, True)

    @friendly
    def release(self, progress: Any = PROGRESS, *, cache: Any, **settings: Any) -> Iterator:
        """The strength slider released: the full size (the drag showed the preview)."""
        yield from self._slider(EditSettings(**settings), session_cache(cache), progress, False)

    def _slider(
        self, edit: EditSettings, cache: SessionCache, progress: Any, moving: bool
    ) -> Iterator:
        """Quiet when there is nothing to edit yet; the user sets the strength by hand, so
        "auto strength" is switched off."""
        service = self.service
        ready = bool(edit.photo) and bool((edit.prompt or "").strip()) and service.pipe is not None
        if not ready or (moving and not service.has_inversion(cache, edit.photo, edit.face_index)):
            yield gr.skip(), gr.skip(), gr.skip(), cache, gr.skip(), gr.skip()
            return
        resolutions = service.resolutions[:1] if moving else service.resolutions[-1:]
        by_hand = dataclasses.replace(edit, auto=False)
        steps = self._edit_steps(by_hand, cache, progress, resolutions, finished=not moving)
        for step in steps:
            yield step.items, step.pair, step.status, cache, gr.skip(), False

    @friendly
    def edit_api(
        self,
        photo: str | None,
        prompt: str | None,
        strength: float | str | None,
        seed: int | None,
        samples: int | None,
        detail: str | None,
        refine: bool | None,
        cache: Any,
        progress: Any = PROGRESS,
    ) -> Iterator:
        """One call: photo + prompt -> edited photos (largest face, pasted back, full size);
        ``refine``: refine likeness first (within this call: up to a minute on a CPU)."""
        # Face 0 (the largest), spread 0.5, pasted back: the defaults of EditSettings.
        edit = EditSettings(
            photo=photo,
            prompt=prompt,
            source_prompt=None,
            strength=strength,
            samples=samples,
            seed=seed,
            detail=detail,
        )
        request = edit.request(gr.Warning)  # every setting checked before any work
        cache = session_cache(cache)
        if refine and not self.service.is_refined(cache, request.photo, request.face_index):
            for _ in self.service.refine_steps(cache, photo, 0, progress, inline=True):
                pass
        for step in self.service.edit_steps(cache, request, progress, gr.Warning):
            yield step.items, cache

    def _edit_steps(
        self,
        edit: EditSettings,
        cache: SessionCache,
        progress: Any,
        resolutions: Sequence[int] | None = None,
        finished: bool = True,
    ) -> Iterator:
        """The service's edit steps for these settings: one per render size."""
        request = edit.request(gr.Warning)
        return self.service.edit_steps(cache, request, progress, gr.Warning, resolutions, finished)

    def compare(self, gallery: Any, cache: Any, evt: gr.SelectData) -> Any:
        """A result clicked: it goes into the before/after comparison."""
        pair = compare_pair(gallery, cache, evt.index)
        return gr.skip() if pair is None else pair

    # -- the other tabs
    @friendly
    def sweep(
        self,
        progress: Any = PROGRESS,
        *,
        max_strength: float | None,
        frames: int | None,
        cache: Any,
        **settings: Any,
    ) -> tuple[str, SessionCache]:
        """An animation of sample 1 from -max_strength to +max_strength and back."""
        self.service.require()
        request = EditSettings(**settings).request(gr.Warning, strength=max_strength, auto=False)
        cache = session_cache(cache)
        return self.service.sweep(cache, request, frames, progress, gr.Warning), cache

    @friendly
    def generate(
        self, prompt: str | None, samples: int | None, seed: int | None, progress: Any = PROGRESS
    ) -> Iterator:
        """Text to image: faces generated from a prompt (preview size, then full size)."""
        yield from self.service.generate_steps(prompt, samples, seed, progress, gr.Warning)


def _log_self_check(pipe: csla_core.CSLAPipeline, result: CalibrationResult) -> None:
    """Once after calibration: do the new mappers find the published smile / age directions?"""
    from csla_core.evaluation.check import check_mappers, format_checks

    try:
        LOG.info("mapper self-check:\n%s", format_checks(check_mappers(pipe), pipe.random_weights))
    except Exception:  # a diagnostic: never worth breaking the app for
        LOG.exception("mapper self-check failed")
