"""Refine likeness: pivotal tuning of the generator to one face (PTI, Roich et al. 2021,
arXiv 2106.05744), kept as that face's ``SynthesisDelta``.

[paper] From the pivot (the face's inverted code, fixed), tune the generator so that its render
of the pivot matches the photo: Adam, lr 3e-4, loss = L2 + LPIPS(AlexNet), at most 350 steps,
stopping once LPIPS <= 0.06 (``danielroich/PTI`` ``configs/hyperparameters.py``); an optional
locality regulariser (off by default there) keeps renders away from the pivot unchanged.

[ours]
- What is tuned: the synthesis convolutions' weights and the biases of every style block whose
  output is at most ``resolution`` px (all of them at the generator's full size), from
  ``lowest`` px up (on a CPU 16: memory). The mapping network and the affine (W -> S) layers
  are not: every edit's W+ and S codes stay the shared model's, so an edit made for the untuned
  face applies unchanged to the tuned one. The tuning is held beside the shared generator,
  never written into it (``models.tuning``).
- Where: the loss compares the generator's RGB output at ``resolution`` px (the skip
  architecture's partial image; 256 px by default on a CPU, where a step at 1024 px would cost
  about 10x more) with the aligned crop resized to it, over the whole crop as PTI does.
- Without LPIPS (the ``lpips`` package's AlexNet comes from download.pytorch.org; offline it is
  not there) the perceptual term is 1 - MS-SSIM (Wang et al. 2003; torchmetrics), and the stop
  rule becomes L2 <= 0.015, where PTI ends on CelebA-HQ (HyperStyle's table, L2 at 256 px).
- A time budget (``seconds``) ends the tuning early on slow machines; every step checks
  ``cancelled()`` and calls ``between_steps()`` (the app waits there while it serves a request).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..imaging import resize_batch
from ..models.perceptual import load_lpips_network
from ..models.stylegan2 import Generator, Impl, auto_impl
from ..models.tuning import SynthesisDelta, blocks_up_to

# PTI's defaults (configs/hyperparameters.py; the regulariser's step is PTI's alpha over the
# norm of the whole W+ difference)
PTI_LEARNING_RATE = 3e-4
PTI_MAX_STEPS = 350
PTI_STOP_LPIPS = 0.06
PTI_LOCALITY_WEIGHT = 0.1  # regulariser_l2_lambda = regulariser_lpips_lambda = 0.1
PTI_LOCALITY_ALPHA = 30.0  # distance from the pivot of the regulariser's point, in W units
# Without LPIPS: where PTI's reconstructions end (CelebA-HQ, L2 at 256 px on [-1, 1]).
STOP_L2 = 0.015
DEFAULT_CPU_SECONDS = 60.0
DEFAULT_CPU_RESOLUTION = 256
# On a CPU the 4 and 8 px blocks (7.1 M of the 23.5 M weights a 256 px loss can tune: the layout,
# which the pivot fixes) are left as they are: their share of the tuning's memory (Adam's state,
# gradients, their working copies) kept the app's peak under its 3.5 GB (docs/likeness.md).
DEFAULT_CPU_LOWEST = 16

Progress = Callable[["RefineStep"], None]


@dataclass(frozen=True)
class RefineConfig:
    """How one face is tuned. ``steps``/``learning_rate``/``stop_*``: PTI's; ``seconds``: a
    time budget (None: steps only); ``resolution``: the loss's size (None: full size)."""

    steps: int = PTI_MAX_STEPS
    learning_rate: float = PTI_LEARNING_RATE
    seconds: float | None = DEFAULT_CPU_SECONDS
    resolution: int | None = DEFAULT_CPU_RESOLUTION
    l2_weight: float = 1.0
    perceptual_weight: float = 1.0
    stop_lpips: float = PTI_STOP_LPIPS
    stop_l2: float = STOP_L2
    locality: float = 0.0  # PTI's regulariser weight (0: off, PTI's default)
    seed: int = 0  # the regulariser's random points
    lowest: int = DEFAULT_CPU_LOWEST  # the smallest blocks tuned (px): 4 tunes them all

    @classmethod
    def for_device(cls, device: torch.device, **overrides) -> RefineConfig:
        """CPU: 256 px, 60 s, from the 16 px blocks; GPU: PTI, every block at full size, no
        time budget."""
        if device.type == "cpu":
            return cls(**overrides)
        return cls(**{"seconds": None, "resolution": None, "lowest": 4, **overrides})


@dataclass(frozen=True)
class RefineStep:
    """The tuning so far: after ``step`` steps and ``seconds`` of tuning."""

    step: int
    steps: int  # the most it will take
    seconds: float
    budget_s: float | None
    l2: float  # of the render before this step's update
    perceptual: float  # LPIPS, or 1 - MS-SSIM without it

    @property
    def fraction(self) -> float:
        by_steps = self.step / max(1, self.steps)
        by_time = self.seconds / self.budget_s if self.budget_s else 0.0
        return min(1.0, max(by_steps, by_time))


@dataclass
class Refinement:
    """One face's tuning and how it went."""

    delta: SynthesisDelta  # compact (bf16, CPU): what every render of this face applies
    resolution: int
    loss: str  # "L2 + LPIPS (alex)" or "L2 + (1 - MS-SSIM)"
    steps: int
    seconds: float
    stop: str  # "target reached", "steps", "time budget", "cancelled"
    l2_before: float
    l2_after: float
    perceptual_before: float
    perceptual_after: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (seconds, l2) per step

    def describe(self) -> str:
        return (
            f"{self.steps} steps in {self.seconds:.0f} s ({self.stop}); L2 at "
            f"{self.resolution} px {self.l2_before:.4f} -> {self.l2_after:.4f}"
        )


PerceptualLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # -> [B]


MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, 5 scales


def ms_ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM of images in [-1, 1] (per image [B]): 5 scales and an 11 px Gaussian window
    from 161 px up (the standard measure), fewer scales on smaller images (the first weights,
    renormalised; torchmetrics needs size // (scales - 1)^2 > window - 1)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    size = min(a.shape[-2:])
    scales, kernel = len(MS_SSIM_BETAS), 11
    while scales > 1 and size // (scales - 1) ** 2 <= kernel - 1:
        scales -= 1
    while kernel > 3 and size <= kernel - 1:
        kernel -= 2
    betas = MS_SSIM_BETAS[:scales]
    betas = tuple(beta / sum(betas) for beta in betas)
    scores = multiscale_structural_similarity_index_measure(
        a.float(),
        b.float(),
        data_range=2.0,
        kernel_size=kernel,
        betas=betas,
        reduction="none",
        normalize="relu",
    )
    return 1.0 - scores


def perceptual_loss(allow_download: bool = False) -> tuple[str, PerceptualLoss, bool]:
    """(name, loss, is_lpips): LPIPS-AlexNet when its backbone is here (or may be fetched),
    else 1 - MS-SSIM."""
    network = load_lpips_network("alex", allow_download=allow_download)
    if network is None:
        return "L2 + (1 - MS-SSIM)", ms_ssim_loss, False

    def lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return network.to(a.device)(a.float(), b.float()).flatten()

    return "L2 + LPIPS (alex)", lpips, True


def _adam(delta: SynthesisDelta, learning_rate: float) -> torch.optim.Adam:
    """PTI's Adam over ``delta``, fused (it updates in place: no step-sized temporaries), with
    its state and the gradients allocated before the first step. Made at once and kept, they
    lie below everything a step allocates and frees, so the heap does not fragment around them
    (measured: the peak of a CPU refinement about 0.5 GB lower)."""
    optimiser = torch.optim.Adam(delta.tensors(), lr=learning_rate, fused=True)
    for tensor in delta.tensors():
        tensor.grad = torch.zeros_like(tensor)
        state = optimiser.state[tensor]
        state["step"] = torch.zeros((), dtype=torch.float32, device=tensor.device)
        state["exp_avg"] = torch.zeros_like(tensor, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(tensor, memory_format=torch.preserve_format)
    return optimiser


# What backward keeps of the forward pass: large float32 tensors are kept in bfloat16 (half
# the bytes; a gradient computed from them is 0.4 % off at most, which Adam's normalised steps
# do not notice), the rest as they are.
PACKED_NUMEL = 1 << 18


def _pack(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if t.dtype == torch.float32 and t.numel() >= PACKED_NUMEL:
        return t.to(torch.bfloat16), True
    return t, False


def _unpack(packed: tuple[torch.Tensor, bool]) -> torch.Tensor:
    t, narrowed = packed
    return t.float() if narrowed else t


def _zero_loss(a: torch.Tensor, _b: torch.Tensor) -> torch.Tensor:
    return a.new_zeros(a.shape[0])


def refine_generator(
    generator: Generator,
    wplus: torch.Tensor,
    target: torch.Tensor,
    config: RefineConfig | None = None,
    *,
    perceptual: tuple[str, PerceptualLoss, bool] | None = None,
    latent_avg: torch.Tensor | None = None,
    autocast: Callable[[], object] | None = None,
    impl: Impl | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    between_steps: Callable[[], None] | None = None,
) -> Refinement:
    """Tune ``generator``'s synthesis to reproduce ``target`` [1, 3, H, W] in [-1, 1] (the
    aligned crop) from ``wplus`` [1, n_latent, D] (see module doc); the generator is not
    changed. ``perceptual``: ``perceptual_loss()``'s result (default: looked up, offline).
    ``latent_avg`` [n_latent, D]: the regulariser's truncation centre (needed when
    ``config.locality`` > 0). ``autocast()``: the context the renders run in; ``impl``: their
    synthesis path (None: the device's, ``auto_impl``)."""
    config = config or RefineConfig()
    device = generator.input.input.device
    resolution = min(config.resolution or generator.size, generator.size)
    name, perceptual_fn, is_lpips = perceptual or perceptual_loss()
    if config.perceptual_weight == 0:  # plain L2 (a comparison): no perceptual term at all
        name, perceptual_fn, is_lpips = "L2", _zero_loss, False
    wplus = generator.to_wplus(wplus.to(device).float()).detach()
    target = resize_batch(target.to(device).float(), resolution)
    with torch.no_grad():
        styles = [s.detach() for s in generator.styles_from_wplus(wplus)]
    blocks = blocks_up_to(generator, resolution, config.lowest)
    delta = SynthesisDelta.zeros(generator, blocks, device)
    optimiser = _adam(delta, config.learning_rate)
    context = autocast or contextlib.nullcontext
    regulariser = _locality(generator, wplus, latent_avg, config, resolution, device)
    impl = impl or auto_impl(device)

    def render(tuning: SynthesisDelta | None, codes=styles) -> torch.Tensor:
        # The path every render of the face takes on this device (on a CPU the fast one: its
        # forward and backward take 0.7x the batched path's, docs/likeness.md), so the tuning
        # fits the renders the user is shown, rounding included.
        with context(), torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            image = generator.synthesize(codes, "const", resolution, impl=impl, tuning=tuning)
        return image.float()

    curve: list[tuple[float, float]] = []
    first: tuple[float, float] | None = None
    stop, step, started = "steps", 0, time.perf_counter()
    elapsed = 0.0
    while step < config.steps:
        if cancelled is not None and cancelled():
            stop = "cancelled"
            break
        if config.seconds is not None and elapsed >= config.seconds:
            stop = "time budget"
            break
        image = render(delta)
        l2 = F.mse_loss(image, target)
        percept = perceptual_fn(image, target).mean()
        l2_value, percept_value = l2.item(), percept.item()
        if first is None:
            first = (l2_value, percept_value)
        if (is_lpips and percept_value <= config.stop_lpips) or (
            not is_lpips and l2_value <= config.stop_l2
        ):
            stop = "target reached"
            break
        loss = config.l2_weight * l2 + config.perceptual_weight * percept
        if regulariser is not None:
            loss = loss + regulariser(render, perceptual_fn, delta)
        optimiser.zero_grad(set_to_none=False)
        loss.backward()
        optimiser.step()
        step += 1
        elapsed = time.perf_counter() - started
        curve.append((elapsed, l2_value))
        if progress is not None:
            progress(
                RefineStep(step, config.steps, elapsed, config.seconds, l2_value, percept_value)
            )
        if between_steps is not None:
            paused = time.perf_counter()
            between_steps()
            started += time.perf_counter() - paused  # waiting for requests is not tuning time
            elapsed = time.perf_counter() - started
    with torch.no_grad():
        final = render(delta)
        l2_after = float(F.mse_loss(final, target))
        percept_after = float(perceptual_fn(final, target).mean())
    if first is None:  # stopped before the first render (cancelled at once, or no budget)
        first = (l2_after, percept_after)
    return Refinement(
        delta=delta.compact(),
        resolution=resolution,
        loss=name,
        steps=step,
        seconds=time.perf_counter() - started,
        stop=stop,
        l2_before=first[0],
        l2_after=l2_after,
        perceptual_before=first[1],
        perceptual_after=percept_after,
        curve=curve,
    )


def _locality(generator, wplus, latent_avg, config, resolution, device):
    """PTI's locality regulariser, or None when ``config.locality`` is 0: at a point
    ``PTI_LOCALITY_ALPHA`` from the pivot towards a random truncated w, the tuned render should
    stay the shared generator's (weight ``config.locality`` on its L2 and perceptual terms)."""
    if config.locality <= 0:
        return None
    if latent_avg is None:
        raise ValueError("the locality regulariser needs latent_avg")
    random = torch.Generator().manual_seed(config.seed)
    centre = latent_avg.to(device).float()

    def penalty(render, perceptual_fn, delta) -> torch.Tensor:
        with torch.no_grad():
            z = torch.randn(1, generator.style_dim, generator=random).to(device)
            w = centre + 0.5 * (generator.mapping(z)[:, None] - centre)  # truncation 0.5
            direction = w - wplus  # normalised as a whole, as PTI does (not row by row)
            point = wplus + PTI_LOCALITY_ALPHA * direction / direction.norm().clamp_min(1e-8)
            codes = [s.detach() for s in generator.styles_from_wplus(point)]
            reference = render(None, codes)
        tuned = render(delta, codes)
        terms = F.mse_loss(tuned, reference) + perceptual_fn(tuned, reference).mean()
        return config.locality * terms

    return penalty
