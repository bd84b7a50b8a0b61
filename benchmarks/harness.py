"""What the benchmark scripts share: the CPU timer, the copy-bandwidth probe, the
`--tiny` flag of the GPU ones, the parsers of lists of lengths and numbers and of JSON
arguments, the demo's tasks with changes, and the runner of a sweep's settings side by
side.

Imported by the scripts in this folder (run as `python benchmarks/<script>.py`, which puts
this folder on the import path).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time


def parse_length(text: str) -> int:
    """A length in tokens, such as 4096, 4K or 1M (K = 1024), positive."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    value = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()] if m else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a length such as 4096, 4K or 1M, got "
                                         f"{text!r}")
    return value


def parse_lengths(text: str) -> list[int]:
    """Comma-separated lengths (`parse_length`), in the order given."""
    lengths = [parse_length(t) for t in text.split(",") if t.strip()]
    if not lengths:
        raise argparse.ArgumentTypeError(f"expected lengths such as 1K,4K, got {text!r}")
    return lengths


def parse_floats(text: str) -> list[float]:
    """Comma-separated numbers >= 0 (costs, priors), in the order given."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None
    if any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return values


def json_object(parser, flag: str, text: str) -> dict:
    """`text`, a command-line value, parsed as a JSON object; anything else stops the
    script through `parser.error`, naming `flag`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"{flag}: expected JSON, got {text!r} ({e})")
    if not isinstance(value, dict):
        parser.error(f"{flag}: expected a JSON object, got {text!r}")
    return value


def demo_task(parser, flag: str, spec, changes: dict):
    """The evaluation task of the demo's `spec` named by changes["name"], its other keys
    changed; a name the demo does not evaluate, or a parameter the task refuses, stops the
    script through `parser.error`, naming `flag`."""
    from memmodel.tasks import task_from_spec

    base = {s["name"]: s for s in spec.eval_tasks}
    if changes.get("name") not in base:
        parser.error(f"{flag}: expected one of the demo's tasks {sorted(base)}, got "
                     f"{changes.get('name')!r}")
    try:
        return task_from_spec({**base[changes["name"]], **changes})
    except (TypeError, ValueError) as e:
        parser.error(f"{flag}: {e}")


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


def run_settings(fn, jobs: list[tuple], workers: int, desc: str, json_path,
                 echo: bool = False) -> list[dict]:
    """fn(*job) for every job, each returning a list of rows: in this process when
    `workers` is 1, else side by side in that many spawned processes. After each job,
    `json_path` is rewritten with the rows of every finished job, in job order (echo: each
    new row is also printed as JSON above the progress bar). Returns all rows in job order.
    """
    from tqdm.auto import tqdm

    done: dict[int, list[dict]] = {}  # job index -> its rows

    def ordered() -> list[dict]:  # in job order, whatever finished first
        return [r for k in sorted(done) for r in done[k]]

    def collect(i, rows):
        done[i] = rows
        if echo:
            for r in rows:
                tqdm.write(json.dumps(r))
        json_path.write_text(json.dumps(ordered(), indent=1) + "\n", encoding="utf-8")

    bar = tqdm(total=len(jobs), desc=desc)
    if workers == 1:
        for i, job in enumerate(jobs):
            collect(i, fn(*job))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                collect(futures[future], future.result())
                bar.update()
    bar.close()
    return ordered()
