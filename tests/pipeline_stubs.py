"""Pieces of the stand-in pipelines of the service and load tests (no models)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image

from csla_core.imaging import tensor_to_pil


class FakeInversion(SimpleNamespace):
    """An inversion as the service uses it: no refinement until one is set."""

    refinement = None

    @property
    def tuning(self):
        return None if self.refinement is None else self.refinement.delta

    def crop(self, size):
        return torch.zeros(1, 3, size, size)


def flat_deliver(inversion, renders, reconstruction=None, *, detail="keep", paste=True):
    """``CSLAPipeline.deliver`` for flat renders: crops as rendered, or the photo's size filled
    with each render's colour."""
    assert (reconstruction is not None) == (detail == "keep")
    images = tensor_to_pil(renders)
    if not paste:
        return images
    return [Image.new("RGB", inversion.photo.size, i.getpixel((0, 0))) for i in images]
