"""Keep the photo's own detail wherever an edit leaves the face alone.

[ours], after Neural Photo Editor's masked interpolation (Brock et al. 2016, arXiv
1609.07093): with the photo's aligned crop X, the generator's reconstruction R and an edited
render E (all at one size, [-1, 1]), the result is

    out = E + (1 - M) (X - R) = X (1 - M) + added,    added = E - R + M R,

where M (0..1) is where the edit changes the face. Where M = 0 the result is the photo plus the
edit's change (X + E - R: where the edit changes nothing, exactly the photo); where M = 1 it is
the render itself, so a feature the edit moves leaves no ghost of the photo's own (a smile shows
no old mouth). ``Change(added, taken=M)`` is that result as an operation on any picture of the
face, ``base (1 - taken) + added``: on the crop, or (``faces.paste_change``) warped onto the full
photo, where the photo's pixels stand in for X.

M from the change |E - R| (channel mean): lightly denoised, pooled to ``GRID`` cells across the
crop by their maximum (a thin stroke, such as a glasses frame, still counts), spread by
``SPREAD_CELLS`` cells (a feature of the photo a few pixels off the reconstruction's is still
covered), smoothed, and mapped through a smoothstep from ``LOW`` (nothing taken) to ``HIGH``
(the render taken whole). The constants come from the ghosting test in tests/test_detail.py.
``detail="none"`` is the render as it is: Change(E, 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Detail = Literal["keep", "none"]
DETAILS: tuple[str, ...] = ("keep", "none")
GRID = 128  # change-map cells across the crop (8 px cells at 1024 px)
SPREAD_CELLS = 2  # the map is widened by this many cells (16 px at 1024) before smoothing
SMOOTH_SIGMA_CELLS = 1.0
LOW, HIGH = 0.02, 0.08  # |E - R| in [-1, 1] units: about 2.5 and 10 grey levels


@dataclass
class Change:
    """An edit as an operation on a picture of the face: ``base * (1 - taken) + added``.
    ``added`` [B, 3, H, W] and ``taken`` [B, 1, H, W] in [-1, 1] units, float32."""

    added: torch.Tensor
    taken: torch.Tensor

    def apply(self, base: torch.Tensor) -> torch.Tensor:
        """The result on ``base`` [1 or B, 3, H, W] (the aligned crop at this size)."""
        return base * (1.0 - self.taken) + self.added

    def __len__(self) -> int:
        return self.added.shape[0]

    def __getitem__(self, index: int) -> Change:
        return Change(self.added[index : index + 1], self.taken[index : index + 1])


def change_map(edited: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """M [B, 1, H, W] in [0, 1]: where ``edited`` [B, 3, H, W] differs from
    ``reconstruction`` [1 or B, 3, H, W] (see module doc)."""
    size = edited.shape[-1]
    diff = (edited.float() - reconstruction.float()).abs().mean(dim=1, keepdim=True)
    diff = F.avg_pool2d(diff, 3, stride=1, padding=1, count_include_pad=False)  # denoise
    cell = max(1, size // GRID)
    cells = F.max_pool2d(diff, cell) if cell > 1 else diff
    spread = 2 * SPREAD_CELLS + 1
    cells = F.max_pool2d(cells, spread, stride=1, padding=SPREAD_CELLS)
    cells = _gaussian_blur(cells, SMOOTH_SIGMA_CELLS)
    t = ((cells - LOW) / (HIGH - LOW)).clamp(0.0, 1.0)
    taken = t * t * (3.0 - 2.0 * t)
    if taken.shape[-1] != size:
        taken = F.interpolate(taken, size=edited.shape[-2:], mode="bilinear", align_corners=False)
    return taken.clamp(0.0, 1.0)


def keep_detail(edited: torch.Tensor, reconstruction: torch.Tensor) -> Change:
    """The photo's detail kept: ``Change(E - R + M R, M)`` (module doc). Where ``edited``
    equals ``reconstruction`` (strength 0) the change is exactly none."""
    edited, reconstruction = edited.float(), reconstruction.float()
    taken = change_map(edited, reconstruction)
    return Change(edited - reconstruction + taken * reconstruction, taken)


def render_as_is(edited: torch.Tensor) -> Change:
    """``detail="none"``: the render replaces the face."""
    edited = edited.float()
    return Change(edited, torch.ones_like(edited[:, :1]))


def edit_change(
    edited: torch.Tensor, reconstruction: torch.Tensor | None, detail: Detail
) -> Change:
    """The change for a ``detail`` mode ("keep" needs the reconstruction at the same size)."""
    if detail == "none":
        return render_as_is(edited)
    if detail != "keep":
        raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
    if reconstruction is None or reconstruction.shape[-2:] != edited.shape[-2:]:
        raise ValueError("keeping the photo's detail needs the reconstruction at the edit's size")
    return keep_detail(edited, reconstruction)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))
