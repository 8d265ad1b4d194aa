"""The supported torch range, as requirements.txt states it, is what CI tests and what ZeroGPU
can install: .ci/run pins the lowest and the newest supported release in their own virtual
environments, and the Space's builder picks a torch from ZeroGPU's list."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.version import Version

# ZeroGPU installs torch only from this list (hub-docs spaces-zerogpu.md, August 2026).
ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")


def _requirements(path) -> dict[str, Requirement]:
    lines = (REPO_ROOT / path).read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {r.name.lower(): r for r in reqs if not r.name.startswith("-")}


def _pins(path) -> dict[str, Version]:
    return {
        name: Version(str(r.specifier).removeprefix("=="))
        for name, r in _requirements(path).items()
    }


def test_requirements_admit_zerogpus_newest_torch_and_ci_tests_both_ends():
    required = _requirements("requirements.txt")
    lowest, newest = _pins(".ci/torch-lowest.txt"), _pins(".ci/torch-newest.txt")
    torch_spec = required["torch"].specifier
    # ZeroGPU's newest torch is in range, and it is the lowest release CI tests.
    assert Version(ZEROGPU_TORCH[-1]) in torch_spec
    assert lowest["torch"] == Version(ZEROGPU_TORCH[-1])
    assert newest["torch"] in torch_spec and newest["torch"] > lowest["torch"]
    # The range starts at the lowest pin: nothing below it is claimed without being tested.
    assert not any(v in torch_spec for v in ZEROGPU_TORCH[:-1])
    for pins in (lowest, newest):
        assert pins["torchvision"] in required["torchvision"].specifier


def test_the_installed_torchvision_is_built_for_the_installed_torch():
    from importlib.metadata import requires

    installed = Version(re.sub(r"\+.*", "", torch.__version__))
    wanted = [Requirement(r) for r in requires("torchvision") or () if r.startswith("torch")]
    assert wanted, "torchvision's metadata names no torch"
    assert all(installed in r.specifier for r in wanted), (installed, wanted)


def test_the_running_torch_is_in_the_supported_range():
    installed = Version(re.sub(r"\+.*", "", torch.__version__))
    spec = _requirements("requirements.txt")["torch"].specifier
    if installed not in spec:
        pytest.fail(f"torch {installed} is outside the supported range {spec} (requirements.txt)")
