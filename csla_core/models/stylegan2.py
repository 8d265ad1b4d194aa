"""StyleGAN2 generator (config F, skip generator), readable in one file.

Module and parameter names follow the rosinality/stylegan2-pytorch checkpoint layout exactly
(``style.1.weight``, ``convs.3.conv.modulation.bias``, ``noises.noise_16``, ...), so the
checkpoints every published demo uses (rosinality ``stylegan2-ffhq-config-f.pt`` and the
``decoder.*`` half of e4e's ``e4e_ffhq_encode.pt``) load with a strict ``load_state_dict``.

Latent spaces (Karras et al. 2020; Wu et al., "StyleSpace Analysis", 2021):
- Z: [B, 512] Gaussian input of the mapping network.
- W: [B, 512] mapping-network output; W+: [B, n_latent, 512], one w per synthesis input.
- S (StyleSpace): the outputs of the 26 affine "modulation" layers (9088 channels at 1024 px),
  in execution order. ``styles_from_wplus`` reads them, ``synthesize`` renders from them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .ops import (
    ACTIVATION_GAIN,
    EqualLinear,
    PixelNorm,
    biased_leaky_relu,
    depthwise_fir,
    make_fir_kernel,
    upfirdn2d,
    upfirdn2d_folded,
    upsample2x_fir,
)

logger = logging.getLogger(__name__)

NoiseMode = Literal["const", "random", "none"]
# How a render is computed (same maths, same result up to float rounding):
# "reference": computed as the reference implementation's portable (non-CUDA) path does it:
#              grouped modulated convolutions, FIR filters run on every channel as a separate
#              one-channel image. Tested against the golden data; the baseline every speed-up is
#              measured against.
# "batched":   the same batched layout with depthwise FIR filters: the GPU default.
# "fast":      per sample, plain convolutions, the upsampling as four phase convolutions,
#              channels-last, in-place epilogue: the CPU default.
Impl = Literal["reference", "batched", "fast"]
IMPLS: tuple[str, ...] = ("reference", "batched", "fast")


def auto_impl(device: torch.device) -> Impl:
    """The synthesis path a call gets when it names none: "fast" is a per-sample CPU
    arrangement; on a GPU the batched path's grouped convolutions render a batch at once."""
    return "fast" if device.type == "cpu" else "batched"


FirFilter = Callable[..., torch.Tensor]
BLUR_TAPS = (1, 3, 3, 1)


class SynthesisTuning(Protocol):
    """Changes added to the synthesis weights by a render, without touching the shared module
    (one face's pivotal tuning, ``csla_core.models.tuning``). ``index`` is a style layer's
    place in ``Generator._style_layers()``; None: that tensor is not changed."""

    def weight_change(self, index: int) -> torch.Tensor | None: ...

    def bias_change(self, index: int) -> torch.Tensor | None: ...


# (weight change, bias change) added to a layer's own (None in either place, or None: none).
LayerParams = tuple[torch.Tensor | None, torch.Tensor | None] | None


def _plus(base: torch.Tensor, change: torch.Tensor | None) -> torch.Tensor:
    """base + change, at least in float32: a change is small, so a 2-byte base (or change) is
    widened as it is added (in one pass) rather than the sum rounded."""
    return base if change is None else torch.add(change.to(_accurate(change.dtype)), base)


@dataclass(frozen=True)
class GeneratorConfig:
    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    lr_mlp: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


def channels_for(resolution: int, channel_multiplier: int) -> int:
    """Feature channels at a resolution (StyleGAN2 config F table)."""
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return table[resolution]


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by one learned weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight * noise


class Blur(nn.Module):
    """FIR low-pass filter applied after the transposed convolution of an upsampling layer."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        # Upsampling by zero insertion lowers the mean by factor^2; the kernel gain restores it.
        self.register_buffer("kernel", make_fir_kernel(BLUR_TAPS) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor, fir: FirFilter = upfirdn2d) -> torch.Tensor:
        return fir(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip image."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(BLUR_TAPS) * factor**2)
        self.factor = factor
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor, fir: FirFilter = upfirdn2d) -> torch.Tensor:
        return fir(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per input channel by a style, then demodulated.

    ``forward`` takes the style ``s`` (the modulation layer's output, one StyleSpace entry)
    rather than w, so that edits in S can be rendered directly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
        )
        # bias_init=1: styles start around one, i.e. the layer starts as a plain convolution.
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        if upsample:
            factor = 2
            p = (len(BLUR_TAPS) - factor) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def __getstate__(self) -> dict:
        # The kernel caches are derived data: a copy or a pickle rebuilds them when used (the
        # prepacked ones are opaque oneDNN tensors, which can be neither copied nor saved).
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in ("_fast_cache", "_packed_cache")}

    def modulated_weight(self, s: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample weights [B, out, in, k, k] for styles s [B, in] (``weight``: used instead
        of the layer's own, e.g. a tuned one)."""
        # A weight stored for the fast path (``Generator.prepare_synthesis``: bf16,
        # channels-last) is widened and made contiguous, the layout the grouped convolutions
        # are fastest with.
        weight = self.weight if weight is None else weight
        # At least float32: a tuned weight's small change would round away in a 2-byte type.
        dtype = _accurate(s.dtype)
        weight = self.scale * weight.to(dtype).contiguous() * s.to(dtype)[:, None, :, None, None]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)
            weight = weight * demod[:, :, None, None, None]
        return weight

    def fast_weights(
        self, s: torch.Tensor, gain: float = 1.0, change: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """``gain * modulated_weight(s, W)[0]`` for one sample s [1, in] and W the layer's
        weight plus ``change`` (a tuning's), as channels-last ``conv2d`` weights
        [out, in, kh, kw] in the stored weight's dtype: the whole kernel, or for an upsampling
        layer its four polyphase sub-kernels (see ``POLYPHASE_TAPS``)."""
        if change is not None:
            coef = self._coef(s, gain)
            return list(
                _TunedKernels.apply(change, self.weight, coef, gain, self.demodulate, self.upsample)
            )
        kernels, sum_sq = self._fast_kernels()
        coef, demod = self._fast_scales(s, gain, sum_sq)
        scale = coef[None, :] if demod is None else demod[:, None] * coef[None, :]
        scale = scale[:, :, None, None]  # [out, in, 1, 1]
        # The product is formed in float32 and rounded once to the stored dtype.
        dtype = self.weight.dtype
        return [
            (kernel * scale).to(dtype=dtype, memory_format=torch.channels_last)
            for kernel in kernels
        ]

    def fast_modulation(
        self,
        s: torch.Tensor,
        gain: float,
        input_shape: torch.Size,
        change: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor], torch.Tensor | None]:
        """How one sample s [1, in] is applied to the fast path's input x (``input_shape``
        [1, in, h + 1, w + 1]: h x w pixels and a zero margin), as (input scale [in] or None,
        kernels, output scale [out] or None), which give ``gain * conv(x, modulated_weight(s))``
        as ``conv(x * input_scale, kernels) * output_scale`` (``_conv2d``).

        Modulating the weight touches out * in * k * k values; scaling the input and output
        instead touches (in + out) * pixels. Below about k * k * out pixels (the 4-64 px
        layers, which hold three quarters of the weights) the activations are the cheaper
        side, and the unmodulated kernels are used as stored, never modulated: on a CPU they
        are reordered once into oneDNN's own layout for this input (``_prepacked_kernels``).
        A weight with a tuning's ``change`` added is modulated as a whole, never cached.
        """
        pixels = (input_shape[-2] - 1) * (input_shape[-1] - 1)
        small = pixels < self.kernel_size**2 * self.out_channels
        # A tuned weight is always modulated in float32 and rounded once: rounded on its own to
        # a 2-byte type, its small change from a weight stored in that type would be lost.
        if not self.demodulate or not small or change is not None:
            return None, self.fast_weights(s, gain, change), None
        _, sum_sq = self._fast_kernels(with_kernels=False)
        coef, demod = self._fast_scales(s, 1.0, sum_sq)
        return coef.to(self.weight.dtype), self._prepacked_kernels(input_shape), demod * gain

    def _paddings(self) -> list[tuple[int, int]]:
        """The padding each fast-path kernel is used with (``fast_weights``' order)."""
        if self.upsample:
            return [(1 - a, 1 - b) for a, b in POLYPHASE_ORDER]
        return [(self.padding, self.padding)]

    def _prepacked_kernels(self, input_shape: torch.Size) -> list[torch.Tensor]:
        """The unmodulated kernels channels-last, or, outside autograd on a CPU, reordered
        into the layout oneDNN picks for ``input_shape`` (opaque mkldnn tensors, cached; the
        kernels they are made from are not kept). A plain convolution reorders its weight on
        every call, which at 4-32 px costs more than the arithmetic (docs/performance.md,
        "Reduced precision on CPU")."""
        weight = self.weight
        if (
            torch.is_grad_enabled()
            or weight.device.type != "cpu"
            or not _prepacking_works(weight.dtype)
        ):
            return [_channels_last(k) for k in self._fast_kernels()[0]]
        key = (self._weight_key(), tuple(input_shape))
        cached = getattr(self, "_packed_cache", None)
        if cached is None or cached[0] != key:
            kernels = _unmodulated_kernels(weight[0].detach(), self.upsample)
            packed = [
                _prepack(k, padding, input_shape) for k, padding in zip(kernels, self._paddings())
            ]
            cached = (key, packed)
            object.__setattr__(self, "_packed_cache", cached)  # like _fast_cache: not saved
        return cached[1]

    def _fast_scales(
        self, s: torch.Tensor, gain: float, sum_sq: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-input-channel factor ``scale * gain * s`` [in], demodulation [out] or None),
        in float32 (or float64).

        Demodulation needs sum over (in, k, k) of (W * s)^2 = sum over in of s^2 * sum over
        (k, k) of W^2: a matrix-vector product with ``sum_sq``, the per-tap sum of squares
        (``_fast_kernels``), so the full weight is never squared per call.
        """
        coef = self._coef(s, gain)
        if not self.demodulate:
            return coef, None
        return coef, _demodulation(sum_sq, coef, gain)

    def _coef(self, s: torch.Tensor, gain: float) -> torch.Tensor:
        """The per-input-channel factor ``scale * gain * s`` [in] of one sample s [1, in]."""
        return (self.scale * gain) * s[0].to(_accurate(s.dtype))

    def _weight_key(self) -> tuple:
        """Changes when W does: its storage, device, dtype or version counter."""
        w = self.weight
        return (w.data_ptr(), w.device, w.dtype, w._version)

    def _fast_kernels(
        self, with_kernels: bool = True
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """(unmodulated kernels, per-tap float32 sum of squares [out, in]); no kernels with
        ``with_kernels=False`` (the layers that use them prepacked). Unless W needs a gradient
        they are cached until W changes (its version counter or storage; an in-place edit
        through ``.data`` bypasses both, as it does autograd's checks)."""
        grad = torch.is_grad_enabled()
        trained = grad and self.weight.requires_grad
        key = self._weight_key()
        cached = None if trained else getattr(self, "_fast_cache", None)
        stale = cached is None or cached[0] != key
        if not stale and grad and cached[2].is_inference():
            stale = True  # made under inference mode: autograd may not save it
        if stale or (with_kernels and cached[1] is None):
            # A weight being trained gives kernels computed from the parameter itself.
            weight = self.weight[0] if trained else self.weight[0].detach()
            sum_sq = _sum_of_squares(weight.to(_accurate(weight.dtype)))
            kernels = _unmodulated_kernels(weight, self.upsample) if with_kernels else None
            cached = (key, kernels, sum_sq)
            if not trained:
                # A plain attribute, not a buffer: never saved in a checkpoint.
                object.__setattr__(self, "_fast_cache", cached)
        return cached[1], cached[2]

    def forward(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        fir: FirFilter = upfirdn2d,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, in_channels, height, width = x.shape
        if weight is not None and weight.requires_grad:
            # Tuning: the modulated weight is made again in the backward pass rather than kept
            # (with its intermediates, several copies of every tuned weight).
            weight = checkpoint(self.modulated_weight, s, weight, use_reentrant=False)
        else:
            weight = self.modulated_weight(s, weight)
        k = self.kernel_size
        # Grouped convolution: the batch is folded into channels, one group per sample.
        x = x.reshape(1, batch * in_channels, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.reshape(batch, self.out_channels, *out.shape[-2:])
            return self.blur(out, fir)
        weight = weight.reshape(batch * self.out_channels, in_channels, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.reshape(batch, self.out_channels, *out.shape[-2:])


def _unmodulated_kernels(weight: torch.Tensor, upsample: bool) -> list[torch.Tensor]:
    """The fast path's kernels of W [out, in, k, k]: W itself, or for an upsampling layer its
    four polyphase sub-kernels, channels-last (gathering them copies; a plain kernel goes to
    channels-last in the same pass as its modulation).

    Each of the nine taps goes to exactly one sub-kernel, so the four are one permutation of
    the taps, gathered by a product with a permutation matrix (exact: products with one, sums
    with zeros). Its backward is the transposed product; slices and flips would copy, and an
    index list's backward scatters, several times slower (docs/likeness.md)."""
    if not upsample:
        return [weight]
    # Outside autocast, which would round a float32 (tuned) weight to a 2-byte type.
    with torch.autocast(weight.device.type, enabled=False):
        taps = weight.flatten(2) @ _polyphase_permutation(weight.dtype, weight.device)
    kernels, start = [], 0
    for a, b in POLYPHASE_ORDER:
        rows, cols = len(POLYPHASE_TAPS[a]), len(POLYPHASE_TAPS[b])
        kernel = taps[:, :, start : start + rows * cols].unflatten(2, (rows, cols))
        kernels.append(_channels_last(kernel))
        start += rows * cols
    return kernels


def _sum_of_squares(weight: torch.Tensor) -> torch.Tensor:
    """Sum over the taps of W [out, in, k, k] squared, [out, in] (demodulation's input),
    accumulated one tap at a time: no temporary the size of W."""
    taps = weight.permute(0, 2, 3, 1)
    total = torch.zeros_like(taps[:, 0, 0], memory_format=torch.contiguous_format)
    for row in range(taps.shape[1]):
        for col in range(taps.shape[2]):
            total.addcmul_(taps[:, row, col], taps[:, row, col])
    return total


def _demodulation(sum_sq: torch.Tensor, coef: torch.Tensor, gain: float) -> torch.Tensor:
    """demod [out] = (sum over in of sum_sq * coef^2 / gain^2 + eps)^(-1/2), for the per-tap
    sum of squares [out, in] and the per-input factor coef [in] (which includes ``gain``)."""
    with torch.autocast(sum_sq.device.type, enabled=False):  # would round the product
        return torch.rsqrt(sum_sq @ (coef * coef) * (1.0 / gain**2) + 1e-8)


def _kernel_taps(kernel_size: int, upsample: bool) -> list[tuple[list[int], list[int]]]:
    """(kernel rows, kernel columns) of each fast-path kernel of W (``fast_weights`` order)."""
    if upsample:
        return [(POLYPHASE_TAPS[a], POLYPHASE_TAPS[b]) for a, b in POLYPHASE_ORDER]
    return [(list(range(kernel_size)), list(range(kernel_size)))]


class _TunedKernels(torch.autograd.Function):
    """``fast_weights`` for a tuned weight W = base + change [1, out, in, k, k] (``_plus``:
    float32, or float64) and the factor ``coef`` [in] (``_coef``): the kernels of
    ``W * scale``, with scale [out, in] = demod [out] * coef [in] (or coef alone), rounded
    once to the base's dtype, channels-last.

    A tuning back-propagates through this for every tuned layer at every step. Left to
    autograd the weight side took about a fifth of a CPU step: a dozen passes over each tuned
    weight (squares, products, their saved copies, layout changes, the gathers' backward).
    Here the forward makes each kernel in one pass from W, and the backward computes
    dL/dW = G * scale + 2 W * dL/d(sum of squares) in two in-place passes over the
    gathered gradient G, W's layout kept throughout (a channels-last W, as a tuning's is,
    is never transposed). W is made again in the backward pass rather than kept (the tuned
    layers' W are 65 MB in float32 at 1024), from the change and the base, which are held
    on ``ctx`` with the small factors rather than saved: saved tensors go through the
    tuning's hooks, which keep large ones in bfloat16 (``likeness._pack``), and these must
    stay exact.
    """

    @staticmethod
    def forward(ctx, change, base, coef, gain, demodulate, upsample):
        dtype = base.dtype
        with torch.autocast(base.device.type, enabled=False):  # would round the products
            w = _plus(base, change)[0]  # at least float32 already
            taps = w.permute(0, 2, 3, 1)  # [out, k, k, in]: contiguous when W is channels-last
            out_channels, in_channels = w.shape[:2]
            demod = sum_sq = None
            if demodulate:
                sum_sq = _sum_of_squares(w)
                demod = _demodulation(sum_sq, coef, gain)
                scale = demod[:, None] * coef[None, :]
            else:
                scale = coef[None, :].expand(out_channels, in_channels)
            kernels = []
            for rows, cols in _kernel_taps(w.shape[-1], upsample):
                out = w.new_empty(out_channels, len(rows), len(cols), in_channels, dtype=dtype)
                if not upsample:
                    torch.mul(taps, scale[:, None, None], out=out)
                else:
                    for r, row in enumerate(rows):
                        for c, col in enumerate(cols):
                            torch.mul(taps[:, row, col], scale, out=out[:, r, c])
                kernels.append(out.permute(0, 3, 1, 2))  # channels-last [out, in, kh, kw]
        ctx.change, ctx.base, ctx.coef, ctx.demod, ctx.sum_sq = change, base, coef, demod, sum_sq
        ctx.gain, ctx.upsample = gain, upsample
        ctx.versions = (change._version, base._version)
        return tuple(kernels)

    @staticmethod
    def backward(ctx, *grads):
        change, base, coef, demod, gain = ctx.change, ctx.base, ctx.coef, ctx.demod, ctx.gain
        if (change._version, base._version) != ctx.versions:  # autograd's own check, by hand
            raise RuntimeError(
                "a tuned weight was modified in place after the render that needs its gradient"
            )
        need_change, need_base, need_coef = ctx.needs_input_grad[:3]
        need_weight = need_change or need_base
        with torch.autocast(base.device.type, enabled=False):
            w = _plus(base, change)[0]  # made again: not kept from the forward pass
            taps = w.permute(0, 2, 3, 1)
            # G = dL/d(W * scale), gathered from the kernels' gradients, as [out, k, k, in].
            # Every tap belongs to exactly one kernel: zeros only where a kernel had no gradient.
            make = torch.zeros_like if any(grad is None for grad in grads) else torch.empty_like
            g = make(taps, memory_format=torch.contiguous_format)
            for (rows, cols), grad in zip(_kernel_taps(w.shape[-1], ctx.upsample), grads):
                if grad is None:
                    continue
                grad = grad.permute(0, 2, 3, 1)
                for r, row in enumerate(rows):
                    for c, col in enumerate(cols):
                        g[:, row, col].copy_(grad[:, r, c])
            scale = coef[None, :] if demod is None else demod[:, None] * coef[None, :]
            # dL/dscale [out, in] = sum over the taps of G * W, one tap at a time (no
            # temporary the size of W).
            d_scale = torch.zeros_like(scale.expand_as(g[:, 0, 0]))
            for row in range(taps.shape[1]):
                for col in range(taps.shape[2]):
                    d_scale.addcmul_(g[:, row, col], taps[:, row, col])
            grad_coef = None
            if demod is None:
                d_sum_sq = None
                if need_coef:
                    grad_coef = d_scale.sum(0)
            else:
                # demod = (sum_sq @ coef^2 / gain^2 + eps)^(-1/2)
                d_demod = (d_scale * coef[None, :]).sum(1)
                d_v = d_demod * (-0.5) * demod**3 * (1.0 / gain**2)  # [out]
                d_sum_sq = d_v[:, None] * (coef * coef)[None, :]
                if need_coef:
                    grad_coef = (d_scale * demod[:, None]).sum(0)
                    grad_coef += 2 * coef * (d_v[:, None] * ctx.sum_sq).sum(0)
            grad_change = grad_base = None
            if need_weight:
                g.mul_(scale[:, None, None])
                if d_sum_sq is not None:
                    g.addcmul_(taps, 2 * d_sum_sq[:, None, None])
                grad_weight = g.permute(0, 3, 1, 2)[None]  # dL/dW = dL/dchange = dL/dbase
                grad_change = grad_weight.to(change.dtype) if need_change else None
                grad_base = grad_weight.to(base.dtype) if need_base else None
        return grad_change, grad_base, grad_coef, None, None, None


@functools.cache
def _polyphase_permutation(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[9, 9]: row-major 3x3 taps -> the sub-kernels' taps, row-major, in POLYPHASE_ORDER."""
    order = [
        3 * row + col
        for a, b in POLYPHASE_ORDER
        for row in POLYPHASE_TAPS[a]
        for col in POLYPHASE_TAPS[b]
    ]
    # An ordinary tensor even when first made under inference mode: autograd saves it.
    with torch.inference_mode(False):
        permutation = torch.zeros(9, 9, dtype=dtype)
        permutation[order, range(9)] = 1
        return permutation.to(device)


def _accurate(dtype: torch.dtype) -> torch.dtype:
    """The dtype demodulation is computed in: float32, or float64 for float64 weights."""
    return torch.promote_types(dtype, torch.float32)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _prepack(weight: torch.Tensor, padding: tuple[int, int], input_shape) -> torch.Tensor:
    """A stride-1 conv2d kernel reordered once into oneDNN's layout for inputs of
    ``input_shape`` (an opaque mkldnn tensor that ``_conv2d`` computes with)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.contiguous().to_mkldnn(), list(padding), [1, 1], [1, 1], 1, list(input_shape)
    )


def _conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
) -> torch.Tensor:
    """``F.conv2d`` (stride 1), also for a kernel prepacked by ``_prepack``."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(padding), [1, 1], [1, 1], 1, "none", [], None
        )
    return F.conv2d(x, weight, bias, padding=padding)


@functools.cache
def _prepacking_works(dtype: torch.dtype) -> bool:
    """Prepacked kernels rely on oneDNN operators torch keeps for its compiler: used only
    where this build has them and they give plain ``conv2d``'s result on a probe."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    x = _channels_last(torch.randn(1, 8, 5, 5, generator=generator).to(dtype))
    weight = _channels_last(torch.randn(16, 8, 3, 3, generator=generator).to(dtype))
    with torch.inference_mode():
        expected = F.conv2d(x, weight, padding=1)
        try:
            got = _conv2d(x, _prepack(weight, (1, 1), x.shape), None, (1, 1))
        except (RuntimeError, AttributeError, NotImplementedError) as error:
            logger.warning(
                "prepacked %s kernels unavailable (%s): plain convolutions", dtype, error
            )
            return False
    if got.shape == expected.shape and torch.allclose(got.float(), expected.float(), 1e-2, 1e-2):
        return True
    logger.warning("prepacked %s kernels disagree with conv2d: plain convolutions", dtype)
    return False


class StyledConv(nn.Module):
    """Modulated 3x3 convolution + noise + biased leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = _BiasedLeakyReLU(out_channels)

    def forward(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        noise: torch.Tensor | None,
        fir: FirFilter = upfirdn2d,
        params: LayerParams = None,
    ) -> torch.Tensor:
        weight_change, bias_change = params or (None, None)
        weight = None if weight_change is None else _plus(self.conv.weight, weight_change)
        x = self.noise(self.conv(x, s, fir, weight), noise)
        if bias_change is None:
            return self.activate(x)
        return biased_leaky_relu(x, _plus(self.activate.bias, bias_change))

    def forward_fast(
        self,
        held: list[torch.Tensor],
        s: torch.Tensor,
        noise: torch.Tensor | None,
        params: LayerParams = None,
    ) -> torch.Tensor:
        """One sample, channels-last, with a zero margin (see ``Generator._synthesize_fast``):
        the input x is [1, C, h + 1, w + 1] and so is the result (2h + 1 by 2w + 1 when
        upsampling).

        ``held`` is a one-element list holding x, and is emptied: the caller keeps no reference,
        so an upsampling layer frees x as soon as its phase convolutions have read it, before
        the blur allocates its output (at 1024 px that lowers the peak by 67 MB).

        The modulated weight is used by plain convolutions (no grouping), the upsampling
        transposed convolution is computed as four small convolutions, one per output phase,
        the FIR blur is a depthwise convolution, and leaky_relu(g * x) == g * leaky_relu(x)
        (g > 0) moves the gain into the weight, bias and noise strength, so the epilogue is
        two in-place passes. ``params``: (weight change, bias change) added to the layer's own.
        """
        conv = self.conv
        gain = ACTIVATION_GAIN
        grad = torch.is_grad_enabled()  # autograd needs the intermediate tensors: no in-place ops
        weight_change, bias_change = params or (None, None)
        in_scale, weights, out_scale = conv.fast_modulation(s, gain, held[0].shape, weight_change)
        dtype = weights[0].dtype
        if in_scale is not None:
            held.append(held.pop() * in_scale[None, :, None, None])
        bias = (_plus(self.activate.bias, bias_change) * gain).to(dtype)
        if conv.upsample:
            out = _polyphase_upsample_blur(held, weights, conv.blur.kernel, bias, out_scale)
        elif out_scale is None:
            out = _conv2d(held.pop(), weights[0], bias, conv._paddings()[0])
        else:
            out = _conv2d(held.pop(), weights[0], None, conv._paddings()[0])
            out_scale, bias = out_scale.to(dtype)[None, :, None, None], bias[None, :, None, None]
            out = out * out_scale + bias if grad else out.mul_(out_scale).add_(bias)
        h, w = out.shape[-2] - 1, out.shape[-1] - 1
        # In the activations' dtype: a mixed-dtype add_ is 10x slower.
        noise = None if noise is None else (noise * (self.noise.weight * gain)).to(dtype)
        if grad:
            # The margin is zeroed by a mask: cropping and padding again would copy the
            # activation, and their backward would copy its gradient twice more.
            if noise is not None:
                out = out + F.pad(noise, (0, 1, 0, 1))
            return F.leaky_relu(out, 0.2) * _margin_mask(h, w, out)
        if noise is not None:
            out[:, :, :h, :w].add_(noise)
        F.leaky_relu_(out, 0.2)
        out[:, :, h, :] = 0
        out[:, :, :, w] = 0
        return out


def _margin_mask(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """[1, 1, h + 1, w + 1]: one on the h x w pixels, zero on the margin."""
    return F.pad(like.new_ones(1, 1, h, w), (0, 1, 0, 1))


# Polyphase form of the 3x3, stride-2 transposed convolution: output row y = 2m + phase gets
# input row m - 1 through kernel row 2 and row m through kernel row 0 (phase 0), or row m
# through kernel row 1 (phase 1). As a correlation: kernel rows [2, 0] with one row of
# padding, or row [1] with none; the same for columns.
POLYPHASE_TAPS = {0: [2, 0], 1: [1]}
POLYPHASE_ORDER = ((0, 0), (0, 1), (1, 0), (1, 1))
# The fast path computes its last level in bands of BAND_ROWS input rows (plus BAND_HALO
# rows on either side) when that level is at least BANDED_FROM px (``_level_fast_banded``);
# BAND_ROWS is for float32 activations, and 2-byte ones take twice as many rows (the same bytes).
BANDED_FROM = 512
BAND_ROWS = 128
BAND_HALO = 2


def _polyphase_upsample_blur(
    held: list[torch.Tensor],
    weights: list[torch.Tensor],
    blur_kernel: torch.Tensor,
    bias: torch.Tensor,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``blur(conv_transpose2d(x, w, stride=2), pad=(1, 1)) + bias`` for x = ``held.pop()``
    [1, Cin, h + 1, w + 1] (zero margin; freed once read) and the four polyphase kernels of w:
    [1, Cout, 2h + 1, 2w + 1] whose last row and column are not part of the result.

    Split by output phase, the transposed convolution needs no inserted zeros: the same 9
    multiply-adds per input pixel and channel pair, but as four plain convolutions (2x2, 2x1,
    1x2 and 1x1 kernels), which oneDNN runs two to three times faster than its transposed
    convolution at 256-512 px. The phases are interleaved straight into the blur's
    zero-padded input buffer, whose index q is the transposed output's y + 1: phase 0 lands
    on odd q (q = 2m + 1), phase 1 on even q (q = 2(m + 1)).
    ``out_scale`` [Cout] (per output channel, so it commutes with the depthwise blur) is
    folded into the blur's kernel, at no cost.
    """
    x = held.pop()
    h, w = x.shape[-2] - 1, x.shape[-1] - 1
    channels = weights[0].shape[0]
    dtype, device = x.dtype, x.device
    # Buffer rows q in [0, 2h + 4): [h + 2 pairs] x [2 phases of q]; the same for columns.
    buf = x.new_empty(1, h + 2, 2, w + 2, 2, channels)
    for (a, b), weight in zip(POLYPHASE_ORDER, weights):
        # With x's zero margin, phase 0 gives h + 2 rows (the last is zero: the blur's right
        # padding), phase 1 gives h + 1 (the last is zero: beyond the transposed output).
        phase = _conv2d(x, weight, None, (1 - a, 1 - b))
        rows = slice(0, h + 2) if a == 0 else slice(1, h + 2)
        cols = slice(0, w + 2) if b == 0 else slice(1, w + 2)
        buf[0, rows, 1 - a, cols, 1 - b] = phase[0].permute(1, 2, 0)
        del phase  # before the next phase is allocated
    del x  # the largest tensor alive: gone before the blur's output is allocated
    buf[0, 0, 0] = 0  # q = 0: the blur's left padding
    buf[0, :, :, 0, 0] = 0
    padded = buf.view(1, 2 * h + 4, 2 * w + 4, channels).permute(0, 3, 1, 2)
    kernel = torch.flip(blur_kernel, [0, 1]).to(device=device).expand(channels, 1, 4, 4)
    if out_scale is not None and torch.is_grad_enabled() and out_scale.requires_grad:
        # A kernel that needs a gradient would take torch's depthwise backward (see
        # ``depthwise_fir``): the scale is applied to the result instead (a quarter off the
        # step of the optimisation fallback, whose styles need gradients).
        out = depthwise_fir(padded, kernel.to(dtype))
        return out * out_scale.to(dtype)[None, :, None, None] + bias[None, :, None, None]
    if out_scale is not None:
        kernel = kernel * out_scale[:, None, None, None]
    return depthwise_fir(padded, kernel.to(dtype), bias)


class _BiasedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return biased_leaky_relu(x, self.bias)


class ToRGB(nn.Module):
    """1x1 modulated convolution (no demodulation) to RGB, added to the upsampled skip image."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        skip: torch.Tensor | None,
        fir: FirFilter = upfirdn2d,
        params: LayerParams = None,
    ) -> torch.Tensor:
        weight_change, bias_change = params or (None, None)
        weight = None if weight_change is None else _plus(self.conv.weight, weight_change)
        out = self.conv(x, s, weight=weight) + _plus(self.bias, bias_change)
        if skip is not None:
            out = out + self.upsample(skip, fir)
        return out

    def forward_fast(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        skip: torch.Tensor | None,
        params: LayerParams = None,
    ) -> torch.Tensor:
        """One sample, channels-last; x has a zero margin (see ``StyledConv.forward_fast``),
        the RGB result and ``skip`` do not."""
        h, w = x.shape[-2] - 1, x.shape[-1] - 1
        weight_change, bias_change = params or (None, None)
        weight = self.conv.fast_weights(s, change=weight_change)[0]
        bias = _plus(self.bias, bias_change)
        out = F.conv2d(x, weight, bias.view(3).to(weight.dtype))[:, :, :h, :w]
        # The RGB image is summed over the levels in float32, whatever the activations' dtype.
        out = out.to(_accurate(out.dtype))
        if skip is not None:
            return out + upsample2x_fir(skip, self.upsample.kernel)
        return out.contiguous()


def block_bias(block: StyledConv | ToRGB) -> torch.Tensor:
    """A style block's bias: the activation's (StyledConv) or the RGB offset (ToRGB)."""
    return block.activate.bias if isinstance(block, StyledConv) else block.bias


class _NoiseBuffers(nn.Module):
    """Holds the fixed per-layer noise images (``noises.noise_0`` ... in checkpoints)."""


class Generator(nn.Module):
    """StyleGAN2 generator. Output images are nominally in [-1, 1], NCHW float."""

    def __init__(self, config: GeneratorConfig | None = None, **overrides) -> None:
        super().__init__()
        config = config or GeneratorConfig()
        if overrides:
            config = GeneratorConfig(**{**config.to_dict(), **overrides})
        self.config = config
        log_size = int(math.log2(config.size))
        if 2**log_size != config.size or log_size < 3:
            raise ValueError(f"generator size must be a power of two >= 8, got {config.size}")
        self.log_size = log_size
        self.style_dim = config.style_dim
        cm = config.channel_multiplier

        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(config.n_mlp):
            layers.append(
                EqualLinear(
                    config.style_dim, config.style_dim, lr_mul=config.lr_mlp, activation=True
                )
            )
        self.style = nn.Sequential(*layers)

        self.input = ConstantInput(channels_for(4, cm))
        self.conv1 = StyledConv(channels_for(4, cm), channels_for(4, cm), config.style_dim)
        self.to_rgb1 = ToRGB(channels_for(4, cm), config.style_dim, upsample=False)

        self.num_noise_layers = (log_size - 2) * 2 + 1
        self.noises = _NoiseBuffers()
        for i in range(self.num_noise_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = channels_for(4, cm)
        for i in range(3, log_size + 1):
            out_ch = channels_for(2**i, cm)
            self.convs.append(StyledConv(in_ch, out_ch, config.style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, config.style_dim))
            self.to_rgbs.append(ToRGB(out_ch, config.style_dim))
            in_ch = out_ch

        self.n_latent = log_size * 2 - 2

    # ------------------------------------------------------------------ latent spaces
    @property
    def size(self) -> int:
        return self.config.size

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Z [B, style_dim] -> W [B, style_dim]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Average of W over ``n`` random z: [1, style_dim] (the truncation centre)."""
        device = self.input.input.device
        z = torch.randn(n, self.style_dim, generator=generator, device="cpu").to(device)
        return self.mapping(z).mean(dim=0, keepdim=True)

    def to_wplus(self, w: torch.Tensor) -> torch.Tensor:
        """W [B, D] -> W+ [B, n_latent, D]; W+ passes through."""
        if w.ndim == 2:
            return w[:, None, :].expand(-1, self.n_latent, -1)
        if w.ndim == 3 and w.shape[1] == self.n_latent:
            return w
        raise ValueError(
            f"expected W [B,{self.style_dim}] or W+ [B,{self.n_latent},{self.style_dim}], got {tuple(w.shape)}"
        )

    def _style_layers(self) -> list[ModulatedConv2d]:
        """The modulated convolutions in execution order (one StyleSpace entry each)."""
        return [block.conv for block in self.style_blocks()]

    def style_blocks(self) -> list[StyledConv | ToRGB]:
        """The layers that own a style, in execution order: block i holds
        ``_style_layers()[i]`` (``.conv``) and a bias (``block_bias``)."""
        blocks: list[StyledConv | ToRGB] = [self.conv1, self.to_rgb1]
        for i, to_rgb in enumerate(self.to_rgbs):
            blocks += [self.convs[2 * i], self.convs[2 * i + 1], to_rgb]
        return blocks

    def style_block_resolutions(self) -> list[int]:
        """The output resolution of each style block (``style_blocks`` order)."""
        sizes = [4, 4]
        for i in range(len(self.to_rgbs)):
            sizes += [2 ** (i + 3)] * 3
        return sizes

    def _params(self, tuning: SynthesisTuning | None, index: int) -> LayerParams:
        """What ``tuning`` adds to style block ``index``'s (weight, bias) (None: nothing)."""
        if tuning is None:
            return None
        return tuning.weight_change(index), tuning.bias_change(index)

    def _style_wplus_index(self) -> list[int]:
        """Which W+ row feeds each StyleSpace layer (to_rgb shares the next conv's row)."""
        index = [0, 1]
        for i in range(len(self.to_rgbs)):
            index += [1 + 2 * i, 2 + 2 * i, 3 + 2 * i]
        return index

    @property
    def style_dims(self) -> list[int]:
        """Channels of each StyleSpace entry (26 entries, 9088 in total at 1024 px)."""
        return [layer.in_channels for layer in self._style_layers()]

    def styles_from_wplus(self, wplus: torch.Tensor) -> list[torch.Tensor]:
        """W or W+ -> StyleSpace: a list of [B, C_i] tensors in execution order."""
        wplus = self.to_wplus(wplus)
        return [
            layer.modulation(wplus[:, row])
            for layer, row in zip(self._style_layers(), self._style_wplus_index())
        ]

    def synthesis_flops(self, max_resolution: int | None = None) -> int:
        """Floating-point operations (two per multiply-add) of the modulated convolutions of
        one sample rendered up to ``max_resolution`` px: the arithmetic every path does,
        whatever its arrangement (the FIR filters, noise and activations are not counted).
        The bench divides it by a render's time to show how near a CPU's peak a render runs."""
        target = min(max_resolution or self.size, self.size)
        # (input px per side, output px per side) of each style layer, in execution order
        sizes = [(4, 4), (4, 4)]
        for i in range(len(self.to_rgbs)):
            r = 2 ** (i + 3)
            sizes += [(r // 2, r), (r, r), (r, r)]
        return sum(
            2 * size_in**2 * layer.in_channels * layer.out_channels * layer.kernel_size**2
            for layer, (size_in, size_out) in zip(self._style_layers(), sizes)
            if size_out <= target
        )

    # ------------------------------------------------------------------ synthesis
    @torch.no_grad()
    def prepare_synthesis(self, dtype: torch.dtype = torch.float32) -> Generator:
        """Store the synthesis convolution weights once in ``dtype`` and channels-last, the
        layout oneDNN's CPU convolutions read: the fast path then computes in ``dtype``
        (bfloat16: native on CPUs with AVX512-BF16 or AMX) and uses the 4-64 px kernels as
        stored (``fast_modulation``). The mapping network, the modulation layers, biases,
        noise and the RGB sum stay float32; "reference" and "batched" widen the weights back.
        """
        # Ordinary tensors even when called under inference mode: the kernel cache reads
        # their version counters.
        with torch.inference_mode(False):
            for layer in self._style_layers():
                w = layer.weight.detach()[0].to(dtype, copy=True)
                w = w.contiguous(memory_format=torch.channels_last)[None]
                layer.weight = nn.Parameter(w, requires_grad=layer.weight.requires_grad)
        return self

    @property
    def synthesis_dtype(self) -> torch.dtype:
        """The dtype the fast path computes in (``prepare_synthesis``)."""
        return self.conv1.conv.weight.dtype

    def _noises(
        self,
        batch: int,
        target: int,
        mode: NoiseMode,
        generator: torch.Generator | None,
    ) -> list[torch.Tensor | None]:
        """Noise images for every layer up to ``target`` px, drawn in layer order."""
        count = 1 + 2 * (int(math.log2(target)) - 2)
        if mode == "none":
            return [None] * count
        if mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(count)]
        if mode != "random":
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {mode!r}")
        like = self.input.input
        # Drawn on the generator's device so a seeded CPU generator is reproducible anywhere.
        gen_device = generator.device if generator is not None else like.device
        out = []
        for i in range(count):
            res = 2 ** ((i + 5) // 2)
            noise = torch.randn((batch, 1, res, res), generator=generator, device=gen_device)
            out.append(noise.to(device=like.device, dtype=like.dtype))
        return out

    def synthesize(
        self,
        styles: Sequence[torch.Tensor],
        noise_mode: NoiseMode = "const",
        max_resolution: int | None = None,
        generator: torch.Generator | None = None,
        impl: Impl | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """Render from StyleSpace. Returns [B, 3, R, R] with R = ``max_resolution`` or size.

        The skip architecture has an RGB image at every level, so stopping early gives a
        lower-resolution preview of the same image for a fraction of the cost.
        ``impl`` picks the computation (see ``Impl``: "reference", "batched" or "fast"); None
        picks by device (``auto_impl``). ``tuning``: weights changed for this render only (one
        face's pivotal tuning); the module itself is never changed.
        """
        if len(styles) != len(self.style_dims):
            raise ValueError(f"expected {len(self.style_dims)} style tensors, got {len(styles)}")
        # A preview size at or above the model's own size simply means the full image.
        target = min(max_resolution or self.size, self.size)
        if target not in {2**i for i in range(2, self.log_size + 1)}:
            raise ValueError(
                f"max_resolution must be a power of two in [4, {self.size}], got {target}"
            )
        impl = impl or auto_impl(styles[0].device)
        batch = styles[0].shape[0]
        noises = self._noises(batch, target, noise_mode, generator)
        if impl == "fast":
            return self._synthesize_fast(styles, noises, target, tuning)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        fir = upfirdn2d_folded if impl == "reference" else upfirdn2d
        p = functools.partial(self._params, tuning)
        x = self.input(batch)
        x = self.conv1(x, styles[0], noises[0], fir, p(0))
        skip = self.to_rgb1(x, styles[1], None, fir, p(1))
        for i, to_rgb in enumerate(self.to_rgbs):
            if 2 ** (i + 3) > target:
                break
            k = 2 + 3 * i
            x = self.convs[2 * i](x, styles[k], noises[2 * i + 1], fir, p(k))
            x = self.convs[2 * i + 1](x, styles[k + 1], noises[2 * i + 2], fir, p(k + 1))
            skip = to_rgb(x, styles[k + 2], skip, fir, p(k + 2))
        return skip

    def _synthesize_fast(
        self,
        styles: Sequence[torch.Tensor],
        noises: list[torch.Tensor | None],
        target: int,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """Same maths as the reference path, arranged for CPU speed (see
        ``StyledConv.forward_fast``); matches the reference within float rounding (tested).

        Activations are channels-last (oneDNN's preferred layout) and carry one extra row and
        column kept at zero: for the polyphase upsampling and the 3x3 convolutions it is the
        zero padding they need, so an n x n activation never has to be cropped and copied.
        They are in the dtype the convolution weights are stored in (``prepare_synthesis``);
        demodulation, noise strengths and the RGB sum stay float32. A last level of 512 px
        or more is computed in bands (``_level_fast_banded``). A tuned layer's weight is
        formed when the layer runs and freed after it.
        """
        # The output is allocated before any activation: a long-lived block made between two
        # samples would split the memory the next sample's activations reuse.
        batch = styles[0].shape[0]
        images = self.input.input.new_empty(batch, 3, target, target)
        dtype = self.synthesis_dtype
        levels = [i for i in range(len(self.to_rgbs)) if 2 ** (i + 3) <= target]
        for b in range(batch):
            sb = [st[b : b + 1] for st in styles]
            nb = [None if n is None else n[b : b + 1] if n.shape[0] > 1 else n for n in noises]
            x = _channels_last(F.pad(self.input(1), (0, 1, 0, 1)).to(dtype))
            x = self.conv1.forward_fast([x], sb[0], nb[0], self._params(tuning, 0))
            skip = self.to_rgb1.forward_fast(x, sb[1], None, self._params(tuning, 1))
            for i in levels:
                held, x = [x], None  # handed over: the level frees it once it is read
                pair = nb[2 * i + 1 : 2 * i + 3]
                if i == levels[-1] and 2 ** (i + 3) >= BANDED_FROM:
                    self._level_fast_banded(i, held, sb, pair, skip, images[b], tuning)
                    break
                x, skip = self._level_fast(i, held, sb, pair, skip, tuning)
            else:
                images[b] = skip[0]
        return images

    def _level_fast(
        self,
        i: int,
        held: list[torch.Tensor],
        sb: Sequence[torch.Tensor],
        noises: Sequence[torch.Tensor | None],
        skip: torch.Tensor,
        tuning: SynthesisTuning | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Level i of the fast path (2 ** (i + 3) px): the upsampling convolution, the
        convolution and the RGB layer. ``held`` = [x], emptied; returns (x, RGB image)."""
        k = 2 + 3 * i
        p = functools.partial(self._params, tuning)
        # The upsampled activation is handed over in turn, so it is freed once it is read.
        held = [self.convs[2 * i].forward_fast(held, sb[k], noises[0], p(k))]
        x = self.convs[2 * i + 1].forward_fast(held, sb[k + 1], noises[1], p(k + 1))
        return x, self.to_rgbs[i].forward_fast(x, sb[k + 2], skip, p(k + 2))

    def _level_fast_banded(
        self,
        i: int,
        held: list[torch.Tensor],
        sb: Sequence[torch.Tensor],
        noises: Sequence[torch.Tensor | None],
        skip: torch.Tensor,
        out: torch.Tensor,
        tuning: SynthesisTuning | None = None,
    ) -> None:
        """The last level, as ``_level_fast``, computed in horizontal bands and written into
        ``out`` [3, 2n, 2n]: its activations are never whole (at 1024 px one is 135 MB in
        float32), which takes about 250 MB off a 1024 px render's memory peak, at the same
        speed (docs/performance.md, "Memory").

        A band of x's rows [a, b) is computed from rows [a - BAND_HALO, b + BAND_HALO + 1)
        (or more) with everything outside taken as zero, as at the image's own border; the
        rows that this changes lie within BAND_HALO input rows of the cut (the receptive field
        of the level is two x rows either way) and are dropped, so the result is the unbanded
        one.
        """
        x = held.pop()
        n = x.shape[-2] - 1
        rows = BAND_ROWS * 4 // x.element_size()
        # Every band reads the same number of rows (the first and last take more beyond the
        # cut, which is dropped too), so every band allocates blocks of the same sizes: the
        # heap then reuses them render after render instead of faulting in new ones.
        span = min(n, rows + 2 * BAND_HALO)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            start = min(max(0, a - BAND_HALO), n - span)
            end = start + span
            # Row ``end`` stands in for the zero margin: it is x's own margin at the bottom,
            # and real data (affecting only the dropped rows) elsewhere.
            band = [x[:, :, start : end + 1]]
            band_noises = [None if t is None else t[:, :, 2 * start : 2 * end] for t in noises]
            _, rgb = self._level_fast(i, band, sb, band_noises, skip[:, :, start:end], tuning)
            out[:, 2 * a : 2 * b] = rgb[0, :, 2 * (a - start) : 2 * (b - start)]

    def forward(
        self,
        wplus: torch.Tensor,
        noise_mode: NoiseMode = "const",
        max_resolution: int | None = None,
        generator: torch.Generator | None = None,
        impl: Impl | None = None,
        tuning: SynthesisTuning | None = None,
    ) -> torch.Tensor:
        """Render from W [B, D] or W+ [B, n_latent, D]."""
        return self.synthesize(
            self.styles_from_wplus(wplus), noise_mode, max_resolution, generator, impl, tuning
        )

    def render_z(
        self,
        z: torch.Tensor,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
        noise_mode: NoiseMode = "const",
        max_resolution: int | None = None,
        generator: torch.Generator | None = None,
        impl: Impl | None = None,
    ) -> torch.Tensor:
        """Render from Z with optional truncation towards ``truncation_latent`` (W average)."""
        w = self.mapping(z)
        if truncation != 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (the average w)")
            w = truncation_latent + truncation * (w - truncation_latent)
        return self.forward(w, noise_mode, max_resolution, generator, impl)
