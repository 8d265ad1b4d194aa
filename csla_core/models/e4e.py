"""e4e encoder (Tov et al., "Designing an Encoder for StyleGAN Image Manipulation", 2021).

``Encoder4Editing``: an IR-SE-50 backbone (ArcFace-style residual units with squeeze-and-
excitation) with a small feature pyramid, and one "gradual style block" per W+ row. Row 0
predicts a base w; every other row predicts a delta added to it, which keeps the code close to
W (editable). Parameter names follow the official checkpoint (``e4e_ffhq_encode.pt``, keys
after stripping ``encoder.``).

Input: [B, 3, 256, 256] in [-1, 1]. Output: W+ *offsets* [B, n_styles, 512]; the W+ code of the
image is that plus ``latent_avg`` (the pipeline adds it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ops import EqualLinear

# The backbone's residual units per stage for IR-SE-50: (in, out, units); first unit strides 2.
IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
# W+ rows 0-2 read the coarsest feature map (16x16), rows 3-6 the middle (32x32), rows 7+ the fine.
COARSE_END, MIDDLE_END = 3, 7
GROUP_SPATIAL = (16, 32, 64)  # the feature map size each group of rows reads


@dataclass(frozen=True)
class EncoderConfig:
    stylegan_size: int = 1024
    style_dim: int = 512

    @property
    def n_styles(self) -> int:
        return 2 * int(math.log2(self.stylegan_size)) - 2

    def to_dict(self) -> dict:
        return asdict(self)


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> bottleneck -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """Improved residual unit (BN-conv-PReLU-conv-BN) with squeeze-and-excitation."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            # A 1x1 max-pool with stride is plain subsampling: identity shortcut at lower size.
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcite(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """Stride-2 3x3 convolutions down to 1x1, then an equalized linear layer -> one w.

    ``storage``, per convolution, (weight, bias) tensors of the right shapes: the parameters
    are views of them, initialised in place (``Encoder4Editing`` stacks the blocks that read
    the same features)."""

    def __init__(
        self, channels: int, spatial: int, storage: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(int(math.log2(spatial))):
            conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, device="meta")
            conv.weight, conv.bias = (nn.Parameter(t) for t in storage[k])
            conv.reset_parameters()  # nn.Conv2d's random initialisation, in the given storage
            layers += [conv, nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels, lr_mul=1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dtype``: what the convolutions compute in (default: their weights' dtype, which
        may be bf16, ``Encoder4Editing.prepare_heads``); weights stored narrower are widened
        one convolution at a time."""
        x = x.to(dtype or self.convs[0].weight.dtype)
        for conv, act in zip(self.convs[::2], self.convs[1::2]):
            x = act(F.conv2d(x, conv.weight.to(x.dtype), conv.bias.to(x.dtype), 2, 1))
        return self.linear(x.reshape(-1, self.channels).to(self.linear.weight.dtype))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Feature-pyramid merge: bilinear (align_corners=True) upsampling of x to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units: list[nn.Module] = []
        for in_channels, depth, count in IR50_STAGES:
            units.append(BottleneckIRSE(in_channels, depth, 2))
            units += [BottleneckIRSE(depth, depth, 1) for _ in range(count - 1)]
        self.body = nn.Sequential(*units)
        # Indices of the units whose outputs feed the pyramid: end of stages 2, 3 and 4.
        ends = torch.cumsum(torch.tensor([c for _, _, c in IR50_STAGES]), 0).tolist()
        self._fine_at, self._middle_at, self._coarse_at = ends[1] - 1, ends[2] - 1, ends[3] - 1

        # The style blocks' convolutions (231 M of the encoder's 267 M weights at 1024) are
        # stored stacked per group of blocks that read the same features, channels-last: the
        # whole group's first convolutions run as one and the later ones as one grouped
        # convolution (``_stacked_block_outputs``). Each block's parameters are views of the
        # stacked tensors, so nothing is stored twice and loading a state dict fills them.
        dim = self.config.style_dim
        # (index of the features read, the blocks, per layer the stacked (weight, bias))
        self._stacked: list[tuple[int, range, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.styles = nn.ModuleList()
        for level, (group, spatial) in enumerate(zip(self._groups(), GROUP_SPATIAL)):
            if not group:  # encoders for small generators have no middle or fine rows
                continue
            layers = [
                (
                    torch.empty(len(group) * dim, dim, 3, 3, memory_format=torch.channels_last),
                    torch.empty(len(group) * dim),
                )
                for _ in range(int(math.log2(spatial)))
            ]
            self._stacked.append((level, group, layers))
            for k in range(len(group)):
                rows = slice(k * dim, (k + 1) * dim)
                storage = [(weight[rows], bias[rows]) for weight, bias in layers]
                self.styles.append(GradualStyleBlock(dim, spatial, storage))
        self._stacked_views = self._views()
        self.heads_dtype = torch.float32  # what the style blocks compute in (prepare_heads)
        self.latlayer1 = nn.Conv2d(256, dim, 1)
        self.latlayer2 = nn.Conv2d(128, dim, 1)
        # Channels-last, the layout oneDNN's CPU convolutions compute in: no reorder of the
        # activations around each convolution (docs/performance.md, "Reduced precision on
        # CPU"). Loading a state dict copies into these strides.
        for module in (self.input_layer, self.body, self.latlayer1, self.latlayer2):
            module.to(memory_format=torch.channels_last)

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    def _groups(self) -> list[range]:
        """The style blocks that read the same feature map: the coarse, middle and fine rows."""
        n = self.config.n_styles
        return [
            range(0, min(COARSE_END, n)),
            range(COARSE_END, min(MIDDLE_END, n)),
            range(MIDDLE_END, n),
        ]

    def _views(self) -> list[tuple[torch.Tensor, int]]:
        """(parameter, the address it must have to be a view of the stacked tensors)."""
        views = []
        for _, group, layers in self._stacked:
            for j, (weight, bias) in enumerate(layers):
                step = weight.shape[0] // len(group)
                for k, i in enumerate(group):
                    conv = self.styles[i].convs[2 * j]
                    views.append((conv.weight, weight[k * step :].data_ptr()))
                    views.append((conv.bias, bias[k * step :].data_ptr()))
        return views

    def prepare_heads(
        self, dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None
    ) -> Encoder4Editing:
        """Store the style blocks' convolutions stacked in ``dtype``, one layer at a time, so
        that no more than one layer is ever held twice. They compute in ``compute_dtype``
        (default: ``dtype``); a narrower ``dtype`` then only stores them, and each block's
        weights are widened as it runs (bf16 storage, float32 maths: half the memory of the
        encoder's 231 M head weights). The backbone stays float32: its 24 residual units each
        add their rounding, which in bf16 brings the codes too near the 2e-2 bound
        (docs/performance.md, "Reduced precision on CPU")."""
        self.heads_dtype = compute_dtype or dtype
        if self._views_intact() and self._stacked[0][2][0][0].dtype == dtype:
            return self  # already stacked in dtype
        for _, group, layers in self._stacked:
            for j in range(len(layers)):
                convs = [self.styles[i].convs[2 * j] for i in group]
                weight = torch.cat([c.weight.detach() for c in convs]).to(dtype)
                weight = weight.contiguous(memory_format=torch.channels_last)
                bias = torch.cat([c.bias.detach() for c in convs]).to(dtype)
                step = convs[0].weight.shape[0]
                for k, conv in enumerate(convs):
                    conv.weight.data = weight[k * step : (k + 1) * step]
                    conv.bias.data = bias[k * step : (k + 1) * step]
                layers[j] = (weight, bias)
        self._stacked_views = self._views()
        return self

    def _apply(self, fn, recurse: bool = True) -> Encoder4Editing:
        # ``.to()``, ``.cuda()``, ``.double()`` ... convert each parameter on its own: stack
        # them again where they now are, which also lets the old stacked tensors go.
        stored = self.styles[0].convs[0].weight.dtype if self._stacked else None
        super()._apply(fn, recurse)
        if self._stacked and not self._views_intact():
            now = self.styles[0].convs[0].weight.dtype
            # A new dtype (``.half()``, ``.to(dtype)``) is also what they compute in.
            self.prepare_heads(now, self.heads_dtype if now == stored else now)
        return self

    def _views_intact(self) -> bool:
        """The parameters are still views of the stacked tensors (``deepcopy`` or an
        assignment to ``.data`` make them their own)."""
        views = self._stacked_views
        return bool(views) and all(param.data_ptr() == ptr for param, ptr in views)

    def _stacked_ready(self) -> bool:
        """The stacked path is usable: the views are intact and no gradient is wanted
        (autograd needs the parameters themselves)."""
        if not self._views_intact():
            return False
        return not (torch.is_grad_enabled() and self._stacked_views[0][0].requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 256, 256] in [-1, 1] -> W+ offsets [B, n_styles, 512] (add latent_avg)."""
        # The backbone computes in float32 under a GPU's autocast too, as it is stored on a
        # CPU: its 24 residual units each add their rounding (docs/performance.md, "GPU").
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.input_layer[0].weight.dtype, memory_format=torch.channels_last)
            x = self.input_layer(x)
            fine = middle = coarse = None
            for i, unit in enumerate(self.body):
                x = unit(x)
                if i == self._fine_at:
                    fine = x  # 128 channels, 64x64
                elif i == self._middle_at:
                    middle = x  # 256 channels, 32x32
                elif i == self._coarse_at:
                    coarse = x  # 512 channels, 16x16
        middle_features = _upsample_add(coarse, self.latlayer1(middle))
        features = [coarse, middle_features, _upsample_add(middle_features, self.latlayer2(fine))]
        if self._stacked_ready():
            outs = [
                self._stacked_block_outputs(features[level], layers)
                for level, _, layers in self._stacked
            ]
            codes = torch.cat(outs, dim=1)  # [B, n_styles, 512]: the blocks' linear layers to go
            rows = [self.styles[i].linear(codes[:, i]) for i in range(self.n_styles)]
        else:
            heads = self.heads_dtype
            rows = [
                self.styles[i](features[k], heads) for k, g in enumerate(self._groups()) for i in g
            ]
        base = rows[0]
        return torch.stack([base] + [base + row for row in rows[1:]], dim=1)

    def _stacked_block_outputs(
        self, x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """A group's style blocks on their shared features x [B, C, s, s], before their
        linear layers: [B, blocks, C] in float32."""
        blocks = layers[0][0].shape[0] // x.shape[1]
        slope = self.styles[0].convs[1].negative_slope
        dtype = self.heads_dtype
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        weight, bias = layers[0]
        if weight.dtype == dtype:  # the blocks' first convolutions read the same x: one call
            x = F.conv2d(x, weight, bias, stride=2, padding=1)
        else:  # stored narrower: widened a block at a time, never the whole group at once
            parts = zip(weight.chunk(blocks), bias.chunk(blocks))
            x = torch.cat([F.conv2d(x, w.to(dtype), b.to(dtype), 2, 1) for w, b in parts], 1)
        x = F.leaky_relu(x, slope)
        # The later ones block by block, on views of the stacked weights: oneDNN's grouped
        # convolution took 2-12x the time of the same convolutions one by one at these sizes
        # (docs/performance.md, "The e4e style blocks").
        for weight, bias in layers[1:]:
            parts = zip(x.chunk(blocks, dim=1), weight.chunk(blocks), bias.chunk(blocks))
            x = torch.cat(
                [F.conv2d(xi, wi.to(dtype), bi.to(dtype), 2, 1) for xi, wi, bi in parts], 1
            )
            x = F.leaky_relu(x, slope)
        return x.reshape(x.shape[0], blocks, -1).to(self.styles[0].linear.weight.dtype)
