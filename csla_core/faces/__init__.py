"""From an uploaded photo to an FFHQ-aligned face crop, and back.

Steps: :func:`load_image` (``decode``: any photo -> RGB), :class:`FaceDetector` (``detect``:
MTCNN, 5 landmarks), :func:`align_face` (``align``: FFHQ dataset alignment, Karras et al.) and
:func:`paste_back` / :func:`paste_change` (``paste``: an edited crop, or a change made on it, warped
back into the full-resolution photo under a feathered face mask). Measurements behind the constants: docs/faces.md.
"""

from .align import (
    DEFAULT_OUTPUT_SIZE,
    FFHQ_EYE_DISTANCE_SCALE,
    FFHQ_EYE_SHIFT,
    AlignedFace,
    align_face,
    crop_to_tensor,
    ffhq_quad,
    mtcnn_eyes_to_ffhq,
)
from .decode import MAX_PIXELS, READABLE_FORMATS, ImageSource, load_image, to_rgb
from .detect import (
    DETECT_MAX_SIDE,
    DETECT_MIN_FACE,
    MIN_CONFIDENCE,
    MIN_FACE_SIZE,
    REFINE_CROP_SIZE,
    REFINE_MIN_FACE,
    FaceDetector,
    check_face_size,
    get_default_detector,
    select_face,
)
from .face import Face
from .paste import DEFAULT_FEATHER, face_mask, paste_back, paste_change

__all__ = [
    "DEFAULT_FEATHER",
    "DEFAULT_OUTPUT_SIZE",
    "DETECT_MAX_SIDE",
    "DETECT_MIN_FACE",
    "FFHQ_EYE_DISTANCE_SCALE",
    "FFHQ_EYE_SHIFT",
    "MAX_PIXELS",
    "MIN_CONFIDENCE",
    "MIN_FACE_SIZE",
    "READABLE_FORMATS",
    "REFINE_CROP_SIZE",
    "REFINE_MIN_FACE",
    "AlignedFace",
    "Face",
    "FaceDetector",
    "ImageSource",
    "align_face",
    "check_face_size",
    "crop_to_tensor",
    "face_mask",
    "ffhq_quad",
    "get_default_detector",
    "load_image",
    "mtcnn_eyes_to_ffhq",
    "paste_back",
    "paste_change",
    "select_face",
    "to_rgb",
]
