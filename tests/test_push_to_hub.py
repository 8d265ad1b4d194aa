"""``train --push-to-hub`` with huggingface_hub's HfApi replaced by a recorder (no network)."""

from __future__ import annotations

import fnmatch
import json

import huggingface_hub
import pytest

from csla_core.cli import main as cli_main
from csla_core.weights import load_mappers


class RecordingApi:
    """Stands in for HfApi: records the repo and a copy of every file it would upload."""

    calls: list[tuple[str, dict]] = []
    uploaded: dict[str, bytes] = {}

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, **options: object) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **options}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(
        self, *, repo_id: str, folder_path: str, allow_patterns: list[str], **options: object
    ) -> None:
        from pathlib import Path

        self.calls.append(("upload_folder", {"repo_id": repo_id, **options}))
        for path in sorted(Path(folder_path).rglob("*")):
            name = path.relative_to(folder_path).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                self.uploaded[name] = path.read_bytes()


@pytest.fixture
def recorder(monkeypatch):
    RecordingApi.calls, RecordingApi.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return RecordingApi


def test_train_push_to_hub_uploads_weights_config_and_card(recorder, tmp_path, capsys):
    out = tmp_path / "run"
    small = (
        "--steps 2 --batch-size 4 --pool-size 0 --eval-samples 8 --hidden-dim 32 "
        "--mixing-hidden 8 --latent-avg-samples 64 --scale-samples 64"
    ).split()
    code = cli_main(
        ["train", "--tiny", "-o", str(out), *small, "--push-to-hub", "someone/csla-tiny"]
    )
    assert code == 0
    assert "https://huggingface.co/someone/csla-tiny" in capsys.readouterr().out
    kinds = [kind for kind, _ in recorder.calls]
    assert kinds == ["create_repo", "upload_folder"]
    assert recorder.calls[0][1]["repo_id"] == "someone/csla-tiny"
    assert recorder.calls[0][1]["private"] is True  # private unless asked otherwise
    files = recorder.uploaded
    assert {"mappers.safetensors", "mappers.json", "train_config.json", "README.md"} <= set(files)
    assert not any(name.startswith("checkpoints/") for name in files)  # no optimiser states
    # The uploaded weights are the trained ones and load on their own.
    (tmp_path / "got.safetensors").write_bytes(files["mappers.safetensors"])
    local = load_mappers(out / "mappers.safetensors").state_dict()
    for key, value in load_mappers(tmp_path / "got.safetensors").state_dict().items():
        assert (value == local[key]).all(), key
    config = json.loads(files["train_config.json"])
    assert config["steps"] == 2 and config["batch_size"] == 4
    card = files["README.md"].decode()
    assert "someone/csla-tiny" in card and "2210.04506" in card
    assert '"clip_model_name": "tiny-random"' in card and '"steps": 2' in card  # the config
    assert '"ratio_w"' in card  # and what was measured
