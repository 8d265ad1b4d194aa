"""FFHQ alignment (Karras et al.'s dataset script): landmarks -> crop quad -> aligned crop.

Coordinate convention: pixel *index* coordinates, x to the right, y down, pixel centres at
integers (the convention of the landmarks). Matrices are 3x3 and act on column vectors
``[x, y, 1]``. Pillow's ``transform`` uses continuous coordinates (centres at +0.5); the
conversion is done in one place (:func:`pil_affine_data`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import NoFaceError
from ..imaging import pil_to_tensor
from .decode import to_rgb
from .face import Face

DEFAULT_OUTPUT_SIZE = 1024


@dataclass
class AlignedFace:
    """An FFHQ-aligned crop and where it came from."""

    image: Image.Image  # RGB, output_size x output_size
    quad: np.ndarray  # float64 [4, 2]: crop corners in the photo (TL, BL, BR, TR: FFHQ's order)
    source_size: tuple[int, int]  # (width, height) of the photo the quad refers to
    landmarks: np.ndarray  # float32 [N, 2]: the landmarks used, photo coordinates

    @property
    def output_size(self) -> int:
        return self.image.width

    def crop_to_image_matrix(self, size: int | None = None) -> np.ndarray:
        """3x3 matrix: pixel index in a ``size``-pixel version of the crop -> photo pixel index."""
        return quad_to_image(self.quad, size or self.output_size, size or self.output_size)

    @property
    def crop_to_image(self) -> np.ndarray:
        """3x3 matrix: crop pixel (index coordinates) -> photo pixel."""
        return self.crop_to_image_matrix()

    @property
    def image_to_crop(self) -> np.ndarray:
        """3x3 matrix: photo pixel -> crop pixel (inverse of :attr:`crop_to_image`)."""
        return np.linalg.inv(self.crop_to_image)

    def to_tensor_256(self) -> torch.Tensor:
        """The encoder's input: [1, 3, 256, 256] float32 in [-1, 1]."""
        return crop_to_tensor(self.image, 256)


def quad_to_image(quad: np.ndarray, width: int, height: int) -> np.ndarray:
    # Crop continuous (u, v) in [0, width] x [0, height] -> photo continuous
    # nw + (ne - nw) u / width + (sw - nw) v / height, with continuous = index + 0.5 on both sides.
    nw, sw, ne = quad[0] + 0.5, quad[1] + 0.5, quad[3] + 0.5
    cont = np.array(
        [
            [(ne[0] - nw[0]) / width, (sw[0] - nw[0]) / height, nw[0]],
            [(ne[1] - nw[1]) / width, (sw[1] - nw[1]) / height, nw[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    return _shift(-0.5) @ cont @ _shift(0.5)


def _shift(d: float) -> np.ndarray:
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A 3x3 matrix applied to [N, 2] points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def pil_affine_data(out_to_in_index: np.ndarray) -> tuple[float, ...]:
    """Pillow AFFINE data (output continuous -> input continuous) from an index-space matrix."""
    cont = _shift(0.5) @ out_to_in_index @ _shift(-0.5)
    return tuple(float(v) for v in cont[:2].reshape(-1))


# Large images are made in row bands of about this many pixels, on at most this many threads.
PIXELS_PER_BAND = 250_000
BAND_THREADS = min(4, os.cpu_count() or 1)

T = TypeVar("T")


def in_row_bands(
    width: int, height: int, make: Callable[[int, int], T], *sources: Image.Image
) -> list[tuple[int, T]]:
    """[(top, make(top, bottom))] for row bands covering rows [0, height) of a width x height
    result: one band, or for large ones several on parallel threads (Pillow and NumPy release
    the GIL). ``sources``, the images ``make`` reads, are decoded first."""
    bands = min(BAND_THREADS, max(1, width * height // PIXELS_PER_BAND))
    if bands == 1:
        return [(0, make(0, height))]
    for source in sources:
        source.load()
    edges = [height * i // bands for i in range(bands + 1)]
    with ThreadPoolExecutor(bands) as pool:
        return list(zip(edges, pool.map(make, edges[:-1], edges[1:])))


def paste_row_bands(
    image: Image.Image, bands: list[tuple[int, Image.Image]], left: int, top: int
) -> Image.Image:
    """``image`` with each band pasted at (left, top + its first row); returns ``image``."""
    for row, band in bands:
        image.paste(band, (left, top + row))
    return image


def _landmarks_of(face_or_landmarks: Face | np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    points = (
        face_or_landmarks.landmarks if isinstance(face_or_landmarks, Face) else face_or_landmarks
    )
    points = np.asarray(points, dtype=np.float64)
    if points.shape not in ((5, 2), (68, 2)):
        raise ValueError(f"landmarks must be [5, 2] (MTCNN) or [68, 2] (dlib); got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return points


# MTCNN's 5 points sit on the pupils; FFHQ's eye centres are dlib's eye-contour means. These two
# constants move MTCNN's eyes there (see mtcnn_eyes_to_ffhq); how they were fitted, and how well
# they do, is in docs/faces.md.
FFHQ_EYE_DISTANCE_SCALE = 0.978
FFHQ_EYE_SHIFT = 0.023


def mtcnn_eyes_to_ffhq(
    eye_avg: np.ndarray, eye_to_eye: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's eye midpoint and eye-to-eye vector -> FFHQ's (dlib eye-contour means).

    In the face's own frame: the midpoint moves ``FFHQ_EYE_SHIFT`` eye distances towards the mouth
    (perpendicular to the eye line) and the eye distance is multiplied by
    ``FFHQ_EYE_DISTANCE_SCALE``. Rotating, scaling or moving the face moves the result with it.
    """
    eye_avg = np.asarray(eye_avg, dtype=np.float64)
    eye_to_eye = np.asarray(eye_to_eye, dtype=np.float64)
    # The eye line turned 90 degrees the way FFHQ turns its x axis into y: towards the mouth.
    down = np.flipud(eye_to_eye) * [-1.0, 1.0]
    return eye_avg + down * FFHQ_EYE_SHIFT, eye_to_eye * FFHQ_EYE_DISTANCE_SCALE


def ffhq_quad(landmarks: np.ndarray, *, ffhq_correction: bool = True) -> tuple[np.ndarray, float]:
    """FFHQ crop quadrilateral (TL, BL, BR, TR) and its side length, from 5 or 68 landmarks.

    Formulas of the FFHQ dataset script (``recreate_aligned_images``). With 68 dlib points it
    uses the eye-contour means and mouth corners 48/54 as FFHQ does. With MTCNN's 5 points the
    eye points stand in for the eye centres and points 3/4 are the mouth corners; with
    ``ffhq_correction`` (the default) the eye centre and eye distance are first moved to where
    dlib's eye-contour means would be (see ``FFHQ_EYE_SHIFT``); without it the 5 points are used
    as they are.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
        mouth_left, mouth_right = lm[48], lm[54]
    else:
        eye_left, eye_right, mouth_left, mouth_right = lm[0], lm[1], lm[3], lm[4]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    if ffhq_correction and lm.shape != (68, 2):
        eye_avg, eye_to_eye = mtcnn_eyes_to_ffhq(eye_avg, eye_to_eye)
    eye_to_mouth = mouth_avg - eye_avg

    # x: the crop's horizontal half-axis, a compromise between the eye line and the normal to the
    # eye-mouth line; its length is set by whichever of the two distances is relatively larger.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1.0, 1.0]
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise NoFaceError("The face landmarks are degenerate (eyes and mouth coincide).")
    x /= norm
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1.0, 1.0]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2.0)


def align_face(
    image: Image.Image,
    face_or_landmarks: Face | np.ndarray | Sequence[Sequence[float]],
    output_size: int = DEFAULT_OUTPUT_SIZE,
    *,
    ffhq_correction: bool = True,
) -> AlignedFace:
    """FFHQ-aligned ``output_size`` square crop of the face.

    ``ffhq_correction``: map MTCNN's 5 points to FFHQ's (dlib) eye definition first (see
    :func:`mtcnn_eyes_to_ffhq`); False uses them as they are. No effect with 68 dlib points.

    Follows the FFHQ script's shrink / crop / pad / transform steps, with two changes for speed:
    the crop is taken before the shrink (only the face region is resampled), and the shrink is to
    exactly one photo pixel per output pixel (antialiased Lanczos) followed by a single bicubic
    warp at the output size, instead of an integer shrink, a 4096 px bilinear warp and a Lanczos
    downscale.
    """
    if not isinstance(output_size, int) or output_size < 8:
        raise ValueError(f"output_size must be an int >= 8, got {output_size!r}")
    rgb = image if image.mode == "RGB" else to_rgb(image)
    landmarks = _landmarks_of(face_or_landmarks)
    quad, qsize = ffhq_quad(landmarks, ffhq_correction=ffhq_correction)
    width, height = rgb.size
    qc = quad + 0.5  # continuous coordinates from here on

    # Crop (FFHQ: bounding box of the quad plus a 10 % border, clipped to the photo).
    border = max(round(qsize * 0.1), 3)
    x0 = max(math.floor(qc[:, 0].min()) - border, 0)
    y0 = max(math.floor(qc[:, 1].min()) - border, 0)
    x1 = min(math.ceil(qc[:, 0].max()) + border, width)
    y1 = min(math.ceil(qc[:, 1].max()) + border, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise NoFaceError("The face lies outside the photo; detect faces on this same photo.")

    # Shrink (FFHQ: antialiased resize when the face is larger than the output).
    scale = min(1.0, output_size / qsize)
    if scale < 1.0:
        size = (max(2, round((x1 - x0) * scale)), max(2, round((y1 - y0) * scale)))
        work = rgb.resize(size, Image.Resampling.LANCZOS, box=(x0, y0, x1, y1), reducing_gap=3.0)
    else:
        work = rgb.crop((x0, y0, x1, y1))
    sx, sy = work.width / (x1 - x0), work.height / (y1 - y0)
    wq = (qc - [x0, y0]) * [sx, sy]
    wsize = qsize * math.sqrt(sx * sy)

    # Pad (FFHQ: reflect, blur and fade to the median colour where the quad leaves the photo).
    work, offset = _ffhq_pad(work, wq, wsize)
    wq = wq + offset

    # Transform: one affine warp, output continuous -> work continuous (the quad is a square).
    n = output_size
    nw, sw, ne = wq[0], wq[1], wq[3]
    data = (
        (ne[0] - nw[0]) / n, (sw[0] - nw[0]) / n, nw[0],
        (ne[1] - nw[1]) / n, (sw[1] - nw[1]) / n, nw[1],
    )  # fmt: skip
    a, b, c, d, e, f = data

    def warp(top: int, bottom: int) -> Image.Image:
        # The band's rows start at ``top``: the same sampling positions as one warp.
        band = (a, b, c + b * top, d, e, f + e * top)
        return work.transform(
            (n, bottom - top), Image.Transform.AFFINE, band, resample=Image.Resampling.BICUBIC
        )

    crop = paste_row_bands(Image.new("RGB", (n, n)), in_row_bands(n, n, warp, work), 0, 0)
    return AlignedFace(
        image=crop,
        quad=quad,
        source_size=(width, height),
        landmarks=landmarks.astype(np.float32),
    )


def _ffhq_pad(work: Image.Image, quad: np.ndarray, qsize: float) -> tuple[Image.Image, np.ndarray]:
    """FFHQ's pad step on the working image; returns it and the offset added to coordinates."""
    border = max(round(qsize * 0.1), 3)
    w, h = work.size
    pad = [
        max(border - math.floor(quad[:, 0].min()), 0),
        max(border - math.floor(quad[:, 1].min()), 0),
        max(math.ceil(quad[:, 0].max()) - w + border, 0),
        max(math.ceil(quad[:, 1].max()) - h + border, 0),
    ]
    if max(pad) <= border - 4:
        return work, np.zeros(2)
    # Once padding is needed at all, every side gets at least 30 % of the face: the blur and the
    # fade below need room.
    left, top, right, bottom = (max(p, round(qsize * 0.3), 1) for p in pad)
    arr = np.pad(np.asarray(work), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    ph, pw = arr.shape[:2]
    padded = Image.fromarray(arr, "RGB")
    # Per column and per row: 0 at the photo edge (inside it: negative), 1 at the outer edge of
    # the padding. A pixel's weight is the larger of its column's and its row's, and the 8-bit
    # weights are monotonic in them, so each mask is one outer maximum of two 1-D ones.
    xs, ys = np.arange(pw, dtype=np.float32), np.arange(ph, dtype=np.float32)
    cols = 1.0 - np.minimum(xs / left, (pw - 1 - xs) / right)
    rows = 1.0 - np.minimum(ys / top, (ph - 1 - ys) / bottom)
    # Reflected content is a mirror image of the face: blur it so it reads as background. Only
    # filler, so the blur runs at reduced resolution (docs/faces.md).
    blurred = _blur(padded, qsize * 0.02)
    padded = Image.composite(blurred, padded, _mask_image(cols * 3.0 + 1.0, rows * 3.0 + 1.0))
    # The median of every 4th pixel is the same colour for this purpose and 16x cheaper.
    median = np.median(np.asarray(padded)[::4, ::4].reshape(-1, 3), axis=0)
    fill = Image.new("RGB", padded.size, tuple(int(v) for v in np.rint(median)))
    padded = Image.composite(fill, padded, _mask_image(cols, rows))
    return padded, np.array([left, top], dtype=np.float64)


# The pad's blur runs on a copy reduced by (radius / this) times, rounded down, so that at least
# this many of its pixels span the radius: the box reduction and the bilinear enlargement then
# widen the Gaussian by under 1 %.
_BLUR_RADIUS_PER_REDUCTION = 4


def _blur(image: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur (Pillow's box approximation) of ``image``, computed on a copy reduced by
    an integer factor and enlarged back."""
    factor = max(1, int(radius // _BLUR_RADIUS_PER_REDUCTION))
    if factor == 1:
        return image.filter(ImageFilter.GaussianBlur(radius))
    small = image.reduce(factor).filter(ImageFilter.GaussianBlur(radius / factor))
    # ``reduce`` rounds the size up; the box maps the photo's own extent back exactly.
    box = (0.0, 0.0, image.width / factor, image.height / factor)
    return small.resize(image.size, Image.Resampling.BILINEAR, box=box)


def _mask_image(cols: np.ndarray, rows: np.ndarray) -> Image.Image:
    """The 8-bit ``Image.composite`` mask of weight max(cols[x], rows[y]), clipped to [0, 1]."""
    as_8bit = [np.rint(np.clip(w, 0.0, 1.0) * 255.0).astype(np.uint8) for w in (cols, rows)]
    return Image.fromarray(np.maximum(as_8bit[0][None, :], as_8bit[1][:, None]), "L")


def crop_to_tensor(image: Image.Image, size: int = 256) -> torch.Tensor:
    """Encoder input: [1, 3, size, size] float32 in [-1, 1] (mean 0.5, std 0.5 normalisation)."""
    return pil_to_tensor(image if image.mode == "RGB" else to_rgb(image), size)
