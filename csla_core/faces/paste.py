"""Paste-back: warp an edited crop into the full-resolution photo under a feathered face mask."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..errors import InputImageError
from .align import (
    AlignedFace,
    apply_matrix,
    in_row_bands,
    paste_row_bands,
    pil_affine_data,
    quad_to_image,
)
from .decode import to_rgb

# Soft-edge width of the paste-back mask, as a fraction of the crop side.
DEFAULT_FEATHER = 0.12

# Face region of an FFHQ crop, in crop-side units: in these crops the eyes sit near y = 0.47 and
# x = 0.37 / 0.63, the mouth near y = 0.73 and the chin near y = 0.87. The mask is 1 inside this
# ellipse and falls to 0 over ``feather`` beyond it, reaching 0 before the crop's edge.
_MASK_CENTRE = (0.5, 0.52)
_MASK_RADII = (0.27, 0.33)


def face_mask(u: np.ndarray, v: np.ndarray, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """Blend weight (0..1) at normalised crop coordinates ``u, v`` (0..1 across the crop).

    Smoothstep fall-off (like a Gaussian-feathered ellipse, but exactly 0 outside), so its slope is
    at most 1.5 / ``feather`` per crop side: no visible seam.
    """
    du = u - _MASK_CENTRE[0]
    dv = v - _MASK_CENTRE[1]
    radius = np.sqrt(du * du + dv * dv)
    ellipse = np.sqrt((du / _MASK_RADII[0]) ** 2 + (dv / _MASK_RADII[1]) ** 2)
    # Distance beyond the ellipse along the ray from the centre, in crop-side units.
    beyond = radius * (1.0 - 1.0 / np.maximum(ellipse, 1e-6))
    t = np.clip(beyond / feather, 0.0, 1.0)
    return (1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _mask_support(feather: float, points: int = 256) -> np.ndarray:
    """Polygon (normalised crop coordinates) enclosing every point where :func:`face_mask` > 0."""
    theta = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    rim = np.stack([_MASK_RADII[0] * np.cos(theta), _MASK_RADII[1] * np.sin(theta)], axis=1)
    # face_mask reaches 0 at ``feather`` beyond the ellipse along each ray from the centre; the
    # extra 1 % covers the polygon's chords between sampled rays.
    unit = rim / np.linalg.norm(rim, axis=1, keepdims=True)
    return np.array(_MASK_CENTRE) + (rim + unit * feather) * 1.01


def _checked_photo(original: Image.Image, aligned: AlignedFace) -> Image.Image:
    if original.size != tuple(aligned.source_size):
        raise InputImageError(
            f"The photo is {original.width}x{original.height} but the crop was taken from a "
            f"{aligned.source_size[0]}x{aligned.source_size[1]} image: paste back into the same "
            "photo the face was aligned from."
        )
    return original if original.mode == "RGB" else to_rgb(original)


def _in_mask_region(
    base: Image.Image,
    aligned: AlignedFace,
    crop_size: int,
    feather: float,
    blend: Callable[[np.ndarray, tuple[int, int, int, int]], Image.Image],
    *sources: Image.Image,
) -> Image.Image:
    """A copy of ``base`` whose pixels where the face mask can be non-zero are
    ``blend(band_to_crop, box)`` (a band's photo pixels -> crop pixels of a ``crop_size`` crop,
    and its box in the photo); every other pixel is bit-identical to ``base``."""
    if not 0.02 <= feather <= 0.2:
        raise ValueError(f"feather must be within 0.02..0.2, got {feather}")
    width, height = base.size
    quad = aligned.quad
    # Only the pixels the mask can touch are resampled: the bounding box of its support (about 60 %
    # of the quad's) in the photo, which keeps 12 MP photos fast.
    support = apply_matrix(quad_to_image(quad, 1, 1), _mask_support(feather) - 0.5) + 0.5
    x0 = max(math.floor(support[:, 0].min()) - 1, 0)
    y0 = max(math.floor(support[:, 1].min()) - 1, 0)
    x1 = min(math.ceil(support[:, 0].max()) + 1, width)
    y1 = min(math.ceil(support[:, 1].max()) + 1, height)
    result = base.copy()
    if x1 <= x0 or y1 <= y0:
        return result

    # Photo pixel -> crop pixel. Large regions (big faces in large photos) are blended in row
    # bands on parallel threads: each pixel is warped as it would be in one piece, and its mask
    # weight differs by float rounding at most (1 grey level).
    photo_to_crop = np.linalg.inv(quad_to_image(quad, crop_size, crop_size))

    def band(top: int, bottom: int) -> Image.Image:
        band_to_photo = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0 + top], [0.0, 0.0, 1.0]])
        return blend(photo_to_crop @ band_to_photo, (x0, y0 + top, x1, y0 + bottom))

    return paste_row_bands(result, in_row_bands(x1 - x0, y1 - y0, band, base, *sources), x0, y0)


def _band_mask(band_to_crop: np.ndarray, box, crop_size: int, feather: float) -> np.ndarray:
    """The face mask (0..1, float32) at each pixel centre of a band of the photo."""
    x0, y0, x1, y1 = box
    xs = np.arange(x1 - x0, dtype=np.float32)[None, :]
    ys = np.arange(y1 - y0, dtype=np.float32)[:, None]
    m = band_to_crop.astype(np.float32)
    u = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2] + 0.5) / crop_size
    v = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2] + 0.5) / crop_size
    return face_mask(u, v, feather)


def paste_back(
    original: Image.Image,
    edited_crop: Image.Image,
    aligned: AlignedFace,
    *,
    feather: float = DEFAULT_FEATHER,
) -> Image.Image:
    """Blend ``edited_crop`` (any square size) back into ``original`` where ``aligned`` came from.

    Only the bounding box of the crop's quad is resampled; everything outside it is bit-identical
    to ``original``. ``feather`` is the width of the mask's soft edge as a fraction of the crop
    side (0.02-0.2). Returns a new RGB image of the original's size.
    """
    base = _checked_photo(original, aligned)
    edit = edited_crop if edited_crop.mode == "RGB" else to_rgb(edited_crop)
    # A crop much denser than the photo's face region would alias under the bicubic warp below:
    # shrink it first (antialiased) to about the photo's resolution.
    side = float(np.hypot(*(aligned.quad[3] - aligned.quad[0])))
    if edit.width > 1.5 * side:
        target = max(8, math.ceil(side))
        edit = edit.resize((target, target), Image.Resampling.LANCZOS)

    def blend(band_to_crop: np.ndarray, box) -> Image.Image:
        return _blend_band(base, edit, band_to_crop, box, feather)

    return _in_mask_region(base, aligned, edit.width, feather, blend, edit)


def paste_change(
    original: Image.Image,
    added: np.ndarray,
    taken: np.ndarray,
    aligned: AlignedFace,
    *,
    feather: float = DEFAULT_FEATHER,
) -> Image.Image:
    """Apply a change made on the aligned crop to the photo itself: each photo pixel P under
    the face mask m becomes P + m (added - taken P), with ``added`` [H, W, 3] (grey levels,
    float32) and ``taken`` [H, W] (0..1) at any crop size, warped bilinearly into the photo.
    Where ``added`` and ``taken`` are zero the photo's own pixels are kept, bit for bit
    (``editing.detail.Change``: ``taken`` 1 and ``added`` the render is the plain paste)."""
    base = _checked_photo(original, aligned)
    size = added.shape[0]
    if added.shape != (size, size, 3) or taken.shape != (size, size):
        raise ValueError(
            f"added [S, S, 3] and taken [S, S] expected, got {added.shape}, {taken.shape}"
        )
    planes = [
        Image.fromarray(np.ascontiguousarray(added[..., c], np.float32), "F") for c in range(3)
    ]
    planes.append(Image.fromarray(np.ascontiguousarray(taken, np.float32), "F"))

    def blend(band_to_crop: np.ndarray, box) -> Image.Image:
        x0, y0, x1, y1 = box
        data = pil_affine_data(band_to_crop)
        warped = [
            np.asarray(p.transform((x1 - x0, y1 - y0), Image.Transform.AFFINE, data,
                                   resample=Image.Resampling.BILINEAR))
            for p in planes
        ]  # fmt: skip
        mask = _band_mask(band_to_crop, box, size, feather)
        photo = np.asarray(base.crop(box), dtype=np.float32)
        change = np.stack(warped[:3], axis=-1) - warped[3][..., None] * photo
        out = photo + mask[..., None] * change
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")

    return _in_mask_region(base, aligned, size, feather, blend)


def _blend_band(
    base: Image.Image,
    edit: Image.Image,
    band_to_crop: np.ndarray,
    box: tuple[int, int, int, int],
    feather: float,
) -> Image.Image:
    """The photo's ``box`` with the edited crop warped in (bicubic) under the face mask."""
    x0, y0, x1, y1 = box
    warped = edit.transform(
        (x1 - x0, y1 - y0),
        Image.Transform.AFFINE,
        pil_affine_data(band_to_crop),
        resample=Image.Resampling.BICUBIC,
    )
    weights = np.rint(_band_mask(band_to_crop, box, edit.width, feather) * 255.0)
    weights = weights.astype(np.uint8)
    return Image.composite(warped, base.crop(box), Image.fromarray(weights, "L"))
