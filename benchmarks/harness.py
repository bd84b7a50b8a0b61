"""What the benchmark scripts share: the CPU timer and the `--tiny` flag of the GPU ones.

Imported by the scripts in this folder (run as `python benchmarks/<script>.py`, which puts
this folder on the import path).
"""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """The median wall time of `repeats` calls of fn(), in seconds (no warm-up call)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def add_tiny_flag(parser):
    """--tiny: toy sizes, for running a GPU benchmark's code on a CPU (benchmarks/dry_run.py)."""
    parser.add_argument("--tiny", action="store_true",
                        help="toy sizes that run in seconds under Triton's interpreter "
                             "(benchmarks/dry_run.py)")
