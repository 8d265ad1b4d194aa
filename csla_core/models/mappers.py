"""CSLA mappers: CLIP-space residuals -> StyleGAN W+ and S (StyleSpace) residuals. Modules only.

[paper] Mappers take CLIP embeddings to W and S. To avoid the "knowledge distribution bias"
(CLIP's and StyleGAN's average faces disagree) they map *residuals*: a CLIP residual (embedding
minus a CLIP-space manipulation centre) to a W residual (w - w_avg) and an S residual
(s - s(w_avg)). An adaptive style mixing module refines the S residual.

[ours] Everything concrete below (see docs/method.md):
- Centre strategies (``MapperConfig.centre``), all kept in ``ClipCentre`` buffers:
  ``"ema"`` (C4, default) an exponential moving average over training of the batch mean of the
  image embeddings; ``"temporal"`` (C3) training residuals are taken w.r.t. the previous step's
  samples (the trainer pairs them), the EMA mean serves as the centre at inference;
  ``"fixed_mean"`` (C0) the mean over many samples, set once; ``"wavg_image"`` (C1) the
  embedding of G(w_avg); ``"text"`` (C2) a text embedding such as "a face".
- CLIP residuals are divided by a running per-dimension std of the image embeddings before
  mapping (``ClipCentre.scale``). Without it a small random CLIP gives residuals too small to
  learn from (measured, see the method notes); with real CLIP it only rescales the input.
- Targets are standardised too: the networks predict residual / ``w_scale`` (resp. ``s_scale``),
  per-coordinate stds measured on samples before training, so W+ rows and S channels of very
  different magnitude weigh alike in the loss.
- Per level group (coarse W+ rows [0, 4), medium [4, 8), fine [8, n)), one MLP of ``depth``
  equalised linear layers (lr_mul 0.01 as peers, leaky ReLU between, none on the output). The
  input PixelNorm of peers is an option, off by default: it discards the residual's length,
  which carries both the distance from the centre and the edit strength.
- Adaptive style mixing (``MapperConfig.mixing``): ``"gates"`` (A2) per-channel gates
  g in [0, 1] computed from the two S estimates, the styles of the W-mapped latent
  (ds_w = s(w_avg + dw) - s(w_avg)) and the directly mapped S residual ds_direct:
  ds = g * ds_direct + (1 - g) * ds_w (hard 0/1 gates would be classic style mixing);
  ``"self_mod"`` (A1) ds_direct' = ds_direct * (1 + gamma) + beta, (gamma, beta) = MLP(ds_direct),
  zero-initialised so it starts as the identity; ``"both"`` (default) applies A1 then A2;
  ``"none"``. Their measured held-out errors are in docs/method.md ("Mixing modes").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, NamedTuple

import torch
from torch import nn

from .ops import EqualLinear, PixelNorm

CentreStrategy = Literal["ema", "temporal", "fixed_mean", "wavg_image", "text"]
MixingMode = Literal["none", "self_mod", "gates", "both"]
CENTRE_STRATEGIES: tuple[str, ...] = ("ema", "temporal", "fixed_mean", "wavg_image", "text")
MIXING_MODES: tuple[str, ...] = ("none", "self_mod", "gates", "both")
StylesFn = Callable[[torch.Tensor], torch.Tensor]  # W+ residual [B,n,D] -> flat S residual [B,C]


@dataclass
class MapperConfig:
    """Shapes and options of ``CSLAMappers``; saved with the weights as JSON
    (``csla_core.weights.save_mappers``)."""

    clip_dim: int
    style_dim: int
    n_latent: int
    style_dims: tuple[int, ...]  # channels of each S layer, execution order
    style_rows: tuple[int, ...]  # which W+ row feeds each S layer
    wplus: bool = True  # [ours] False: one w broadcast to all rows (the paper's "W" reading)
    group_bounds: tuple[int, ...] = (4, 8)  # [peers] W+ rows: coarse [0,4) medium [4,8) fine [8,n)
    hidden_dim: int = 512
    depth: int = 4  # [peers] 4 equalised linear layers per group
    lr_mul: float = 0.01  # [peers]
    input_pixelnorm: bool = False  # [ours] off: see module doc
    map_s: bool = True
    mixing: str = "both"  # one of MIXING_MODES; [ours] measured best on tiny models
    mixing_hidden: int = 256
    centre: str = "ema"  # one of CENTRE_STRATEGIES
    stats_momentum: float = 0.02  # [ours] EMA rate of the centre and the per-dim std
    std_floor: float = 1e-6
    meta: dict[str, str] = field(default_factory=dict)  # free text: CLIP model name, generator...

    def __post_init__(self) -> None:
        self.style_dims = tuple(int(c) for c in self.style_dims)
        self.style_rows = tuple(int(r) for r in self.style_rows)
        self.group_bounds = tuple(int(b) for b in self.group_bounds)
        if len(self.style_dims) != len(self.style_rows):
            raise ValueError("style_dims and style_rows must have the same length")
        if self.centre not in CENTRE_STRATEGIES:
            raise ValueError(f"centre must be one of {CENTRE_STRATEGIES}, got {self.centre!r}")
        if self.mixing not in MIXING_MODES:
            raise ValueError(f"mixing must be one of {MIXING_MODES}, got {self.mixing!r}")
        if self.depth < 1:
            raise ValueError("depth must be >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MapperConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def n_styles(self) -> int:
        return sum(self.style_dims)

    def row_groups(self) -> list[tuple[int, int]]:
        """Non-empty [start, end) W+ row ranges of the level groups."""
        edges = [0] + [b for b in self.group_bounds if 0 < b < self.n_latent] + [self.n_latent]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def style_rows_for(n_style_layers: int) -> tuple[int, ...]:
    """W+ row of each S layer in rosinality's generator: conv1/to_rgb1 read rows 0/1, then
    each resolution's (up-conv, conv, to_rgb) read rows (1+2i, 2+2i, 3+2i)."""
    rows = [0, 1]
    i = 0
    while len(rows) < n_style_layers:
        rows += [1 + 2 * i, 2 + 2 * i, 3 + 2 * i]
        i += 1
    return tuple(rows[:n_style_layers])


def mapper_config_for(generator: nn.Module, clip_dim: int, **options: object) -> MapperConfig:
    """A ``MapperConfig`` matching ``generator`` (a ``csla_core.models.stylegan2.Generator``)."""
    dims = tuple(generator.style_dims)
    meta = dict(options.pop("meta", {}) or {})  # type: ignore[call-overload]
    meta.setdefault("generator", json.dumps(generator.config.to_dict(), sort_keys=True))
    return MapperConfig(
        clip_dim=clip_dim,
        style_dim=generator.style_dim,
        n_latent=generator.n_latent,
        style_dims=dims,
        style_rows=style_rows_for(len(dims)),
        meta=meta,
        **options,  # type: ignore[arg-type]
    )


def flatten_styles(styles: Sequence[torch.Tensor]) -> torch.Tensor:
    """List of [B, C_i] -> [B, sum C_i]."""
    return torch.cat(list(styles), dim=1)


def split_styles(flat: torch.Tensor, style_dims: Sequence[int]) -> list[torch.Tensor]:
    """[B, sum C_i] -> list of [B, C_i] (the generator's ``synthesize`` input layout)."""
    return list(torch.split(flat, list(style_dims), dim=1))


def generator_styles_fn(generator: nn.Module, latent_avg: torch.Tensor) -> StylesFn:
    """W+ residual -> flat S residual through the generator's (affine) modulation layers."""
    with torch.no_grad():
        base = flatten_styles(generator.styles_from_wplus(generator.to_wplus(latent_avg[None])))

    def fn(dw: torch.Tensor) -> torch.Tensor:
        wplus = generator.to_wplus(latent_avg[None] + dw)
        return flatten_styles(generator.styles_from_wplus(wplus)) - base

    return fn


# ---------------------------------------------------------------------- CLIP-space centre
class ClipCentre(nn.Module):
    """Manipulation centre and per-dimension scale of CLIP image embeddings (buffers)."""

    def __init__(
        self, dim: int, strategy: str = "ema", momentum: float = 0.02, floor: float = 1e-6
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.momentum = momentum
        self.floor = floor
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def scale(self) -> torch.Tensor:
        return self.running_var.clamp_min(0).sqrt().clamp_min(self.floor)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Fold a batch of image embeddings [B, D] into the running mean/var (EMA)."""
        f = features.detach().float()
        mean = f.mean(dim=0)
        var = f.var(dim=0, unbiased=False) if f.shape[0] > 1 else torch.zeros_like(mean)
        if int(self.num_updates) == 0:
            # First batch initialises, so early steps are not pulled towards zero/one.
            self.running_mean.copy_(mean)
            if f.shape[0] > 1:
                self.running_var.copy_(var)
        else:
            m = self.momentum
            # Track the variance around the moving mean, including the mean's own drift.
            delta = mean - self.running_mean
            self.running_mean.add_(m * delta)
            self.running_var.mul_(1 - m).add_(m * (var + (1 - m) * delta.pow(2)))
        self.num_updates += 1
        if self.strategy in ("ema", "temporal"):
            self.centre.copy_(self.running_mean)

    @torch.no_grad()
    def set_centre(self, centre: torch.Tensor) -> None:
        """Fix the centre (strategies fixed_mean / wavg_image / text)."""
        self.centre.copy_(centre.detach().float().reshape(-1))

    def standardise(
        self, features: torch.Tensor, centre: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(f - c) / scale; ``centre`` overrides the stored one (e.g. previous samples)."""
        c = self.centre if centre is None else centre
        return (features.float() - c) / self.scale

    def standardise_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """A CLIP-space difference in standardised units (no centre involved)."""
        return delta.float() / self.scale


# ---------------------------------------------------------------------- networks
class GroupMLP(nn.Module):
    """[optional PixelNorm] + ``depth`` equalised linear layers; no activation on the output."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        depth: int,
        lr_mul: float,
        pixelnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()] if pixelnorm else []
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        for i in range(depth):
            last = i == depth - 1
            layers.append(EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, activation=not last))
        self.net = nn.Sequential(*layers)

    @property
    def last(self) -> EqualLinear:
        return self.net[-1]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WPlusMapper(nn.Module):
    """Standardised CLIP residual [B, clip_dim] -> W+ residual [B, n_latent, style_dim]."""

    def __init__(self, cfg: MapperConfig) -> None:
        super().__init__()
        self.cfg = cfg
        groups = cfg.row_groups() if cfg.wplus else [(0, 1)]
        self.groups = groups
        self.nets = nn.ModuleList(
            GroupMLP(
                cfg.clip_dim,
                cfg.hidden_dim,
                (b - a) * cfg.style_dim,
                cfg.depth,
                cfg.lr_mul,
                cfg.input_pixelnorm,
            )
            for a, b in groups
        )
        self.register_buffer("w_scale", torch.ones(cfg.n_latent, cfg.style_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the residual in standardised units (multiply by ``w_scale`` for W+ units)."""
        out = torch.cat([net(x) for net in self.nets], dim=1).view(
            x.shape[0], -1, self.cfg.style_dim
        )
        if not self.cfg.wplus:
            out = out.expand(-1, self.cfg.n_latent, -1)
        return out


class StyleMapper(nn.Module):
    """Standardised CLIP residual -> flat S residual [B, sum C_i], one MLP per level group."""

    def __init__(self, cfg: MapperConfig) -> None:
        super().__init__()
        sizes: list[int] = []
        for a, b in cfg.row_groups():
            sizes.append(sum(c for c, r in zip(cfg.style_dims, cfg.style_rows) if a <= r < b))
        # Rows increase along execution order, so each group's S channels are contiguous.
        self.sizes = [s for s in sizes if s > 0]
        self.nets = nn.ModuleList(
            GroupMLP(cfg.clip_dim, cfg.hidden_dim, s, cfg.depth, cfg.lr_mul, cfg.input_pixelnorm)
            for s in self.sizes
        )
        self.register_buffer("s_scale", torch.ones(cfg.n_styles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(x) for net in self.nets], dim=1)


class AdaptiveStyleMixing(nn.Module):
    """A1 self-modulation and/or A2 per-channel gates (see module doc). Standardised units."""

    def __init__(self, cfg: MapperConfig) -> None:
        super().__init__()
        self.mode = cfg.mixing
        n = cfg.n_styles
        self.self_mod: GroupMLP | None = None
        self.gates: GroupMLP | None = None
        if self.mode in ("self_mod", "both"):
            self.self_mod = GroupMLP(n, cfg.mixing_hidden, 2 * n, 2, cfg.lr_mul)
            self.self_mod.last.weight.data.zero_()  # starts as the identity
        if self.mode in ("gates", "both"):
            self.gates = GroupMLP(2 * n, cfg.mixing_hidden, n, 2, cfg.lr_mul)
            self.gates.last.weight.data.zero_()  # starts at g = 0.5, the average of both

    def modulate(self, ds_direct: torch.Tensor) -> torch.Tensor:
        if self.self_mod is None:
            return ds_direct
        gamma, beta = self.self_mod(ds_direct).chunk(2, dim=1)
        return ds_direct * (1 + gamma) + beta

    def gate(self, ds_direct: torch.Tensor, ds_w: torch.Tensor) -> torch.Tensor:
        """Gates in [0, 1], [B, sum C_i]."""
        if self.gates is None:
            return torch.ones_like(ds_direct)
        return torch.sigmoid(self.gates(torch.cat([ds_direct, ds_w], dim=1)))


class MapperOutput(NamedTuple):
    """Raw network outputs in standardised units (divide-by-scale space)."""

    dw: torch.Tensor  # [B, n_latent, D]
    ds_direct: torch.Tensor | None  # [B, C], direct S mapper (+ A1 self-modulation)
    ds: torch.Tensor | None  # [B, C], after A2 gating (= ds_direct without it)
    gates: torch.Tensor | None  # [B, C] in [0, 1], A2 only


class MappedResiduals(NamedTuple):
    """Mapper outputs in latent units: W+ residual [B, n_latent, D], flat S residual [B, C]."""

    dw: torch.Tensor
    ds: torch.Tensor | None


class CSLAMappers(nn.Module):
    """The CLIP->W+ and CLIP->S mappers, the CLIP-space centre and adaptive style mixing."""

    def __init__(self, config: MapperConfig) -> None:
        super().__init__()
        self.config = config
        self.centre = ClipCentre(
            config.clip_dim, config.centre, config.stats_momentum, config.std_floor
        )
        self.w_mapper = WPlusMapper(config)
        self.s_mapper = StyleMapper(config) if config.map_s else None
        self.mixing = (
            AdaptiveStyleMixing(config) if config.map_s and config.mixing != "none" else None
        )
        # The W+ average the residuals were trained against (set by the trainer); editors should
        # use the same one, or the residuals describe a slightly different centre.
        self.register_buffer("latent_avg", torch.zeros(config.n_latent, config.style_dim))

    # -- core: the trainer runs this through DDP, so every parameter is used here --
    def forward(self, x: torch.Tensor, styles_fn: StylesFn | None = None) -> MapperOutput:
        """Standardised CLIP residual [B, clip_dim] -> ``MapperOutput`` in standardised units.

        ``styles_fn`` (see ``generator_styles_fn``) turns the W+ residual into S for A2
        gating; the W+ residual is detached there, so the S losses do not bend the W mapper.
        Without it the S residual is the direct mapper's alone (no A2 gating).
        """
        dw = self.w_mapper(x)
        if self.s_mapper is None:
            return MapperOutput(dw, None, None, None)
        ds_direct = self.s_mapper(x)
        if self.mixing is not None:
            ds_direct = self.mixing.modulate(ds_direct)
        if styles_fn is None or self.mixing is None or self.mixing.gates is None:
            return MapperOutput(dw, ds_direct, ds_direct, None)
        ds_w = styles_fn((dw * self.w_scale).detach()) / self.s_scale
        g = self.mixing.gate(ds_direct, ds_w)
        return MapperOutput(dw, ds_direct, g * ds_direct + (1 - g) * ds_w, g)

    @property
    def w_scale(self) -> torch.Tensor:
        return self.w_mapper.w_scale

    @property
    def s_scale(self) -> torch.Tensor:
        if self.s_mapper is None:
            raise AttributeError("this mapper has no S branch (map_s=False)")
        return self.s_mapper.s_scale

    def map_standardised(
        self, x: torch.Tensor, styles_fn: StylesFn | None = None
    ) -> MappedResiduals:
        """Standardised CLIP residual(s) [B, clip_dim] or [clip_dim] -> latent-unit residuals."""
        if x.ndim == 1:
            x = x[None]
        out = self.forward(x, styles_fn)
        dw = out.dw * self.w_scale
        return MappedResiduals(dw, None if out.ds is None else out.ds * self.s_scale)

    def map_embedding(
        self, features: torch.Tensor, styles_fn: StylesFn | None = None
    ) -> MappedResiduals:
        """CLIP embedding(s) [B, D] -> residuals w.r.t. the stored centre (inversion, t2i)."""
        return self.map_standardised(self.centre.standardise(features), styles_fn)
