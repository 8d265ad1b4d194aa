"""Ablation of the choices the paper leaves open: CLIP-space centre and adaptive style mixing.

[ours] ``python -m csla_core ablate`` trains one mapper per variant with ``training.loop.train``, all
from the same seed, steps and data (the sampling seeds depend only on ``TrainConfig.seed``), and
scores every variant on the same held-out samples (the rendered replay pool is shared too, so
variants differ only in what is ablated):
- ``ratio_w`` / ``ratio_s``: held-out W+ / S residual error over the trivial predictor's
  (``training.sampling.heldout_error``; 1 = no better than guessing the average latent);
- ``edit_ratio``: image-guided edit accuracy, the figure editing depends on. For held-out
  pairs (a, b) the editor's central-difference step from a's CLIP embedding towards b's is
  applied to w_a; edit_ratio = mean ||w_a + dW - w_b||^2 / mean ||w_a - w_b||^2 (0 = the edit
  lands exactly on b, 1 = no closer than before). Costs no render;
- ``clip_gain``: CLIP similarity gain to a fixed prompt of a strength-1 edit of a few held-out
  faces (rendered from S, as the pipeline shows edits). On random tiny models this is
  only a sign check: their CLIP embeddings of all images are nearly identical.
Default variants: every centre strategy (mixing at its default) and every mixing mode (centre
at its default); the shared default variant is trained once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..editing.editor import TextEditor
from ..errors import CSLAError
from ..models.clip import ClipEmbedder
from ..models.mappers import CENTRE_STRATEGIES, MIXING_MODES
from ..models.stylegan2 import Generator
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.sampling import SampleCache, Samples, heldout_error, sample_batch
from ..weights import load_mappers

DEFAULT_SWEEPS: tuple[str, ...] = (
    "centre=" + ",".join(CENTRE_STRATEGIES),
    "mixing=" + ",".join(MIXING_MODES),
)
DEFAULT_EDIT_PROMPT = "a smiling face"
COLUMNS: tuple[str, ...] = ("variant", "ratio_w", "ratio_s", "edit_ratio", "clip_gain", "train_s")


@dataclass
class AblationRow:
    """Scores of one trained variant (see module doc)."""

    variant: str  # e.g. "centre=text" or "default"
    overrides: dict[str, object]
    ratio_w: float
    ratio_s: float
    cos_w: float
    edit_ratio: float
    clip_gain: float
    train_s: float


def _parse_value(name: str, text: str) -> object:
    """A TrainConfig option's value from text, typed like its default."""
    default = getattr(TrainConfig(), name)
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if default is None or name == "max_resolution":
        return None if text.lower() == "none" else int(text)
    return type(default)(text)


def _option_name(key: str) -> str:
    name = key.strip().replace("-", "_")
    known = {f.name for f in fields(TrainConfig)}
    if name not in known or name in ("betas", "cpu"):
        raise CSLAError(f"unknown training option {key!r} in an ablation variant")
    return name


def parse_variants(sweeps: Sequence[str]) -> list[dict[str, object]]:
    """``["centre=ema,text", "mixing=none"]`` -> one override dict per variant.

    Each sweep varies one option with the others at the base config; a value equal to the
    base default gives the empty override ``{}`` (the "default" variant), kept once.
    """
    variants: list[dict[str, object]] = []
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        if not sep or not values.strip():
            raise CSLAError(f"a variant sweep looks like 'centre=ema,text', got {sweep!r}")
        name = _option_name(key)
        for text in values.split(","):
            try:
                value = _parse_value(name, text.strip())
            except ValueError as exc:
                raise CSLAError(f"bad value {text!r} for {name}: {exc}") from exc
            override = {} if value == getattr(TrainConfig(), name) else {name: value}
            if override not in variants:
                variants.append(override)
    return variants


def parse_settings(items: Sequence[str]) -> dict[str, object]:
    """``["batch_size=32", "relative=0.5"]`` -> typed TrainConfig overrides (the base config)."""
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CSLAError(f"a training option looks like OPTION=VALUE, got {item!r}")
        name = _option_name(key)
        options[name] = _parse_value(name, value)
    return options


def variant_name(override: dict[str, object]) -> str:
    return ",".join(f"{k}={v}" for k, v in override.items()) or "default"


@torch.no_grad()
def edit_ratio(editor: TextEditor, samples: Samples) -> float:
    """Image-guided edit accuracy on held-out pairs (a_i, a_{i+1}); see module doc."""
    wplus, feats = samples.wplus.to(editor.device), samples.features.to(editor.device)
    b = torch.roll(torch.arange(len(wplus), device=wplus.device), -1)
    centre = editor.mappers.centre
    step = editor.latent_steps(
        centre.standardise(feats), centre.standardise_delta(feats[b] - feats)
    )
    after = (wplus + step.dw - wplus[b]).pow(2).sum()
    before = (wplus - wplus[b]).pow(2).sum()
    return float(after / before.clamp_min(1e-20))


@torch.no_grad()
def clip_gain(editor: TextEditor, samples: Samples, prompt: str, n_faces: int) -> float:
    """Mean CLIP-similarity gain to ``prompt`` of a strength-1 edit of ``n_faces`` faces."""
    text = editor.clip.encode_text([prompt])[0].to(editor.device)
    gains = []
    for i in range(min(n_faces, len(samples.wplus))):
        w = samples.wplus[i : i + 1].to(editor.device)
        f = samples.features[i].to(editor.device)
        res = editor.edit(
            w, prompt, strength=1.0, n_samples=1, diversity=0.0, rank=False, image_embedding=f
        )
        image = editor.generator.synthesize(res.styles, editor.noise_mode, editor.render_resolution)
        gains.append(float(editor.clip.encode_images(image)[0] @ text - f @ text))
    return sum(gains) / max(len(gains), 1)


def run_ablation(
    generator: Generator,
    clip: ClipEmbedder,
    variants: Sequence[dict[str, object]],
    base: TrainConfig,
    output_dir: str | Path,
    *,
    n_heldout: int = 256,
    edit_prompt: str = DEFAULT_EDIT_PROMPT,
    edit_faces: int = 8,
) -> list[AblationRow]:
    """Train every variant (base config + its overrides) and score it; one row per variant."""
    output_dir = Path(output_dir)
    heldout: dict[tuple, Samples] = {}
    renders: SampleCache = {}  # variants sampling alike render their pool once
    rows = []
    for override in variants:
        cfg = TrainConfig(**{**asdict(base), **override, "eval_samples": 0})
        name = variant_name(override)
        t0 = time.perf_counter()
        train(
            generator,
            clip,
            cfg,
            output_dir=output_dir / name.replace("=", "-"),
            sample_cache=renders,
        )
        seconds = time.perf_counter() - t0
        mappers = load_mappers(
            output_dir / name.replace("=", "-") / "mappers.safetensors",
            device=generator.input.input.device,
        )
        # One held-out set per sampling setup: variants that train alike are scored alike.
        key = (
            mappers.latent_avg.cpu().numpy().tobytes(),
            cfg.truncation,
            cfg.max_resolution,
            cfg.noise_mode,
        )
        if key not in heldout:
            heldout[key] = sample_batch(
                generator,
                clip,
                n_heldout,
                torch.Generator().manual_seed(cfg.eval_seed),
                latent_avg=mappers.latent_avg[:1],
                truncation=cfg.truncation,
                max_resolution=cfg.max_resolution,
                noise_mode=cfg.noise_mode,
            )
        samples = heldout[key]
        stats = heldout_error(generator, clip, mappers, samples=samples)
        editor = TextEditor(
            generator,
            clip,
            mappers,
            render_resolution=cfg.max_resolution,
            noise_mode=cfg.noise_mode,
        )
        rows.append(
            AblationRow(
                variant=name,
                overrides=dict(override),
                ratio_w=stats["ratio_w"],
                ratio_s=stats.get("ratio_s", float("nan")),
                cos_w=stats["cos_w"],
                edit_ratio=edit_ratio(editor, samples),
                clip_gain=clip_gain(editor, samples, edit_prompt, edit_faces),
                train_s=seconds,
            )
        )
    return rows


def format_table(rows: Sequence[AblationRow]) -> str:
    """Markdown table of the rows (``clip_gain`` in scientific notation: tiny models' gains
    are ~1e-5)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.ratio_w:.3f} | {r.ratio_s:.3f} | {r.edit_ratio:.3f} "
            f"| {r.clip_gain:+.2e} | {r.train_s:.0f} |"
        )
    return "\n".join(lines)
