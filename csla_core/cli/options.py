"""The command line's one vocabulary of flags, and the models and pipeline those flags ask for.

Every command spells a thing the same way: ``-o/--output`` (where files go), ``-n/--samples``
(how many results), ``--seed``, ``--device``, ``--json`` (also write the figures as JSON), and
the model flags of :func:`add_model_options`. Older spellings still parse as hidden aliases.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CSLAError, finite
from ..runtime import PRECISION_CHOICES

if TYPE_CHECKING:
    from ..models.clip import ClipEmbedder
    from ..models.stylegan2 import Generator
    from ..pipeline import CSLAPipeline


def finite_float(what: str):
    """An argparse type: a finite number, refused with the message every front end gives."""

    def parse(text: str) -> float:
        return finite(text, what)

    parse.__name__ = what
    return parse


def hidden_alias(parser: argparse.ArgumentParser, *flags: str, dest: str, **options) -> None:
    """Old spellings of a flag: they still parse, ``--help`` does not show them, and they set
    nothing unless given (the documented flag's default stands)."""
    parser.add_argument(
        *flags, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options
    )


def add_output_option(
    parser: argparse.ArgumentParser, default: str | None, help: str, aliases: tuple[str, ...] = ()
) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, default=None if default is None else Path(default), help=help
    )
    if aliases:
        hidden_alias(parser, *aliases, dest="output", type=Path)


def add_samples_option(
    parser: argparse.ArgumentParser, default: int, help: str, aliases: tuple[str, ...] = ()
) -> None:
    parser.add_argument("-n", "--samples", type=int, default=default, help=help)
    if aliases:
        hidden_alias(parser, *aliases, dest="samples", type=int)


def add_device_option(
    group: argparse._ActionsContainer,
    default: str | None = None,
    help: str = "cpu, cuda or cuda:N (default: cuda if available; with --tiny: cpu)",
) -> None:
    group.add_argument("--device", default=default, help=help)


def add_precision_option(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="auto (default): bf16 on CPUs with native bf16 where it measures faster, else "
        "fp32-compact (fp32 maths, the encoder's style blocks and CLIP stored in bf16: 0.7 GB "
        "less); fp32: exact; bf16 / fp16 (CUDA): within 2e-2 of fp32",
    )


def add_model_options(
    parser: argparse.ArgumentParser, *, tiny: bool = False, precision: bool = False
) -> None:
    """The model flags, the same for every command (``tiny``: the command can run on the tiny
    CPU models; ``precision``: it runs through the pipeline, which has reduced precision)."""
    group = parser.add_argument_group("models")
    if tiny:
        group.add_argument(
            "--tiny", action="store_true", help="tiny random models: an offline CPU demo in seconds"
        )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained full-size models, no files needed (development and "
        "benchmarks only: outputs are noise)",
    )
    group.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="folder with the weight files (default ./checkpoints)",
    )
    group.add_argument(
        "--model-seed",
        type=int,
        default=0,
        help="seed of the random weights (--tiny, --random-weights)",
    )
    add_device_option(group)
    if precision:
        add_precision_option(group)


def _device_of(module) -> object:
    return next(module.parameters()).device


def build_models(args: argparse.Namespace) -> tuple[Generator, ClipEmbedder, str]:
    """The (generator, CLIP, CLIP's name) that :func:`add_model_options`' flags ask for."""
    from ..loading import load_pipeline, usable_device
    from ..models.builders import CLIP_MODEL_NAME, build_tiny_models

    if getattr(args, "tiny", False):
        generator, clip = build_tiny_models(args.model_seed)
        device = usable_device(args.device or "cpu")  # tiny models are a CPU demo by default
        return generator.to(device), clip.to(device), "tiny-random"
    pipe = load_pipeline(
        device=args.device,
        random_weights=args.random_weights,
        checkpoint_dir=args.checkpoint_dir,
        with_encoder=False,
        with_mappers=False,  # the commands load the mappers they are given themselves
        seed=args.model_seed,
        precision="fp32",  # training and evaluation take gradients through the models
    )
    if pipe.clip is None:
        raise CSLAError("CLIP could not be loaded")
    name = CLIP_MODEL_NAME + (" (random)" if args.random_weights else "")
    return pipe.generator, pipe.clip, name


def load_mappers(path: Path | None, generator: Generator):
    """Trained mappers on the generator's device, or a CSLAError saying how to get them."""
    from .. import weights

    if path is None:
        raise CSLAError(
            "no --mappers given: train them first (`train --tiny -o DIR`) or use "
            "--method optimise for the slower latent optimisation"
        )
    return weights.load_mappers(path, device=_device_of(generator))


def build_pipeline(args: argparse.Namespace, **options) -> CSLAPipeline:
    """The pipeline for the photo commands (prints its notice, e.g. random-weights mode)."""
    from ..loading import load_pipeline

    pipe = load_pipeline(
        device=args.device,
        random_weights=args.random_weights,
        checkpoint_dir=args.checkpoint_dir,
        precision=args.precision,
        seed=args.model_seed,
        **options,
    )
    if pipe.notice:
        print(pipe.notice)
    return pipe


def train_device_is_cpu(device: str | None) -> bool | None:
    """``--device`` for training (accelerate picks the GPU itself): True for cpu, False for a
    GPU, None when not given (the config's own default)."""
    if device is None:
        return None
    return device.strip().lower().split(":")[0] == "cpu"
