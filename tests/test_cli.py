"""The command line as a user runs it (random-weights mode: no files, no downloads)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from PIL import Image
from skimage import data

pytestmark = pytest.mark.slow


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "csla_core", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_lists_every_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "csla_core", "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0
    for command in (
        "download",
        "align",
        "invert",
        "edit",
        "generate",
        "train",
        "evaluate",
        "bench",
    ):
        assert f"  {command} " in result.stdout
    assert run("frobnicate", cwd=REPO_ROOT).returncode == 2


def test_edit_a_folder_of_photos_keeps_going_past_a_bad_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "csla_core",
            "edit",
            str(photos),
            "smiling",
            "--samples",
            "2",
            "--strength",
            "0.6",
            "-o",
            str(out),
            "--random-weights",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert result.returncode == 2  # one photo failed, and says why
    assert "broken.jpg" in result.stderr and "not a readable image" in result.stderr
    assert "Traceback" not in result.stderr
    assert "RANDOM-WEIGHTS MODE" in result.stdout
    written = sorted(p.name for p in out.iterdir())
    assert written == ["astronaut_edit0.png", "astronaut_edit1.png"]
    # pasted back into the photo: the photo's own size, not a 1024 crop
    assert Image.open(out / "astronaut_edit0.png").size == (512, 512)


def test_generate_writes_the_requested_images(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "csla_core",
            "generate",
            "a woman with red hair",
            "-n",
            "2",
            "-o",
            str(tmp_path),
            "--random-weights",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate0.png", "generate1.png"]
    assert Image.open(tmp_path / "generate0.png").size == (1024, 1024)


def test_tiny_train_then_edit_end_to_end(tmp_path):
    runs = tmp_path / "runs"
    trained = run("train", "--tiny", "--output-dir", str(runs), "--steps", "40", cwd=REPO_ROOT)
    assert trained.returncode == 0, trained.stderr
    assert (runs / "mappers.safetensors").is_file()
    edited = run(
        "edit-latent",
        "--tiny",
        "--mappers",
        str(runs),
        "--prompt",
        "a smiling face",
        "--n",
        "3",
        "--out",
        str(tmp_path / "out"),
        cwd=REPO_ROOT,
    )
    assert edited.returncode == 0, edited.stderr
    assert (tmp_path / "out" / "edit.png").is_file()
