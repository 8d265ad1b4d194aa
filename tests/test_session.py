"""The editing session service (csla_core.service) on its own: no server, no browser, no weights.

Model calls go to a small stand-in pipeline that counts them and renders flat colours.
"""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_stubs import FakeInversion, flat_deliver

from csla_core import service as svc
from csla_core.errors import NoFaceError, PromptError, WeightsError
from csla_core.service import (
    CachedInversion,
    EditingService,
    EditRequest,
    NoPhotoError,
    SessionCache,
    annotate_faces,
    clean_prompt,
    content_hash,
    is_out_of_memory,
    session_cache,
    write_gif,
)


def req(photo, prompt="smiling", **settings) -> EditRequest:
    return EditRequest.clean(photo, prompt, **settings)


class FakePipeline:
    """What EditingService calls on a CSLAPipeline; renders are flat images of the strength."""

    def __init__(self, size: int = 64, n_faces: int = 1):
        self.generator = SimpleNamespace(size=size)
        self.device = torch.device("cpu")
        self.notice = "fake pipeline"
        self.size = size
        self.n_faces = n_faces
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def invert(self, photo, face_index=0):
        self._count("invert")
        image = Image.open(photo).convert("RGB")
        faces = [SimpleNamespace(box=np.array([1, 1, 9, 9]), width=8.0, height=8.0)] * self.n_faces
        crop = Image.new("RGB", (self.size, self.size), (10 * face_index, 0, 0))
        return FakeInversion(
            wplus=torch.zeros(1, 4, 8),
            aligned=SimpleNamespace(image=crop),
            faces=faces,
            face_index=face_index,
            photo=image,
        )

    clip = object()  # the pipeline has CLIP: edits are anchored on an image embedding

    @property
    def embedding_resolution(self):
        return min(256, self.size)

    def image_embedding(self, wplus, render=None, tuning=None):
        self._count("embed")
        if render is None:
            self._count("render")  # the real pipeline renders the code to embed it
        else:
            assert render.shape[-1] == self.embedding_resolution
        return torch.ones(1, 8)

    FOUND_STRENGTH = 1.35  # what "auto" finds here

    def edit(self, wplus, prompt, *, strength=1.0, n_samples=1, **kwargs):
        self._count("edit")
        strength = self.FOUND_STRENGTH if strength == "auto" else strength
        return SimpleNamespace(strength=strength, n=n_samples, method="fake", notices=["cut"])

    def render(self, wplus, max_resolution=None, tuning=None):
        self._count("render")
        side = max_resolution or self.size
        return torch.zeros(wplus.shape[0], 3, side, side)

    def render_edit(self, edit, max_resolution=None, tuning=None):
        self._count("render_edit")
        side = max_resolution or self.size
        return torch.full((edit.n, 3, side, side), max(-1.0, min(1.0, edit.strength / 3)))

    def generate(self, prompt, n, seed):
        self._count("generate")
        return SimpleNamespace(strength=0.0, n=n, method="fake", notices=[])

    def deliver(self, *args, **kwargs):
        self._count("deliver")
        return flat_deliver(*args, **kwargs)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (120, 90, 60)).save(path)
    return str(path)


# ------------------------------------------------------------------------------------- cache


def test_session_cache_is_bounded_and_least_recently_used_goes_first():
    cache = SessionCache(max_items=2)
    for key in [("a", 0), ("b", 0)]:
        cache.put(key, CachedInversion(inversion=key))
    assert cache.get(("a", 0)) is not None  # "a" becomes the most recent
    cache.put(("c", 0), CachedInversion(inversion="c"))
    assert list(cache.items) == [("a", 0), ("c", 0)]


def test_default_bound_is_the_per_session_limit():
    cache = SessionCache()
    for i in range(svc.INVERSIONS_PER_SESSION + 2):
        cache.put((str(i), 0), CachedInversion(inversion=i))
    assert len(cache.items) == svc.INVERSIONS_PER_SESSION == 3


def test_session_cache_expires_after_its_ttl_since_last_use():
    assert svc.SESSION_TTL_S == 1800
    start = 1000.0
    cache = session_cache(None, now=start)
    assert isinstance(cache, SessionCache) and cache.ttl_s == svc.SESSION_TTL_S
    cache.put(("a", 0), CachedInversion(inversion="a"))
    cache.touch(start)
    # Used again before the TTL: the same cache, and the TTL counts from this use.
    assert session_cache(cache, now=start + 1700) is cache
    assert not cache.expired(start + 1700 + 1799)
    assert session_cache(cache, now=start + 1700 + 1799) is cache
    # Unused for longer than the TTL: a fresh, empty cache with the same limits.
    later = start + 1700 + 1799 + 1801
    assert cache.expired(later)
    fresh = session_cache(cache, now=later)
    assert fresh is not cache and not fresh.items and fresh.before is None
    assert fresh.max_items == cache.max_items and not fresh.expired(later)


def test_anything_but_a_cache_gives_a_new_cache():
    for state in (None, {}, "stale"):
        assert isinstance(session_cache(state), SessionCache)
    assert session_cache(None) is not session_cache(None)


def test_cache_keys_are_photo_content_and_face_index(tmp_path, photo):
    copy = tmp_path / "renamed upload.png"
    shutil.copy(photo, copy)
    other = tmp_path / "other.png"
    Image.new("RGB", (96, 64), (0, 0, 0)).save(other)
    assert content_hash(photo) == content_hash(copy) != content_hash(other)

    pipe = FakePipeline()
    service = EditingService(pipe, sweep_dir=tmp_path / "sweeps")
    cache = SessionCache()
    first, key = service.inversion(cache, photo, 0)
    assert key == (content_hash(photo), 0)
    again, _ = service.inversion(cache, str(copy), None)  # same bytes, another name: cached
    assert again is first and pipe.calls["invert"] == 1
    service.inversion(cache, photo, 1)  # another face of the same photo: a new inversion
    service.inversion(cache, str(other), 0)
    assert pipe.calls["invert"] == 3
    assert list(cache.items) == [key, (key[0], 1), (content_hash(other), 0)]


# ----------------------------------------------------------------------------- errors, prompts


def test_clean_prompt_strips_and_rejects_empty_prompts():
    assert clean_prompt("  smiling \n") == "smiling"
    for empty in ("", "   ", None):
        with pytest.raises(PromptError) as excinfo:
            clean_prompt(empty)
        assert str(excinfo.value) == (
            "The edit prompt is empty: type what the face should look like, e.g. “smiling” or "
            "“grey hair”."
        )
    with pytest.raises(PromptError, match="The text-to-image prompt is empty"):
        clean_prompt(" ", "text-to-image prompt")


def test_out_of_memory_detection():
    for exc in (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried... out of memory"),
        MemoryError(),
    ):
        assert is_out_of_memory(exc), exc
    for exc in (RuntimeError("shape mismatch"), ValueError("out of memory"), NoFaceError("x")):
        assert not is_out_of_memory(exc), exc
    svc.free_cached_memory()  # harmless without a GPU


def test_without_a_pipeline_every_operation_says_what_to_download(tmp_path, photo):
    service = EditingService(WeightsError("e4e_ffhq_encode.pt missing"), sweep_dir=tmp_path)
    assert service.pipe is None and service.notice == "" and service.resolution == 1024
    calls = [
        lambda: service.require(),
        lambda: next(service.edit_steps(SessionCache(), req(photo, "a"))),
        lambda: next(service.analysis_steps(SessionCache(), photo, 0)),
        lambda: service.sweep(SessionCache(), req(photo, "a"), 3),
        lambda: next(service.refine_steps(SessionCache(), photo, 0)),
        lambda: next(service.generate_steps("a face", 1, 0)),
    ]
    for call in calls:
        with pytest.raises(WeightsError) as excinfo:
            call()
        assert "python -m csla_core download" in str(excinfo.value)
        assert str(excinfo.value) == svc.MISSING_PIPELINE_MESSAGE


def test_a_request_checks_prompt_then_photo_then_settings():
    with pytest.raises(PromptError, match="prompt is empty"):
        req(None, " ")
    with pytest.raises(NoPhotoError) as excinfo:
        req(None, "smiling")
    assert str(excinfo.value) == "Upload a portrait (or pick the example) first."
    with pytest.raises(NoPhotoError):
        req("", "smiling")
    for name, value in [("strength", float("nan")), ("diversity", "inf"), ("strength", "x")]:
        with pytest.raises(svc.InvalidSettingError, match="must be a finite number"):
            req("p.png", "smiling", **{name: value})
    with pytest.raises(svc.InvalidSettingError, match="detail setting must be one of keep, none"):
        req("p.png", "smiling", detail="sharp")
    cleaned = req("p.png", " smiling ", samples="20", seed=-4, detail=" NONE ", strength=" Auto ")
    assert (cleaned.prompt, cleaned.samples, cleaned.seed, cleaned.detail) == (
        "smiling",
        8,
        0,
        "none",
    )
    assert cleaned.auto and req("p.png", "a", strength=None).strength == 1.0


def test_max_resolution_must_be_a_power_of_two(tmp_path):
    with pytest.raises(ValueError, match="power of two"):
        EditingService(FakePipeline(size=64), max_resolution=48, sweep_dir=tmp_path)


# ------------------------------------------------------------------------------- the steps


def test_every_model_call_is_wrapped_and_paste_is_not(tmp_path):
    wrapped = []

    def wrap(name, fn):
        wrapped.append(name)
        return fn

    EditingService(FakePipeline(), sweep_dir=tmp_path, wrap_model_call=wrap)
    assert wrapped == list(EditingService.MODEL_CALLS)
    assert "paste" not in wrapped


def test_edit_steps_preview_then_full_size_pasted_into_the_photo(tmp_path, photo):
    pipe = FakePipeline(size=1024)
    service = EditingService(pipe, max_resolution=512, sweep_dir=tmp_path)
    cache, warnings, progress = SessionCache(), [], []
    request = req(photo, " smiling ", source_prompt="", strength=-0.5, samples="2", seed=7)
    steps = list(
        service.edit_steps(
            cache, request, lambda *a, **k: progress.append(k.get("desc")), warnings.append
        )
    )
    assert len(steps) == 2 and warnings == ["cut"]  # 256 px preview, then 512 px
    assert "preview" in steps[0].status and "preview" not in steps[1].status
    assert steps[1].status.startswith("**fake** · 2 sample(s), strength -0.50 · ")
    items = steps[1].items
    assert [c for _, c in items] == [
        "sample 1 · strength -0.50 · seed 7",
        "sample 2 · strength -0.50 · seed 7",
    ]
    assert all(image.size == (96, 64) for image, _ in items)  # pasted: the photo's own size
    assert steps[1].pair[0] is cache.before and cache.before.size == (96, 64)
    assert pipe.calls["embed"] == 1 and pipe.calls["edit"] == 1 and pipe.calls["invert"] == 1
    assert any("Editing towards “smiling”" in (d or "") for d in progress)


def test_slider_drag_previews_only_a_face_already_inverted(tmp_path, photo):
    """While the strength slider moves, the app renders one preview-size step and only for a
    face this session has inverted; on release it renders the full size alone."""
    pipe = FakePipeline(size=1024)
    service = EditingService(pipe, max_resolution=512, sweep_dir=tmp_path)
    cache = SessionCache()
    assert not service.has_inversion(cache, photo, 0)
    assert not service.has_inversion(cache, None, 0)
    assert not service.has_inversion(cache, str(tmp_path / "gone.png"), 0)
    service.inversion(cache, photo, 0)
    assert service.has_inversion(cache, photo, 0) and not service.has_inversion(cache, photo, 1)
    request = req(photo, strength=0.7, samples=2, seed=1, paste=False)
    (drag,) = service.edit_steps(
        cache, request, resolutions=service.resolutions[:1], finished=False
    )
    assert drag.items[0][0].size == (256, 256) and drag.status.endswith(" — preview")
    (release,) = service.edit_steps(cache, request, resolutions=service.resolutions[-1:])
    assert release.items[0][0].size == (512, 512) and "preview" not in release.status
    assert pipe.calls["invert"] == 1 and pipe.calls["render_edit"] == 2


@pytest.mark.parametrize("typed", ["auto", " Auto "])
def test_auto_strength_reports_the_strength_found(tmp_path, photo, typed):
    service = EditingService(FakePipeline(size=64), sweep_dir=tmp_path)
    request = req(photo, strength=typed, samples=2, seed=3, paste=False)
    (step,) = service.edit_steps(SessionCache(), request)
    assert step.strength == FakePipeline.FOUND_STRENGTH
    assert "strength +1.35 (auto)" in step.status
    assert [c for _, c in step.items][1] == "sample 2 · strength +1.35 · seed 3"
    manual_request = req(photo, strength=0.4, samples=1, seed=3, paste=False)
    (manual,) = service.edit_steps(SessionCache(), manual_request)
    assert manual.strength == 0.4 and "(auto)" not in manual.status


def test_edit_steps_crops_and_the_comparison(tmp_path, photo):
    service = EditingService(FakePipeline(size=64), sweep_dir=tmp_path)
    cache = SessionCache()
    (step,) = service.edit_steps(
        cache, req(photo, strength=None, samples=1, seed=None, paste=False)
    )
    assert step.items[0][0].size == (64, 64) and step.pair[0].size == (64, 64)
    assert "strength +1.00 · seed 0" in step.items[0][1]
    gallery = [(f"/tmp/{i}.png", "caption") for i in range(2)]
    assert svc.compare_pair(gallery, cache, 5) == (cache.before, "/tmp/1.png")
    assert svc.compare_pair(gallery, cache, None) == (cache.before, "/tmp/0.png")
    assert svc.compare_pair(gallery, None, 0) is None
    assert svc.compare_pair([], cache, 0) is None


def test_analysis_renders_the_reconstruction_once(tmp_path, photo):
    pipe = FakePipeline(size=1024, n_faces=2)
    service = EditingService(pipe, max_resolution=512, sweep_dir=tmp_path)
    cache = SessionCache()
    steps = list(service.analysis_steps(cache, photo, 1))
    assert [s.reconstruction.size for s in steps] == [(256, 256), (512, 512)]
    last = steps[-1]
    assert last.several and last.chosen == 1 and last.annotated is not None
    assert last.choices == [("#0 (8×8 px)", 0), ("#1 (8×8 px)", 1)]
    (again,) = service.analysis_steps(cache, photo, 1)  # cached: no new render
    assert again.reconstruction.size == (512, 512) and pipe.calls["render"] == 2


def test_the_first_edit_after_analysis_embeds_the_preview_reconstruction(tmp_path, photo):
    # The edit anchor is the CLIP embedding of the face's 256 px render, which the 256 px
    # reconstruction preview already is: the first edit renders only its own images.
    pipe = FakePipeline(size=1024)
    service = EditingService(pipe, max_resolution=512, sweep_dir=tmp_path)
    cache = SessionCache()
    list(service.analysis_steps(cache, photo, 0))
    assert pipe.calls["render"] == 2 and pipe.calls["embed"] == 1
    list(service.edit_steps(cache, req(photo, samples=1, paste=False)))
    assert pipe.calls["render"] == 2 and pipe.calls["embed"] == 1 and pipe.calls["edit"] == 1
    # Without a preview (full size 256 or less) the full-size reconstruction is embedded.
    small = FakePipeline(size=256)
    service = EditingService(small, sweep_dir=tmp_path)
    list(service.analysis_steps(SessionCache(), photo, 0))
    assert small.calls["render"] == 1 and small.calls["embed"] == 1


def test_generate_steps(tmp_path):
    service = EditingService(FakePipeline(size=64), sweep_dir=tmp_path)
    (items,) = service.generate_steps("a smiling old man", 3, 5)
    assert [c for _, c in items] == [f"sample {i} · seed 5" for i in (1, 2, 3)]
    with pytest.raises(PromptError, match="text-to-image prompt is empty"):
        next(service.generate_steps("", 3, 5))


# ---------------------------------------------------------------------------- sweeps, GIFs


def test_sweep_strengths_are_symmetric():
    assert svc.sweep_strengths(1.0, 3) == [-1.0, 0.0, 1.0]
    assert svc.sweep_strengths(-2.0, 5) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert svc.sweep_strengths(None, 3) == [-1.0, 0.0, 1.0]


def test_gif_goes_forwards_then_back(tmp_path):
    for n in (3, 5):
        frames = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(n)]
        path = write_gif(frames, tmp_path)
        with Image.open(path) as gif:
            assert gif.format == "GIF" and gif.n_frames == 2 * n - 2
            assert gif.info.get("loop") == 0


def test_old_animations_are_pruned(tmp_path):
    old = tmp_path / "old.gif"
    old.write_bytes(b"x")
    stale = time.time() - svc.SWEEP_DIR_MAX_AGE_S - 10
    os.utime(old, (stale, stale))
    recent = tmp_path / "recent.gif"
    recent.write_bytes(b"x")
    write_gif([Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")], tmp_path)
    assert not old.exists() and recent.exists()


def test_sweep_writes_an_animation_of_the_requested_frames(tmp_path, photo):
    pipe = FakePipeline(size=64)
    service = EditingService(pipe, sweep_dir=tmp_path / "sweeps")
    cache = SessionCache()
    path = service.sweep(cache, req(photo, paste=False), 3)
    assert os.path.dirname(path) == str(tmp_path / "sweeps")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 4  # -1, 0, +1, then 0 on the way back
        assert gif.size == (64, 64)
    assert pipe.calls["edit"] == 3 and pipe.calls["embed"] == 1
    frames = service.sweep(cache, req(photo), "many")
    with Image.open(frames) as gif:  # not a number: the default frame count (5 on CPU)
        assert gif.n_frames == 2 * service.default_frames - 2 == 8
        assert gif.size == (96, 64)  # pasted into the photo


# ----------------------------------------------------------------------------- annotations


def test_annotate_faces_downscales_to_max_side():
    faces = [
        SimpleNamespace(box=np.array([100, 100, 500, 500], dtype=np.float32)),
        SimpleNamespace(box=np.array([900, 200, 1300, 600], dtype=np.float32)),
    ]
    big = Image.new("L", (2000, 1000), 128)
    image = annotate_faces(big, faces, chosen=1)
    assert image.size == (768, 384) and image.mode == "RGB"
    assert annotate_faces(big, faces, 0, max_side=500).size == (500, 250)
    small = Image.new("RGB", (400, 300), (0, 0, 0))
    annotated = annotate_faces(small, faces[:1], chosen=0)
    assert annotated.size == (400, 300) and annotated is not small
    assert annotated.getpixel((100, 300 // 2)) == (255, 64, 64)  # the chosen face's box
    assert small.getpixel((100, 150)) == (0, 0, 0)  # the input is left alone


def test_face_choices_caption_and_clamp():
    faces = [SimpleNamespace(width=120.4, height=150.6)]
    assert svc.face_choices(faces) == [("#0 (120×151 px)", 0)]
    assert svc.caption(1, 0.5, 3) == "sample 2 · strength +0.50 · seed 3"
    assert svc.clamp_int("9", 1, 8, 4) == 8
    assert svc.clamp_int(None, 1, 8, 4) == 4
    assert svc.clamp_int(-3.7, 0, 10, 5) == 0
