"""The command line as a user runs it (random-weights mode: no files, no downloads)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from skimage import data

from csla_core.cli import COMMANDS, main

pytestmark = pytest.mark.slow
OFFLINE_MODELS = ("--random-weights", "--device", "cpu")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "csla_core", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )


@pytest.fixture
def astronaut(tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)  # public domain, one face, 512 x 512
    return path


def test_help_lists_every_command():
    result = run("--help")
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
    assert run("frobnicate").returncode == 2


# Spellings the commands used to drift between; they still parse, but --help shows only the
# one vocabulary (-o/--output, -n/--samples, --device, --json).
RETIRED_FLAGS = ("--out ", "--output-dir", "--n ", "--n-samples", "--to ", "--cpu")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_in_the_one_vocabulary(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m csla_core {command}" in text
    assert not [flag for flag in RETIRED_FLAGS if flag in text], text
    for short, long in (("-o", "--output"), ("-n", "--samples")):
        if long in text:  # always with its short form (argparse 3.13 prints "-o, --output X")
            assert re.search(rf"{short}( [A-Z]+)?, {long}", text), (short, text)


def test_invert_writes_code_crop_and_reconstructions(astronaut, tmp_path):
    out = tmp_path / "out"  # a folder that does not exist yet, as in the README's example
    result = run("invert", str(astronaut), "-o", str(out / "me"), "--clip", *OFFLINE_MODELS)
    assert result.returncode == 0, result.stderr
    assert "RANDOM-WEIGHTS MODE" in result.stdout and "1 face(s) found" in result.stdout
    code = torch.load(out / "me.pt", weights_only=True)["wplus"]
    assert code.shape == (1, 18, 512)
    for name in ("me_crop.png", "me_reconstruction.png", "me_clip_reconstruction.png"):
        assert Image.open(out / name).size == (1024, 1024)


def test_edit_a_folder_of_photos_keeps_going_past_a_bad_file(astronaut, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut.rename(photos / "astronaut.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out"
    result = run(
        "edit",
        str(photos),
        "smiling",
        "--samples",
        "2",
        "--strength",
        "0.6",
        "-o",
        str(out),
        *OFFLINE_MODELS,
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
    result = run(
        "generate", "a woman with red hair", "-n", "2", "-o", str(tmp_path), *OFFLINE_MODELS
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate0.png", "generate1.png"]
    assert Image.open(tmp_path / "generate0.png").size == (1024, 1024)


def test_tiny_train_then_edit_end_to_end(tmp_path):
    runs = tmp_path / "runs"
    trained = run("train", "--tiny", "-o", str(runs), "--steps", "40")
    assert trained.returncode == 0, trained.stderr
    assert (runs / "mappers.safetensors").is_file()
    edited = run(
        "edit-latent",
        "--tiny",
        "--mappers",
        str(runs),
        "--prompt",
        "a smiling face",
        "-n",
        "3",
        "-o",
        str(tmp_path / "out"),
    )
    assert edited.returncode == 0, edited.stderr
    assert (tmp_path / "out" / "edit.png").is_file()


@pytest.mark.parametrize("method", ["mappers", "baseline"])
def test_edit_at_strength_zero_writes_the_photo_back(astronaut, tmp_path, method):
    """The issue's check as a user runs it: strength 0 gives the photo back within 1 grey level
    (CSLA mappers; the optimisation fallback, which then optimises nothing), and the crop view
    the aligned crop; NaN is refused with the message every front end gives."""
    out = tmp_path / "out"
    extra = ["--baseline"] if method == "baseline" else []
    result = run("edit", str(astronaut), "smiling", "--strength", "0", "-n", "2", "-o", str(out),
                 *extra, *OFFLINE_MODELS)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    photo = np.asarray(Image.open(astronaut).convert("RGB"), np.int16)
    for written in sorted(out.glob("astronaut_edit*.png")):
        assert np.abs(np.asarray(Image.open(written), np.int16) - photo).max() <= 1, written
    if method == "baseline":
        assert "optimisation" in result.stdout
        return
    crops = tmp_path / "crops"
    result = run("edit", str(astronaut), "smiling", "--strength", "0", "-n", "1", "--crop",
                 "-o", str(crops), *OFFLINE_MODELS)  # fmt: skip
    aligned = tmp_path / "aligned.png"
    assert run("align", str(astronaut), "-o", str(aligned)).returncode == 0
    got = np.asarray(Image.open(crops / "astronaut_edit0.png"), np.int16)
    assert np.abs(got - np.asarray(Image.open(aligned), np.int16)).max() <= 1
    nan = run("edit", str(astronaut), "smiling", "--strength", "nan", "-o", str(tmp_path / "x"),
              *OFFLINE_MODELS)  # fmt: skip
    assert nan.returncode == 2 and "The strength must be a finite number, got 'nan'." in nan.stderr
    assert not (tmp_path / "x").exists()


def test_fidelity_measures_each_method_and_the_refinement(astronaut, tmp_path):
    """``fidelity`` on a folder, as a user runs it: the field's table (strength 0 delivered with
    the detail kept is the photo), a refinement that brings the face closer, a photo without a
    face named as skipped, and every figure in the JSON."""
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut.rename(photos / "astronaut.png")
    Image.new("RGB", (256, 256), (128, 128, 128)).save(photos / "blank.png")
    report = tmp_path / "fidelity.json"
    result = run("fidelity", str(photos), "--steps", "3", "--refine-seconds", "60",
                 "--json", str(report), *OFFLINE_MODELS)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RANDOM WEIGHTS" in result.stdout
    assert "| e4e + refinement + detail kept | delivered |" in result.stdout
    figures = json.loads(report.read_text())
    rows = {(row["method"], row["view"]): row for row in figures["rows"]}
    # Delivered at strength 0 with the detail kept: the photo, within 1 grey level (2/255 on
    # [-1, 1], so L2 <= (2/255)^2), against e4e's own reconstruction.
    for method in ("e4e + detail kept", "e4e + refinement + detail kept"):
        assert rows[(method, "delivered")]["l2"] <= (2 / 255) ** 2
    assert rows[("e4e", "delivered")]["l2"] > 0.01
    [refined] = figures["refinements"]
    assert refined["photo"] == "astronaut.png" and refined["steps"] == 3
    assert refined["stop"] == "steps"
    assert refined["face_l2_after"] < refined["face_l2_before"]
    tuned = rows[("e4e + refinement + detail kept", "reconstruction")]["l2"]
    assert tuned < rows[("e4e", "reconstruction")]["l2"]
    assert any(skipped.startswith("blank.png") for skipped in figures["skipped"])
