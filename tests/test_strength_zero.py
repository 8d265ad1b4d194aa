"""Strength 0 gives the photo back: with the default settings ("keep" detail) every path of the
service and the pipeline returns the uploaded photo within 1 grey level at every pixel (the
pasted view) and the aligned crop (the crop view), on the real photos in ../shared.

Small random models (a 64 px generator, a tiny CLIP): what is checked is everything around the
models, which does not depend on their size or weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

import csla_core
from csla_core.errors import NoFaceError
from csla_core.faces import load_image
from csla_core.service import EditingService, EditRequest, session_cache

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
FOLDERS = [SHARED / "real-assets" / "images", SHARED / "test-images"]
ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"


def shared_photos() -> list[Path]:
    return sorted(
        p for folder in FOLDERS if folder.is_dir() for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip


@pytest.fixture(scope="module")
def small_pipe():
    return csla_core.load_pipeline(random_weights=True, device="cpu", size=64, tiny_clip=True)


@pytest.fixture(scope="module")
def service(small_pipe, tmp_path_factory):
    return EditingService(small_pipe, sweep_dir=tmp_path_factory.mktemp("sweeps"))


def grey_levels_apart(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, (a.size, b.size)
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b.convert("RGB"), np.int16)).max())


def crop_at(entry, size: int) -> Image.Image:
    crop = entry.inversion.aligned.image
    return (
        crop if crop.size == (size, size) else crop.resize((size, size), Image.Resampling.BILINEAR)
    )


def test_every_shared_photo_comes_back_at_strength_zero(service):
    photos = shared_photos()
    if not photos:
        pytest.skip(f"no shared photos in {', '.join(map(str, FOLDERS))} (../shared is absent)")
    checked = []
    for number, photo in enumerate(photos):
        cache = session_cache(None)
        # Two results on every third photo (each is checked; the test of every path below makes
        # three): after the inversion, rendering is most of a photo's time here.
        samples = 1 if number % 3 else 2
        request = EditRequest.clean(str(photo), "smiling", strength=0, samples=samples)
        try:
            pasted = list(service.edit_steps(cache, request))[-1]
        except NoFaceError:
            continue  # no usable face (a 160 px crop): nothing to edit
        upload = load_image(photo)
        assert len(pasted.items) == samples
        for image, _caption in pasted.items:
            assert grey_levels_apart(image, upload) <= 1, photo.name
        checked.append(photo.name)
        if number % 3:  # the crop view on every third photo (it is the same change, unpasted)
            continue
        crop_request = EditRequest.clean(str(photo), "smiling", strength=0, paste=False)
        cropped = list(service.edit_steps(cache, crop_request))[-1]
        entry = next(iter(cache.items.values()))
        size = cropped.items[0][0].width
        assert grey_levels_apart(cropped.items[0][0], crop_at(entry, size)) <= 1, photo.name
    assert len(checked) >= 20, checked  # the shared photos with a usable face


def test_every_path_gives_the_photo_back_at_strength_zero(small_pipe, service):
    photo = next(iter(shared_photos()), ASTRONAUT)
    upload = load_image(photo)
    cache = session_cache(None)
    request = EditRequest.clean(str(photo), "grey hair", strength=0, samples=3)
    # CSLA mappers, both views.
    (step,) = list(service.edit_steps(cache, request))[-1:]
    assert all(grey_levels_apart(image, upload) <= 1 for image, _ in step.items)
    assert step.pair[0] is upload or grey_levels_apart(step.pair[0], upload) == 0
    # The strength sweep: its middle frame is strength 0 (pasted frames are shrunk for the GIF).
    frames = service.sweep_frames(
        cache, EditRequest.clean(str(photo), "grey hair", strength=1.5), 3
    )
    small = upload.copy()
    small.thumbnail((512, 512), Image.Resampling.LANCZOS)
    assert grey_levels_apart(frames[1], small) <= 1
    crop_frames = service.sweep_frames(
        cache, EditRequest.clean(str(photo), "grey hair", strength=1.5, paste=False), 3
    )
    entry = next(iter(cache.items.values()))
    assert grey_levels_apart(crop_frames[1], crop_at(entry, crop_frames[1].width)) <= 1
    # Auto strength at a zero target: the strength found is 0, and so is the change.
    inversion = small_pipe.invert(photo)
    auto = small_pipe.edit(inversion.wplus, "grey hair", strength="auto", target_clip_gain=0.0)
    assert auto.strength == 0.0
    (picture,) = small_pipe.deliver(inversion, small_pipe.render_edit(auto)[:1])
    assert grey_levels_apart(picture, upload) <= 1
    # The optimisation fallback (no mappers): strength 0 needs no optimisation at all.
    mappers, source = small_pipe.mappers, small_pipe.sources["mappers"]
    try:
        small_pipe.use_mappers(None, "")
        fallback = small_pipe.edit(inversion.wplus, "grey hair", strength=0.0)
        assert fallback.clip_trace == []  # nothing was optimised
        (picture,) = small_pipe.deliver(inversion, small_pipe.render_edit(fallback))
        assert grey_levels_apart(picture, upload) <= 1
    finally:
        small_pipe.use_mappers(mappers, source)


def test_none_shows_the_generators_face_even_at_strength_zero(service):
    photo = next(iter(shared_photos()), ASTRONAUT)
    cache = session_cache(None)
    request = EditRequest.clean(str(photo), "smiling", strength=0, samples=1, detail="none")
    (step,) = list(service.edit_steps(cache, request))[-1:]
    assert grey_levels_apart(step.items[0][0], load_image(photo)) > 1
