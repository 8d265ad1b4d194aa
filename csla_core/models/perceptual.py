"""Perceptual image distances: LPIPS (Zhang et al. 2018, the ``lpips`` package), found or
fetched explicitly, never at import.

The ``lpips`` wheel ships its linear calibration heads; its backbone is torchvision's ImageNet
network, which torchvision fetches from download.pytorch.org into torch's hub cache. Offline it
is used only when already there.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

LPIPS_BACKBONES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def lpips_unavailable_reason(net: str = "alex") -> str | None:
    """Why LPIPS cannot run here without a download, or None when it can."""
    try:
        import lpips  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return "the lpips package is not installed (pip install lpips)"
    backbone = LPIPS_BACKBONES.get(net)
    if backbone is None:
        return f"unknown LPIPS backbone {net!r} (alex or vgg)"
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    if not (ckpt_dir / backbone).is_file():
        return (
            f"its {net} backbone weights ({backbone}, from download.pytorch.org) are not in "
            f"{ckpt_dir}"
        )
    return None


@functools.cache
def _network(net: str) -> nn.Module:
    import lpips  # type: ignore[import-not-found]

    return lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)


def load_lpips_network(net: str = "alex", allow_download: bool = False) -> nn.Module | None:
    """The LPIPS network (images in [-1, 1] -> distance [B, 1, 1, 1]; differentiable), built
    once per process; None when its backbone is not here and may not be fetched (or the
    download fails: the caller falls back, the log says why)."""
    reason = lpips_unavailable_reason(net)
    if reason is not None and (not allow_download or reason.startswith("the lpips package")):
        return None
    try:
        return _network(net)
    except Exception as exc:  # a failed download: the caller's fallback applies
        logger.warning("LPIPS (%s) unavailable: %s", net, exc)
        return None
