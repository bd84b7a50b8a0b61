"""The long-term memory's chunk boundaries with a controller's plan against `decide` calls.

    python benchmarks/bench_ltm_plan_cpu.py --T 16384 --segment 4096 --repeats 5

A tiny MemoryLM (d_model 64, 2 layers, long-term memory C=64, P=1, two levels of 8,
r=2) streams B rows of T tokens in segments, under no_grad, once per controller and
path: the controller as it is (`fifo` and `store_all` state their decision as a `plan`,
so the module applies it to a segment's boundaries without calling `decide`) and the
same controller with `plan = None` (`decide` asked at every boundary). Both paths apply
the decisions through the same code; the benchmark first checks that they give
bit-identical logits. Runs alternate between the paths; reported per case: the median
over the runs of the whole stream's wall time and of the host time spent at the chunk
boundaries (`_decide` and `_apply_decision` of every layer), in ms per boundary. One JSON line
per case on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from memmodel.config import MemoryConfig
from memmodel.controllers import CONTROLLERS
from memmodel.long_term_memory import LongTermMemory
from memmodel.model import MemoryLM


class BoundaryClock:
    """Accumulates the wall time spent in LongTermMemory's per-boundary methods."""

    METHODS = ("_decide", "_apply_decision")

    def __init__(self):
        self.seconds, self.calls = 0.0, 0
        self.saved = {name: getattr(LongTermMemory, name) for name in self.METHODS}

    def __enter__(self):
        for name, fn in self.saved.items():
            setattr(LongTermMemory, name, self._timed(fn, name == "_apply_decision"))
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(LongTermMemory, name, fn)

    def _timed(self, fn, counts):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += counts
        return timed


def run_stream(model, ids, segment):
    """(logits [B, T, 256], seconds, boundary seconds, boundaries)."""
    state, out = None, []
    with BoundaryClock() as clock, torch.no_grad():
        t0 = time.perf_counter()
        for p in range(0, ids.shape[1], segment):
            res = model(ids[:, p:p + segment], state=state)
            out.append(res.logits)
            state = res.state
        seconds = time.perf_counter() - t0
    return torch.cat(out, 1), seconds, clock.seconds, clock.calls


def set_controller(model, controller):
    for layer in model.layers:
        layer.long_term_memory.controller = controller


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=16384)
    p.add_argument("--segment", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--controllers", default="fifo,store_all")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.controllers.split(","):
        torch.manual_seed(0)
        cfg = MemoryConfig(d_model=64, n_layers=2, d_state=16, ltm_controller=name,
                           ltm_heads=2, ltm_chunk_size=64, ltm_summaries=1, ltm_levels=2,
                           ltm_capacity=[8, 8], ltm_merge=2, backend="torch")
        model = MemoryLM(cfg).eval()
        planned = CONTROLLERS[name](cfg)
        if planned.plan is None:
            raise SystemExit(f"{name}: the controller states no plan")
        asked = type(f"Asked{type(planned).__name__}", (type(planned),), {"plan": None})(cfg)
        ids = torch.randint(0, 256, (args.batch, args.T))
        paths = {"plan": planned, "decide": asked}
        results = {key: [] for key in paths}
        logits = {}
        for i in range(args.repeats + 1):  # the first round is a warm-up
            for key, ctrl in paths.items():
                set_controller(model, ctrl)
                out, seconds, host, calls = run_stream(model, ids, args.segment)
                logits[key] = out
                if i:
                    results[key].append((seconds, host, calls))
            if not torch.equal(logits["plan"], logits["decide"]):
                raise SystemExit(f"{name}: the plan and the decide calls differ")
        row = {"controller": name, "T": args.T, "segment": args.segment,
               "batch": args.batch, "repeats": args.repeats,
               "boundaries": results["plan"][0][2]}
        for key, res in results.items():
            row[f"{key}_stream_s"] = round(statistics.median(r[0] for r in res), 4)
            row[f"{key}_ms_per_boundary"] = round(
                statistics.median(1e3 * r[1] / r[2] for r in res), 4)
        row["boundary_ratio"] = round(row["decide_ms_per_boundary"]
                                      / row["plan_ms_per_boundary"], 2)
        row["stream_ratio"] = round(row["decide_stream_s"] / row["plan_stream_s"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
