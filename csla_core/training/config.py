"""Every option of the data-free training (``TrainConfig``), with its presets and JSON form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ..errors import CSLAError
from ..models.mappers import CENTRE_STRATEGIES, MIXING_MODES


@dataclass
class TrainConfig:
    """Every option of the data-free training. Defaults are for real models on a GPU."""

    steps: int = 20_000
    batch_size: int = 16
    lr: float = 0.1  # [ours] Adam; x lr_mul 0.01 of the equalised layers = 1e-3 effective
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    # sampling
    truncation: float = 1.0  # psi towards w_avg for sampled w (1 = none)
    mix_prob: float = 0.0  # [ours] probability of a two-code style-mixed W+ sample
    max_resolution: int | None = 256  # render size fed to CLIP (None = full size)
    noise_mode: str = "const"
    latent_avg_samples: int = 4096  # z samples for w_avg (the W / S residual centre)
    scale_samples: int = 4096  # z samples for the per-coordinate target stds (no rendering)
    fixed_mean_samples: int = 1024  # rendered samples for the C0 "fixed_mean" centre
    pool_size: int = 0  # [ours] replay pool of rendered samples; 0 = fresh samples every step
    pool_refresh: int = 0  # fresh samples replacing the oldest pool entries per step
    # mapper architecture (see MapperConfig)
    centre: str = "ema"
    mixing: str = "both"
    wplus: bool = True
    map_s: bool = True
    hidden_dim: int = 512
    depth: int = 4
    lr_mul: float = 0.01
    input_pixelnorm: bool = False
    mixing_hidden: int = 256
    stats_momentum: float = 0.02
    # loss weights
    w_l2: float = 1.0
    w_cos: float = 1.0
    s_l2: float = 1.0
    s_cos: float = 1.0
    s_direct: float = 0.5
    relative: float = 1.0
    similarity: float = 0.1
    clip_consistency: float = 0.0
    clip_consistency_batch: int = 4
    gate_sparsity: float = 0.0
    # bookkeeping
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 3
    eval_samples: int = 512  # held-out samples for the final error ratio (0 = skip)
    eval_seed: int = 987_654_321
    # [ours] Start from these mappers (e.g. calibrated ones: `train` calibrates first by default);
    # the trained result replaces them only if it is better on the held-out samples.
    init_mappers: str = ""
    mixed_precision: str = "no"
    cpu: bool = False  # force CPU even when a GPU is visible
    clip_model_name: str = "unknown"

    @classmethod
    def tiny(cls, **overrides: object) -> TrainConfig:
        """[ours] CPU preset for the tiny random models (what the tests use)."""
        base: dict[str, object] = dict(
            steps=300,
            batch_size=64,
            lr=1.0,
            max_resolution=8,
            truncation=0.7,
            latent_avg_samples=2048,
            scale_samples=2048,
            fixed_mean_samples=256,
            pool_size=512,
            pool_refresh=0,
            hidden_dim=128,
            depth=3,
            mixing_hidden=32,
            save_every=200,
            eval_samples=256,
            cpu=True,
            clip_model_name="tiny-random",
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def to_json(self) -> str:
        """The config as sorted JSON (stored in checkpoints to compare runs)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """A config from ``to_json`` text; unknown keys are ignored."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if self.centre not in CENTRE_STRATEGIES:
            raise CSLAError(f"centre must be one of {CENTRE_STRATEGIES}, got {self.centre!r}")
        if self.mixing not in MIXING_MODES:
            raise CSLAError(f"mixing must be one of {MIXING_MODES}, got {self.mixing!r}")
        if self.batch_size < 2:
            raise CSLAError("batch_size must be >= 2 (the relative terms need pairs)")
