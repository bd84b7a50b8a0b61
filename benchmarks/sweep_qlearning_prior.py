"""The Q-learning controller's heuristic prior: accuracy, and how often the policy departs.

    python benchmarks/sweep_qlearning_prior.py --priors 0.1,0.5,1,2 --variants qlearning,full \
        --out results/prior          # after `make demo`, from its warm-up

For each (variant, prior) trains the demo's variant (`memmodel.training.demo.DEMO_SPEC`:
phase 2 from the demo's warm-up weights, the same steps, batches and schedule; only
`QLearningConfig.prior` changes), then streams it, greedy, through the demo's passkey and
multi-needle tasks at each of --lengths (n sequences each, the test split), and counts at
the first length how often its decisions are the importance heuristic's: the summaries'
STORE / DISCARD (`controllers.highest_scores`), the reads, and the entries a full level
gives up (`controllers.lowest_scores`). Writes prior.json (one row per setting, task and
length) and prints a markdown table. The settings run side by side in --workers processes
(one per CPU core by default), the CPU fast paths compiled as in the demo (--no-compile to
run them eagerly).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import torch
from harness import json_object, parse_floats, parse_lengths, run_settings

VARIANTS = ("qlearning", "full")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm", default="results/models/warmup.pt",
                   help="the demo's warm-up checkpoint (written by `make demo`)")
    p.add_argument("--priors", type=parse_floats, default=[0.0, 0.1, 0.5, 1.0, 2.0])
    p.add_argument("--variants", default="qlearning,full",
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--lengths", type=parse_lengths, default=[8192, 131072],
                   help="evaluation lengths in tokens; the decisions are counted at the first")
    p.add_argument("--steps", type=int, default=None,
                   help="phase-2 steps (default: the demo's); fewer for a quick check")
    p.add_argument("--n", type=int, default=16, help="sequences per task")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--workers", type=int, default=None,
                   help="settings trained and evaluated side by side, one process each "
                        "(default: one per CPU core, at most one per setting)")
    p.add_argument("--no-compile", action="store_true",
                   help="run the CPU fast paths eagerly (MEMMODEL_COMPILE=0)")
    p.add_argument("--qlearning", default=None, metavar="JSON",
                   help="other QLearningConfig changes for every setting, as JSON (e.g. "
                        "'{\"guided\": 0.5, \"guided_read\": 1.0}'); in each row")
    p.add_argument("--out", default="results/prior")
    args = p.parse_args(argv)
    changes = {}
    if args.qlearning is not None:
        from memmodel.config import QLearningConfig

        changes = json_object(p, "--qlearning", args.qlearning)
        if "prior" in changes:
            p.error(f"--qlearning: expected a JSON object of QLearningConfig fields other "
                    f"than prior (--priors sets it), got {args.qlearning!r}")
        try:
            QLearningConfig.from_dict(changes)
        except (TypeError, ValueError) as e:
            p.error(f"--qlearning: {e}")
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: expected some of {list(VARIANTS)}, got {bad}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: expected a positive int, got {args.steps}")
    if args.n < 1:
        p.error(f"--n: expected a positive int, got {args.n}")
    if not Path(args.warm).exists():
        p.error(f"--warm: {args.warm} does not exist (run `make demo` first)")
    if args.no_compile:
        os.environ["MEMMODEL_COMPILE"] = "0"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from memmodel.training.ablation import worker_count

    grid = [(v, prior) for v in variants for prior in args.priors]
    try:
        workers = worker_count(args.workers, len(grid))
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(args.warm, v, prior, args.lengths, args.steps, args.n, args.threads, changes)
            for v, prior in grid]
    rows = run_settings(run_setting, jobs, workers, "prior settings", out / "prior.json")
    sys.stdout.write(table(rows))


class Agreement:
    """Counts of a controller's decisions that are the importance heuristic's."""

    FIELDS = ("store", "read", "select")

    def __init__(self):
        self.same = dict.fromkeys(self.FIELDS, 0)
        self.total = dict.fromkeys(self.FIELDS, 0)

    def add(self, field: str, same: torch.Tensor):
        self.same[field] += int(same.sum())
        self.total[field] += int(same.numel())

    def shares(self) -> dict[str, float]:
        """The fraction of each kind of decision that agreed (None where none was made)."""
        return {f"agree_{k}": (self.same[k] / self.total[k] if self.total[k] else None)
                for k in self.FIELDS}


@contextmanager
def counting(controller, agreement: Agreement):
    """While inside, every `decide` and `select` of `controller` is also compared with the
    importance heuristic's on the same features (the controller acts as before)."""
    from memmodel.controllers import Action
    from memmodel.controllers.heuristics import highest_scores, lowest_scores

    decide, select = controller.decide, controller.select

    def counted_decide(features):
        d = decide(features)
        h = highest_scores(features)
        agreement.add("store", (d.action == int(Action.STORE)) == (h.action == int(Action.STORE)))
        agreement.add("read", d.retrieve == h.retrieve)
        return d

    def counted_select(features):
        idx = select(features)
        rows = features.rows
        same = (idx.sort(1).values == lowest_scores(features).sort(1).values).all(1)
        agreement.add("select", same[rows])
        return idx

    controller.decide, controller.select = counted_decide, counted_select
    try:
        yield agreement
    finally:
        del controller.decide, controller.select


def run_setting(warm_path: str, variant: str, prior: float, lengths: list[int],
                steps, n: int, threads: int, changes: Optional[dict] = None) -> list[dict]:
    """Train the demo's `variant` with this prior (and the QLearningConfig `changes`) from
    the warm-up weights, then stream it through the demo's evaluation tasks at each length:
    one row per task and length."""
    changes = changes or {}
    torch.set_num_threads(threads)
    from memmodel.evaluation import evaluate_stream
    from memmodel.training.ablation import AblationSpec, _with_length, train_variant
    from memmodel.training.demo import demo_spec
    from memmodel.training.memory import learning_controllers, load_checkpoint

    warm = load_checkpoint(warm_path)[0].state_dict()
    data = demo_spec().to_dict()
    data["qlearning"] = {**data["qlearning"], **changes, "prior": prior}
    if steps is not None:
        data["train"] = {**data["train"], "steps": steps}
    spec = AblationSpec.from_dict(data)
    model, trained, _ = train_variant(spec, variant, warm=warm)
    (controller,) = learning_controllers(model)
    rows = []
    for task in spec.evaluation_tasks():
        for i, T in enumerate(lengths):
            agreement = Agreement()
            with counting(controller, agreement) if i == 0 else nullcontext():
                r = evaluate_stream(model, _with_length(task, T), n=n,
                                    batch_size=spec.eval_batch_size, segment=spec.segment,
                                    split=spec.eval_split, progress=False)
            rows.append(dict(variant=variant, prior=prior, qlearning=changes, task=r.task,
                             T=T, n=r.n,
                             accuracy=r.accuracy, ci_low=r.ci_low, ci_high=r.ci_high,
                             entries=r.entries, train_seconds=trained.seconds,
                             **(agreement.shares() if i == 0 else {})))
    return rows


def table(rows) -> str:
    lines = ["| variant | prior | task | T | n | accuracy [95% CI] | entries | same STORE | "
             "same read | same select |",
             "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]

    def share(r, k):
        v = r.get(f"agree_{k}")
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        lines.append(f"| {r['variant']} | {r['prior']:g} | {r['task']} | {r['T']} | {r['n']} | "
                     f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['entries']:.1f} | {share(r, 'store')} | {share(r, 'read')} | "
                     f"{share(r, 'select')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
