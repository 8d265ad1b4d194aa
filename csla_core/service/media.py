"""Pictures the front end shows: faces annotated on the photo, captions, strength-sweep GIFs."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
from PIL import ImageDraw

if TYPE_CHECKING:
    from ..faces import Face

SWEEP_DIR_MAX_AGE_S = 3600  # animations older than this are deleted


def annotate_faces(
    photo: PIL.Image.Image, faces: Sequence[Face], chosen: int, max_side: int = 768
) -> PIL.Image.Image:
    """The photo (downscaled) with numbered boxes around the detected faces."""
    scale = min(1.0, max_side / max(photo.size))
    image = photo.convert("RGB")
    if scale < 1.0:
        image = image.resize((round(photo.width * scale), round(photo.height * scale)))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 200))
    for index, face in enumerate(faces):
        x0, y0, x1, y1 = (float(v) * scale for v in face.box)
        colour = (255, 64, 64) if index == chosen else (255, 215, 0)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        draw.text((x0 + width + 2, y0 + width + 2), f"#{index}", fill=colour)
    return image


def face_choices(faces: Sequence[Face]) -> list[tuple[str, int]]:
    return [(f"#{i} ({face.width:.0f}×{face.height:.0f} px)", i) for i, face in enumerate(faces)]


def caption(index: int, strength: float, seed: int) -> str:
    return f"sample {index + 1} · strength {strength:+.2f} · seed {seed}"


def sweep_strengths(max_strength: float | None, frames: int) -> list[float]:
    """``frames`` strengths evenly from -max_strength to +max_strength (1.0 when unset)."""
    top = abs(float(max_strength or 1.0))
    return [-top + 2 * top * i / (frames - 1) for i in range(frames)]


def prune_old_files(folder: Path, max_age_s: float) -> None:
    """Delete files older than ``max_age_s`` (animations are written per request, never reused)."""
    now = time.time()
    for path in folder.glob("*"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
        except OSError:
            pass


def write_gif(
    frames: Sequence[PIL.Image.Image],
    folder: Path,
    *,
    frame_ms: int = 250,
    max_age_s: float = SWEEP_DIR_MAX_AGE_S,
) -> str:
    """An endless GIF of ``frames`` forwards then back (ends not repeated) in ``folder``; its path.

    n frames give 2n - 2 GIF frames. Old animations in ``folder`` are deleted first.
    """
    loop = list(frames) + list(frames[-2:0:-1])  # forwards, then back
    prune_old_files(folder, max_age_s)
    handle, name = tempfile.mkstemp(suffix=".gif", dir=folder)
    os.close(handle)
    loop[0].save(name, save_all=True, append_images=loop[1:], duration=frame_ms, loop=0)
    return name
