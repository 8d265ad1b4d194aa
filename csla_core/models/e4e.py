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
        return self.linear(self.convs(x).reshape(-1, self.channels))


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

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

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
        base = self.styles[0](coarse)
        rows = [base]
        features = coarse
        for i in range(1, self.n_styles):
            if i == COARSE_END:
                features = _upsample_add(coarse, self.latlayer1(middle))
            elif i == MIDDLE_END:
                features = _upsample_add(features, self.latlayer2(fine))
            rows.append(base + self.styles[i](features))
        return torch.stack(rows, dim=1)
