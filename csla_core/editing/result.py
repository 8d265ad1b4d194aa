"""The one result type of an edit, from the editor through the pipeline and the service to the
UI: CSLA edits, the optimisation fallback and text-to-image all return an ``EditResult``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

MAPPERS_METHOD = "CSLA mappers"
BASELINE_METHOD = "optimisation baseline (no trained mappers: slower)"


@dataclass
class StrengthSearch:
    """Outcome of an automatic strength search."""

    strength: float  # the chosen strength (signed)
    gain: float  # CLIP-similarity gain measured at that strength (sample 0)
    target_gain: float
    reached: bool  # |gain - target| <= tolerance * |target|
    renders: int  # renders used by the search
    max_strength: float
    tried: list[tuple[float, float]] = field(default_factory=list)  # (strength, gain) pairs

    def describe(self) -> str:
        if self.reached:
            return (
                f"auto strength {self.strength:+.3f}: CLIP gain {self.gain:+.4f} "
                f"(target {self.target_gain:+.4f}, {self.renders} renders)"
            )
        return (
            f"auto strength could not reach the CLIP gain {self.target_gain:+.4f} within "
            f"strength +-{self.max_strength:g}; using {self.strength:+.3f} "
            f"(gain {self.gain:+.4f})"
        )


@dataclass
class EditResult:
    """Edited (or generated) codes: ``n`` samples, best first when ranked."""

    wplus: torch.Tensor  # [n, n_latent, D] edited W+
    styles: list[torch.Tensor] | None  # S layers [n, C_i] when the edit is made in S, else None
    method: str = MAPPERS_METHOD
    strength: float = 1.0  # the strength used (the chosen one with strength="auto")
    target_prompt: str = ""
    source_prompt: str = ""
    diversity: float = 0.0
    seed: int = 0
    truncated: bool = False  # a prompt was cut at CLIP's context length (77 tokens)
    delta_w: torch.Tensor | None = None  # [n, n_latent, D]
    delta_s: torch.Tensor | None = None  # [n, sum C_i], None without an S branch
    directions: torch.Tensor | None = None  # [n, clip_dim] CLIP-space steps strength * delta_k
    clip_scores: torch.Tensor | None = None  # [n] CLIP cosine of each render to the target
    notices: list[str] = field(default_factory=list)  # things the user should be told
    strength_search: StrengthSearch | None = None  # how "auto" chose the strength
    # The optimisation fallback: CLIP similarity before each step, after the last, and time.
    clip_trace: list[float] = field(default_factory=list)
    final_similarity: float | None = None
    seconds: float | None = None

    def to_cpu(self, *, keep_styles: bool = True) -> EditResult:
        """A float32 CPU copy (what the pipeline hands to front ends and caches)."""

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().float().cpu()

        styles = [cpu(s) for s in self.styles] if keep_styles and self.styles else None
        return replace(
            self,
            wplus=cpu(self.wplus),
            styles=styles,
            delta_w=cpu(self.delta_w),
            delta_s=cpu(self.delta_s),
            directions=cpu(self.directions),
            clip_scores=cpu(self.clip_scores),
            notices=list(self.notices),
        )
