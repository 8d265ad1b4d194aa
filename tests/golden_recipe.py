"""The weight recipe of the golden parity data (see fixtures/golden/README.md).

Every state-dict entry is filled from its own name, so the reference implementations and ours
get bit-identical weights without any real checkpoint.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"


def load_manifest(name: str) -> dict:
    return json.loads((GOLDEN_DIR / f"{name}_manifest.json").read_text())


def load_arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def recipe_tensor(name: str, shape: list[int], dtype: torch.dtype, equalized: bool) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if leaf == "kernel":
        k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
        kk = torch.outer(k, k)
        return (kk / kk.sum() * 4).to(dtype)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if name.startswith("style."):
        x = x * (100 if x.ndim >= 2 else 10)
    elif leaf == "running_var":
        x = x.abs() * 0.1 + 0.9
    elif leaf in ("running_mean", "bias"):
        x = x * 0.1 + (1.0 if name.endswith("modulation.bias") else 0.0)
    elif x.ndim >= 2 and not equalized and "linear" not in name:
        x = x / math.sqrt(math.prod(shape[1:]))
    elif x.ndim == 1:
        x = 1 + 0.1 * x
    return x.to(dtype)


def recipe_state_dict(module: torch.nn.Module, manifest: dict, equalized: bool) -> dict:
    """Weights by the recipe, for exactly the keys and shapes of ``module``'s state dict.

    Fails when the module's keys or shapes differ from the manifest's: that is the layout test.
    """
    own = module.state_dict()
    expected = {k: list(v) for k, v in manifest["state_dict"].items()}
    assert sorted(own) == sorted(expected), (
        f"missing: {sorted(set(expected) - set(own))[:5]}, extra: {sorted(set(own) - set(expected))[:5]}"
    )
    out = {}
    for key, tensor in own.items():
        assert list(tensor.shape) == expected[key], (
            f"{key}: {list(tensor.shape)} != {expected[key]}"
        )
        out[key] = recipe_tensor(key, expected[key], tensor.dtype, equalized)
    return out


def relative_error(actual: np.ndarray | torch.Tensor, expected: np.ndarray) -> float:
    a = np.asarray(
        actual.detach().cpu() if isinstance(actual, torch.Tensor) else actual, np.float64
    )
    b = np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
