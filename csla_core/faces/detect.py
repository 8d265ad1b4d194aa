"""Face detection: MTCNN (facenet-pytorch) boxes and 5 landmarks, largest face first, and the
checks that a face is usable."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import InputImageError, NoFaceError
from .align import align_face, apply_matrix
from .decode import to_rgb
from .face import Face

# Detection runs on a copy whose long side is at most this: MTCNN's time grows with the pixel
# count while its landmarks come from 48x48 face patches (timings: docs/faces.md).
DETECT_MAX_SIDE = 1280
# Smallest face MTCNN looks for, in pixels of the (downscaled) detection copy.
DETECT_MIN_FACE = 20
# Final-stage MTCNN probability a detection needs to count as a face; lower values let false
# detections through on real photos (docs/faces.md).
MIN_CONFIDENCE = 0.95
# Smallest face box (short side, original pixels) that still gives a usable crop.
MIN_FACE_SIZE = 40
# Crop size used by FaceDetector.refine (large enough for MTCNN, small enough to be quick).
REFINE_CROP_SIZE = 512
# MTCNN's image pyramid: each level is this factor smaller (facenet-pytorch's default).
PYRAMID_FACTOR = 0.709
# Smallest face looked for in refine's upright crop, where the face box spans about half of it:
# the detection pyramid without its 4 finest levels (the same points, faster: docs/faces.md).
REFINE_MIN_FACE = DETECT_MIN_FACE / PYRAMID_FACTOR**4


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
        refine_min_face_size: float = REFINE_MIN_FACE,
    ) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.min_confidence = float(min_confidence)
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self.refine_min_face_size = float(refine_min_face_size)
        self._networks: dict[float, Any] = {}  # MTCNN per smallest face, built on first use
        self._lock = threading.Lock()

    @property
    def mtcnn(self) -> Any:
        """The MTCNN that ``detect`` runs."""
        return self._network(self.min_face_size)

    @property
    def refine_mtcnn(self) -> Any:
        """The MTCNN that ``refine`` runs on its upright crops (``refine_min_face_size``)."""
        return self._network(self.refine_min_face_size)

    def _network(self, min_face_size: float) -> Any:
        with self._lock:
            if min_face_size not in self._networks:
                from facenet_pytorch import MTCNN  # heavy import, only when a face is wanted

                self._networks[min_face_size] = MTCNN(
                    keep_all=True,
                    device=self.device,
                    min_face_size=min_face_size,
                    factor=PYRAMID_FACTOR,
                    # MTCNN's stage thresholds stay at their defaults; the decision is made on
                    # the final probability with min_confidence.
                    thresholds=[0.6, 0.7, 0.7],
                )
            return self._networks[min_face_size]

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces with probability >= ``min_confidence``, largest box first."""
        return self._detect(image, self.mtcnn)

    def _detect(self, image: Image.Image, mtcnn: Any) -> list[Face]:
        if image.mode != "RGB":
            image = to_rgb(image)
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
        boxes, probs, points = mtcnn.detect(small, landmarks=True)
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

        MTCNN's landmarks degrade on tilted heads; on the upright crop they are several times
        closer. With ``mirror`` the crop's mirror image is searched too and the two sets of points
        are averaged, which cancels MTCNN's left-right bias (measurements: docs/faces.md). Costs
        one alignment and one detection at ``crop_size`` (two with ``mirror``). Returns ``face``
        unchanged when the re-detection is not clearly the same face.
        """
        rgb = image if image.mode == "RGB" else to_rgb(image)
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
        landmarks = apply_matrix(aligned.crop_to_image_matrix(crop_size), points)
        old_eyes = float(np.hypot(*(face.landmarks[1] - face.landmarks[0])))
        new_eyes = float(np.hypot(*(landmarks[1] - landmarks[0])))
        shift = float(np.linalg.norm(landmarks.mean(axis=0) - face.landmarks.mean(axis=0)))
        if not (0.7 < new_eyes / max(old_eyes, 1e-6) < 1.4 and shift < 0.5 * old_eyes):
            return face  # something else in the crop (a reflection in the padding, a neighbour)
        return Face(box=face.box.copy(), score=face.score, landmarks=landmarks.astype(np.float32))

    def _upright_landmarks(self, crop: Image.Image) -> np.ndarray | None:
        """Landmarks (float64 [5, 2]) of the face in the middle of an aligned crop, if any."""
        found = self._detect(crop, self.refine_mtcnn)
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
