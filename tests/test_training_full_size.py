"""Training and calibration at full size (1024 generator, ViT-B/32) in bounded memory: a few
steps, random weights. The tiny models test the method; this tests that the real sizes run."""

from __future__ import annotations

import resource

import pytest

from csla_core import load_pipeline
from csla_core.models.mappers import CSLAMappers
from csla_core.training.calibrate import CalibrationConfig, calibrate
from csla_core.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def full_size():
    pipe = load_pipeline(random_weights=True, device="cpu", with_encoder=False, with_mappers=False)
    return pipe.generator, pipe.clip


@pytest.mark.slow
def test_full_size_training_runs_end_to_end(full_size, tmp_path):
    generator, clip = full_size
    config = TrainConfig(steps=2, batch_size=2, eval_samples=4, latent_avg_samples=256,
                         scale_samples=64, save_every=0)  # fmt: skip
    stats = train(generator, clip, config, output_dir=tmp_path)
    assert stats["samples_per_s"] > 0 and "ratio_w" in stats  # the held-out evaluation ran
    assert CSLAMappers.load(tmp_path / "mappers.safetensors").config.n_latent == 18
    # Bounded memory: the models (about 0.8 GB) plus one sample's activations at a time.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 < 8.0  # GiB (Linux: KiB)


@pytest.mark.slow
def test_full_size_calibration_runs_end_to_end(full_size, tmp_path):
    generator, clip = full_size
    config = CalibrationConfig(n_samples=8, chunk=4, min_samples=8)
    result = calibrate(generator, clip, config, output_dir=tmp_path, show_bar=False)
    assert result.n_samples == 8 and (tmp_path / "mappers.safetensors").is_file()
    assert result.mappers.config.meta["trainer"] == "csla_core.training.calibrate"
