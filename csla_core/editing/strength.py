"""Automatic edit strength: the strength at which an edit reaches a target CLIP-similarity gain.

[ours] (the method notes' "calibrate strength so that a target CLIP similarity change is
reached, offered as an 'auto' option"):
- gain(s) = cos(CLIP(render(edit at strength s)), t) - cos(CLIP(render(input)), t), t the
  target prompt's embedding; renders at the editor's low ``render_resolution`` (256 px for the
  real models), from StyleSpace, as the pipeline shows edits.
- One strength for the edit as a whole, found on the unperturbed text direction (sample 0,
  diversity 0); the other samples use the same strength, so their gains scatter around the
  target, and sample k stays the same direction as with a hand-set strength.
- Search over [0, ``max_strength``] (the app slider's range; a negative target searches
  [-max_strength, 0]): the strength is doubled from ``first`` until the gain passes the target,
  then the bracket is narrowed by regula falsi (Illinois variant). Stops when
  |gain - target| <= ``tolerance`` x |target| or after ``max_renders`` renders (default 8, one
  render + one CLIP pass each). Returns the best strength tried; ``reached`` says whether it
  is within tolerance (when the gain never reaches the target in range, that is the range
  limit or the best point before it, and front ends say so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..errors import finite
from .result import StrengthSearch

if TYPE_CHECKING:
    from .editor import TextEditor

AUTO = "auto"
# [ours] A clearly visible edit in StyleCLIP-style editors raises CLIP's image-text cosine by a
# few hundredths (ViT-B/32 cosines of faces to prompts are ~0.2-0.3). Not calibrated on the real
# models here (no machine of ours has them): an option, not a measured optimum.
DEFAULT_TARGET_CLIP_GAIN = 0.04
DEFAULT_MAX_STRENGTH = 3.0
DEFAULT_TOLERANCE = 0.05  # relative to the target gain
DEFAULT_MAX_RENDERS = 8


def search_strength(
    gain_at: Callable[[float], float],
    target_gain: float,
    *,
    max_strength: float = DEFAULT_MAX_STRENGTH,
    first: float = 1.0,
    tolerance: float = DEFAULT_TOLERANCE,
    max_renders: int = DEFAULT_MAX_RENDERS,
) -> StrengthSearch:
    """Find s in sign(target) * [0, max_strength] with gain_at(s) ~ target (see module doc).

    ``gain_at(0)`` is taken to be 0 (strength 0 is exactly the input) and never evaluated.
    """
    if max_strength <= 0 or max_renders < 1:
        raise ValueError("max_strength must be > 0 and max_renders >= 1")
    sign = 1.0 if target_gain >= 0 else -1.0
    goal = abs(float(target_gain))
    tried: list[tuple[float, float]] = []

    def result(strength: float, gain: float) -> StrengthSearch:
        reached = abs(gain - target_gain) <= tolerance * goal
        return StrengthSearch(
            strength, gain, float(target_gain), reached, len(tried), float(max_strength), tried
        )

    if goal == 0:
        return result(0.0, 0.0)

    def g(s: float) -> float:  # the gain in the search's own direction
        gain = float(gain_at(sign * s))
        tried.append((sign * s, gain))
        return sign * gain

    def close(value: float) -> bool:
        return abs(value - goal) <= tolerance * goal

    def best() -> StrengthSearch:
        s, gain = min(tried, key=lambda sg: abs(sg[1] - target_gain))
        return result(s, gain)

    lo, g_lo = 0.0, 0.0
    hi = min(abs(first), max_strength)
    # Bracket: double until the gain passes the target or the range ends.
    while True:
        g_hi = g(hi)
        if close(g_hi):
            return result(sign * hi, sign * g_hi)
        if g_hi > goal:
            break
        if hi >= max_strength or len(tried) >= max_renders:
            return best()
        lo, g_lo = hi, g_hi
        hi = min(2 * hi, max_strength)
    # Narrow: regula falsi with the Illinois rule (halve the stale end's residual when the same
    # end survives twice), so one-sided convergence on curved gains cannot stall.
    f_lo, f_hi, kept = g_lo - goal, g_hi - goal, 0
    while len(tried) < max_renders:
        s = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        f_s = g(s) - goal
        if close(f_s + goal):
            return result(sign * s, sign * (f_s + goal))
        if f_s > 0:
            hi, f_hi = s, f_s
            f_lo = f_lo / 2 if kept == -1 else f_lo
            kept = -1  # lo survived
        else:
            lo, f_lo = s, f_s
            f_hi = f_hi / 2 if kept == 1 else f_hi
            kept = 1  # hi survived
    return best()


@torch.no_grad()
def calibrate_strength(
    editor: TextEditor,
    wplus: torch.Tensor,
    target_embedding: torch.Tensor,
    source_embedding: torch.Tensor,
    *,
    target_gain: float = DEFAULT_TARGET_CLIP_GAIN,
    image_embedding: torch.Tensor | None = None,
    max_strength: float = DEFAULT_MAX_STRENGTH,
    tolerance: float = DEFAULT_TOLERANCE,
    max_renders: int = DEFAULT_MAX_RENDERS,
) -> StrengthSearch:
    """The strength at which ``editor``'s edit of ``wplus`` [1, n_latent, D] raises the CLIP
    similarity to ``target_embedding`` by ``target_gain`` (see module doc)."""
    device = editor.device
    wplus = editor.generator.to_wplus(wplus.to(device).float())
    target = torch.nn.functional.normalize(target_embedding.to(device).float().reshape(-1), dim=0)
    f_img = image_embedding if image_embedding is not None else editor.image_embedding(wplus)
    f_img = f_img.to(device).float().reshape(-1)
    base = float(f_img @ target)

    def gain_at(strength: float) -> float:
        res = editor.edit_with_embeddings(
            wplus,
            target,
            source_embedding,
            strength=strength,
            n_samples=1,
            diversity=0.0,
            rank=False,
            image_embedding=f_img,
        )
        image = editor.generator.synthesize(res.styles, editor.noise_mode, editor.render_resolution)
        return float(editor.clip.encode_images(image)[0] @ target) - base

    return search_strength(
        gain_at,
        target_gain,
        max_strength=max_strength,
        tolerance=tolerance,
        max_renders=max_renders,
    )


def calibrate_prompt_strength(
    editor: TextEditor,
    wplus: torch.Tensor,
    target_prompt: str,
    source_prompt: str | None = None,
    **options: object,
) -> StrengthSearch:
    """``calibrate_strength`` for a text edit (source defaults to the neutral prompt)."""
    clip = editor.clip
    target = clip.encode_text([target_prompt])[0]
    source = clip.encode_text([source_prompt or clip.neutral_prompt])[0]
    return calibrate_strength(editor, wplus, target, source, **options)  # type: ignore[arg-type]


def is_auto(value: object) -> bool:
    """Whether a strength as a user gave it asks for the automatic one: the one place "auto"
    is recognised (command line, API, UI; any case, spaces ignored)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def parse_strength(text: str) -> float | str:
    """Command-line strength: a finite number or ``auto`` (anything else: the
    InvalidSettingError every front end gives)."""
    if is_auto(text):
        return AUTO
    return finite(text, "strength")
