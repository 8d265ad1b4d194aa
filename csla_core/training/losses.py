"""The training loss: every term and weight is a ``TrainConfig`` option.

[paper] The mappers learn to bring the CLIP residual back to the latent residual that made the
image, with "temporal relative consistency".

[ours] Terms, in standardised target units (residual / per-coordinate std):
   ``w_l2``/``w_cos``   regression of the W+ residual (L2 + cosine, DeltaEdit's 1/1);
   ``s_l2``/``s_cos``   the same for the S residual after adaptive style mixing;
   ``s_direct``         L2 on the direct S branch before mixing (keeps both estimates useful);
   ``relative``         relative consistency: M((f_i - f_j)/std) should give w_i - w_j (and
                        s_i - s_j) for pairs within the batch, so the mapping is additive and
                        edit directions do not depend on the centre;
   ``similarity``       the pairwise cosine structure of predicted W+ residuals matches the
                        targets';
   ``clip_consistency`` render the predicted latent and match its CLIP embedding (costly:
                        a differentiable render + CLIP pass; off by default);
   ``gate_sparsity``    mean A2 gate (prefer the W-derived styles); off by default.
With ``centre="temporal"`` (C3) the regression residuals are taken against the previous step's
samples instead of the centre (f_t - f_{t-1} -> w_t - w_{t-1}).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..models.clip import ClipEmbedder
from ..models.mappers import CSLAMappers, MapperOutput
from ..models.stylegan2 import Generator
from .config import TrainConfig
from .sampling import Samples


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of flattened rows, averaged."""
    return (1 - F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1, eps=1e-8)).mean()


def pairwise_cos(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, B] cosine similarities of the flattened rows (the ``similarity`` term)."""
    x = F.normalize(x.flatten(1), dim=1, eps=1e-8)
    return x @ x.T


def regression_terms(
    out: MapperOutput, dw_t: torch.Tensor, ds_t: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The regression terms (``w_l2``, ``w_cos``, and with an S branch ``s_l2``, ``s_cos``,
    ``s_direct``) of mapper outputs against standardised targets, unweighted."""
    terms = {"w_l2": F.mse_loss(out.dw, dw_t), "w_cos": cosine_loss(out.dw, dw_t)}
    if out.ds is not None and ds_t is not None:
        terms["s_l2"] = F.mse_loss(out.ds, ds_t)
        terms["s_cos"] = cosine_loss(out.ds, ds_t)
        if out.ds_direct is not None and out.gates is not None:
            terms["s_direct"] = F.mse_loss(out.ds_direct, ds_t)
    return terms


def weighted_sum(
    terms: dict[str, torch.Tensor], cfg: TrainConfig, scale: float = 1.0
) -> torch.Tensor:
    """Sum of the terms, each times its ``TrainConfig`` weight (the option of the same name)."""
    return sum(scale * getattr(cfg, k) * v for k, v in terms.items())  # type: ignore[return-value]


def step_loss(
    model: torch.nn.Module,
    core: CSLAMappers,
    generator: Generator,
    clip: ClipEmbedder,
    batch: Samples,
    prev: Samples | None,
    latent_avg: torch.Tensor,
    styles_fn: Callable[[torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step's total loss and its terms (detached, for logging). ``model`` is the mappers
    as prepared for the device(s), ``core`` the same mappers unwrapped (centre and scales)."""
    w_scale = core.w_scale
    s_scale = core.s_scale if core.s_mapper is not None else None

    def targets(dw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ds = styles_fn(dw) / s_scale if s_scale is not None else None
        return dw / w_scale, ds

    # Main regression: against the centre, or against the previous samples (C3 temporal).
    use_prev = cfg.centre == "temporal" and prev is not None and len(prev.wplus) == len(batch.wplus)
    if use_prev:
        x = core.centre.standardise(batch.features, centre=prev.features)  # type: ignore[union-attr]
        dw_abs = batch.wplus - prev.wplus  # type: ignore[union-attr]
        base_w = prev.wplus  # type: ignore[union-attr]
    else:
        x = core.centre.standardise(batch.features)
        dw_abs = batch.wplus - latent_avg[None]
        base_w = latent_avg[None].expand_as(batch.wplus)
    dw_t, ds_t = targets(dw_abs)
    out: MapperOutput = model(x, styles_fn)
    terms = regression_terms(out, dw_t, ds_t)
    loss = weighted_sum(terms, cfg)

    if cfg.relative > 0:
        # Relative consistency: pair each sample with its neighbour in the batch.
        j = torch.roll(torch.arange(len(x), device=x.device), 1)
        x_rel = core.centre.standardise_delta(batch.features - batch.features[j])
        rel_t = targets(batch.wplus - batch.wplus[j])
        rel = regression_terms(model(x_rel, styles_fn), *rel_t)
        terms["relative"] = weighted_sum(rel, cfg)
        loss = loss + cfg.relative * terms["relative"]
    if cfg.similarity > 0:
        terms["similarity"] = F.mse_loss(pairwise_cos(out.dw), pairwise_cos(dw_t))
        loss = loss + cfg.similarity * terms["similarity"]
    if cfg.gate_sparsity > 0 and out.gates is not None:
        terms["gate_sparsity"] = out.gates.mean()
        loss = loss + cfg.gate_sparsity * terms["gate_sparsity"]
    if cfg.clip_consistency > 0:
        k = min(cfg.clip_consistency_batch, len(x))
        w_pred = base_w[:k] + out.dw[:k] * w_scale
        img = generator(w_pred, noise_mode=cfg.noise_mode, max_resolution=cfg.max_resolution)  # type: ignore[arg-type]
        f_pred = clip.encode_images(img)
        terms["clip_consistency"] = cosine_loss(f_pred, batch.features[:k])
        loss = loss + cfg.clip_consistency * terms["clip_consistency"]
    return loss, {k: v.detach() for k, v in terms.items()}
