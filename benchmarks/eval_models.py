"""Stream saved models through the demo's evaluation tasks at any lengths.

    python benchmarks/eval_models.py results/models/qlearning.pt results/models/importance.pt \
        --lengths 131072,1048576 --out results/hold.json

Each model is loaded with `memmodel.load` (eval mode, its controllers greedy), unchanged,
and streamed (`memmodel.evaluation.evaluate_stream`) through the demo's tasks
(`memmodel.training.demo.DEMO_SPEC`'s eval_tasks: the hard passkey and multi-needle with
decoys) at each length, on the test split, with the demo's batch and segment sizes: the
rows the demo writes (accuracy with a 95% Wilson interval, live entries, state bytes,
tokens/s, peak RSS), for lengths the demo does not run. A progress bar per evaluation.

`--task` replaces the tasks with one of the demo's changed (repeatable), as JSON naming
the task and the parameters that change, e.g. multi-needle with every fact stated three
times:

    python benchmarks/eval_models.py results/models/importance.pt --lengths 32768 \
        --task '{"name": "multi_needle", "repeats": 3}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import demo_task, json_object, parse_lengths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="checkpoints (results/models/<variant>.pt)")
    p.add_argument("--lengths", type=parse_lengths, default=[131072, 1048576])
    p.add_argument("--n", type=int, default=None, help="sequences per task (default: the demo's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="results/hold.json")
    p.add_argument("--task", action="append", default=None, metavar="JSON",
                   help="one of the demo's tasks with changes, as JSON with its name, e.g. "
                        "'{\"name\": \"multi_needle\", \"repeats\": 3}' (repeatable; "
                        "default: the demo's tasks unchanged)")
    args = p.parse_args(argv)
    for path in args.models:
        if not Path(path).exists():
            p.error(f"models: {path} does not exist")
    if args.n is not None and args.n < 1:
        p.error(f"--n: expected a positive int, got {args.n}")

    import torch

    import memmodel
    from memmodel.evaluation import evaluate_stream
    from memmodel.training.ablation import _with_length
    from memmodel.training.demo import demo_spec

    torch.set_num_threads(args.threads)
    spec = demo_spec()
    tasks = [(task, {}) for task in spec.evaluation_tasks()]
    if args.task:
        tasks = [_changed_task(p, spec, text) for text in args.task]
    n = spec.eval_n if args.n is None else args.n
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in args.models:
        model, _ = memmodel.load(path)
        for task, changes in tasks:
            for T in args.lengths:
                t0 = time.perf_counter()
                r = evaluate_stream(model, _with_length(task, T), n=n,
                                    batch_size=spec.eval_batch_size, segment=spec.segment,
                                    split=spec.eval_split, progress=not args.no_progress)
                d = r.to_dict()
                rows.append(dict(model=path, task=d["task"], changes=changes, T=T, n=d["n"],
                                 accuracy=d["accuracy"], ci_low=d["ci_low"],
                                 ci_high=d["ci_high"], chance=d["chance"],
                                 entries=d["entries"], state_bytes=d["state_bytes"],
                                 tokens_per_s=d["tokens_per_s"], peak_rss_mb=d["peak_rss_mb"],
                                 seconds=time.perf_counter() - t0))
                sys.stdout.write(json.dumps(rows[-1]) + "\n")
                out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return rows


def _changed_task(p, spec, text):
    """The demo's evaluation task named in the JSON `text` with its other keys changed, and
    those changes."""
    changes = json_object(p, "--task", text)
    if "name" not in changes:
        p.error(f"--task: expected a JSON object with a task name, got {text!r}")
    return (demo_task(p, "--task", spec, changes),
            {k: v for k, v in changes.items() if k != "name"})


if __name__ == "__main__":
    main()
