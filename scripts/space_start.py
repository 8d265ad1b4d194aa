"""Start this repository as a Hugging Face Space does, offline, and check what a visitor gets.

    python scripts/space_start.py                  # build, start (CPU Space), calibrate, /edit
    python scripts/space_start.py --zerogpu        # ZeroGPU's start-up, as far as it runs with no GPU
    python scripts/space_start.py --mappers volume # calibrate, restart: are the mappers still there?
    python scripts/space_start.py --all            # all of it (what CI runs)

As the Space builder does (hub-docs spaces-config-reference, spaces-zerogpu):
1. a virtual environment of the README front matter's Python (pyenv's 3.12 or 3.10 here), and one
   ``pip install`` of requirements.txt with ``gradio==<sdk_version>`` and ``spaces``; torch is the
   newest of ZeroGPU's list (2.8.0, 2.9.1, 2.10.0, 2.11.0) that requirements.txt admits, as ZeroGPU
   installs it (``--venv DIR`` keeps and reuses the environment);
2. the ``preload_from_hub`` files in the Hugging Face cache, by commit hash, with no ``refs/main``,
   in their real formats with random values (the pinned e4e checksum is waived for exactly that
   file: ``CSLA_TEST_ACCEPT_SHA256`` names its sha256, so it can let nothing else through);
3. ``python app.py`` (the real resolution path, no --random-weights) with the variables a Space
   sets (``SYSTEM=spaces``, ``SPACE_ID``, ...), ``HF_HUB_OFFLINE=1`` and a fresh home folder (a
   Space's disk is new at every start).

Checks: the app answers and begins its first-run calibration; ``/edit`` answers through
gradio_client (strength 0 gives the photo back; once calibrated, a CSLA edit). ``--zerogpu``: a
CUDA build of torch, ``SPACES_ZERO_GPU=true`` and a loopback stand-in for the device API
(scripts/space_standins.py): the app imports ``spaces`` first, packs, reports its start-up,
launches, calibrates only inside GPU calls, keeps the preloaded files, and an ``/edit`` reaches a
GPU worker with its arguments pickled (the worker then finds no driver: there is no GPU here).
``--mappers``: "volume" (CSLA_CACHE on a folder that outlives the restart), "hub" (HF_TOKEN and
CSLA_MAPPERS_REPO with a loopback stand-in for the Hub), "none" (the page says the next restart
calibrates again): calibrate, restart with a new disk, check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from space_standins import HubStandIn, ZeroGpuStandIn  # noqa: E402

from csla_app.launch import free_port  # noqa: E402

ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")  # hub-docs spaces-zerogpu.md, Aug 2026
SPACE_ID = "someone/csla-portrait-editor"
CALIBRATION_SAMPLES = "16"  # a quick first run: the flow, not the mappers' quality
ASTRONAUT = REPO / "assets" / "astronaut.jpg"
READY = "CSLA mappers ready"


# ------------------------------------------------------------------------------ the build


def front_matter() -> dict:
    import yaml

    text = (REPO / "README.md").read_text()
    if not text.startswith("---\n"):
        raise SystemExit("README.md has no front matter: it is not a Space")
    return yaml.safe_load(text.split("---\n", 2)[1])


def space_torch() -> str:
    """The torch ZeroGPU installs: the newest of its list that requirements.txt admits."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("torch") and Requirement(line).name == "torch":
            spec = Requirement(line).specifier
            admitted = [v for v in ZEROGPU_TORCH if Version(v) in spec]
            if not admitted:
                raise SystemExit(
                    f"requirements.txt's {line!r} admits none of ZeroGPU's {ZEROGPU_TORCH}"
                )
            return admitted[-1]
    return ZEROGPU_TORCH[-1]


def find_python(version: str) -> str:
    """An interpreter of ``version`` (major.minor): on PATH or pyenv's."""
    major_minor = ".".join(str(version).split(".")[:2])
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{major_minor}")]
    candidates += sorted(root.glob(f"{major_minor}*/bin/python{major_minor}"), reverse=True)
    for candidate in filter(None, candidates):
        # (a pyenv shim is on PATH even when its version is not active: it must run)
        if subprocess.run([str(candidate), "-c", ""], capture_output=True).returncode == 0:
            return str(candidate)
    raise SystemExit(f"no Python {major_minor} (the front matter's) on PATH or under pyenv")


def build(venv: Path, matter: dict) -> Path:
    """The builder's environment (module doc, step 1); reused when its inputs are unchanged."""
    torch_version = space_torch()
    recipe = json.dumps(
        [matter["python_version"], matter["sdk_version"], torch_version,
         (REPO / "requirements.txt").read_text()]
    )  # fmt: skip
    marker = venv / "csla-space-build.json"
    python = venv / "bin" / "python"
    if marker.is_file() and marker.read_text() == recipe and python.exists():
        print(f"build: reusing {venv}")
        return python
    shutil.rmtree(venv, ignore_errors=True)
    base = find_python(matter["python_version"])
    print(f"build: {base} -m venv {venv}; torch {torch_version} (ZeroGPU's pick)")
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pins = venv / "space-constraints.txt"
    pins.write_text(f"torch=={torch_version}\n")
    env = {**os.environ, "PIP_CONSTRAINT": str(pins)}
    command = [str(python), "-m", "pip", "install", "-q", "-r", str(REPO / "requirements.txt"),
               f"gradio=={matter['sdk_version']}", "spaces"]  # fmt: skip
    subprocess.run(command, check=True, env=env)
    marker.write_text(recipe)
    return python


WRITE_WEIGHTS = r"""
import hashlib, json, os, sys
import open_clip, torch
from safetensors.torch import save_file
from csla_core.models.builders import CLIP_MODEL_NAME, random_models, seeded_build

out = sys.argv[1]
generator, encoder, latent_avg = random_models(7, 1024)
state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
state.update({f"decoder.{k}": v for k, v in generator.state_dict().items()})
torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": {"stylegan_size": 1024}},
           os.path.join(out, "e4e_ffhq_encode.pt"))
clip = seeded_build(8, lambda: open_clip.create_model(CLIP_MODEL_NAME))
save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
          os.path.join(out, "open_clip_model.safetensors"))
"""


def preload(hf_home: Path, python: Path, matter: dict) -> dict[str, str]:
    """The ``preload_from_hub`` files, as the builder leaves them (module doc, step 2); returns
    {file name: sha256}. Written once per ``hf_home``."""
    hub = hf_home / "hub"
    made = hf_home / "made"
    if not (made / "e4e_ffhq_encode.pt").is_file():
        made.mkdir(parents=True, exist_ok=True)
        print("preload: writing the weight files (random values, real formats)")
        subprocess.run([str(python), "-c", WRITE_WEIGHTS, str(made)], check=True, cwd=REPO)
    sums = {}
    for entry in matter.get("preload_from_hub", []):
        repo_id, names, commit = entry.split()
        folder = hub / f"models--{repo_id.replace('/', '--')}"
        for name in names.split(","):
            data_path = made / name
            digest = hashlib.sha256(data_path.read_bytes()).hexdigest()
            blob = folder / "blobs" / digest
            snapshot = folder / "snapshots" / commit / name
            if not blob.exists():
                blob.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data_path, blob)
            if not snapshot.exists():
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
            sums[name] = digest
    return sums


# ------------------------------------------------------------------------------ a start


class Space:
    """One start of the app in the built environment, with a fresh home folder."""

    def __init__(self, python: Path, work: Path, hf_home: Path, sums: dict, name: str, **env):
        self.python, self.work, self.name = python, work, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        home = work / f"home-{name}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        self.log_path = work / f"app-{name}.log"
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("CSLA_", "HF_", "SPACE", "GRADIO_", "PYTHONPATH"))
        }  # fmt: skip
        self.env.update(
            HOME=str(home),
            HF_HOME=str(hf_home),
            HF_HUB_OFFLINE="1",
            SYSTEM="spaces",
            SPACE_ID=SPACE_ID,
            SPACE_AUTHOR_NAME=SPACE_ID.split("/")[0],
            SPACE_REPO_NAME=SPACE_ID.split("/")[1],
            SPACE_HOST="someone-csla-portrait-editor.hf.space",
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(self.port),
            GRADIO_ANALYTICS_ENABLED="False",
            CSLA_CALIBRATION_SAMPLES=CALIBRATION_SAMPLES,
            CSLA_TEST_ACCEPT_SHA256=sums["e4e_ffhq_encode.pt"],
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
        )
        self.env.update({k: v for k, v in env.items() if v is not None})
        for key in [k for k, v in env.items() if v is None]:
            self.env.pop(key, None)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Space:
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(self.python), "app.py"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"{self.name}: the app exited ({self.process.returncode}):\n{self.log()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    self.config = response.read().decode()
                print(f"{self.name}: the app answers at {self.url}")
                return self
            except OSError:
                time.sleep(1)
        raise SystemExit(f"{self.name}: the app did not answer within 900 s:\n{self.log()[-4000:]}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"{self.name}: no {text!r} in the log:\n{self.log()[-4000:]}")
            time.sleep(1)

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)


def check(condition: bool, what: str, space: Space | None = None) -> None:
    if not condition:
        detail = f"\n--- {space.name} log ---\n{space.log()[-4000:]}" if space else ""
        raise SystemExit(f"FAILED: {what}{detail}")
    print(f"ok: {what}")


def edit(space: Space, strength: float):
    from gradio_client import handle_file

    return space.client().predict(
        handle_file(str(ASTRONAUT)), "smiling", strength, 0, 1, api_name="/edit"
    )


def same_picture(path: str, reference: Path) -> bool:
    import numpy as np
    from PIL import Image

    with Image.open(path) as a, Image.open(reference) as b:
        x, y = np.asarray(a.convert("RGB"), np.int16), np.asarray(b.convert("RGB"), np.int16)
    return x.shape == y.shape and int(np.abs(x - y).max()) <= 1


# ------------------------------------------------------------------------------ the checks


def cpu_space(python, work, hf_home, sums) -> None:
    with Space(python, work, hf_home, sums, "cpu") as space:
        check(
            "Preparing CSLA for these models" in space.config,
            "the page says it is preparing CSLA",
            space,
        )
        check(
            "RANDOM-WEIGHTS" not in space.config,
            "the real resolution path (no random weights)",
            space,
        )
        (zero,) = edit(space, 0.0)
        check(
            same_picture(zero["image"], ASTRONAUT),
            "/edit at strength 0 gives the photo back",
            space,
        )
        space.wait_for_log(READY)
        (first,) = edit(space, 1.0)
        check("fallback" not in first["caption"] and Path(first["image"]).is_file(),
              "/edit after calibration is a CSLA edit", space)  # fmt: skip


def zerogpu_space(python, work, hf_home, sums) -> None:
    blobs = sorted((hf_home / "hub").rglob("blobs/*"))
    with ZeroGpuStandIn() as device:
        offload = work / "zerogpu-offload"
        with Space(python, work, hf_home, sums, "zerogpu", SPACES_ZERO_GPU="true",
                   SPACES_ZERO_DEVICE_API_URL=device.url, ZEROGPU_OFFLOAD_DIR=str(offload),
                   ZEROGPU_MMAP_AUTOPRUNE_PATTERN=str(hf_home / "hub" / "models--*" / "blobs" / "*"),
                   ) as space:  # fmt: skip
            check("/startup-report" in device.paths("POST"), "spaces reported the start-up", space)
            check(
                "ZeroGPU tensors packing" in space.log(), "spaces packed the model tensors", space
            )
            check("in GPU calls only" in space.log(), "calibration waits for GPU calls", space)
            check(all(b.exists() for b in blobs), "the preloaded files survive packing", space)
            try:
                edit(space, 0.0)
                reached = True
            except Exception as exc:  # no GPU here: the worker finds no driver
                reached = "pickl" not in str(exc).lower()
            paths = device.paths("POST")
            check("/schedule" in paths and "/allow" in paths and reached,
                  "an /edit reached a GPU worker with its arguments pickled", space)  # fmt: skip


def mappers_survive(python, work, hf_home, sums, how: str) -> None:
    volume = work / "volume"
    shutil.rmtree(volume, ignore_errors=True)
    hub = HubStandIn(token="hf_space_secret").start() if how == "hub" else None
    try:
        env: dict = {}
        if how == "volume":
            env = {"CSLA_CACHE": str(volume / "csla")}
        elif how == "hub":
            env = {"HF_TOKEN": hub.token, "CSLA_MAPPERS_REPO": "someone/csla-mappers",
                   "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": None}  # fmt: skip
        with Space(python, work, hf_home, sums, f"{how}-1", **env) as space:
            if how == "none":
                check("the next start calibrates again" in space.config,
                      "the page says the next restart calibrates again, and how to keep them", space)  # fmt: skip
                return
            space.wait_for_log(READY)
            if how == "hub":
                space.wait_for_log("mappers uploaded")
                names = list(hub.files("someone/csla-mappers"))
                check(any(n.startswith("csla_mappers-") for n in names) and "README.md" in names,
                      "the mappers and a model card went to the mappers repo", space)  # fmt: skip
        # The restart: a new home folder (the lost disk), the same image and volume.
        with Space(python, work, hf_home, sums, f"{how}-2", **env) as space:
            check(
                "Preparing CSLA" not in space.config,
                f"after a restart the mappers are back ({how})",
                space,
            )
            (first,) = edit(space, 1.0)
            check(Path(first["image"]).is_file(), "and edit", space)
    finally:
        if hub is not None:
            hub.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=None, help="the build's environment (kept)")
    parser.add_argument(
        "--work", type=Path, default=None, help="files of the run (default: temporary)"
    )
    parser.add_argument("--zerogpu", action="store_true")
    parser.add_argument("--mappers", choices=("volume", "hub", "none"), action="append")
    parser.add_argument(
        "--all", action="store_true", help="the CPU start, ZeroGPU, every mappers check"
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="csla-space-"))
    work.mkdir(parents=True, exist_ok=True)
    matter = front_matter()
    python = build(args.venv or work / "venv", matter)
    hf_home = work / "hf"
    sums = preload(hf_home, python, matter)
    started = time.monotonic()
    if args.all or not (args.zerogpu or args.mappers):
        cpu_space(python, work, hf_home, sums)
    if args.all or args.zerogpu:
        zerogpu_space(python, work, hf_home, sums)
    for how in ("volume", "hub", "none") if args.all else args.mappers or ():
        mappers_survive(python, work, hf_home, sums, how)
    print(f"the Space starts as it should ({time.monotonic() - started:.0f} s); files in {work}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
