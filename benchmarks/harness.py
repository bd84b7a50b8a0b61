"""What the benchmark scripts share: the CPU timer, the copy-bandwidth probe and the
`--tiny` flag of the GPU ones.

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


def copy_bandwidth(device, n_bytes: int) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read and written (median of
    `triton.testing.do_bench`): the bandwidth that the bytes floors are divided by."""
    import torch
    import triton.testing

    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300,
                                 return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def add_tiny_flag(parser):
    """--tiny: toy sizes, for running a GPU benchmark's code on a CPU (benchmarks/dry_run.py)."""
    parser.add_argument("--tiny", action="store_true",
                        help="toy sizes that run in seconds under Triton's interpreter "
                             "(benchmarks/dry_run.py)")
