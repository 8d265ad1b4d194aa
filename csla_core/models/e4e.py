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
    """Stride-2 3x3 convolutions down to 1x1, then an equalized linear layer -> one w."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels, lr_mul=1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The convolutions may be stored in bf16 (``Encoder4Editing.prepare_heads``).
        x = self.convs(x.to(self.convs[0].weight.dtype))
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

        dim = self.config.style_dim
        self.styles = nn.ModuleList()
        for i in range(self.config.n_styles):
            spatial = 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64
            self.styles.append(GradualStyleBlock(dim, spatial))
        self.latlayer1 = nn.Conv2d(256, dim, 1)
        self.latlayer2 = nn.Conv2d(128, dim, 1)

        # Set by ``prepare_heads``: per group of style blocks, the stacked convolution weights
        # and biases per layer, and the parameters that must still be views of them.
        self._stacked: list[tuple[range, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self._stacked_views: list[tuple[torch.Tensor, int]] = []

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    def _groups(self) -> list[range]:
        """The style blocks that read the same feature map: coarse, middle, fine rows."""
        return [
            range(0, COARSE_END),
            range(COARSE_END, MIDDLE_END),
            range(MIDDLE_END, self.n_styles),
        ]

    def prepare_heads(self, dtype: torch.dtype = torch.float32) -> Encoder4Editing:
        """Store the style blocks' convolutions (231 M of the encoder's 267 M weights) stacked
        per group, channels-last, in ``dtype``, for inference.

        The blocks of a group read the same features, so their first convolutions run as one
        (the weights concatenated) and the later ones as one grouped convolution: 0.82x the
        per-block time in float32. Each block's parameters become views of the stacked
        tensors, so nothing is stored twice and loading a state dict still updates them.
        The backbone stays float32: its 24 residual units each add their rounding (in bf16
        the codes were 1.9e-2 from float32's; with bf16 heads only, 5.1e-3; README, "Reduced
        precision on CPU").
        """
        self._stacked, self._stacked_views = [], []
        for group in self._groups():
            blocks = [self.styles[i] for i in group]
            layers = []
            for j in range(0, len(blocks[0].convs), 2):
                convs = [block.convs[j] for block in blocks]
                weight = torch.cat([c.weight.detach() for c in convs]).to(dtype)
                weight = weight.contiguous(memory_format=torch.channels_last)
                bias = torch.cat([c.bias.detach() for c in convs]).to(dtype)
                step = convs[0].weight.shape[0]
                for k, conv in enumerate(convs):
                    conv.weight.data = weight[k * step : (k + 1) * step]
                    conv.bias.data = bias[k * step : (k + 1) * step]
                    self._stacked_views += [(conv.weight, conv.weight.data_ptr())]
                layers.append((weight, bias))
            self._stacked.append((group, layers))
        return self

    def _stacked_ready(self) -> bool:
        """The stacked heads are usable: prepared, still the parameters' storage (``.to()``
        replaces it) and no gradient wanted (autograd needs the per-block parameters)."""
        if not self._stacked or (
            torch.is_grad_enabled() and self._stacked_views[0][0].requires_grad
        ):
            return False
        return all(param.data_ptr() == ptr for param, ptr in self._stacked_views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 256, 256] in [-1, 1] -> W+ offsets [B, n_styles, 512] (add latent_avg)."""
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
                self._stacked_block_outputs(f, layers)
                for f, (_, layers) in zip(features, self._stacked)
            ]
            codes = torch.cat(outs, dim=1)  # [B, n_styles, 512]: the blocks' linear layers to go
            rows = [self.styles[i].linear(codes[:, i]) for i in range(self.n_styles)]
        else:
            rows = [self.styles[i](features[k]) for k, g in enumerate(self._groups()) for i in g]
        base = rows[0]
        return torch.stack([base] + [base + row for row in rows[1:]], dim=1)

    def _stacked_block_outputs(
        self, x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """A group's style blocks on their shared features x [B, C, s, s], before their
        linear layers: [B, blocks, C] in float32."""
        blocks = layers[0][0].shape[0] // x.shape[1]
        slope = self.styles[0].convs[1].negative_slope
        x = x.to(layers[0][0].dtype).contiguous(memory_format=torch.channels_last)
        for j, (weight, bias) in enumerate(layers):
            groups = 1 if j == 0 else blocks
            x = F.leaky_relu(F.conv2d(x, weight, bias, stride=2, padding=1, groups=groups), slope)
        return x.reshape(x.shape[0], blocks, -1).to(self.styles[0].linear.weight.dtype)
