"""Finding, verifying and safely reading weight files, with the exact real formats."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from csla_core import WeightsError, load_pipeline, weights
from csla_core.models.stylegan2 import Generator, GeneratorConfig

SMALL = weights.WeightSpec(
    key="small",
    filename="small.pt",
    description="a small test file",
    env_var="CSLA_TEST_SMALL",
    hub=weights.HubFile("org/small", "small.pt", "0" * 40),
)


def small_spec_for(content: bytes) -> weights.WeightSpec:
    return weights.WeightSpec(
        **{**SMALL.__dict__, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    )


def test_offline_without_files_names_every_file_source_and_folder(
    isolated_weights_env, monkeypatch
):
    monkeypatch.chdir(isolated_weights_env.parent)
    with pytest.raises(WeightsError) as info:
        load_pipeline(device="cpu")
    message = str(info.value)
    assert "e4e_ffhq_encode.pt" in message
    assert "huggingface.co/public-data/e4e/blob/fdd18714fc6b639487adbd901f16f67eb24ba786" in message
    assert str(isolated_weights_env.resolve()) in message
    assert "CSLA_E4E" in message and "python -m csla_core download" in message
    assert "HF_HUB_OFFLINE" in message and "random-weights" in message
    # CLIP is missing too: the same message names it, so one read fixes everything
    assert "open_clip_vit_b32_openai.safetensors" in message
    assert (
        "timm/vit_base_patch32_clip_224.openai/blob/ab5b8ef490e86faa07d3523926b842c765de1de5"
        in message
    )


def test_command_line_without_weights_prints_message_not_traceback(isolated_weights_env, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "white").save(photo)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "CSLA_CHECKPOINT_DIR": str(isolated_weights_env),
    }
    result = subprocess.run(
        [sys.executable, "-m", "csla_core", "invert", str(photo)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: Model weights not found")
    assert "e4e_ffhq_encode.pt" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_folder_file_with_wrong_size_is_reported(isolated_weights_env):
    (isolated_weights_env / "e4e_ffhq_encode.pt").write_bytes(b"partial download")
    with pytest.raises(WeightsError, match=r"has 16 bytes, expected 1,201,649,680"):
        weights.resolve(weights.E4E_FFHQ, directory=isolated_weights_env)


def test_checkpoint_folder_file_with_right_size_but_wrong_hash_is_reported(isolated_weights_env):
    # A sparse file of exactly the real size: only the sha256 can tell it apart.
    path = isolated_weights_env / "e4e_ffhq_encode.pt"
    with open(path, "wb") as handle:
        handle.truncate(weights.E4E_FFHQ.size)
    with pytest.raises(WeightsError, match="failed its checksum") as info:
        weights.resolve(weights.E4E_FFHQ, directory=isolated_weights_env)
    assert "python -m csla_core download --only e4e" in str(info.value)


def test_verified_file_in_checkpoint_folder_is_used(isolated_weights_env):
    content = b"pretend weights"
    spec = small_spec_for(content)
    (isolated_weights_env / spec.filename).write_bytes(content)
    assert (
        weights.resolve(spec, directory=isolated_weights_env) == isolated_weights_env / "small.pt"
    )
    (isolated_weights_env / spec.filename).write_bytes(b"pretend weightz")  # same size, other bytes
    with pytest.raises(WeightsError, match="failed its checksum"):
        weights.resolve(spec, directory=isolated_weights_env)


def test_file_in_hub_cache_is_found(isolated_weights_env, tmp_path):
    content = b"cached weights"
    spec = small_spec_for(content)
    snapshot = tmp_path / "hub-cache" / "models--org--small" / "snapshots" / spec.hub.revision
    snapshot.mkdir(parents=True)
    (snapshot / "small.pt").write_bytes(content)
    assert weights.resolve(spec, directory=isolated_weights_env) == snapshot / "small.pt"


def test_explicit_path_and_environment_variable(isolated_weights_env, tmp_path, monkeypatch):
    mine = tmp_path / "my_variant.pt"
    mine.write_bytes(b"user's own fine-tuned file")  # not held to the pinned hash
    assert weights.resolve(SMALL, path=mine, directory=isolated_weights_env) == mine
    monkeypatch.setenv("CSLA_TEST_SMALL", str(mine))
    assert weights.resolve(SMALL, directory=isolated_weights_env) == mine
    monkeypatch.setenv("CSLA_TEST_SMALL", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="CSLA_TEST_SMALL=.*does not point to a file"):
        weights.resolve(SMALL, directory=isolated_weights_env)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.resolve(SMALL, path=tmp_path / "missing.pt", directory=isolated_weights_env)


def test_download_when_offline_is_a_clear_error(isolated_weights_env):
    with pytest.raises(
        WeightsError, match="Could not download small.pt from https://huggingface.co/org/small"
    ):
        weights.download(SMALL)


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "e4e_ffhq_encode.pt"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        weights.read_e4e_checkpoint(path)
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_pipeline(e4e_path=path, device="cpu", with_clip=False)


class _RunsCode:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(WeightsError, match="Refused to load .*not a plain weights file"):
        weights.load_checkpoint(path)
    assert not marker.exists()


def test_torch_file_of_another_kind_is_named_as_such(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(WeightsError, match="not an e4e checkpoint: expected a 'state_dict'"):
        weights.read_e4e_checkpoint(path)
    with pytest.raises(WeightsError, match="not a rosinality StyleGAN2 checkpoint"):
        weights.read_stylegan2_checkpoint(path)
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}}, path)
    with pytest.raises(
        WeightsError, match="needs encoder.. and decoder.. weights and a latent_avg"
    ):
        weights.read_e4e_checkpoint(path)


def test_generator_config_is_read_from_the_state_dict():
    for config in (
        GeneratorConfig(size=64, style_dim=32, n_mlp=3, channel_multiplier=1),
        GeneratorConfig(),
    ):
        state = Generator(config).state_dict()
        inferred = weights.generator_config_from_state(state)
        assert inferred == {k: v for k, v in config.to_dict().items() if k != "lr_mlp"}


def test_weights_that_do_not_fit_are_named(tmp_path):
    small = Generator(GeneratorConfig(size=32, style_dim=32, n_mlp=2, channel_multiplier=1))
    other = Generator(
        GeneratorConfig(size=32, style_dim=64, n_mlp=2, channel_multiplier=1)
    ).state_dict()
    with pytest.raises(WeightsError, match="other shapes") as info:
        weights.load_state_strict(small, other, "StyleGAN2 generator")
    assert "StyleGAN2 generator" in str(info.value)
    del other["input.input"]
    other["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 missing \(e.g. input.input\).*1 unexpected"):
        weights.load_state_strict(small, other, "StyleGAN2 generator")


def test_clip_weights_file_in_open_clip_format_loads(isolated_weights_env):
    import open_clip
    from safetensors.torch import save_file

    from csla_core.models.clip import ClipEmbedder

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu")  # random, no download
    save_file(model.state_dict(), isolated_weights_env / weights.CLIP_VIT_B32.filename)
    path = weights.resolve(weights.CLIP_VIT_B32, directory=isolated_weights_env)
    clip = ClipEmbedder.from_pretrained(str(path), "ViT-B-32-quickgelu")
    reference = ClipEmbedder(model, open_clip.get_tokenizer("ViT-B-32"))
    prompts = ["a smiling face", "grey hair"]
    # Same weights, same ops: bit-identical here; a 1% change in one MLP weight: 2.8e-4.
    torch.testing.assert_close(clip.encode_text(prompts), reference.encode_text(prompts))
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(clip.encode_images(images), reference.encode_images(images))


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    small = Generator(GeneratorConfig(size=32, style_dim=32, n_mlp=2, channel_multiplier=1))
    torch.save({"g_ema": small.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        weights.read_stylegan2_checkpoint(path)


def test_download_that_arrives_incomplete_is_rejected_not_kept(
    isolated_weights_env, monkeypatch, tmp_path
):
    """A short file from the hub (interrupted transfer, proxy error page) never passes as weights."""
    import huggingface_hub

    content = b"complete weights"
    spec = small_spec_for(content)
    served = tmp_path / "served.pt"
    calls = []

    def fake_download(repo_id, filename, revision=None, force_download=False, local_dir=None):
        calls.append(force_download)
        served.write_bytes(content if force_download else content[:5])
        return str(served)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    # the first copy is short: it is fetched again from scratch, and the good copy is used
    assert weights.download(spec) == served
    assert calls == [False, True] and served.read_bytes() == content
    # a source that keeps serving a short file is reported, not accepted
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(served))
    served.write_bytes(content[:5])
    with pytest.raises(WeightsError, match="has 5 bytes, expected 16"):
        weights.download(spec)


def test_failed_downloads_are_reported_together(isolated_weights_env, monkeypatch):
    """No network (or the hub down): one message names every file that could not be fetched."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights, "hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(WeightsError) as info:
        weights.resolve_many(
            {weights.E4E_FFHQ: None, weights.CLIP_VIT_B32: None}, directory=isolated_weights_env
        )
    message = str(info.value)
    assert "download failed" in message and "Name or service not known" in message
    assert "e4e_ffhq_encode.pt" in message and "open_clip_vit_b32_openai.safetensors" in message
    assert str(isolated_weights_env.resolve()) in message


# ---------------------------------------------------------------------- interrupted downloads


class _FakeHub:
    """A loopback stand-in for the hub's ``/{repo}/resolve/{revision}/{file}`` route (HEAD + GET,
    with Range). ``cut_at``: the first GET sends that many bytes of a full-length response, says
    so through ``half_sent`` and then holds the connection until ``release`` (the client is
    killed meanwhile)."""

    def __init__(self, content: bytes, revision: str, cut_at: int | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.content, self.revision, self.cut_at = content, revision, cut_at
        self.half_sent, self.release = threading.Event(), threading.Event()
        self.gets: list[str | None] = []  # the Range header of every GET
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _headers(self, start: int) -> None:
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", hub.revision)
                self.send_header("ETag", f'"{hashlib.sha256(hub.content).hexdigest()}"')
                self.send_header("Content-Length", str(len(hub.content) - start))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    end = len(hub.content) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(hub.content)}")
                self.end_headers()

            def do_HEAD(self):
                self._headers(0)

            def do_GET(self):
                if "/resolve/" not in self.path:  # anything else the library asks for
                    self.send_error(404)
                    return
                ranged = self.headers.get("Range")
                hub.gets.append(ranged)
                start = int(ranged.split("=")[1].split("-")[0]) if ranged else 0
                self._headers(start)
                if hub.cut_at is not None and len(hub.gets) == 1:
                    self.wfile.write(hub.content[: hub.cut_at])
                    self.wfile.flush()
                    hub.half_sent.set()
                    hub.release.wait(timeout=60)
                    return
                self.wfile.write(hub.content[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


_DOWNLOAD_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
from csla_core import weights
content_sha, size, local_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
spec = weights.WeightSpec(
    key="small", filename="ours.safetensors", description="test", env_var="CSLA_TEST_SMALL",
    hub=weights.HubFile("org/small", "hubs.safetensors", "1" * 40), size=size, sha256=content_sha,
)
path = weights.download(spec, local_dir=Path(local_dir) if local_dir else None)
print(json.dumps({"path": str(path)}))
"""


def _safetensors_bytes(n_floats: int) -> bytes:
    from safetensors.torch import save

    return save({"w": torch.arange(n_floats, dtype=torch.float32)})


@pytest.mark.parametrize("where", ["hub cache", "--to folder"])
def test_download_killed_half_way_leaves_nothing_that_passes_and_the_next_run_completes(
    isolated_weights_env, tmp_path, where
):
    """The process dies in the middle of a transfer (Ctrl-C, machine stopped): no file is left
    under a name that is searched for, and the next run fetches the whole file and verifies it."""
    content = _safetensors_bytes(1 << 20)  # 4 MiB
    sha = hashlib.sha256(content).hexdigest()
    folder = isolated_weights_env if where == "--to folder" else None
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "30",
        "HF_HUB_DOWNLOAD_TIMEOUT": "30",
    }
    args = [sys.executable, "-c", _DOWNLOAD_SCRIPT, sha, str(len(content)), str(folder or "")]

    def names_searched_for() -> list[Path]:
        spec = weights.WeightSpec(
            key="small",
            filename="ours.safetensors",
            description="test",
            env_var="CSLA_TEST_SMALL",
            hub=weights.HubFile("org/small", "hubs.safetensors", "1" * 40),
        )
        found = weights.find_local(spec, directory=isolated_weights_env)
        complete = [p for p in (tmp_path / "hub-cache").rglob("*") if p.is_file()]
        complete += [p for p in isolated_weights_env.rglob("*") if p.is_file()]
        complete = [p for p in complete if p.name in ("ours.safetensors", "hubs.safetensors")]
        return ([found.path] if found else []) + complete

    with _FakeHub(content, "1" * 40, cut_at=len(content) // 2) as hub:
        env["HF_ENDPOINT"] = hub.url
        child = subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert hub.half_sent.wait(timeout=120), "the download never started"
            time.sleep(0.5)  # let the client write what it received
        finally:
            child.kill()
            child.communicate(timeout=60)
        partial = [p for p in tmp_path.rglob("*.incomplete") if p.is_file()]
        partial += [p for p in isolated_weights_env.rglob("*.incomplete") if p.is_file()]
        assert partial and all(p.stat().st_size < len(content) for p in partial)
        assert names_searched_for() == []  # the half file is nowhere it would be taken from
        hub.release.set()

        done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    path = Path(json.loads(done.stdout.decode().strip().splitlines()[-1])["path"])
    assert path.read_bytes() == content
    if folder is not None:
        assert path == folder / "ours.safetensors"  # under the name the folder is searched for
    assert len(hub.gets) == 2 and hub.gets[1] is None  # the second run started from scratch


def test_cut_off_safetensors_file_is_reported_and_fetched_again(isolated_weights_env, monkeypatch):
    """A safetensors file without a pinned hash (CLIP) is still checked for completeness: one cut
    short (an interrupted copy into the folder) is refused with a message, and re-downloaded."""
    import huggingface_hub

    content = _safetensors_bytes(1000)
    spec = weights.WeightSpec(**{**SMALL.__dict__, "filename": "small.safetensors"})
    cut = isolated_weights_env / "small.safetensors"
    cut.write_bytes(content[:-100])
    with pytest.raises(WeightsError, match="incomplete or corrupt .*header describes"):
        weights.resolve(spec, directory=isolated_weights_env)
    for garbage in (b"", b"\xff" * 16, b"<html>proxy error</html>"):
        cut.write_bytes(garbage)
        with pytest.raises(WeightsError, match="incomplete or corrupt"):
            weights.resolve(spec, directory=isolated_weights_env)
    # `download --to` over a cut-off file fetches it again (the hub copy is renamed into place).
    cut.write_bytes(content[:-100])
    served = []

    def fake_download(repo_id, filename, revision=None, force_download=False, local_dir=None):
        served.append(filename)
        path = Path(local_dir) / filename
        path.write_bytes(content)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert weights.download(spec, local_dir=isolated_weights_env) == cut
    assert cut.read_bytes() == content and served == ["small.pt"]
    assert not (isolated_weights_env / "small.pt").exists()
    # ... and a whole one is kept without a download
    assert weights.download(spec, local_dir=isolated_weights_env) == cut and len(served) == 1


def _tiny_pipe(seed: int, **options):
    from csla_core import load_pipeline

    return load_pipeline(random_weights=True, device="cpu", size=32, seed=seed, tiny_clip=True,
                         **options)  # fmt: skip


def test_mappers_belong_to_the_models_they_were_made_for(tmp_path):
    pipe = _tiny_pipe(0)
    pipe.mappers.config.meta.update(weights.models_meta(pipe.fingerprints))
    path = weights.save_mappers(pipe.mappers, tmp_path / "mine.safetensors")
    again = _tiny_pipe(0, mappers_path=path)
    assert again.sources["mappers"] == str(path)
    other = _tiny_pipe(1)
    assert other.fingerprints["generator"] != pipe.fingerprints["generator"]
    with pytest.raises(WeightsError, match="made for other models") as excinfo:
        _tiny_pipe(1, mappers_path=path)
    # The message names both sets of models, so the user sees which is which.
    for fingerprints in (pipe.fingerprints, other.fingerprints):
        assert fingerprints["generator"][:12] in str(excinfo.value)
    # A folder holding mappers.safetensors (what calibrate and train write) works as --mappers.
    weights.save_mappers(pipe.mappers, tmp_path / "run" / "mappers.safetensors")
    assert _tiny_pipe(0, mappers_path=tmp_path / "run").mappers is not None


def test_mappers_made_for_the_loaded_models_are_found_by_name(tmp_path, monkeypatch):
    from csla_core.loading import find_mappers

    monkeypatch.setenv("CSLA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CSLA_MAPPERS", raising=False)
    monkeypatch.delenv("CSLA_MAPPERS_REPO", raising=False)
    prints = {"generator": "a" * 64, "clip": "b" * 64}
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert find_mappers(None, folder, None, False, prints) is None
    cached = weights.mappers_cache_dir() / weights.mappers_filename(prints)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_mappers(None, folder, None, False, prints) == cached
    other = {"generator": "c" * 64, "clip": "b" * 64}
    assert find_mappers(None, folder, None, False, other) is None  # made for other models
    local = folder / weights.mappers_filename(prints)
    local.write_bytes(b"x")
    assert find_mappers(None, folder, None, False, prints) == local  # the checkpoint folder first


def test_mappers_without_recorded_models_are_used_as_they_are():
    assert (
        weights.check_mappers_models({}, {"generator": "a", "clip": "b"}, "old.safetensors")
        is False
    )
