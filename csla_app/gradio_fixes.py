"""Workarounds for gradio 6, installed by ``install()`` when a demo is built, never at import
(docs/app.md says what each one fixes)."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import gradio as gr
import PIL.Image
from gradio import processing_utils


def install() -> None:
    """Patch gradio for this process (idempotent): result images written atomically."""
    # Components look the function up on the module at each call (gallery, image, image slider).
    processing_utils.save_pil_to_cache = save_pil_to_cache_atomically


def save_pil_to_cache_atomically(
    img: PIL.Image.Image, cache_dir: str, name: str = "image", format: str = "webp"
) -> str:
    """gradio's ``processing_utils.save_pil_to_cache``, but written under a temporary name and
    renamed into place: gradio names a result by its content and rewrites that file in place
    when the same image comes again, so one user could download a file another user's request
    is truncating. A renamed complete file gives every reader a whole file."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(target)


def readable_decoding_errors(component: gr.Image) -> gr.Image:
    """Make ``component`` report an undecodable upload as a message, not a stack trace.

    gr.Image opens every upload with Pillow before any handler runs. (Wrapping the instance's
    method, not subclassing: gradio writes a .pyi stub next to any module defining a component.)
    """
    preprocess = component.preprocess

    @functools.wraps(preprocess)
    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except PIL.Image.DecompressionBombError as exc:
            name = getattr(payload, "orig_name", None) or "The uploaded image"
            raise gr.Error(
                f"{name} is too large: it has more than {2 * PIL.Image.MAX_IMAGE_PIXELS:,} "
                "pixels. Resize the photo and try again.",
                title="Cannot use this image",
                print_exception=False,
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            name = getattr(payload, "orig_name", None) or "The uploaded file"
            raise gr.Error(
                f"{name} is not an image that can be read ({type(exc).__name__}). Upload a "
                "JPEG, PNG, WebP, BMP, TIFF or GIF photo.",
                title="Cannot use this image",
                print_exception=False,
            ) from exc

    component.preprocess = checked
    return component
