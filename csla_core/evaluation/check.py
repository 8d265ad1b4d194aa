"""A real-model self-check of the mappers: do "smiling" and "an old person" move the average
face along the published InterFaceGAN smile and age directions of FFHQ StyleGAN2's W?

Only meaningful with the real generator (the directions live in its W space) and real CLIP:
with random weights it runs and says that the figure means nothing there. Chance level for
two unrelated directions in 512 dimensions is |cosine| ~ 1/sqrt(512) = 0.044.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..pipeline import CSLAPipeline
from ..weights import read_reference_direction

# prompt -> reference direction (whose positive side the prompt asks for)
CHECKS = (("smiling", "smile"), ("an old person", "age"))
CHANCE_COSINE = 1 / 512**0.5


@dataclass(frozen=True)
class DirectionCheck:
    prompt: str
    direction: str
    cosine: float  # of the mean W change over the W+ rows with the reference direction


def check_mappers(pipe: CSLAPipeline, strength: float = 1.0) -> list[DirectionCheck]:
    """Edit the average face by each check's prompt and compare the W change with the
    reference direction (sample 0: the unperturbed edit direction)."""
    average = pipe.latent_avg[None].cpu()
    results = []
    for prompt, name in CHECKS:
        edit = pipe.edit(average, prompt, strength=strength, n_samples=1, diversity=0.0)
        change = (edit.wplus[0] - average[0]).mean(dim=0)
        reference = read_reference_direction(name)
        cosine = float(F.cosine_similarity(change, reference, dim=0))  # 0 for no change
        results.append(DirectionCheck(prompt, name, cosine))
    return results


def format_checks(checks: list[DirectionCheck], random_weights: bool) -> str:
    lines = [f'"{c.prompt}" vs InterFaceGAN {c.direction}: cosine {c.cosine:+.3f}' for c in checks]
    if random_weights:
        lines.append(
            "(random weights: these directions belong to the real FFHQ generator, so the figure "
            "means nothing here)"
        )
    else:
        lines.append(
            f"(chance level |cosine| ~ {CHANCE_COSINE:.3f}: mappers that found the real directions "
            "give positive values well above it)"
        )
    return "\n".join(lines)
