"""The experiment that picked the calibration recipe: calibration by bank size against the
full trainer (300 steps), on the tiny models, scored on the same held-out samples with the
ablation's figures (ratio_w, ratio_s, edit_ratio; see ``evaluation.ablation``)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..editing.editor import TextEditor
from ..models.builders import build_tiny_models
from ..training.calibrate import CalibrationConfig, calibrate
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.sampling import heldout_error, sample_batch, sampling_options, seeded
from ..weights import load_mappers
from .ablation import edit_ratio


@dataclass(frozen=True)
class CalibrationRow:
    model_seed: int
    candidate: str  # "train 300 steps" or "calibrate N=..."
    ratio_w: float
    ratio_s: float
    edit_ratio: float
    seconds: float


def compare_calibration(
    model_seeds: Sequence[int] = (0, 1, 2),
    bank_sizes: Sequence[int] = (256, 512, 2048),
    steps: int = 300,
    n_heldout: int = 256,
) -> list[CalibrationRow]:
    rows = []
    for seed in model_seeds:
        generator, clip = build_tiny_models(seed)
        cfg = TrainConfig.tiny(steps=steps, eval_samples=0)
        with tempfile.TemporaryDirectory(prefix="csla-calibration-") as tmp:
            started = time.perf_counter()
            train(generator, clip, cfg, output_dir=Path(tmp) / "train")
            trained = load_mappers(Path(tmp) / "train" / "mappers.safetensors")
            train_s = time.perf_counter() - started
            held = sample_batch(
                generator, clip, n_heldout, seeded(cfg.eval_seed),
                latent_avg=trained.latent_avg[:1], **sampling_options(cfg),
            )  # fmt: skip
            rows.append(_row(seed, f"train {steps} steps", generator, clip, trained, held, train_s))
            for n in bank_sizes:
                started = time.perf_counter()
                result = calibrate(
                    generator, clip, CalibrationConfig.tiny(n_samples=n, minutes=None),
                    output_dir=Path(tmp) / f"calibrate-{n}", show_bar=False,
                )  # fmt: skip
                seconds = time.perf_counter() - started
                rows.append(
                    _row(seed, f"calibrate N={n}", generator, clip, result.mappers, held, seconds)
                )
    return rows


def _row(seed, name, generator, clip, mappers, held, seconds) -> CalibrationRow:
    stats = heldout_error(generator, clip, mappers, samples=held)
    editor = TextEditor(
        generator, clip, mappers, render_resolution=TrainConfig.tiny().max_resolution
    )
    return CalibrationRow(
        seed, name, stats["ratio_w"], stats["ratio_s"], edit_ratio(editor, held), seconds
    )


def format_calibration(rows: Sequence[CalibrationRow]) -> str:
    """Markdown: each candidate's figures, and as a ratio to the training of the same seed."""
    base = {r.model_seed: r for r in rows if r.candidate.startswith("train")}
    lines = [
        "| seed | candidate | ratio_w | ratio_s | edit_ratio | vs training (w / s / edit) | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r.model_seed]
        vs = f"{r.ratio_w / b.ratio_w:.2f} / {r.ratio_s / b.ratio_s:.2f} / {r.edit_ratio / b.edit_ratio:.2f}"
        lines.append(
            f"| {r.model_seed} | {r.candidate} | {r.ratio_w:.3f} | {r.ratio_s:.3f} | "
            f"{r.edit_ratio:.3f} | {vs} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
