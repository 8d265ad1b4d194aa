"""The bench's baseline: the reference path as the reference implementation runs it.

``python -m csla_core bench`` starts this module in a fresh process so the render runs with
the C library's default allocator settings, as it does in the reference implementation, while
the bench's own process has ``load_pipeline``'s allocator tuning (``csla_core.runtime``).
It takes ``run``'s keywords as one JSON object and prints one JSON object: the median seconds
of a reference-path render at each resolution.

    python -m csla_core.evaluation.bench_baseline '{"size": 1024, "resolutions": [1024, 256], "repeats": 3}'
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from ..models.stylegan2 import Generator


def reference_render_times(
    size: int, resolutions: list[int], repeats: int, seed: int = 0
) -> dict[int, float]:
    """Median seconds of ``impl="reference"`` renders (random weights: cost does not depend
    on their values), one untimed warm-up run per resolution."""
    torch.manual_seed(seed)
    generator = Generator(size=size).eval()
    times: dict[int, float] = {}
    with torch.inference_mode():
        wplus = generator.to_wplus(generator.mean_latent(256))
        for resolution in resolutions:
            runs = []
            for i in range(repeats + 1):
                start = time.perf_counter()
                generator(wplus, max_resolution=resolution, impl="reference")
                if i:  # the first run is the warm-up
                    runs.append(time.perf_counter() - start)
            times[resolution] = statistics.median(runs)
    return times


def run(size: int, resolutions: list[int], repeats: int, threads: int | None = None) -> str:
    """The JSON line the bench reads: ``{"<resolution>": median seconds, ...}``."""
    if threads:
        torch.set_num_threads(threads)
    times = reference_render_times(size, resolutions, repeats)
    return json.dumps({str(r): s for r, s in times.items()})


if __name__ == "__main__":
    # The bench's own protocol (one JSON object of ``run``'s keywords), not a command line.
    print(run(**json.loads(sys.argv[1])))
