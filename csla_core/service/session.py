"""The editing session behind the portrait editor: everything the UI does except drawing itself.

A front end (``app.py`` builds the Gradio one) holds one :class:`EditingService` around the loaded
pipeline and, per browser tab / API client, one :class:`SessionCache` that it passes to every call:

    service = EditingService(pipe, max_resolution=256)
    cache = session_cache(None)                        # a new session
    for step in service.analysis_steps(cache, "photo.jpg", 0):
        ...                                            # crop + reconstruction (preview, then full)
    request = EditRequest.clean("photo.jpg", "smiling", strength=1.0, samples=4)
    for step in service.edit_steps(cache, request):
        ...                                            # EditStep: gallery items, before/after, status
    for update in service.refine_steps(cache, "photo.jpg", 0):
        ...                                            # RefineUpdate: progress, then the result
    gif = service.sweep(cache, EditRequest.clean("photo.jpg", "smiling", strength=1.5), 5)

The steps are: invert (detect + align + e4e, cached per session by photo content and face index)
-> (refine: tune the generator to the face, kept with it) -> edit (CSLA mappers, or the
optimisation baseline) -> render (a preview, then full size) -> keep the photo's detail where
the edit does not act -> paste back into the photo. Problems a user can act on are raised as ``csla_core.errors``
exceptions with readable messages; turning them into UI messages is the front end's job, so
nothing here imports gradio. Progress and notices go through plain callbacks (``progress(value,
desc=...)`` with gr.Progress' signature, ``warn(text)``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import PIL.Image
import torch

from ..editing.likeness import RefineConfig, Refinement, RefineStep
from ..editing.result import BASELINE_METHOD
from ..errors import InputImageError, InvalidSettingError, WeightsError
from ..imaging import tensor_to_pil
from ..runtime import release_free_memory
from .background import Job, RefinementWorker, RequestGate
from .cache import CachedInversion, CacheKey, SessionCache, content_hash
from .media import annotate_faces, caption, face_choices, sweep_strengths, write_gif
from .request import NO_PHOTO_MESSAGE, EditRequest, NoPhotoError, Warn, clamp_int, clean_prompt

if TYPE_CHECKING:  # faces pulls in facenet-pytorch; only its types are needed here
    from ..editing.result import EditResult
    from ..models.stylegan2 import SynthesisTuning
    from ..pipeline import CSLAPipeline, Inversion
    from .preparation import MapperPreparation

PREVIEW_RESOLUTION = 256  # a quick first render before the full-size one (when larger)
OPTIMISED_PER_FACE = 4  # fallback optimisations kept per cached face (one per prompt)
REFINE_POLL_S = 0.5  # how often a refinement's progress is read for the page
MISSING_PIPELINE_MESSAGE = (
    "The model weights are missing (details at the top of the page). Run "
    "“python -m csla_core download”, then restart the app; or start it with "
    "--random-weights (CSLA_RANDOM_WEIGHTS=1) to try the interface."
)

Progress = Callable[..., Any]  # progress(fraction | (done, total), desc=...), as gr.Progress
ModelCallWrapper = Callable[[str, Callable], Callable]  # (call name, function) -> function
GalleryItem = tuple[PIL.Image.Image, str]  # (image, caption)


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    pass


def _no_warning(_text: str) -> None:
    pass


def _named_by_file(exc: InputImageError, photo: str | os.PathLike) -> InputImageError:
    """``exc`` with the photo's server-side path replaced by its file name: an upload's path
    (gradio's cache folder) means nothing to the user and tells them about the server."""
    path = str(photo)
    message = str(exc)
    if path not in message:
        return exc
    try:
        return type(exc)(message.replace(path, Path(path).name))
    except Exception:  # an error class with another constructor: keep it as it is
        return exc


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


class EditStep(NamedTuple):
    """One rendering of an edit (``result``, the one edit result): the preview first (when
    there is one), then the full size."""

    items: list[GalleryItem]  # the edited images with their captions
    pair: tuple[PIL.Image.Image, PIL.Image.Image]  # (before, first result) for a comparison
    status: str  # method, samples, strength, elapsed time
    result: EditResult  # the codes behind the images

    @property
    def strength(self) -> float:
        """The strength used (the one found, when it was "auto")."""
        return float(self.result.strength)


class RefineUpdate(NamedTuple):
    """A refinement's progress (``fraction`` 0..1, ``status`` for the page); the last one
    carries the refined reconstruction and the ``Refinement``."""

    status: str
    fraction: float
    reconstruction: PIL.Image.Image | None = None
    refinement: Refinement | None = None


@dataclass
class Analysis:
    """A photo's chosen face as the UI shows it after inversion."""

    choices: list[tuple[str, int]]  # (label, face index) for every detected face
    chosen: int
    several: bool  # more than one face: the UI offers a choice and shows the annotated photo
    annotated: PIL.Image.Image | None  # the photo with numbered face boxes (several faces only)
    crop: PIL.Image.Image  # the FFHQ-aligned crop
    reconstruction: PIL.Image.Image  # the inverted face rendered (preview size, then full size)
    likeness: str  # how close the reconstruction is to the crop, and whether it is refined


class EditingService:
    """The pipeline's operations as a UI uses them; inputs and outputs are CPU objects.

    Holds no per-user state (that is the :class:`SessionCache` passed in), so one instance serves
    every session. ``pipe_or_error`` is the loaded pipeline or the error that prevented loading
    it: without a pipeline every operation raises WeightsError, so the UI can still start and
    explain what to download. ``wrap_model_call(name, fn)`` wraps each model call (names in
    ``MODEL_CALLS``), e.g. to give it a ZeroGPU slot; pasting runs on the CPU and is not wrapped.
    ``preparation``: a first-run calibration running in the background, which yields to every
    model call. ``background_refinement``: refinements run in a background worker that yields
    to every model call too (else each runs within its request, as one model call: ZeroGPU).
    ``refine_seconds``: the refinement's time budget (None: ``RefineConfig.for_device``'s).
    """

    MODEL_CALLS = ("invert", "reconstruct", "embed", "edit", "render_edit", "generate", "refine")

    def __init__(
        self,
        pipe_or_error: CSLAPipeline | BaseException,
        *,
        max_resolution: int | None = None,
        sweep_dir: str | os.PathLike | None = None,
        wrap_model_call: ModelCallWrapper | None = None,
        preparation: MapperPreparation | None = None,
        background_refinement: bool = True,
        refine_seconds: float | None = None,
        allow_download: bool = False,
    ):
        if isinstance(pipe_or_error, BaseException):
            self.pipe: CSLAPipeline | None = None
            self.error: BaseException | None = pipe_or_error
        else:
            self.pipe = pipe_or_error
            self.error = None
        size = self.pipe.generator.size if self.pipe is not None else 1024
        resolution = size if not max_resolution else min(int(max_resolution), size)
        if resolution & (resolution - 1) or resolution < 4:
            raise ValueError(f"max_resolution must be a power of two, got {max_resolution}")
        self.size = size
        self.resolution = resolution  # the "full" rendering size
        self.preview = PREVIEW_RESOLUTION if resolution > PREVIEW_RESOLUTION else None
        # CPU renders are slow: smaller and fewer sweep frames there.
        on_cpu = self.pipe is None or self.pipe.device.type == "cpu"
        self.sweep_resolution = min(resolution, 256 if on_cpu else 512)
        self.default_frames = 5 if on_cpu else 9
        self.sweep_folder = Path(sweep_dir or tempfile.mkdtemp(prefix="csla-sweeps-"))
        self.sweep_folder.mkdir(parents=True, exist_ok=True)
        if sweep_dir is None:  # our own folder: removed with the service, or at exit at the latest
            weakref.finalize(self, shutil.rmtree, str(self.sweep_folder), ignore_errors=True)
        self.preparation = preparation
        self.gate = preparation.gate if preparation is not None else RequestGate()
        self.worker = RefinementWorker(self.gate) if background_refinement else None
        self.refine_seconds = refine_seconds
        self.allow_download = allow_download
        outer = wrap_model_call or (lambda _name, fn: fn)

        def wrap(name: str, fn: Callable) -> Callable:
            wrapped = outer(name, fn)

            def call(*args: Any, **kwargs: Any) -> Any:
                with self.gate.serving():  # background work waits meanwhile
                    return wrapped(*args, **kwargs)

            return call

        self.invert = wrap("invert", self._invert)
        self.reconstruct = wrap("reconstruct", self._reconstruct)
        self.embed = wrap("embed", self._embed)
        self.edit = wrap("edit", self._edit)
        self.render_edit = wrap("render_edit", self._render_edit)
        self.generate = wrap("generate", self._generate)
        self.refine = wrap("refine", self._refine)

    # -- state
    @property
    def notice(self) -> str:
        return self.pipe.notice if self.pipe is not None else ""

    @property
    def preparing(self) -> str:
        """What the page says about first-run calibration ("" when there is none)."""
        return "" if self.preparation is None else self.preparation.status.message

    @property
    def resolutions(self) -> list[int]:
        """Rendering sizes of every output: the preview (if smaller than full size), then full."""
        return [r for r in (self.preview, self.resolution) if r]

    def require(self) -> CSLAPipeline:
        if self.pipe is None:
            raise WeightsError(MISSING_PIPELINE_MESSAGE)
        return self.pipe

    def max_res(self, resolution: int) -> int | None:
        return None if resolution >= self.size else resolution

    def refine_config(self) -> RefineConfig:
        pipe = self.require()
        seconds = {} if self.refine_seconds is None else {"seconds": self.refine_seconds}
        return RefineConfig.for_device(pipe.device, **seconds)

    # -- model calls (each one wrapped by wrap_model_call)
    def _invert(self, photo: str, face_index: int) -> Inversion:
        return self.require().invert(photo, face_index=face_index)

    def _reconstruct(
        self,
        wplus: torch.Tensor,
        resolution: int,
        tuning: SynthesisTuning | None = None,
        embed: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A face's code rendered [1, 3, R, R] (CPU), and (``embed``), at the size edits embed
        it, its CLIP embedding from the same render: the first edit then needs no render of its
        own."""
        pipe = self.require()
        render = pipe.render(wplus[:1], max_resolution=self.max_res(resolution), tuning=tuning)
        embedding = None
        if embed and resolution == pipe.embedding_resolution and pipe.clip is not None:
            embedding = pipe.image_embedding(wplus, render=render)
        return render.cpu(), embedding

    def _embed(self, wplus: torch.Tensor, tuning: SynthesisTuning | None = None) -> torch.Tensor:
        return self.require().image_embedding(wplus, tuning=tuning)  # a CPU tensor

    def _edit(self, wplus: torch.Tensor, prompt: str, **kwargs: Any) -> EditResult:
        return self.require().edit(wplus, prompt, **kwargs)

    def _render_edit(
        self, edit: EditResult, resolution: int, tuning: SynthesisTuning | None = None
    ) -> torch.Tensor:
        pipe = self.require()
        return pipe.render_edit(edit, max_resolution=self.max_res(resolution), tuning=tuning).cpu()

    def _generate(self, prompt: str, n: int, seed: int) -> EditResult:
        return self.require().generate(prompt, n=n, seed=seed)

    def _refine(
        self, wplus: torch.Tensor, crop: torch.Tensor, config: RefineConfig, **hooks: Any
    ) -> Refinement:
        """The tuning of one face, returned (a ZeroGPU call hands it back as its result). The
        memory renders left free goes back first, since the tuning needs its own (1.5 GB on a
        CPU), and the tuning's goes back after it."""
        release_free_memory()
        try:
            return self.require().tune(
                wplus, crop, config, allow_download=self.allow_download, **hooks
            )
        finally:
            release_free_memory()

    # -- CPU steps
    def edit_cached(
        self, entry: CachedInversion, request: EditRequest, **kwargs: Any
    ) -> EditResult:
        """An edit of a cached face; its CLIP anchor is computed once and kept in the entry."""
        tuning = entry.inversion.tuning
        embedding_size = self.require().embedding_resolution
        if entry.embedding is None and embedding_size in self.resolutions:
            self.reconstruction(entry, embedding_size)  # its render gives the embedding too
        if entry.embedding is None:
            entry.embedding = self.embed(entry.inversion.wplus, tuning)
        options = dict(
            source_prompt=request.source_prompt,
            strength=request.strength,
            n_samples=request.samples,
            diversity=request.diversity,
            seed=request.seed,
        )
        result = self.edit(
            entry.inversion.wplus,
            request.prompt,
            image_embedding=entry.embedding,
            optimised=entry.optimised,
            tuning=tuning,
            **{**options, **kwargs},
        )
        while len(entry.optimised) > OPTIMISED_PER_FACE:
            entry.optimised.popitem(last=False)
        return result

    def reconstruction(self, entry: CachedInversion, resolution: int) -> torch.Tensor:
        """The face's own render at ``resolution`` (with its refinement), rendered once and
        kept in the entry (float16: 0.06 grey levels at most from the render)."""
        cached = entry.reconstructions.get(resolution)
        if cached is None:
            render, embedding = self.reconstruct(
                entry.inversion.wplus,
                resolution,
                entry.inversion.tuning,
                entry.embedding is None,
            )
            if embedding is not None and entry.embedding is None:
                entry.embedding = embedding
            cached = entry.reconstructions[resolution] = render.to(torch.float16)
        return cached.float()

    def deliver(
        self, entry: CachedInversion, renders: torch.Tensor, request: EditRequest
    ) -> list[PIL.Image.Image]:
        """Renders as the request shows them (``CSLAPipeline.deliver``: pasted or as crops,
        with the photo's detail kept or not)."""
        resolution = renders.shape[-1]
        keep = request.detail == "keep"
        reconstruction = self.reconstruction(entry, resolution) if keep else None
        return self.require().deliver(
            entry.inversion, renders, reconstruction, detail=request.detail, paste=request.paste
        )

    def has_inversion(self, cache: SessionCache, photo: str | None, face_index: int | None) -> bool:
        """Whether this session already holds the face's inversion (checked without any model
        call: the strength slider previews only what is ready)."""
        if not photo:
            return False
        try:
            return self._cache_key(photo, face_index) in cache.items
        except (OSError, TypeError, ValueError):
            return False

    def is_refined(self, cache: SessionCache, photo: str | None, face_index: int | None) -> bool:
        """Whether this session's copy of the face is refined already."""
        if not self.has_inversion(cache, photo, face_index):
            return False
        entry = cache.items[self._cache_key(photo, face_index)]
        return entry.inversion.refinement is not None

    @staticmethod
    def _cache_key(photo: str, face_index: Any) -> CacheKey:
        """(photo content hash, face index): the one key of a session's inversions."""
        return content_hash(photo), clamp_int(face_index, -(2**31), 2**31 - 1, 0)

    def inversion(
        self,
        cache: SessionCache,
        photo: str,
        face_index: int | None,
        progress: Progress = _no_progress,
    ) -> tuple[CachedInversion, CacheKey]:
        """(cache entry, key): from the session cache or by detecting + inverting now."""
        try:
            key = self._cache_key(photo, face_index)
        except OSError as exc:  # gone from the server's cache (old upload), or not a file
            raise InputImageError(
                f"The photo {Path(photo).name!r} can no longer be read on the server "
                f"({exc.strerror or type(exc).__name__}): upload it again."
            ) from exc
        entry = cache.get(key)
        if entry is None:
            progress(0.05, desc="Finding the face and inverting it (e4e)")
            try:
                inversion = self.invert(photo, key[1])
            except InputImageError as exc:
                raise _named_by_file(exc, photo) from exc
            entry = CachedInversion(inversion)
            cache.put(key, entry)
        return entry, key

    @staticmethod
    def _before_image(
        entry: CachedInversion, paste: bool, size: tuple[int, int]
    ) -> PIL.Image.Image:
        """The unedited side of a comparison, matching the results (whole photo, or crop)."""
        if paste:
            return entry.inversion.photo
        crop = entry.inversion.aligned.image
        return crop if crop.size == size else crop.resize(size, PIL.Image.Resampling.LANCZOS)

    def likeness(self, entry: CachedInversion) -> str:
        """How close the face's render is to its crop (L2 at 256 px on [-1, 1], the field's
        measure), and whether it is refined."""
        render = self.reconstruction(entry, min(256, self.resolution))
        crop = entry.inversion.crop(render.shape[-1])
        l2 = float((render - crop).pow(2).mean())
        refinement = entry.inversion.refinement
        state = "not refined" if refinement is None else f"refined: {refinement.describe()}"
        return f"Reconstruction L2 {l2:.4f} at {render.shape[-1]} px ({state})"

    # -- what the UI's events run
    def analysis_steps(
        self,
        cache: SessionCache,
        photo: str,
        face_index: int | None,
        progress: Progress = _no_progress,
    ) -> Iterator[Analysis]:
        """Detect, align and invert a face; yields it with its reconstruction, first rendered at
        preview size (when not cached and there is a preview), then at full size."""
        self.require()
        entry, key = self.inversion(cache, photo, face_index, progress)
        inv = entry.inversion
        several = len(inv.faces) > 1
        choices = face_choices(inv.faces)
        annotated = annotate_faces(inv.photo, inv.faces, key[1]) if several else None

        def analysis(resolution: int) -> Analysis:
            cache.touch()
            image = tensor_to_pil(self.reconstruction(entry, resolution))[0]
            crop = inv.aligned.image
            return Analysis(choices, key[1], several, annotated, crop, image, self.likeness(entry))

        for resolution in self.resolutions:
            if resolution not in entry.reconstructions:
                progress(0.6, desc=f"Rendering the reconstruction at {resolution} px")
                if resolution != self.resolution:
                    yield analysis(resolution)
        yield analysis(self.resolution)

    def refine_steps(
        self,
        cache: SessionCache,
        photo: str | None,
        face_index: int | None,
        progress: Progress = _no_progress,
        *,
        inline: bool = False,
    ) -> Iterator[RefineUpdate]:
        """Refine likeness of the chosen face (pivotal tuning); yields its progress, then the
        refined reconstruction. In the background worker (yielding to every request) unless
        ``inline`` or there is none; closing the iterator cancels it. Every later edit, slider
        move and sweep of the face uses the result."""
        pipe = self.require()
        if not photo:
            raise NoPhotoError(NO_PHOTO_MESSAGE)
        entry, _ = self.inversion(cache, photo, face_index, progress)
        config = self.refine_config()
        args = (entry.inversion.wplus, entry.inversion.crop(pipe.generator.size), config)
        if self.worker is None or inline:
            yield RefineUpdate(_refining(config, None, 0), 0.0)
            refinement = self.refine(*args)
        else:
            refinement = yield from self._refine_in_background(entry, args, config, progress)
        entry.use_refinement(refinement)
        cache.touch()
        for resolution in self.resolutions:
            progress(0.95, desc=f"Rendering the refined reconstruction at {resolution} px")
            self.reconstruction(entry, resolution)
        image = tensor_to_pil(self.reconstruction(entry, self.resolution))[0]
        yield RefineUpdate(self.likeness(entry), 1.0, image, refinement)

    def _refine_in_background(
        self, entry: CachedInversion, args: tuple, config: RefineConfig, progress: Progress
    ) -> Iterator[RefineUpdate]:
        job = entry.refine_job
        if job is None or job.done:

            def task(job: Job) -> Refinement:
                def report(step) -> None:
                    job.progress = step

                return self._refine(
                    *args,
                    progress=report,
                    cancelled=lambda: job.cancelled,
                    between_steps=self.gate.pause,
                )

            job = entry.refine_job = self.worker.submit(task)
        try:
            while not job.wait(REFINE_POLL_S):
                ahead = 0 if job.started is not None else self.worker.waiting
                fraction = 0.0 if job.progress is None else job.progress.fraction
                progress(fraction, desc="Refining likeness")
                yield RefineUpdate(_refining(config, job.progress, ahead), fraction)
        except GeneratorExit:  # the page cancelled, or the client went away
            job.cancel()
            raise
        finally:
            if job.done and entry.refine_job is job:
                entry.refine_job = None
        if job.error is not None:
            raise job.error
        return job.result

    def edit_steps(
        self,
        cache: SessionCache,
        request: EditRequest,
        progress: Progress = _no_progress,
        warn: Warn = _no_warning,
        resolutions: Sequence[int] | None = None,
        finished: bool = True,
    ) -> Iterator[EditStep]:
        """Edit the chosen face of ``request.photo`` towards its prompt; yields one step per
        render size in ``resolutions`` (default: the preview first, then the full size).
        ``finished=False`` labels even the last step a preview (the strength slider is still
        moving; the final render follows)."""
        self.require()
        started = time.perf_counter()
        entry, _ = self.inversion(cache, request.photo, request.face_index, progress)
        progress(0.3, desc=f"Editing towards “{request.prompt}”")
        edit = self.edit_cached(entry, request)
        for notice in edit.notices:
            warn(notice)
        strength = float(edit.strength) if request.auto else float(request.strength)
        described = f"strength {strength:+.2f}" + (" (auto)" if request.auto else "")
        refined = " · refined likeness" if entry.inversion.refinement is not None else ""
        status = f"**{edit.method}** · {request.samples} sample(s), {described}{refined}"
        fallback = edit.method == BASELINE_METHOD
        resolutions = list(resolutions or self.resolutions)
        for step, resolution in enumerate(resolutions):
            last = step == len(resolutions) - 1
            progress(
                0.4 + 0.5 * step / len(resolutions),
                desc=f"Rendering {request.samples} image(s) at {resolution} px",
            )
            renders = self.render_edit(edit, resolution, entry.inversion.tuning)
            if request.paste:
                progress(0.95, desc="Pasting the edits back into the photo")
            images = self.deliver(entry, renders, request)
            # API callers see only the gallery: its captions say when the fallback made it.
            label = " · optimisation fallback (no CSLA mappers yet)" if fallback else ""
            items = [
                (image, caption(i, strength, request.seed) + label)
                for i, image in enumerate(images)
            ]
            before = self._before_image(entry, request.paste, images[0].size)
            cache.before = before  # kept for comparisons with the other results (compare_pair)
            cache.touch()
            label = "" if last and finished else " — preview"
            label += "" if last else ", full size on its way…"
            elapsed = time.perf_counter() - started
            status_line = f"{status} · {elapsed:.1f} s{label}"
            yield EditStep(items, (before, images[0]), status_line, edit)

    def sweep(
        self,
        cache: SessionCache,
        request: EditRequest,
        frames: Any,
        progress: Progress = _no_progress,
        warn: Warn = _no_warning,
    ) -> str:
        """A GIF of sample 1 from -strength to +strength of ``request`` and back; its path."""
        images = self.sweep_frames(cache, request, frames, progress, warn)
        name = write_gif(images, self.sweep_folder)
        cache.touch()
        return name

    def sweep_frames(
        self,
        cache: SessionCache,
        request: EditRequest,
        frames: Any,
        progress: Progress = _no_progress,
        warn: Warn = _no_warning,
    ) -> list[PIL.Image.Image]:
        """The sweep's pictures, from -strength to +strength (``frames`` of them, 3-15)."""
        self.require()
        if request.auto:
            raise InvalidSettingError("The sweep needs a number as its largest strength.")
        frames = clamp_int(frames, 3, 15, self.default_frames)
        entry, _ = self.inversion(cache, request.photo, request.face_index, progress)
        images = []
        for i, strength in enumerate(sweep_strengths(float(request.strength), frames)):
            progress((i, frames), desc=f"Frame {i + 1}/{frames} (strength {strength:+.2f})")
            edit = self.edit_cached(entry, request, strength=strength, n_samples=1)
            for notice in edit.notices if i == 0 else ():
                warn(notice)
            render = self.render_edit(edit, self.sweep_resolution, entry.inversion.tuning)
            frame = self.deliver(entry, render, request)[0]
            if request.paste:
                frame.thumbnail((512, 512), PIL.Image.Resampling.LANCZOS)  # GIFs stay small
            images.append(frame)
        return images

    def generate_steps(
        self,
        prompt: str | None,
        samples: Any,
        seed: Any,
        progress: Progress = _no_progress,
        warn: Warn = _no_warning,
    ) -> Iterator[list[GalleryItem]]:
        """Faces generated from a text prompt; yields the preview first, then the full size."""
        self.require()
        prompt = clean_prompt(prompt, "text-to-image prompt", warn)
        samples = clamp_int(samples, 1, 8, 4)
        seed = clamp_int(seed, 0, 2**31 - 1, 0)
        progress(0.1, desc=f"Mapping “{prompt}” into the generator's space")
        result = self.generate(prompt, samples, seed)
        for notice in result.notices:
            warn(notice)
        for resolution in self.resolutions:
            progress(0.5, desc=f"Rendering {samples} image(s) at {resolution} px")
            images = tensor_to_pil(self.render_edit(result, resolution))
            yield [(image, f"sample {i + 1} · seed {seed}") for i, image in enumerate(images)]


def _refining(config: RefineConfig, step: RefineStep | None, ahead: int) -> str:
    """The page's line while a face is refined."""
    if ahead:
        return f"Waiting for {ahead} other refinement(s) to finish…"
    budget = f"up to {config.steps} steps" + (
        f" or {config.seconds:.0f} s" if config.seconds is not None else ""
    )
    if step is None:
        return f"Refining likeness: tuning the generator to this face ({budget})…"
    return (
        f"Refining likeness: step {step.step} of at most {config.steps}, {step.seconds:.0f} s"
        + (f" of {config.seconds:.0f} s" if config.seconds is not None else "")
        + f"; L2 {step.l2:.4f}"
    )
