"""Keeping the photo's detail (``editing.detail``) and pasting a change into the photo
(``faces.paste_change``): strength 0 is the photo, an unchanged region is the photo, and a
feature the edit moves leaves no ghost where it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from csla_core.editing.detail import change_map, edit_change, keep_detail, render_as_is
from csla_core.faces import AlignedFace, paste_back, paste_change
from csla_core.imaging import pil_to_tensor, tensor_to_pil

GREY = 1 / 127.5  # one grey level in [-1, 1] units
SIZE = 256


def _disc(size: int, centre: tuple[float, float], radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) <= radius**2).float()


def _textured(seed: int) -> torch.Tensor:
    """A face-like crop: smooth shading plus fine texture (the photo's own detail)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.3, 0.3, SIZE)
    shade = 0.2 + ramp[None, :] * 0.5 + ramp[:, None] * 0.3
    texture = 0.08 * torch.randn(3, SIZE, SIZE, generator=g)
    return (shade[None] + texture).clamp(-1, 1)[None]


def _scene(shift: int = 3):
    """Photo crop X with a dark feature at ``p``; the reconstruction R is X without its fine
    texture, a little off in colour, with a fainter, smaller feature ``shift`` px away (an
    imperfect inversion); the edit E moves R's feature from there to ``q``."""
    p, q, radius = (90.0, 150.0), (170.0, 150.0), 14.0
    photo = _textured(0)
    smooth = torch.nn.functional.avg_pool2d(photo, 9, stride=1, padding=4, count_include_pad=False)
    at_p, at_q = _disc(SIZE, p, radius), _disc(SIZE, q, radius)
    at_p_shifted = _disc(SIZE, (p[0] + shift, p[1] + shift), 0.7 * radius)
    photo = photo * (1 - at_p) + (-0.8) * at_p
    base = smooth + 0.05
    reconstruction = base * (1 - 0.5 * at_p_shifted) + (-0.4) * at_p_shifted
    edited = base * (1 - at_q) + (-0.7) * at_q
    return photo, reconstruction, edited, (p, q, radius)


def _contrast(image: torch.Tensor, centre, radius) -> float:
    inside = _disc(SIZE, centre, radius * 0.7)
    ring = _disc(SIZE, centre, radius * 2.2) - _disc(SIZE, centre, radius * 1.5)
    lum = image[0].mean(dim=0)
    return float((lum * ring).sum() / ring.sum() - (lum * inside).sum() / inside.sum())


def test_strength_zero_is_exactly_the_photo():
    photo, reconstruction, _, _ = _scene()
    change = keep_detail(reconstruction.clone(), reconstruction)
    assert torch.equal(change.apply(photo), photo)
    assert float(change.taken.abs().max()) == 0.0 and float(change.added.abs().max()) == 0.0


def test_where_the_edit_does_nothing_the_photo_is_kept_and_the_edit_is_applied():
    photo, reconstruction, edited, (p, q, radius) = _scene()
    out = keep_detail(edited, reconstruction).apply(photo)
    far = torch.ones(SIZE, SIZE)
    far[80:220, 50:220] = 0  # the region around both features (and the change map's reach)
    error = ((out - photo).abs().amax(dim=1)[0] * far).max()
    assert error <= GREY, f"unchanged region moved by {error / GREY:.2f} grey levels"
    # The moved feature is there, at the edit's strength.
    assert _contrast(out, q, radius) > 0.8 * _contrast(edited, q, radius)


@pytest.mark.parametrize("shift", [0, 3, 6])
def test_a_moved_feature_leaves_no_ghost(shift):
    """The photo's feature at p (its reconstruction sits ``shift`` px off) must be gone once
    the edit moves it: at most 10 % of its contrast is left (the blend without the change map,
    X + E - R, keeps all of it: the ghost)."""
    photo, reconstruction, edited, (p, q, radius) = _scene(shift)
    before = _contrast(photo, p, radius)
    out = keep_detail(edited, reconstruction).apply(photo)
    ghost = _contrast(out, p, radius)
    naive = _contrast(photo + edited - reconstruction, p, radius)
    assert naive > 0.4 * before  # the scene does leave a ghost without the change map
    assert abs(ghost) <= 0.1 * before, f"ghost keeps {ghost / before:.0%} of the feature"


def test_change_map_is_zero_without_change_and_one_on_strong_change():
    photo, reconstruction, edited, (p, q, radius) = _scene()
    taken = change_map(edited, reconstruction)[0, 0]
    assert float(taken[int(q[1]), int(q[0])]) == 1.0
    assert float(taken[10, 10]) == 0.0
    assert float(change_map(reconstruction, reconstruction).max()) == 0.0


def test_none_is_the_render_and_keep_needs_the_reconstruction():
    photo, reconstruction, edited, _ = _scene()
    assert torch.equal(render_as_is(edited).apply(photo), edited)
    with pytest.raises(ValueError, match="reconstruction"):
        edit_change(edited, None, "keep")
    with pytest.raises(ValueError, match="detail"):
        edit_change(edited, reconstruction, "sharpen")


# ---------------------------------------------------------------------- paste into the photo


def _aligned(photo: Image.Image, box=(60, 40, 316, 296)) -> AlignedFace:
    x0, y0, x1, y1 = box
    quad = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=np.float64)
    crop = photo.transform(
        (SIZE, SIZE), Image.Transform.QUAD, tuple(quad.flatten()), Image.Resampling.BILINEAR
    )
    return AlignedFace(crop, quad, photo.size, np.zeros((5, 2), np.float32))


def _photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (360, 420, 3), dtype=np.uint8), "RGB")


def test_pasting_no_change_gives_the_photo_bit_for_bit():
    photo = _photo()
    aligned = _aligned(photo)
    zeros = np.zeros((SIZE, SIZE), np.float32)
    out = paste_change(photo, np.zeros((SIZE, SIZE, 3), np.float32), zeros, aligned)
    assert np.array_equal(np.asarray(out), np.asarray(photo))


def test_pasting_the_render_whole_is_the_plain_paste():
    """taken = 1, added = the render: the old paste-back, up to its resampling (bilinear
    here, bicubic there) and its 8-bit mask: within a few grey levels on a noise image's
    smooth render."""
    photo = _photo()
    aligned = _aligned(photo)
    render = torch.full((1, 3, SIZE, SIZE), 0.3)
    render[:, 0] = -0.2
    change = render_as_is(render)
    added = (127.5 * (change.added[0] + change.taken[0])).permute(1, 2, 0).numpy()
    ours = np.asarray(paste_change(photo, added, change.taken[0, 0].numpy(), aligned), np.int16)
    plain = np.asarray(paste_back(photo, tensor_to_pil(render)[0], aligned), np.int16)
    assert np.abs(ours - plain).max() <= 2
    assert (ours != np.asarray(photo)).any()


def test_a_kept_detail_edit_changes_only_what_the_edit_changes_in_the_photo():
    photo = _photo()
    aligned = _aligned(photo)
    crop = pil_to_tensor(aligned.image)
    reconstruction = torch.nn.functional.avg_pool2d(crop, 5, stride=1, padding=2)
    edited = reconstruction.clone()
    edited[:, :, 120:150, 110:150] -= 0.6  # a dark patch in the middle of the face
    change = keep_detail(edited, reconstruction)
    added = (127.5 * (change.added[0] + change.taken[0])).permute(1, 2, 0).numpy()
    out = np.asarray(paste_change(photo, added, change.taken[0, 0].numpy(), aligned), np.int16)
    moved = np.abs(out - np.asarray(photo, np.int16)).max(axis=-1) > 1
    ys, xs = np.nonzero(moved)
    # The patch is at crop (110..150, 120..150) of a 256 px crop mapped 1:1 to photo (60, 40):
    # every changed photo pixel lies within the patch widened by the change map's reach.
    assert moved.any()
    assert xs.min() >= 60 + 110 - 24 and xs.max() <= 60 + 150 + 24
    assert ys.min() >= 40 + 120 - 24 and ys.max() <= 40 + 150 + 24
