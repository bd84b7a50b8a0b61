"""The Q-learning controller's cost trade-off: accuracy against live entries and reads.

    python benchmarks/sweep_qlearning_costs.py --out results/costs     # after `make demo`

For each (memory_cost, retrieve_cost) of the grid, trains the demo's qlearning variant
(`memmodel.training.demo.DEMO_SPEC`: phase 2 from the demo's warm-up weights, the same
steps, batches and schedule; only the two costs change), then streams it through the
demo's passkey and multi-needle tasks at --T tokens (n sequences each, greedy) and counts
what its policy does there: live entries per bank at the end, and the fraction of chunks
that read the bank. The bounded heuristics and store_all are drawn beside it from the
demo's rows at the same T (they read every chunk). Writes costs.json (one row per setting
and task) and costs.png (a panel per task and measure) under --out. The settings run side
by side in --workers processes (one per CPU core by default), the CPU fast paths compiled
as in the demo (--no-compile to run them eagerly).

For the retrieval cost, `--question TEXT` gives the passkey (in training and evaluation) a
fixed question before its query byte, as RULER's "What is the pass key? The pass key is",
so the chunks before the answer's tell that a read is coming; `--guided-read` sets how
often the controller's exploring reads follow the heuristic (which reads every chunk):
below 1, skipping is tried and its value learnt; `--prior-read` sets the margin a SKIP
must beat (QLearningConfig.prior_read; the demo's prior of 1.0 nat applies to reads too
unless it is set below the retrieval cost). `--read-steps N` splits a setting's
training in two: first the demo's training with no costs and reads following the heuristic
(the model learns to use a bank read at every chunk), then N steps on that model frozen, in
which a controller started from the first one's network, exploring afresh, learns under the
setting's costs and --guided-read (so skipped reads cannot teach the model to do without
the memory).

    python benchmarks/sweep_qlearning_costs.py --memory-costs 0 --retrieve-costs 0,0.01,0.05 \
        --question " What is the pass key. The pass key is" --guided-read 0 --read-steps 300 \
        --out results/reads
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from harness import parse_floats, run_settings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm", default="results/models/warmup.pt",
                   help="the demo's warm-up checkpoint (written by `make demo`)")
    p.add_argument("--baselines", default="results/demo.json",
                   help="the demo's rows, for fifo, importance and store_all at --T")
    p.add_argument("--memory-costs", type=parse_floats, default=[0.0, 0.002, 0.01])
    p.add_argument("--retrieve-costs", type=parse_floats, default=[0.0, 0.01])
    p.add_argument("--steps", type=int, default=None,
                   help="phase-2 steps (default: the demo's); fewer for a quick check")
    p.add_argument("--T", type=int, default=131072, help="evaluation length in tokens")
    p.add_argument("--n", type=int, default=16, help="sequences per task")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--workers", type=int, default=None,
                   help="settings trained and evaluated side by side, one process each "
                        "(default: one per CPU core, at most one per setting)")
    p.add_argument("--no-compile", action="store_true",
                   help="run the CPU fast paths eagerly (MEMMODEL_COMPILE=0), as the demo's "
                        "--no-compile")
    p.add_argument("--question", default="",
                   help="a fixed question before the passkey's query byte, in training and "
                        "evaluation (default: none, the demo's passkey)")
    p.add_argument("--guided-read", type=float, default=None,
                   help="QLearningConfig.guided_read: the share of exploring reads that follow "
                        "the heuristic's (read every chunk); default: the demo's `guided`")
    p.add_argument("--prior-read", type=float, default=None,
                   help="QLearningConfig.prior_read: the margin for the heuristic's read "
                        "(default: the demo's prior)")
    p.add_argument("--read-steps", type=int, default=0,
                   help="steps of a second phase on the frozen model, in which a controller "
                        "started from the first phase's learns under the costs (default 0: "
                        "one phase, the costs from the start)")
    p.add_argument("--out", default="results/costs")
    args = p.parse_args(argv)
    if args.read_steps < 0:
        p.error(f"--read-steps: expected an int >= 0, got {args.read_steps}")
    if args.guided_read is not None and not 0 <= args.guided_read <= 1:
        p.error(f"--guided-read: expected a number in [0, 1], got {args.guided_read}")
    if args.prior_read is not None and not args.prior_read >= 0:
        p.error(f"--prior-read: expected a number >= 0, got {args.prior_read}")
    if args.no_compile:
        os.environ["MEMMODEL_COMPILE"] = "0"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    if not Path(args.warm).exists():
        p.error(f"--warm: {args.warm} does not exist (run `make demo` first)")
    grid = [(m, r) for m in args.memory_costs for r in args.retrieve_costs]
    from memmodel.training.ablation import worker_count

    try:
        workers = worker_count(args.workers, len(grid))
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(args.warm, m, r, args.steps, args.T, args.n, args.threads, args.question,
             args.guided_read, args.read_steps, args.prior_read) for m, r in grid]
    rows = run_settings(run_setting, jobs, workers, "cost settings", out / "costs.json",
                        echo=True)
    baselines = []
    if Path(args.baselines).exists():
        baselines = [dict(r, reads=1.0) for r in json.loads(Path(args.baselines).read_text())
                     if r["T"] == args.T and r["variant"] in ("fifo", "importance",
                                                             "store_all")]
    plot(rows, baselines, out / "costs.png")
    sys.stdout.write(table(rows, baselines))


def run_setting(warm_path: str, memory_cost: float, retrieve_cost: float,
                steps: Optional[int], T: int, n: int, threads: int, question: str = "",
                guided_read: Optional[float] = None, read_steps: int = 0,
                prior_read: Optional[float] = None) -> list[dict]:
    """Train the demo's qlearning variant with these costs from the warm-up weights, then
    stream it through the demo's evaluation tasks at T tokens: one row per task. question:
    the passkey's (training and evaluation); guided_read, prior_read: the controller's
    (None: the demo's); read_steps > 0:
    the demo's training without costs first, then read_steps on the frozen model for a
    controller (from the first one's network, epsilon restarted) under the costs."""
    torch.set_num_threads(threads)
    from memmodel.controllers import QLearningController
    from memmodel.evaluation import evaluate_stream
    from memmodel.model import MemoryLM
    from memmodel.training.ablation import AblationSpec, _training_task, _with_length, load_warm
    from memmodel.training.demo import demo_spec
    from memmodel.training.memory import load_checkpoint, tallying, train_memory

    warm = load_checkpoint(warm_path)[0].state_dict()
    data = demo_spec().to_dict()
    costs = {"memory_cost": memory_cost, "retrieve_cost": retrieve_cost,
             "guided_read": guided_read, "prior_read": prior_read}
    if not read_steps:
        data["qlearning"] = {**data["qlearning"], **costs}
    if question:
        for key in ("train_tasks", "eval_tasks"):
            data[key] = [dict(t, question=question) if t["name"] == "passkey" else t
                         for t in data[key]]
    if steps is not None:
        data["train"] = {**data["train"], "steps": steps}
    spec = AblationSpec.from_dict(data)
    config = spec.config("qlearning")
    torch.manual_seed(spec.seed)
    model = MemoryLM(config)
    load_warm(model, warm)
    controller = QLearningController(config, spec.qlearning_config())
    t0 = time.perf_counter()
    train_memory(model, _training_task(spec), spec.train_config(), controller)
    if read_steps:
        rl = dataclasses.replace(spec.qlearning_config(), **costs)
        second = QLearningController(config, rl)
        plain, tensors = controller.policy_state()
        second.load_policy_state({**plain, "updates": 0}, tensors)  # epsilon restarts
        frozen = dataclasses.replace(spec.train_config(), steps=read_steps, lr=0.0)
        train_memory(model, _training_task(spec), frozen, second)
        controller = second
    trained_s = time.perf_counter() - t0
    rows = []
    for task in spec.evaluation_tasks():
        with tallying(model) as tallies:
            r = evaluate_stream(model, _with_length(task, T), n=n,
                                batch_size=spec.eval_batch_size, segment=spec.segment,
                                split=spec.eval_split, progress=False)
        chunks = sum(t.chunks for t in tallies)
        rows.append(dict(
            memory_cost=memory_cost, retrieve_cost=retrieve_cost, question=question,
            guided_read=guided_read, prior_read=prior_read, read_steps=read_steps,
            task=r.task, T=T,
            n=r.n, accuracy=r.accuracy, ci_low=r.ci_low, ci_high=r.ci_high,
            entries=r.entries, reads=sum(t.reads for t in tallies) / max(chunks, 1),
            train_seconds=trained_s))
    return rows


def table(rows, baselines) -> str:
    lines = ["| controller | memory_cost | retrieve_cost | task | n | accuracy [95% CI] | "
             "entries | reads |", "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    for r in baselines:
        lines.append(f"| {r['variant']} | - | - | {r['task']} | {r['n']} | "
                     f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['entries']:.1f} | 1.00 |")
    for r in rows:
        lines.append(f"| qlearning | {r['memory_cost']:g} | {r['retrieve_cost']:g} | "
                     f"{r['task']} | {r['n']} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}] | {r['entries']:.1f} | {r['reads']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows, baselines, path):
    from memmodel.plotting import pyplot

    plt = pyplot(path)
    if plt is None:
        return
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 3.4 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, measure in enumerate(("entries", "reads")):
            ax = axes[i][j]
            mine = [r for r in rows if r["task"] == task]
            for r in mine:
                ax.errorbar(r[measure], r["accuracy"],
                            yerr=[[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]],
                            marker="o", color="C0", capsize=2)
                ax.annotate(f"m{r['memory_cost']:g} r{r['retrieve_cost']:g}",
                            (r[measure], r["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
            for k, b in enumerate(r for r in baselines if r["task"] == task):
                ax.scatter(b[measure], b["accuracy"], marker="s", color=f"C{k + 1}",
                           label=b["variant"])
            if measure == "entries":
                ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel("live entries per bank" if measure == "entries"
                          else "fraction of chunks read")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{task}, T={rows[0]['T']}")
            if baselines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
