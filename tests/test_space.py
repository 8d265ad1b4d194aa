"""What a Hugging Face Space needs beyond the app itself: mappers that outlive a restart (a
volume, or a model repo through the Hub's API: a loopback stand-in here), and model calls whose
arguments and results cross a process boundary (ZeroGPU runs each in a forked worker).
The whole offline start is scripts/space_start.py (run by .ci/run)."""

from __future__ import annotations

import io
import pickle
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import torch
from conftest import REPO_ROOT

import csla_core
from csla_core import weights
from csla_core.loading import find_mappers
from csla_core.service import EditingService, EditRequest, mapper_storage, session_cache
from csla_core.service.storage import MapperStorage

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from space_standins import HubStandIn  # noqa: E402

FINGERPRINTS = {"generator": "1" * 64, "clip": "2" * 64}
ASTRONAUT = REPO_ROOT / "assets" / "astronaut.jpg"


def test_where_mappers_are_kept():
    assert mapper_storage({"CSLA_CACHE": "/data/csla"}).kind == "volume"
    hub = mapper_storage({"HF_TOKEN": "t", "CSLA_MAPPERS_REPO": "me/m", "SPACE_ID": "me/app"})
    assert (hub.kind, hub.where, hub.token) == ("hub", "me/m", "t")
    # Never the Space's own repository (a commit to it restarts the Space).
    own = mapper_storage({"HF_TOKEN": "t", "CSLA_MAPPERS_REPO": "me/app", "SPACE_ID": "me/app"})
    assert own.kind == "space disk"
    assert mapper_storage({"CSLA_MAPPERS_REPO": "me/m", "SPACE_ID": "me/app"}).kind == "space disk"
    lost = mapper_storage({"SPACE_ID": "me/app"})
    assert "the next start calibrates again" in lost.message and "CSLA_CACHE" in lost.message
    assert "HF_TOKEN" in lost.message and "CSLA_MAPPERS_REPO" in lost.message
    assert mapper_storage({}).kind == "user cache" and mapper_storage({}).message == ""


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub pointed at a loopback stand-in (online mode for it alone)."""
    with HubStandIn(token="hf_secret") as standin:
        monkeypatch.setattr(hub_constants, "ENDPOINT", standin.url)
        template = standin.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("CSLA_CACHE", str(tmp_path / "csla-cache"))
        yield standin


def test_mappers_go_to_the_repo_with_a_card_and_come_back_at_the_next_start(hub, tmp_path):
    made = tmp_path / "made.safetensors"
    made.write_bytes(b"mappers" * 3_000_000)  # large enough to go through LFS
    storage = MapperStorage("hub", "someone/csla-mappers", "hf_secret")
    line = storage.keep(made, FINGERPRINTS)
    assert "uploaded to someone/csla-mappers" in line
    name = weights.mappers_filename(FINGERPRINTS)
    files = hub.files("someone/csla-mappers")
    assert files[name] == made.read_bytes()
    card = files["README.md"].decode()
    assert "2210.04506" in card and FINGERPRINTS["generator"] in card
    assert "CSLA_MAPPERS_REPO=someone/csla-mappers" in card
    # The next start (a new disk: nothing local) downloads the file made for these models ...
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    found = find_mappers(None, folder, "someone/csla-mappers", True, FINGERPRINTS)
    assert found is not None and found.read_bytes() == made.read_bytes()
    # ... and one made for other models is not there: calibrate (None), no error.
    other = {"generator": "3" * 64, "clip": "4" * 64}
    assert find_mappers(None, folder, "someone/csla-mappers", True, other) is None
    assert find_mappers(None, folder, "someone/not-created-yet", True, FINGERPRINTS) is None


def test_a_failed_upload_is_said_not_raised(hub, tmp_path):
    made = tmp_path / "made.safetensors"
    made.write_bytes(b"x" * 1000)
    line = MapperStorage("hub", "someone/csla-mappers", "wrong-token").keep(made, FINGERPRINTS)
    assert line.startswith("Uploading them to someone/csla-mappers failed")
    assert "the next restart calibrates again" in line and not hub.files("someone/csla-mappers")


def test_model_calls_cross_a_process_boundary(tmp_path):
    """ZeroGPU pickles each call's arguments into a forked worker and its result back (with
    torch's reducers: ForkingPickler). Every model call of an edit, a refinement and a sweep
    must survive that round trip and give the same result."""
    pipe = csla_core.load_pipeline(random_weights=True, device="cpu", size=64, tiny_clip=True)
    crossed = []

    def across(name, fn):
        def call(*args, **kwargs):
            buffer = io.BytesIO()
            ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump((args, kwargs))
            args, kwargs = pickle.loads(buffer.getvalue())
            result = fn(*args, **kwargs)
            buffer = io.BytesIO()
            ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(result)
            crossed.append(name)
            return pickle.loads(buffer.getvalue())

        return call

    service = EditingService(
        pipe, sweep_dir=tmp_path, wrap_model_call=across, background_refinement=False
    )
    service.refine_seconds = 1.0
    cache, photo = session_cache(None), str(ASTRONAUT)
    list(service.analysis_steps(cache, photo, 0))
    list(service.refine_steps(cache, photo, 0))
    entry = next(iter(cache.items.values()))
    assert entry.inversion.refinement is not None and entry.inversion.refinement.steps >= 1
    (step,) = list(service.edit_steps(cache, EditRequest.clean(photo, "smiling", samples=2)))[-1:]
    assert len(step.items) == 2 and "refined likeness" in step.status
    service.sweep(cache, EditRequest.clean(photo, "smiling", paste=False), 3)
    assert {"invert", "reconstruct", "refine", "edit", "render_edit"} <= set(crossed)
    assert all(isinstance(t, torch.Tensor) for t in entry.inversion.refinement.delta.tensors())


def test_the_offline_space_start_script_knows_the_space():
    """scripts/space_start.py reads the README's front matter as the builder does."""
    sys.path.insert(0, str(Path(REPO_ROOT / "scripts")))
    import space_start

    matter = space_start.front_matter()
    assert matter["sdk"] == "gradio" and matter["python_version"].startswith(("3.12", "3.10"))
    assert space_start.space_torch() == "2.11.0"  # ZeroGPU's newest that requirements admit
    assert all(len(entry.split()) == 3 for entry in matter["preload_from_hub"])
