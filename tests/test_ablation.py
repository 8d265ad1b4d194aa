"""The ablation command on tiny random models: one row per variant, reproducible numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from csla_core.cli import main as cli_main
from csla_core.errors import CSLAError
from csla_core.evaluation.ablation import parse_settings, parse_variants, run_ablation
from csla_core.models.builders import build_tiny_models
from csla_core.training.config import TrainConfig

# A few steps of a very small run: enough to exercise every stage, not to learn anything.
# The pool makes the second variant of the command reuse the first one's renders.
SMALL = {
    "batch_size": 4,
    "pool_size": 8,
    "latent_avg_samples": 64,
    "scale_samples": 64,
    "hidden_dim": 32,
    "mixing_hidden": 8,
    "steps": 2,
}


def test_variant_sweeps_parse_and_share_the_default():
    variants = parse_variants(["centre=ema,text", "mixing=both,none", "relative=0.5"])
    assert variants == [{}, {"centre": "text"}, {"mixing": "none"}, {"relative": 0.5}]
    for bad in ("centre", "colour=red", "steps=many"):
        with pytest.raises(CSLAError):
            parse_variants([bad])
    with pytest.raises(CSLAError):  # an unknown strategy is refused before any training
        TrainConfig.tiny(**parse_variants(["centre=median"])[0])
    assert parse_settings(["batch_size=32", "mixing=none"]) == {"batch_size": 32, "mixing": "none"}
    for bad in ("batch_size", "colour=red"):
        with pytest.raises(CSLAError):
            parse_settings([bad])


def test_ablation_table_has_a_row_per_variant_and_repeats_exactly(tmp_path, capsys):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    options = [f"{k}={v}" for k, v in SMALL.items() if k != "steps"]
    argv = "ablate --tiny --steps 2 --variants centre=ema,text --heldout 8 --edit-faces 1".split()
    code = cli_main([*argv, "--set", *options, "--json", str(tmp_path / "ablation.json")])
    assert code == 0
    table = capsys.readouterr().out
    assert "| default |" in table and "| centre=text |" in table
    rows = json.loads((tmp_path / "ablation.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["default", "centre=text"]
    for row in rows:
        for key in ("ratio_w", "ratio_s", "edit_ratio", "clip_gain"):
            assert math.isfinite(row[key]), (row["variant"], key)
        assert row["ratio_w"] > 0 and row["edit_ratio"] > 0
    # Different centres train different mappers ...
    assert rows[0]["ratio_w"] != rows[1]["ratio_w"]
    # ... and the same variant trained again (same seed, same data) scores identically.
    generator, clip = build_tiny_models(0)
    again = run_ablation(
        generator,
        clip,
        [{"centre": "text"}],
        TrainConfig.tiny(**SMALL),
        tmp_path / "again",
        n_heldout=8,
        edit_faces=1,
    )
    for key in ("ratio_w", "ratio_s", "edit_ratio", "clip_gain"):
        assert getattr(again[0], key) == rows[1][key], key
