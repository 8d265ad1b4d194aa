"""The allocator tuning that load_pipeline applies: freed tensor memory is reused, not unmapped.

What users notice is speed (a 1024 render on 2 cores: about 0.42 s instead of 0.65 s, from
``python -m csla_core bench``); the mechanism is page faults, which a test can count exactly.
Each case runs in a fresh process, as the settings are process-wide.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from csla_core import runtime

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator tuning is for glibc's malloc; other C libraries are left alone",
)


# Allocates, touches and frees a 256 MB tensor three times and reports the page faults of the
# last round (the heap settles in the first two). With the defaults the block is unmapped on
# every free and faulted in again, 4 KB at a time, on every allocation.
CHILD = """
import json, resource, sys
import torch
if sys.argv[1] == "tuned":
    from csla_core import load_pipeline
    load_pipeline(
        random_weights=True, device="cpu", size=8, with_encoder=False, with_clip=False,
        tune_allocator=True,
    )
def round_trip():
    block = torch.ones(64 * 1024 * 1024)
    del block
round_trip()
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_faults() -> int:
    faults = _faults("plain")
    assert faults > 50_000  # 256 MB / 4 KB pages: every page faulted in again
    return faults


@glibc_only
def test_allocator_tuning_makes_freed_tensor_memory_reusable(default_faults):
    assert _faults("tuned") < default_faults / 10


@glibc_only
def test_tuning_reports_what_it_set_and_is_idempotent():
    script = (
        "import json; from csla_core import runtime\n"
        "first = runtime.tune_cpu_allocator()\n"
        "again = runtime.tune_cpu_allocator()\n"
        "print(json.dumps([first.applied, first.mmap_threshold, first.arena_max,\n"
        "                  again is first, runtime.allocator_settings() is first]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert json.loads(done.stdout) == [True, 1 << 30, 1, True, True]


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    settings = runtime.tune_cpu_allocator()
    assert not settings.applied and "not glibc" in settings.reason
