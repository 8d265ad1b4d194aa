"""The bench's baseline: the reference path as the reference implementation runs it.

``python -m csla_core bench`` starts this module in a fresh process so the render runs with
the C library's default allocator settings, as it does in the reference implementation, while
the bench's own process has ``load_pipeline``'s allocator tuning (``csla_core.runtime``).
Prints one JSON object: the median seconds of a reference-path render at each resolution.

    python -m csla_core.evaluation.bench_baseline --size 1024 --resolutions 1024 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m csla_core.evaluation.bench_baseline", description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    times = reference_render_times(args.size, args.resolutions, args.repeats)
    print(json.dumps({str(r): s for r, s in times.items()}))


if __name__ == "__main__":
    main()
