"""StyleCLIP-style latent optimisation: the comparison baseline and the no-mapper fallback.

SLOWER than CSLA by design: every edit runs ``steps`` iterations of render + CLIP + backward
(about 300 steps: minutes on CPU, tens of seconds on a GPU at 1024 px), where CSLA's mappers
need one forward pass.

[StyleCLIP, Patashnik et al. 2021] minimise  (1 - cos(CLIP_img(G(w)), CLIP_text(prompt)))
+ l2_weight * ||w - w_start||^2 over the W+ code with Adam, ~300 steps, lr 0.1, L2 weight 0.008,
and a learning-rate schedule with a short warm-up and a cosine ramp-down.
[ours] Images go through CLIP's own mean/std normalisation (``ClipEmbedder.encode_images``;
StyleCLIP skips it), renders are at ``max_resolution`` (CLIP looks at 224 px anyway), and the
prompt is template-averaged like everywhere else in the project.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..models.clip import ClipEmbedder
from ..models.stylegan2 import Generator
from .result import BASELINE_METHOD, EditResult


@dataclass
class OptimisationConfig:
    steps: int = 300  # [StyleCLIP]
    lr: float = 0.1  # [StyleCLIP]
    l2_weight: float = 0.008  # [StyleCLIP]
    lr_rampup: float = 0.05  # fraction of steps of linear warm-up [StyleCLIP]
    lr_rampdown: float = 0.25  # fraction of steps of cosine ramp-down [StyleCLIP]
    max_resolution: int | None = 256  # [ours] render size fed to CLIP
    noise_mode: str = "const"


def lr_schedule(t: float, rampup: float, rampdown: float) -> float:
    """Learning-rate multiplier at progress t in [0, 1]: linear warm-up, cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)


def optimise_latent(
    generator: Generator,
    clip: ClipEmbedder,
    wplus_start: torch.Tensor,
    target_prompt: str,
    config: OptimisationConfig | None = None,
    *,
    callback: Callable[[int, float], None] | None = None,
) -> EditResult:
    """Optimise a W+ code [1, n_latent, D] towards ``target_prompt`` (see module doc): the
    optimum as ``wplus``, with the CLIP similarity per step in ``clip_trace``."""
    cfg = config or OptimisationConfig()
    device = generator.input.input.device
    generator = generator.eval()
    # Freeze the generator for the duration (no gradients into its weights), then restore.
    flags = [(p, p.requires_grad) for p in generator.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        return _optimise(generator, clip, wplus_start, target_prompt, cfg, device, callback)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _optimise(
    generator: Generator,
    clip: ClipEmbedder,
    wplus_start: torch.Tensor,
    target_prompt: str,
    cfg: OptimisationConfig,
    device: torch.device,
    callback: Callable[[int, float], None] | None,
) -> EditResult:
    enc = clip.encode_text_with_info([target_prompt])
    text = enc.embeddings[0].to(device)
    w0 = generator.to_wplus(wplus_start.to(device).float()).detach().clone()
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=cfg.lr)
    trace: list[float] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_schedule(step / cfg.steps, cfg.lr_rampup, cfg.lr_rampdown)
        img = generator(w, noise_mode=cfg.noise_mode, max_resolution=cfg.max_resolution)  # type: ignore[arg-type]
        sim = (clip.encode_images(img) @ text).mean()
        loss = (1.0 - sim) + cfg.l2_weight * (w - w0).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trace.append(float(sim.detach()))
        if callback is not None:
            callback(step, float(sim))
    with torch.no_grad():
        img = generator(w, noise_mode=cfg.noise_mode, max_resolution=cfg.max_resolution)  # type: ignore[arg-type]
        final = float((clip.encode_images(img) @ text).mean())
    return EditResult(
        wplus=w.detach(),
        styles=None,
        method=BASELINE_METHOD,
        target_prompt=target_prompt,
        truncated=enc.any_truncated,
        clip_trace=trace,
        final_similarity=final,
        seconds=time.perf_counter() - start,
    )


class LatentOptimiser:
    """Fallback editor when no trained mappers exist. SLOW: one optimisation per edit.

    ``edit`` mirrors ``TextEditor.edit`` but yields one sample (the optimum); strength scales
    the optimised change w* - w (0: the input, negative: the opposite direction).
    """

    def __init__(
        self, generator: Generator, clip: ClipEmbedder, config: OptimisationConfig | None = None
    ) -> None:
        self.generator = generator
        self.clip = clip
        self.config = config or OptimisationConfig()

    def optimise(self, wplus: torch.Tensor, target_prompt: str) -> EditResult:
        """The optimum towards ``target_prompt`` (strength 1) with its change in ``delta_w``:
        the costly part, which ``scale`` reuses for every strength."""
        wplus = self.generator.to_wplus(wplus.float())
        res = optimise_latent(self.generator, self.clip, wplus, target_prompt, self.config)
        return replace(res, delta_w=res.wplus - wplus.to(res.wplus.device))

    def scale(
        self,
        optimum: EditResult,
        wplus: torch.Tensor,
        strength: float = 1.0,
        source_prompt: str | None = None,
        seed: int = 0,
    ) -> EditResult:
        """The edit at ``strength``: the input plus ``strength`` times the optimised change."""
        wplus = self.generator.to_wplus(wplus.float())
        dw = float(strength) * optimum.delta_w.to(wplus.device)
        edited = wplus + dw
        with torch.no_grad():
            styles = self.generator.styles_from_wplus(edited)
        return replace(
            optimum,
            wplus=edited,
            styles=styles,
            delta_w=dw,
            directions=torch.zeros(1, self.clip.embed_dim),
            strength=float(strength),
            source_prompt=source_prompt or self.clip.neutral_prompt,
            seed=int(seed),
        )

    def edit(
        self,
        wplus: torch.Tensor,
        target_prompt: str,
        source_prompt: str | None = None,
        strength: float = 1.0,
        seed: int = 0,
    ) -> EditResult:
        """Optimise towards ``target_prompt`` (``source_prompt`` only labels the result)."""
        return self.scale(self.optimise(wplus, target_prompt), wplus, strength, source_prompt, seed)
