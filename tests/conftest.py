"""Test-wide settings: offline, no analytics, deterministic CPU maths."""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports huggingface_hub or gradio: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The same numerics on every CI machine: "auto" would pick bf16 only on CPUs with native bf16.
# Tests of bf16 ask for it by name (test_precision.py).
os.environ.setdefault("CSLA_PRECISION", "fp32")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def isolated_weights_env(tmp_path, monkeypatch):
    """No weight file reachable: empty checkpoint folder, empty hub cache, no CSLA_* variables."""
    for name in ("CSLA_E4E", "CSLA_STYLEGAN2", "CSLA_CLIP", "CSLA_MAPPERS", "CSLA_CHECKPOINT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    # huggingface_hub reads its cache location at import; point the live constant there too.
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    return folder
