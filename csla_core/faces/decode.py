"""Any photo -> a new upright 8-bit RGB image, or an :class:`InputImageError` saying why not."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputImageError

# Largest accepted photo (pixels). Pillow's own decompression-bomb guard is set to the same value so
# that every Pillow decode in the process agrees; Pillow warns above it and refuses above 2x.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

READABLE_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF"

ImageSource = str | Path | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray


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
        return to_rgb(oriented)
    finally:
        if close:
            image.close()


def to_rgb(image: Image.Image) -> Image.Image:
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
