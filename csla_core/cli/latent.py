"""Commands on latent codes (no photo, ``--tiny`` works): ``edit-latent``, ``generate-latent``.

Each writes a PNG grid and the codes (.safetensors) into ``-o/--output`` and prints a JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from ..errors import CSLAError, WeightsError
from .options import (
    add_model_options,
    add_output_option,
    add_samples_option,
    build_models,
    finite_float,
    load_mappers,
)


def _save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.clamp(-1, 1) + 1) * 0.5, str(path), nrow=nrow)


def _load_wplus(path: Path) -> torch.Tensor:
    """A W+ code from .safetensors (key 'wplus' or the only tensor) or .pt (tensors only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
        return data["wplus"] if "wplus" in data else next(iter(data.values()))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        obj = obj.get("wplus", obj.get("latent", next(iter(obj.values()))))
    if not isinstance(obj, torch.Tensor):
        raise WeightsError(f"{path} holds no latent tensor")
    return obj


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    from ..editing.strength import parse_strength

    p = argparse.ArgumentParser(prog=prog, description=description)
    add_model_options(p, tiny=True)
    p.add_argument(
        "--mappers",
        type=Path,
        default=None,
        help="trained mappers (.safetensors or a training output folder)",
    )
    p.add_argument("--prompt", required=True)
    add_samples_option(p, 4, "number of samples", aliases=("--n",))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diversity", type=finite_float("spread (diversity)"), default=0.5)
    p.add_argument(
        "--strength",
        type=parse_strength,
        default=1.0,
        help="a number, or 'auto' (edit-latent: reach --target-clip-gain)",
    )
    p.add_argument("--resolution", type=int, default=None, help="output render size")
    add_output_option(p, "outputs", "output folder", aliases=("--out",))
    return p


def _editor(args: argparse.Namespace, generator, clip):
    from ..editing.editor import TextEditor

    mappers = load_mappers(args.mappers, generator)
    return TextEditor(generator, clip, mappers, render_resolution=8 if args.tiny else 256)


def _source_code(args: argparse.Namespace, generator) -> torch.Tensor:
    """The code to edit: ``--latent`` (W+ [n_latent, D] or W [D]) or a random face."""
    device = next(generator.parameters()).device
    if args.latent is not None:
        code = _load_wplus(args.latent).float()
        code = code[:1] if code.ndim == 3 else code[None]
        return generator.to_wplus(code.to(device))
    with torch.no_grad():
        rng = torch.Generator().manual_seed(args.source_seed)
        z = torch.randn(1, generator.style_dim, generator=rng).to(device)
        return generator.to_wplus(generator.mapping(z))


def edit_latent_command(argv: list[str] | None = None) -> int:
    """Edit a W+ code (``--latent``) or a random face (``--source-seed``) towards ``--prompt``;
    writes a PNG grid (input first) and the latents."""
    from safetensors.torch import save_file

    from ..editing.strength import (
        DEFAULT_TARGET_CLIP_GAIN,
        calibrate_prompt_strength,
        is_auto,
    )

    p = _parser("python -m csla_core edit-latent", "Text-driven edit of a latent code")
    p.add_argument("--source-prompt", default=None)
    p.add_argument("--latent", type=Path, default=None, help="W+ code (.safetensors / .pt)")
    p.add_argument("--source-seed", type=int, default=0, help="random face when no --latent")
    p.add_argument("--method", choices=("csla", "optimise"), default="csla")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (--method optimise)")
    p.add_argument(
        "--target-clip-gain",
        type=finite_float("target CLIP gain"),
        default=DEFAULT_TARGET_CLIP_GAIN,
        help="CLIP-similarity gain --strength auto aims for (default %(default)s)",
    )
    args = p.parse_args(argv)
    generator, clip, _ = build_models(args)
    wplus = _source_code(args, generator)
    search = None
    if args.method == "optimise":
        from ..editing.optimise import LatentOptimiser, OptimisationConfig

        if is_auto(args.strength):
            raise CSLAError("--strength auto needs the CSLA mappers (--method csla)")
        cfg = OptimisationConfig(steps=args.steps, max_resolution=8 if args.tiny else 256)
        result = LatentOptimiser(generator, clip, cfg).edit(
            wplus, args.prompt, strength=args.strength
        )
    else:
        editor = _editor(args, generator, clip)
        strength = args.strength
        if is_auto(strength):
            search = calibrate_prompt_strength(
                editor, wplus, args.prompt, args.source_prompt, target_gain=args.target_clip_gain
            )
            strength = search.strength
        result = editor.edit(
            wplus,
            args.prompt,
            args.source_prompt,
            strength=strength,
            n_samples=args.samples,
            diversity=args.diversity,
            seed=args.seed,
        )
    with torch.no_grad():
        images = generator(torch.cat([wplus, result.wplus]), max_resolution=args.resolution)
    out: Path = args.output
    _save_grid(images, out / "edit.png", nrow=len(images))
    save_file(
        {"source": wplus.contiguous().cpu(), "wplus": result.wplus.contiguous().cpu()},
        str(out / "edit_latents.safetensors"),
    )
    report = {
        "out": str(out / "edit.png"),
        "n": len(result.wplus),
        "truncated_prompt": result.truncated,
        "strength": result.strength,
    }
    if search is not None:
        report.update(
            target_clip_gain=search.target_gain,
            clip_gain=search.gain,
            target_reached=search.reached,
            strength_renders=search.renders,
        )
        if not search.reached:
            print(f"note: {search.describe()}", file=sys.stderr)
    print(json.dumps(report))
    return 0


def generate_latent_command(argv: list[str] | None = None) -> int:
    """Text-to-image samples as a PNG grid and their latents."""
    from safetensors.torch import save_file

    from ..editing.strength import is_auto

    p = _parser("python -m csla_core generate-latent", "Text-to-image through the CSLA mappers")
    p.add_argument(
        "--no-modality-gap",
        action="store_true",
        help="map the raw text embedding (no shift into the image cloud)",
    )
    args = p.parse_args(argv)
    if is_auto(args.strength):
        raise CSLAError("--strength auto is for edits; give generate-latent a number")
    generator, clip, _ = build_models(args)
    editor = _editor(args, generator, clip)
    wplus = editor.generate(
        args.prompt,
        n=args.samples,
        seed=args.seed,
        diversity=args.diversity,
        strength=args.strength,
        modality_gap=not args.no_modality_gap,
    )
    with torch.no_grad():
        images = generator(wplus, max_resolution=args.resolution)
    out: Path = args.output
    _save_grid(images, out / "generate.png", nrow=max(1, int(math.sqrt(len(images)))))
    save_file({"wplus": wplus.contiguous().cpu()}, str(out / "generate_latents.safetensors"))
    print(json.dumps({"out": str(out / "generate.png"), "n": len(wplus)}))
    return 0
