"""Pure-PyTorch building blocks of StyleGAN2: FIR filtering, biased leaky ReLU, equalized layers.

The reference implementation compiles CUDA kernels for these at import time, which is the main
reason peer projects fail to install. Everything here is plain PyTorch and runs on any device.
Numerics follow the reference (rosinality/stylegan2-pytorch) exactly; formulas are from
Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
# Gain that keeps the activation variance of a leaky ReLU at about one (StyleGAN2's "def_gain").
ACTIVATION_GAIN = math.sqrt(2.0)


def make_fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D separable FIR kernel from 1-D taps, normalised to sum to one."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with a 2-D FIR kernel, downsample.

    x: [B, C, H, W]. ``pad`` = (before, after), applied to both axes; negative values crop.
    The kernel is flipped before correlation, as a true convolution (the StyleGAN2 definition).
    Filtering is depthwise (one group per channel), which is faster than folding channels into
    the batch dimension and gives identical results.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    pad0, pad1 = pad
    x = F.pad(x, [max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)])
    if pad0 < 0 or pad1 < 0:
        h, w = x.shape[-2:]
        x = x[:, :, max(-pad0, 0) : h - max(-pad1, 0), max(-pad0, 0) : w - max(-pad1, 0)]
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device)
    weight = weight.expand(channels, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=channels)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upfirdn2d_folded(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """``upfirdn2d`` computed the way the reference implementation's portable (non-CUDA) path
    does: every channel becomes its own single-channel image in the batch dimension, filtered by
    one 1-in / 1-out convolution. Same result as ``upfirdn2d`` up to float rounding; kept as the
    reference-exact path and as the speed baseline (it is several times slower on CPU).
    """
    batch, channels, height, width = x.shape
    # One channel per image: upfirdn2d's depthwise convolution becomes the plain 1-in / 1-out one.
    out = upfirdn2d(x.reshape(batch * channels, 1, height, width), kernel, up, down, pad)
    return out.reshape(batch, channels, *out.shape[-2:])


def biased_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor, gain: float = ACTIVATION_GAIN
) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) * gain, bias broadcast over channel dim 1 ("fused_leaky_relu")."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), LEAKY_SLOPE) * gain


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored unscaled, scaled at run time.

    ``lr_mul`` < 1 slows the layer down (the mapping network uses 0.01); the stored weight is
    then divided by ``lr_mul`` at init, so the effective weight has the same initial scale.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = self._scaled_linear(x, None)
            return (
                biased_leaky_relu(out, bias)
                if bias is not None
                else F.leaky_relu(out, 0.2) * ACTIVATION_GAIN
            )
        return self._scaled_linear(x, bias)

    def _scaled_linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # The scale multiplies whichever side is smaller: a render's 26 modulation layers see
        # one row each, and scaling their weights cost more than the products.
        if x.numel() < self.weight.numel():
            return F.linear(x * self.scale, self.weight, bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        out_dim, in_dim = self.weight.shape
        return f"{in_dim} -> {out_dim}, lr_mul={self.lr_mul}, activation={self.activation}"


class _DepthwiseFIR(torch.autograd.Function):
    """``F.conv2d(x, kernel, bias, groups=C)`` for a fixed depthwise kernel [C, 1, kh, kw],
    whose input gradient is computed as a forward convolution: the full correlation of the
    output's gradient with the flipped kernel. On a CPU, torch's own depthwise backward takes
    30-120x its forward's time (docs/likeness.md, "Speed")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(kernel)
        ctx.has_bias = bias is not None
        return F.conv2d(x, kernel, bias, groups=kernel.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kernel,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            kh, kw = kernel.shape[-2:]
            padded = F.pad(grad, (kw - 1, kw - 1, kh - 1, kh - 1))
            flipped = torch.flip(kernel, [2, 3])
            grad_x = F.conv2d(padded, flipped, groups=kernel.shape[0])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, None, grad_bias


def depthwise_fir(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise correlation of x [B, C, H, W] with ``kernel`` [C, 1, kh, kw] (no padding) plus
    ``bias`` [C]; a kernel that needs a gradient takes torch's own backward."""
    if kernel.requires_grad or not torch.is_grad_enabled():
        return F.conv2d(x, kernel, bias, groups=kernel.shape[0])
    return _DepthwiseFIR.apply(x, kernel, bias)


def upsample2x_fir(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``upfirdn2d(x, kernel, up=2, pad=(2, 1))`` for a 4x4 kernel, without materialising the
    zero-inserted image: a depthwise stride-2 transposed convolution scatters each input pixel
    through the kernel (a true convolution), and one pixel is cropped from each border."""
    channels = x.shape[1]
    if kernel.shape != (4, 4):
        raise ValueError("upsample2x_fir expects a 4x4 kernel")
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(channels, 1, 4, 4)
    return F.conv_transpose2d(x, weight, stride=2, groups=channels)[:, :, 1:-1, 1:-1]
