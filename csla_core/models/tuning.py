"""One face's pivotal tuning, kept as a change to the synthesis weights.

PTI (Roich et al. 2021, arXiv 2106.05744) tunes the generator until it reproduces one photo.
Here the tuned values are never written into the shared generator: a ``SynthesisDelta`` holds
what tuning added to some style blocks' convolution weights and biases, and a render applies it
(``Generator.synthesize(..., tuning=delta)``; ``TunedGenerator`` binds it for code that takes a
generator). So one face's tuning reaches that face's renders only, and costs only its delta.

While tuning, the deltas are float32 leaves that Adam updates; ``compact()`` stores them in
bfloat16 (half the bytes; its 8-bit mantissa rounds a change of a weight, not the weight, so the
error is about 0.4 % of the change).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .stylegan2 import Generator, block_bias

STORED_DTYPE = torch.bfloat16


@dataclass
class SynthesisDelta:
    """Additive changes to style blocks' weights and biases (``Generator.style_blocks()``
    indices); a ``stylegan2.SynthesisTuning``. Tensors on one device, any float dtype."""

    weights: dict[int, torch.Tensor] = field(default_factory=dict)  # [1, out, in, k, k]
    biases: dict[int, torch.Tensor] = field(default_factory=dict)  # the bias's own shape

    @classmethod
    def zeros(
        cls, generator: Generator, blocks: Iterable[int], device: torch.device | str = "cpu"
    ) -> SynthesisDelta:
        """Trainable float32 zeros for ``blocks`` (leaves with ``requires_grad``)."""
        every = generator.style_blocks()
        delta = cls()
        for i in blocks:
            block = every[i]
            # In the stored weight's layout (channels-last for the fast path): the tuned weight
            # and its gradient then keep it, and are never transposed.
            delta.weights[i] = torch.zeros_like(
                block.conv.weight, dtype=torch.float32, device=device
            )
            delta.biases[i] = torch.zeros(block_bias(block).shape, device=device)
        for t in delta.tensors():
            t.requires_grad_(True)
        return delta

    def weight_change(self, index: int) -> torch.Tensor | None:
        return self.weights.get(index)

    def bias_change(self, index: int) -> torch.Tensor | None:
        return self.biases.get(index)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.weights.values(), *self.biases.values()]

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def compact(self, dtype: torch.dtype = STORED_DTYPE) -> SynthesisDelta:
        """A detached copy on the CPU for keeping (in ``dtype``)."""
        return self.map(lambda t: t.detach().to("cpu", dtype))

    def scaled(self, factor: float) -> SynthesisDelta:
        """The same change ``factor`` times (0: the shared generator; 1: this one)."""
        return self.map(lambda t: (t.float() * factor).to(t.dtype))

    def to(self, device: torch.device | str) -> SynthesisDelta:
        return self.map(lambda t: t.to(device))

    def map(self, fn) -> SynthesisDelta:
        return SynthesisDelta(
            {i: fn(t) for i, t in self.weights.items()}, {i: fn(t) for i, t in self.biases.items()}
        )


def blocks_up_to(generator: Generator, resolution: int, lowest: int = 4) -> list[int]:
    """The style blocks whose output is at most ``resolution`` px (what a loss at that size can
    tune), and at least ``lowest`` px."""
    sizes = generator.style_block_resolutions()
    return [i for i, r in enumerate(sizes) if lowest <= r <= resolution]


class TunedGenerator(nn.Module):
    """``generator`` rendering with ``tuning`` applied: the same module and weights (nothing is
    copied), for code that takes a generator (the editor, the strength search, the optimisation
    fallback). Everything but rendering is the generator's own."""

    def __init__(self, generator: Generator, tuning: SynthesisDelta) -> None:
        super().__init__()
        self.generator = generator
        self.tuning = tuning

    def forward(self, wplus: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.generator(wplus, *args, tuning=self.tuning, **kwargs)

    def synthesize(self, styles: Sequence[torch.Tensor], *args, **kwargs) -> torch.Tensor:
        return self.generator.synthesize(styles, *args, tuning=self.tuning, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["generator"], name)
