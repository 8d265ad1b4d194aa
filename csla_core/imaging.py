"""Conversions between the generator's tensors and pictures, in one place.

Generator / encoder side: float NCHW tensors, nominally in [-1, 1].
Picture side: PIL RGB images or uint8 HxWx3 arrays.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] (clipped) -> list of PIL RGB images."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W], got {tuple(images.shape)}")
    arrays = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arrays = arrays.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arrays]


def pil_to_tensor(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL image -> [1, 3, H, W] float32 in [-1, 1], optionally resized (antialiased) to size^2."""
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        # Pillow BILINEAR (antialiased) is what torchvision's Resize does on PIL images, i.e.
        # what the e4e/pSp encoders saw in training.
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None] / 127.5 - 1.0


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of [B, C, H, W] to size x size (area pooling when shrinking by 2^k)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    if height % size == 0 and width % size == 0 and height == width:
        return F.avg_pool2d(images, height // size)
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
