"""From an uploaded photo to an FFHQ-aligned face crop, and back.

Steps: :func:`load_image` (any photo -> RGB), :class:`FaceDetector` (MTCNN, 5 landmarks),
:func:`align_face` (FFHQ dataset alignment, Karras et al.) and :func:`paste_back` (warp an edited
crop back into the full-resolution photo under a feathered face mask).

Coordinate convention: pixel *index* coordinates, x to the right, y down, pixel centres at
integers (the convention of the landmarks). Matrices are 3x3 and act on column vectors
``[x, y, 1]``. Pillow's ``transform`` uses continuous coordinates (centres at +0.5); the
conversion is done in one place (:func:`_pil_affine_data`).
"""

from __future__ import annotations

import argparse
import io
import math
import re
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from csla_core.errors import CSLAError, InputImageError, NoFaceError
from csla_core.imaging import pil_to_tensor

# Largest accepted photo (pixels). Pillow's own decompression-bomb guard is set to the same value so
# that every Pillow decode in the process agrees; Pillow warns above it and refuses above 2x.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# Detection runs on a copy whose long side is at most this. MTCNN's time grows with the pixel count
# (12 MP photo, 2 CPU cores: 1024 px 0.09 s, 1280 px 0.16 s, 1600 px 0.25 s, 2048 px 0.51 s) while
# its landmarks are predicted on 48x48 face patches, so a larger copy does not make them better.
DETECT_MAX_SIDE = 1280
# Smallest face MTCNN looks for, in pixels of the (downscaled) detection copy.
DETECT_MIN_FACE = 20
# Final-stage MTCNN probability a detection needs to count as a face. Lower values let through
# false detections on real photos (0.80 and 0.85 on textures in one of the test portraits).
MIN_CONFIDENCE = 0.95
# Smallest face box (short side, original pixels) that still gives a usable crop.
MIN_FACE_SIZE = 40
# Crop size used by FaceDetector.refine (large enough for MTCNN, small enough to be quick).
REFINE_CROP_SIZE = 512
DEFAULT_OUTPUT_SIZE = 1024
# Soft-edge width of the paste-back mask, as a fraction of the crop side.
DEFAULT_FEATHER = 0.12

READABLE_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF"

ImageSource = str | Path | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` into a new RGB image, upright according to its EXIF orientation.

    ``source``: a path, the file's bytes, a binary file object, a PIL image or a uint8 numpy
    array (HxW, HxWx3 or HxWx4). Transparent images are flattened on white; 16-bit and float
    greyscale are rescaled to 8 bits; animations give their first frame.

    Raises :class:`InputImageError` for anything that is not a readable image or that has more
    than ``max_pixels`` pixels. Pillow's process-wide guard (``MAX_PIXELS``) still refuses images
    above ``2 * MAX_PIXELS`` whatever ``max_pixels`` says.
    """
    if isinstance(source, Image.Image):
        return _decode(source, "the image", max_pixels, close=False)
    if isinstance(source, np.ndarray):
        return _decode(_image_from_array(source), "the array", max_pixels, close=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InputImageError(
                "The uploaded file is empty: upload a photo (JPEG, PNG, WebP...)."
            )
        return _open_and_decode(io.BytesIO(bytes(source)), "the uploaded file", max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InputImageError(f"Image file not found: {path}")
        if not path.is_file():
            raise InputImageError(f"Not a file: {path}. Give the path of a photo.")
        try:
            with path.open("rb") as fp:
                return _open_and_decode(fp, f"the file {path}", max_pixels)
        except OSError as exc:  # permission denied, I/O error while opening
            raise InputImageError(f"Cannot read {path}: {exc.strerror or exc}") from exc
    if hasattr(source, "read"):
        return _open_and_decode(source, "the uploaded file", max_pixels)
    raise InputImageError(
        f"Unsupported image source of type {type(source).__name__}: give a file path, bytes, "
        "a file object, a PIL image or a uint8 numpy array."
    )


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputImageError(f"Image arrays must be uint8 (0-255); got dtype {array.dtype}.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputImageError(
            f"Image arrays must be HxW, HxWx3 or HxWx4; got shape {tuple(array.shape)}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputImageError(f"The image is empty (shape {tuple(array.shape)}).")
    return Image.fromarray(np.ascontiguousarray(array))


def _too_large(width: int, height: int, limit: int) -> InputImageError:
    return InputImageError(
        f"The image is too large: {width}x{height} = {width * height:,} pixels "
        f"({width * height / 1e6:.1f} MP); the limit is {limit:,} pixels ({limit / 1e6:g} MP). "
        "Resize the photo and try again."
    )


def _open_and_decode(fp: IO[bytes], label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own size check below replaces Pillow's warning (same limit by default).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except Image.DecompressionBombError as exc:
        # Pillow refuses before we can see the size; it states the pixel count in its message.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else f"over {2 * MAX_PIXELS:,} pixels"
        raise InputImageError(
            f"The image is too large: {size}; the limit is {min(max_pixels, MAX_PIXELS):,} pixels "
            f"({min(max_pixels, MAX_PIXELS) / 1e6:g} MP). Resize the photo and try again."
        ) from exc
    except Exception as exc:  # UnidentifiedImageError, truncated headers, plugin bugs...
        raise _unreadable(label) from exc
    return _decode(image, label, max_pixels, close=True)


def _unreadable(label: str) -> InputImageError:
    return InputImageError(
        f"{label[:1].upper()}{label[1:]} is not a readable image (it may be truncated or "
        f"corrupt, or not an image at all). Use a {READABLE_FORMATS} photo."
    )


def _decode(image: Image.Image, label: str, max_pixels: int, *, close: bool) -> Image.Image:
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        if width == 0 or height == 0:
            raise InputImageError(f"The image is empty ({width}x{height} pixels).")
        try:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animations: the first frame
            # Decode now, inside the try: Pillow is lazy and truncation only shows up here.
            image.load()
        except InputImageError:
            raise
        except Exception as exc:
            raise _unreadable(label) from exc
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # broken EXIF block: keep the pixels as stored rather than fail
            oriented = image
        return _to_rgb(oriented)
    finally:
        if close:
            image.close()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> a new 8-bit RGB image (transparency flattened on white)."""
    mode = image.mode
    try:
        if mode == "RGB":
            return image.copy()
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return Image.fromarray(_wide_grey_to_uint8(np.asarray(image)), "L").convert("RGB")
        if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except Exception as exc:
        raise InputImageError(
            f"Unsupported colour mode {mode!r}. Save the photo as an ordinary RGB "
            f"{READABLE_FORMATS} file and try again."
        ) from exc


def _wide_grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float greyscale -> uint8, scaling the range instead of clipping it."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    values[~np.isfinite(values)] = 0.0
    top = float(values.max()) if values.size else 0.0
    if is_float and 0.0 < top <= 1.0:
        scale = 255.0  # float images stored as 0..1
    elif top <= 255.0:
        scale = 1.0  # already 8-bit values in a wide container
    elif top <= 65535.0:
        scale = 255.0 / 65535.0  # 16-bit range (PNG/TIFF 16-bit greyscale)
    else:
        scale = 255.0 / top  # anything wider: map the maximum to white
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


@dataclass
class Face:
    """One detected face, in the coordinates of the image given to the detector."""

    box: np.ndarray  # float32 [4]: x0, y0, x1, y1
    score: float  # MTCNN final-stage probability
    landmarks: np.ndarray  # float32 [5, 2]: left eye, right eye, nose, mouth left, mouth right

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Short side of the box in pixels (what decides whether a crop is usable)."""
        return min(self.width, self.height)

    def describe(self) -> str:
        x0, y0, x1, y1 = (round(float(v)) for v in self.box)
        return (
            f"box ({x0}, {y0}, {x1}, {y1}), score {self.score:.3f}, "
            f"size {self.width:.0f}x{self.height:.0f} px"
        )


def _as_float32(value: Any, shape_tail: tuple[int, ...]) -> np.ndarray | None:
    """MTCNN output (numpy-2 object arrays, None when nothing found) -> float32 array."""
    if value is None:
        return None
    try:
        array = np.asarray(np.asarray(value, dtype=object).tolist(), dtype=np.float32)
    except (TypeError, ValueError):  # None entries inside the object array
        return None
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        return None
    return array


class FaceDetector:
    """MTCNN face detector (facenet-pytorch; its weights ship in the wheel) for this project.

    The network is built on first use. ``detect`` downsizes large photos to ``max_side`` for speed
    and maps the results back to the photo's own coordinates.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        min_confidence: float = MIN_CONFIDENCE,
        max_side: int = DETECT_MAX_SIDE,
        min_face_size: int = DETECT_MIN_FACE,
    ) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.min_confidence = float(min_confidence)
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self._mtcnn: Any = None
        self._lock = threading.Lock()

    @property
    def mtcnn(self) -> Any:
        with self._lock:
            if self._mtcnn is None:
                from facenet_pytorch import MTCNN  # heavy import, only when a face is wanted

                self._mtcnn = MTCNN(
                    keep_all=True,
                    device=self.device,
                    min_face_size=self.min_face_size,
                    # MTCNN's stage thresholds stay at their defaults; the decision is made on the
                    # final probability with min_confidence.
                    thresholds=[0.6, 0.7, 0.7],
                )
            return self._mtcnn

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces with probability >= ``min_confidence``, largest box first."""
        if image.mode != "RGB":
            image = _to_rgb(image)
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        if min(width, height) * scale < self.min_face_size:
            return []  # no room for a face MTCNN could find (and its pyramid would be empty)
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # BILINEAR with Pillow's antialiasing; reducing_gap box-reduces first (faster, same
            # result for detection purposes).
            small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        boxes, probs, points = self.mtcnn.detect(small, landmarks=True)
        box_arr = _as_float32(boxes, (4,))
        point_arr = _as_float32(points, (5, 2))
        prob_arr = _as_float32(probs, ())
        if box_arr is None or point_arr is None or prob_arr is None:
            return []
        # Back to original pixel-index coordinates (continuous coordinates scale exactly).
        sx = small.width / width
        sy = small.height / height
        box_arr = (box_arr + 0.5) / np.array([sx, sy, sx, sy], np.float32) - 0.5
        point_arr = (point_arr + 0.5) / np.array([sx, sy], np.float32) - 0.5
        faces = [
            Face(box=b.astype(np.float32), score=float(p), landmarks=lm.astype(np.float32))
            for b, p, lm in zip(box_arr, prob_arr, point_arr)
            if p >= self.min_confidence and np.isfinite(b).all() and np.isfinite(lm).all()
        ]
        faces.sort(key=lambda f: f.width * f.height, reverse=True)
        return faces

    def refine(
        self,
        image: Image.Image,
        face: Face,
        crop_size: int = REFINE_CROP_SIZE,
        *,
        mirror: bool = True,
    ) -> Face:
        """``face`` with landmarks re-detected on an upright (aligned) crop of it.

        MTCNN's landmarks degrade on tilted heads (astronaut photo rotated 30-45 degrees: 6-10 px
        error on a 42 px eye distance; after this step 0.5-0.9 px, 0.6-1.2 px without ``mirror``).
        With ``mirror`` the crop's mirror image is searched too and the two sets of points are
        averaged. MTCNN is not mirror-symmetric: on the five FFHQ-aligned test photos (1024 px) the
        points found on the mirrored photo, mirrored back, lie 3 px to the left on average and up
        to 11 px away; the average cancels that bias and reduces the scatter. Costs one alignment
        and one detection at ``crop_size`` (two with ``mirror``). Returns ``face`` unchanged when
        the re-detection is not clearly the same face.
        """
        rgb = image if image.mode == "RGB" else _to_rgb(image)
        aligned = align_face(rgb, face, crop_size)
        points = self._upright_landmarks(aligned.image)
        if points is None:
            return face
        if mirror:
            flipped = self._upright_landmarks(ImageOps.mirror(aligned.image))
            if flipped is not None:
                # Back to the crop's own coordinates; the person's left and right swap sides.
                flipped[:, 0] = crop_size - 1 - flipped[:, 0]
                flipped = flipped[[1, 0, 2, 4, 3]]
                eyes = float(np.hypot(*(points[1] - points[0])))
                if np.abs(flipped - points).max() < 0.25 * eyes:  # the same face both times
                    points = (points + flipped) * 0.5
        landmarks = _apply(aligned.crop_to_image_matrix(crop_size), points)
        old_eyes = float(np.hypot(*(face.landmarks[1] - face.landmarks[0])))
        new_eyes = float(np.hypot(*(landmarks[1] - landmarks[0])))
        shift = float(np.linalg.norm(landmarks.mean(axis=0) - face.landmarks.mean(axis=0)))
        if not (0.7 < new_eyes / max(old_eyes, 1e-6) < 1.4 and shift < 0.5 * old_eyes):
            return face  # something else in the crop (a reflection in the padding, a neighbour)
        return Face(box=face.box.copy(), score=face.score, landmarks=landmarks.astype(np.float32))

    def _upright_landmarks(self, crop: Image.Image) -> np.ndarray | None:
        """Landmarks (float64 [5, 2]) of the face in the middle of an aligned crop, if any."""
        found = self.detect(crop)
        if not found:
            return None
        # In an FFHQ crop the landmarks' centroid sits near the middle of the crop.
        middle = np.array([crop.width / 2, crop.height * 0.56])
        best = min(found, key=lambda f: float(np.linalg.norm(f.landmarks.mean(axis=0) - middle)))
        return best.landmarks.astype(np.float64)


_default_detectors: dict[str, FaceDetector] = {}
_default_lock = threading.Lock()


def get_default_detector(device: str | torch.device | None = None) -> FaceDetector:
    """One shared detector per device (the MTCNN weights are loaded once per process)."""
    key = str(torch.device(device) if device is not None else torch.device("cpu"))
    with _default_lock:
        if key not in _default_detectors:
            _default_detectors[key] = FaceDetector(key)
        return _default_detectors[key]


def check_face_size(face: Face, min_size: float = MIN_FACE_SIZE) -> None:
    """Raise :class:`NoFaceError` when ``face`` is too small to give a usable crop."""
    if face.size < min_size:
        raise NoFaceError(
            f"The face found is too small: {face.width:.0f}x{face.height:.0f} px, and at least "
            f"{min_size:.0f} px is needed. Use a photo where the face is larger (closer, or "
            "higher resolution)."
        )


def select_face(faces: Sequence[Face], index: int = 0, *, min_size: float = MIN_FACE_SIZE) -> Face:
    """The face the user asked for (0 = largest), checked to be big enough."""
    if not faces:
        raise NoFaceError(
            "No face found in the photo. Use a photo where a face is clearly visible, roughly "
            f"facing the camera and at least {min_size:.0f} px across."
        )
    if not 0 <= index < len(faces):
        count = len(faces)
        raise InputImageError(
            f"Face index {index} is out of range: {count} face{'s' if count != 1 else ''} found "
            f"(valid indices 0 to {count - 1}, 0 = largest)."
        )
    face = faces[index]
    check_face_size(face, min_size)
    return face


# --------------------------------------------------------------------------------------------
# FFHQ alignment
# --------------------------------------------------------------------------------------------


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
        return _crop_to_image(self.quad, size or self.output_size, size or self.output_size)

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


def _crop_to_image(quad: np.ndarray, width: int, height: int) -> np.ndarray:
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


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A 3x3 matrix applied to [N, 2] points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def _pil_affine_data(out_to_in_index: np.ndarray) -> tuple[float, ...]:
    """Pillow AFFINE data (output continuous -> input continuous) from an index-space matrix."""
    cont = _shift(0.5) @ out_to_in_index @ _shift(-0.5)
    return tuple(float(v) for v in cont[:2].reshape(-1))


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


# MTCNN's 5 points -> FFHQ's eye definition. FFHQ aligned its faces with dlib's 68 points: eye
# centre = mean of the 6 eye-contour points (the middle of the eye opening), mouth corners 48 / 54.
# MTCNN's eye points sit on the pupils, a little higher and further apart; its mouth corners are
# meant as the same points as dlib's and are used as they are. Two constants, in the face's own
# frame (d = |eye_to_eye| of the MTCNN points):
#   FFHQ_EYE_SHIFT: the eye midpoint moves this many d towards the mouth, perpendicular to the eye
#     line (eye_to_mouth shortens by as much: the mouth points are used as they are);
#   FFHQ_EYE_DISTANCE_SCALE: the eye-to-eye vector is multiplied by this.
# Fitted on the only FFHQ-aligned 1024 px images at hand, where the FFHQ quad is the image frame:
# 4 FFHQ images (Barbershop's input/face 15, 16, 90, 117) and e4e's dlib-aligned test portrait
# (test-images/portrait_c.jpg). Points from FaceDetector.refine (mirror=True), averaged per image
# over 8 jittered first-pass crops. Per image, inverting FFHQ's formulas: the eye shift that puts
# the crop's centre exactly on the frame's (-0.007, 0.032, 0.042, 0.017, 0.023 d), and, where the
# eyes set the crop's size (side = 4 d), 256 px / d (0.986, 0.958, -, 0.971, 0.992); each constant
# is the median. Most of the spread is MTCNN's, not FFHQ's: it puts the eye points above closed
# eyes (15) and hair-covered ones (16). Cross-check: the FFHQ 5-point template of GFPGAN/facexlib
# (mean RetinaFace points over FFHQ, also pupils) gives a crop centre 5.6 px too high at 1024
# without the shift, 0.7 px off with it.
# Leave-one-out (constants fitted on 4 of the images, tested on the 5th; px at 1024; "eyes" = how
# far from its place in the FFHQ image the worse eye lands in our crop): eyes mean 6.3, max 8.4;
# corners (mean distance) mean 13.1, max 21.5; centre <= 7.9; scale 0.979-1.029; rotation <= 0.3
# degrees. Averaged over jittered first-pass crops: eyes 6.9 / 9.6, corners 16.9 / 23.7. With the
# correction off (same mirror pass): eyes 8.3 / 14.0, corners 19.9 / 34.8, centre <= 11.4, scale
# 1.003-1.047, rotation <= 0.4; before the mirror pass too: eyes 9.7 / 19.1, corners 20.8 / 45.6.
# In-sample (these constants, all 5 images): eyes 5.3 / 6.8, corners 12.4 / 22.8. On 40 other faces
# the correction narrows the crop by 1.8-2.2 % and moves its centre 4.5-5.3 px down (at 1024).
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
    rgb = image if image.mode == "RGB" else _to_rgb(image)
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
    crop = work.transform((n, n), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)
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
    arr = np.pad(
        np.asarray(work, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect"
    )
    ph, pw = arr.shape[:2]
    xs = np.arange(pw, dtype=np.float32)[None, :]
    ys = np.arange(ph, dtype=np.float32)[:, None]
    # 0 at the photo edge (inside it: negative), 1 at the outer edge of the padding.
    mask = np.maximum(
        1.0 - np.minimum(xs / left, (pw - 1 - xs) / right),
        1.0 - np.minimum(ys / top, (ph - 1 - ys) / bottom),
    )[:, :, None]
    # Reflected content is a mirror image of the face: blur it so it reads as background.
    # Pillow's Gaussian (box-filter approximation) is much faster than an exact one and this is
    # only filler.
    blurred = np.asarray(
        Image.fromarray(arr.astype(np.uint8)).filter(ImageFilter.GaussianBlur(qsize * 0.02)),
        dtype=np.float32,
    )
    arr += (blurred - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    # The median of every 4th pixel is the same colour for this purpose and 16x cheaper.
    median = np.median(arr[::4, ::4].reshape(-1, 3), axis=0)
    arr += (median - arr) * np.clip(mask, 0.0, 1.0)
    padded = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return padded, np.array([left, top], dtype=np.float64)


def crop_to_tensor(image: Image.Image, size: int = 256) -> torch.Tensor:
    """Encoder input: [1, 3, size, size] float32 in [-1, 1] (mean 0.5, std 0.5 normalisation)."""
    return pil_to_tensor(image if image.mode == "RGB" else _to_rgb(image), size)


# --------------------------------------------------------------------------------------------
# Paste-back
# --------------------------------------------------------------------------------------------

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
    if not 0.02 <= feather <= 0.2:
        raise ValueError(f"feather must be within 0.02..0.2, got {feather}")
    if original.size != tuple(aligned.source_size):
        raise InputImageError(
            f"The photo is {original.width}x{original.height} but the crop was taken from a "
            f"{aligned.source_size[0]}x{aligned.source_size[1]} image: paste back into the same "
            "photo the face was aligned from."
        )
    base = original if original.mode == "RGB" else _to_rgb(original)
    edit = edited_crop if edited_crop.mode == "RGB" else _to_rgb(edited_crop)
    width, height = base.size
    quad = aligned.quad

    # A crop much denser than the photo's face region would alias under the bicubic warp below:
    # shrink it first (antialiased) to about the photo's resolution.
    side = float(np.hypot(*(quad[3] - quad[0])))
    if edit.width > 1.5 * side:
        target = max(8, math.ceil(side))
        edit = edit.resize((target, target), Image.Resampling.LANCZOS)

    # Only the pixels the mask can touch are resampled: the bounding box of its support (about 60 %
    # of the quad's) in the photo, which keeps 12 MP photos fast.
    support = _apply(_crop_to_image(quad, 1, 1), _mask_support(feather) - 0.5) + 0.5
    x0 = max(math.floor(support[:, 0].min()) - 1, 0)
    y0 = max(math.floor(support[:, 1].min()) - 1, 0)
    x1 = min(math.ceil(support[:, 0].max()) + 1, width)
    y1 = min(math.ceil(support[:, 1].max()) + 1, height)
    result = base.copy()
    if x1 <= x0 or y1 <= y0:
        return result

    # Region pixel -> photo pixel -> crop pixel (at the edited crop's own size).
    region_to_photo = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    photo_to_crop = np.linalg.inv(_crop_to_image(quad, edit.width, edit.height))
    region_to_crop = photo_to_crop @ region_to_photo
    warped = edit.transform(
        (x1 - x0, y1 - y0),
        Image.Transform.AFFINE,
        _pil_affine_data(region_to_crop),
        resample=Image.Resampling.BICUBIC,
    )

    # Mask at each region pixel centre, from its normalised crop coordinates.
    xs = np.arange(x1 - x0, dtype=np.float32)[None, :]
    ys = np.arange(y1 - y0, dtype=np.float32)[:, None]
    m = region_to_crop.astype(np.float32)
    u = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2] + 0.5) / edit.width
    v = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2] + 0.5) / edit.height
    mask = face_mask(u, v, feather)[:, :, None]

    photo = np.asarray(base.crop((x0, y0, x1, y1)), dtype=np.float32)
    blended = photo + (np.asarray(warped, dtype=np.float32) - photo) * mask
    result.paste(Image.fromarray(np.rint(blended).astype(np.uint8), "RGB"), (x0, y0))
    return result


# --------------------------------------------------------------------------------------------
# Command line and benchmark
# --------------------------------------------------------------------------------------------


def align_command(args: list[str] | None = None) -> int:
    """``align PHOTO [-o OUT] [--face N] [--size S]``: list the faces and write the aligned crop."""
    parser = argparse.ArgumentParser(
        prog="python -m csla_core align",
        description="Detect the faces in a photo and write an FFHQ-aligned crop of one of them.",
    )
    parser.add_argument("photo", type=Path, help="the photo (JPEG, PNG, WebP, ...)")
    parser.add_argument(
        "-o", "--output", type=Path, default=None,
        help="where to write the crop (default: PHOTO_aligned.png next to the photo)",
    )  # fmt: skip
    parser.add_argument("--face", type=int, default=0, help="which face, 0 = largest (default 0)")
    parser.add_argument("--size", type=int, default=DEFAULT_OUTPUT_SIZE, help="crop side in px")
    parser.add_argument(
        "--no-refine", action="store_true",
        help="skip the second landmark pass on the upright crop (faster, less exact)",
    )  # fmt: skip
    parser.add_argument(
        "--no-ffhq-correction", action="store_true",
        help="use MTCNN's eye points as FFHQ's eye centres, without the fitted correction",
    )  # fmt: skip
    try:
        opts = parser.parse_args(args)
    except SystemExit as exc:  # --help or a usage error: argparse has printed the message
        return int(exc.code or 0)
    if opts.size < 8:
        print("error: --size must be at least 8", file=sys.stderr)
        return 2
    output: Path = opts.output or opts.photo.with_name(f"{opts.photo.stem}_aligned.png")
    try:
        image = load_image(opts.photo)
        detector = get_default_detector()
        faces = detector.detect(image)
        print(f"{opts.photo}: {image.width}x{image.height}, {len(faces)} face(s)")
        for i, face in enumerate(faces):
            print(f"  face {i}: {face.describe()}")
        face = select_face(faces, opts.face)
        if not opts.no_refine:
            face = detector.refine(image, face)
        aligned = align_face(image, face, opts.size, ffhq_correction=not opts.no_ffhq_correction)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            aligned.image.save(output)
        except (OSError, ValueError) as exc:
            raise CSLAError(f"Cannot write {output}: {exc}") from exc
    except CSLAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote face {opts.face} as {opts.size}x{opts.size} crop to {output}")
    return 0


def benchmark_detect_align(
    image: Image.Image,
    repeats: int = 3,
    *,
    detector: FaceDetector | None = None,
    output_size: int = DEFAULT_OUTPUT_SIZE,
) -> dict[str, Any]:
    """Median seconds of detect, refine, align (largest face) and paste-back of the unedited crop.

    ``detect_align_s`` is detect + refine + align, i.e. photo to encoder-ready crop.
    """
    detector = detector or get_default_detector()
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    start = time.perf_counter()
    detector.mtcnn  # noqa: B018 - build the network outside the timed runs
    init_s = time.perf_counter() - start
    names = ("detect_s", "refine_s", "align_s", "paste_back_s", "detect_align_s")
    times: dict[str, list[float]] = {name: [] for name in names}
    faces: list[Face] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        faces = detector.detect(rgb)
        t1 = time.perf_counter()
        face = detector.refine(rgb, select_face(faces, 0))
        t2 = time.perf_counter()
        aligned = align_face(rgb, face, output_size)
        t3 = time.perf_counter()
        paste_back(rgb, aligned.image, aligned)
        t4 = time.perf_counter()
        for name, seconds in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t3 - t0)):
            times[name].append(seconds)
    report: dict[str, Any] = {name: statistics.median(v) for name, v in times.items()}
    report.update(
        image_size=rgb.size,
        megapixels=rgb.width * rgb.height / 1e6,
        faces=len(faces),
        repeats=max(1, repeats),
        detector_init_s=init_s,
        torch_threads=torch.get_num_threads(),
    )
    return report
