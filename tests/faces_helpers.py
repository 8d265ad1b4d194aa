"""Helpers for tests/test_faces.py: shared test photos, an FFHQ reference aligner, metrics."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from csla_core.faces import ffhq_quad

# Third-party photos live next to the repository, never inside it (see their README files).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TEST_IMAGES = SHARED / "test-images"
REAL_IMAGES = SHARED / "real-assets" / "images"


def shared_image(path: Path) -> Path:
    """``path`` if present, else skip the test saying what is missing."""
    if not path.is_file():
        pytest.skip(f"third-party test photo {path} is absent (it is kept outside the repo)")
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def rotate_on_canvas(image: Image.Image, degrees: float) -> tuple[Image.Image, np.ndarray]:
    """Rotate counter-clockwise on an enlarged grey canvas; also return the 3x3 point mapping."""
    rotated = image.rotate(
        degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128)
    )
    # Pillow rotates about the centre; with expand the centre moves to the new canvas centre.
    a = math.radians(degrees)
    cx, cy = image.width / 2, image.height / 2
    nx, ny = rotated.width / 2, rotated.height / 2
    # Counter-clockwise on screen (y down): x' = c*dx + s*dy, y' = -s*dx + c*dy.
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = np.array([nx, ny]) - rot @ np.array([cx, cy])
    return rotated, m


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 matrix to [N, 2] points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def ffhq_reference_align(
    image: Image.Image, landmarks: np.ndarray, output_size: int = 1024, transform_size: int = 4096
) -> Image.Image:
    """Straight reimplementation of the FFHQ dataset script's steps, for comparison only.

    Shrink by an integer factor, crop, reflect-pad with blur and median fade (scipy Gaussian),
    bilinear QUAD transform at ``transform_size`` then Lanczos down to ``output_size``. Slow.
    """
    img = image.convert("RGB")
    quad, qsize = ffhq_quad(landmarks)

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        size = (round(img.width / shrink), round(img.height / shrink))
        img = img.resize(size, Image.Resampling.LANCZOS)
        quad = quad / shrink
        qsize = qsize / shrink

    border = max(round(qsize * 0.1), 3)
    crop = (
        max(math.floor(quad[:, 0].min()) - border, 0),
        max(math.floor(quad[:, 1].min()) - border, 0),
        min(math.ceil(quad[:, 0].max()) + border, img.width),
        min(math.ceil(quad[:, 1].max()) + border, img.height),
    )
    if crop[2] - crop[0] < img.width or crop[3] - crop[1] < img.height:
        img = img.crop(crop)
        quad = quad - crop[:2]

    pad = [
        max(border - math.floor(quad[:, 0].min()), 0),
        max(border - math.floor(quad[:, 1].min()), 0),
        max(math.ceil(quad[:, 0].max()) - img.width + border, 0),
        max(math.ceil(quad[:, 1].max()) - img.height + border, 0),
    ]
    if max(pad) > border - 4:
        left, top, right, bottom = (max(p, round(qsize * 0.3)) for p in pad)
        arr = np.pad(np.float32(img), ((top, bottom), (left, right), (0, 0)), "reflect")
        h, w = arr.shape[:2]
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
            1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom),
        )
        blur = qsize * 0.02
        arr += (ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(
            mask * 3.0 + 1.0, 0.0, 1.0
        )
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + [left, top]

    img = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        tuple((quad + 0.5).flatten()),
        Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return img
