"""The editing session behind the portrait editor: everything the UI does except drawing itself.

A front end (``app.py`` builds the Gradio one) holds one :class:`EditingService` around the loaded
pipeline and, per browser tab / API client, one :class:`SessionCache` that it passes to every call:

    service = EditingService(pipe, max_resolution=256)
    cache = session_cache(None)                        # a new session
    for step in service.analysis_steps(cache, "photo.jpg", 0):
        ...                                            # crop + reconstruction (preview, then full)
    for step in service.edit_steps(cache, "photo.jpg", 0, "smiling", None, 1.0, 4, 0.5, 0, True):
        ...                                            # EditStep: gallery items, before/after, status
    gif = service.sweep(cache, "photo.jpg", 0, "smiling", None, 1.5, 5, 0.5, 0, True)

The steps are: invert (detect + align + e4e, cached per session by photo content and face index)
-> edit (CSLA mappers, or the optimisation baseline) -> render (a preview, then full size) ->
paste back into the photo. Problems a user can act on are raised as ``csla_core.errors``
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

from ..editing.result import BASELINE_METHOD
from ..editing.strength import AUTO as AUTO_STRENGTH
from ..editing.strength import is_auto
from ..errors import InputImageError, WeightsError
from ..imaging import tensor_to_pil
from .cache import CachedInversion, CacheKey, SessionCache, content_hash
from .media import annotate_faces, caption, face_choices, sweep_strengths, write_gif
from .request import (
    NO_PHOTO_MESSAGE,
    NoPhotoError,
    Warn,
    clamp_int,
    clean_prompt,
    finite,
    optional_prompt,
)

if TYPE_CHECKING:  # faces pulls in facenet-pytorch; only its types are needed here
    from ..editing.result import EditResult
    from ..pipeline import CSLAPipeline, Inversion
    from .preparation import MapperPreparation

PREVIEW_RESOLUTION = 256  # a quick first render before the full-size one (when larger)
OPTIMISED_PER_FACE = 4  # fallback optimisations kept per cached face (one per prompt)
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


@dataclass
class Analysis:
    """A photo's chosen face as the UI shows it after inversion."""

    choices: list[tuple[str, int]]  # (label, face index) for every detected face
    chosen: int
    several: bool  # more than one face: the UI offers a choice and shows the annotated photo
    annotated: PIL.Image.Image | None  # the photo with numbered face boxes (several faces only)
    crop: PIL.Image.Image  # the FFHQ-aligned crop
    reconstruction: PIL.Image.Image  # the inverted face rendered (preview size, then full size)


class EditingService:
    """The pipeline's operations as a UI uses them; inputs and outputs are CPU objects.

    Holds no per-user state (that is the :class:`SessionCache` passed in), so one instance serves
    every session. ``pipe_or_error`` is the loaded pipeline or the error that prevented loading
    it: without a pipeline every operation raises WeightsError, so the UI can still start and
    explain what to download. ``wrap_model_call(name, fn)`` wraps each model call (names in
    ``MODEL_CALLS``), e.g. to give it a ZeroGPU slot; pasting runs on the CPU and is not wrapped.
    ``preparation``: a first-run calibration running in the background, which yields to every
    model call.
    """

    MODEL_CALLS = ("invert", "reconstruct", "embed", "edit", "render_edit", "generate")

    def __init__(
        self,
        pipe_or_error: CSLAPipeline | BaseException,
        *,
        max_resolution: int | None = None,
        sweep_dir: str | os.PathLike | None = None,
        wrap_model_call: ModelCallWrapper | None = None,
        preparation: MapperPreparation | None = None,
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
        outer = wrap_model_call or (lambda _name, fn: fn)

        def wrap(name: str, fn: Callable) -> Callable:
            wrapped = outer(name, fn)
            if preparation is None:
                return wrapped

            def call(*args: Any, **kwargs: Any) -> Any:
                with preparation.serving():  # a background calibration waits meanwhile
                    return wrapped(*args, **kwargs)

            return call

        self.invert = wrap("invert", self._invert)
        self.reconstruct = wrap("reconstruct", self._reconstruct)
        self.embed = wrap("embed", self._embed)
        self.edit = wrap("edit", self._edit)
        self.render_edit = wrap("render_edit", self._render_edit)
        self.generate = wrap("generate", self._generate)

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

    # -- model calls (each one wrapped by wrap_model_call)
    def _invert(self, photo: str, face_index: int) -> Inversion:
        return self.require().invert(photo, face_index=face_index)

    def _reconstruct(
        self, wplus: torch.Tensor, resolution: int
    ) -> tuple[PIL.Image.Image, torch.Tensor | None]:
        """A face's code rendered, and, at the size edits embed it, its CLIP embedding from the
        same render: the first edit then needs no render of its own."""
        pipe = self.require()
        render = pipe.render(wplus[:1], max_resolution=self.max_res(resolution))
        embedding = None
        if resolution == pipe.embedding_resolution and pipe.clip is not None:
            embedding = pipe.image_embedding(wplus, render=render)
        return tensor_to_pil(render.cpu())[0], embedding

    def _embed(self, wplus: torch.Tensor) -> torch.Tensor:
        return self.require().image_embedding(wplus)  # a CPU tensor

    def _edit(self, wplus: torch.Tensor, prompt: str, **kwargs: Any) -> EditResult:
        return self.require().edit(wplus, prompt, **kwargs)

    def _render_edit(self, edit: EditResult, resolution: int) -> list[PIL.Image.Image]:
        pipe = self.require()
        return tensor_to_pil(pipe.render_edit(edit, max_resolution=self.max_res(resolution)).cpu())

    def _generate(self, prompt: str, n: int, seed: int) -> EditResult:
        return self.require().generate(prompt, n=n, seed=seed)

    # -- CPU steps
    def edit_cached(self, entry: CachedInversion, prompt: str, **kwargs: Any) -> EditResult:
        """An edit of a cached face; its CLIP anchor is computed once and kept in the entry."""
        if entry.embedding is None:
            entry.embedding = self.embed(entry.inversion.wplus)
        result = self.edit(
            entry.inversion.wplus,
            prompt,
            image_embedding=entry.embedding,
            optimised=entry.optimised,
            **kwargs,
        )
        while len(entry.optimised) > OPTIMISED_PER_FACE:
            entry.optimised.popitem(last=False)
        return result

    def paste(self, inversion: Inversion, image: PIL.Image.Image) -> PIL.Image.Image:
        return self.require().paste(inversion, image)

    def has_inversion(self, cache: SessionCache, photo: str | None, face_index: int | None) -> bool:
        """Whether this session already holds the face's inversion (checked without any model
        call: the strength slider previews only what is ready)."""
        if not photo:
            return False
        try:
            return self._cache_key(photo, face_index) in cache.items
        except (OSError, TypeError, ValueError):
            return False

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

    def _compose(
        self, entry: CachedInversion, images: list[PIL.Image.Image], paste: bool, progress: Progress
    ) -> list[PIL.Image.Image]:
        if not paste:
            return list(images)
        progress(0.95, desc="Pasting the edits back into the photo")
        return [self.paste(entry.inversion, image) for image in images]

    @staticmethod
    def _before_image(
        entry: CachedInversion, paste: bool, size: tuple[int, int]
    ) -> PIL.Image.Image:
        """The unedited side of a comparison, matching the results (whole photo, or crop)."""
        if paste:
            return entry.inversion.photo
        crop = entry.inversion.aligned.image
        return crop if crop.size == size else crop.resize(size, PIL.Image.Resampling.LANCZOS)

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

        def analysis(reconstruction: PIL.Image.Image) -> Analysis:
            cache.touch()
            return Analysis(choices, key[1], several, annotated, inv.aligned.image, reconstruction)

        if entry.reconstruction is None:
            for resolution in self.resolutions:
                progress(0.6, desc=f"Rendering the reconstruction at {resolution} px")
                image, embedding = self.reconstruct(inv.wplus, resolution)
                if embedding is not None and entry.embedding is None:
                    entry.embedding = embedding
                if resolution == self.resolution:
                    entry.reconstruction = image
                else:
                    yield analysis(image)
        yield analysis(entry.reconstruction)

    def edit_steps(
        self,
        cache: SessionCache,
        photo: str | None,
        face_index: int | None,
        prompt: str | None,
        source_prompt: str | None,
        strength: float | None,
        samples: Any,
        diversity: float,
        seed: Any,
        paste: bool,
        progress: Progress = _no_progress,
        warn: Warn = _no_warning,
        resolutions: Sequence[int] | None = None,
        finished: bool = True,
    ) -> Iterator[EditStep]:
        """Edit the chosen face of ``photo`` towards ``prompt``; yields one step per render size in
        ``resolutions`` (default: the preview first, then the full size). ``paste``: results
        pasted back into the photo, else the aligned crops. ``finished=False`` labels even the
        last step a preview (the strength slider is still moving; the final render follows)."""
        self.require()
        prompt = clean_prompt(prompt, warn=warn)
        source_prompt = optional_prompt(source_prompt, warn)
        if not photo:
            raise NoPhotoError(NO_PHOTO_MESSAGE)
        samples = clamp_int(samples, 1, 8, 4)
        seed = clamp_int(seed, 0, 2**31 - 1, 0)
        auto = is_auto(strength)
        strength = AUTO_STRENGTH if auto else finite(strength, "strength", 1.0)
        diversity = finite(diversity, "spread (diversity)", 0.5)
        started = time.perf_counter()
        entry, _ = self.inversion(cache, photo, face_index, progress)
        progress(0.3, desc=f"Editing towards “{prompt}”")
        edit = self.edit_cached(
            entry,
            prompt,
            source_prompt=source_prompt,
            strength=strength,
            n_samples=samples,
            diversity=diversity,
            seed=seed,
        )
        for notice in edit.notices:
            warn(notice)
        if auto:
            strength = float(edit.strength)
        described = f"strength {strength:+.2f}" + (" (auto)" if auto else "")
        status = f"**{edit.method}** · {samples} sample(s), {described}"
        fallback = edit.method == BASELINE_METHOD
        resolutions = list(resolutions or self.resolutions)
        for step, resolution in enumerate(resolutions):
            last = step == len(resolutions) - 1
            progress(
                0.4 + 0.5 * step / len(resolutions),
                desc=f"Rendering {samples} image(s) at {resolution} px",
            )
            images = self._compose(entry, self.render_edit(edit, resolution), paste, progress)
            # API callers see only the gallery: its captions say when the fallback made it.
            label = " · optimisation fallback (no CSLA mappers yet)" if fallback else ""
            items = [(image, caption(i, strength, seed) + label) for i, image in enumerate(images)]
            before = self._before_image(entry, paste, images[0].size)
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
        photo: str | None,
        face_index: int | None,
        prompt: str | None,
        source_prompt: str | None,
        max_strength: float | None,
        frames: Any,
        diversity: float,
        seed: Any,
        paste: bool,
        progress: Progress = _no_progress,
        warn: Warn = _no_warning,
    ) -> str:
        """A GIF of sample 1 from -max_strength to +max_strength and back; returns its path."""
        self.require()
        prompt = clean_prompt(prompt, warn=warn)
        source_prompt = optional_prompt(source_prompt, warn)
        if not photo:
            raise NoPhotoError(NO_PHOTO_MESSAGE)
        frames = clamp_int(frames, 3, 15, self.default_frames)
        seed = clamp_int(seed, 0, 2**31 - 1, 0)
        max_strength = finite(max_strength, "strength", 1.0)
        diversity = finite(diversity, "spread (diversity)", 0.5)
        entry, _ = self.inversion(cache, photo, face_index, progress)
        images = []
        for i, strength in enumerate(sweep_strengths(max_strength, frames)):
            progress((i, frames), desc=f"Frame {i + 1}/{frames} (strength {strength:+.2f})")
            edit = self.edit_cached(
                entry,
                prompt,
                source_prompt=source_prompt,
                strength=strength,
                n_samples=1,
                diversity=diversity,
                seed=seed,
            )
            frame = self.render_edit(edit, self.sweep_resolution)[0]
            if paste:
                frame = self.paste(entry.inversion, frame)
                frame.thumbnail((512, 512), PIL.Image.Resampling.LANCZOS)  # GIFs stay small
            images.append(frame)
        name = write_gif(images, self.sweep_folder)
        cache.touch()
        return name

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
            images = self.render_edit(result, resolution)
            yield [(image, f"sample {i + 1} · seed {seed}") for i, image in enumerate(images)]
