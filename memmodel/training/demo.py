"""The package's main job: the memory ablation from 1K to 128K tokens, in one command.

    python -m memmodel.training.demo --out results            # `make demo`
    python -m memmodel.training.demo --out results --long     # `make demo DEMO=long`
    python -m memmodel.training.demo --variants qlearning,full --controller-seeds 0,1,2 \
        --out results/seeds        # the learned controllers from three seeds
    python -m memmodel.training.demo --variants importance,store_all,qlearning,full \
        --seeds 0,1,2 --out results/train-seeds   # everything trained from three seeds

Trains the eight variants of `memmodel.training.ablation` (ssm, wm, fifo, importance,
store_all, qlearning, gumbel, the differentiable keep gate beside Q-learning, and full)
with one budget on a mix of two tasks at training length
(<= 2K tokens), then streams each on both tasks at 1K, 8K, 32K and 128K tokens (the long
setting trains longer and adds 512K and 1M):

- a hard passkey: a one-digit key after a marker, in filler that holds digits too (so no
  byte tells the key from the filler but the marker before it), asked at the end;
- multi-needle with decoys, each stated three times: 4 named facts `#N=V` and 4 decoys
  `%N=V` of the same form, each in three places of the stream (24 statements, a text that
  repeats what it says), more facts than the working memory has slots per head; two facts
  asked at the end. A bank that keeps the chunks its scores rank highest fills up with
  copies of one fact and loses another: on this task importance and fifo, at the bank's
  capacity of 4 entries, fall short of store_all at 128K, where with one statement each
  importance matched it (docs/results.md).

Training is the runner's two phases: a warm-up shared by the long-term-memory variants
(a curriculum: the easy forms of both tasks, `warmup_tasks`), then each variant under its
own controller on the hard forms at 256 tokens for 750 steps (16 chunks, against a bank
of 4 entries, which overflows).

Writes under --out: demo.json (the rows), demo.md (the table, with the machine, versions,
date and command), demo.png (accuracy against T, a panel per task; needs the `plot`
extra), depth.json, spec.json (the resolved spec) and models/<variant>.pt, each loadable
with `memmodel.load`. The table is printed at the end. With --seeds the whole demo runs
once per training seed, each into <out>/seed-<s>/ with these files, and <out>/demo.json,
demo.md and demo.png hold the rows pooled over the seeds (`ablation.run_seeds`).

The settings are `DEMO_SPEC` (and `LONG`, its changes for --long). One run on a 2-core CPU
takes 10 to 12 minutes (two worker processes of one thread each, the CPU fast paths
compiled); docs/results.md has what it measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .ablation import AblationSpec, check_seeds, parse_seeds, run_ablation, run_seeds, worker_count

log = logging.getLogger("memmodel.training.demo")

_PASSKEY = dict(name="passkey", chunk_size=16, key_len=1, filler_kind="shared")
_NEEDLE = dict(name="multi_needle", n_facts=4, n_decoys=4, n_queries=2, name_len=1,
               value_len=1, separator_first=True, repeats=3)

DEMO_SPEC = dict(
    variants=["ssm", "wm", "fifo", "importance", "store_all", "qlearning", "gumbel", "full"],
    model=dict(d_model=32, n_layers=2, d_state=8, backend="auto", memory_layers=[1]),
    wm=dict(wm_slots=2, wm_heads=2),
    ltm=dict(ltm_heads=2, ltm_chunk_size=16, ltm_summaries=1, ltm_levels=1, ltm_capacity=4,
             ltm_merge=2),
    # the curriculum: the same tasks in an easier form first (filler that shares no byte
    # with the key; few facts in a short stream), where the memory pathway's gradient is
    # strong; from scratch on the hard forms the loss stays at chance for 1000+ steps
    # with few facts in a short stream, and each stated once
    warmup_tasks=[dict(_PASSKEY, seq_len=128, filler_kind="letters"),
                  dict(_NEEDLE, seq_len=96, n_facts=2, n_decoys=2, repeats=1)],
    train_tasks=[dict(_PASSKEY, seq_len=256), dict(_NEEDLE, seq_len=256)],
    # 750 steps: from the warm-up of the compiled run, 250 left importance and store_all at
    # chance on the hard passkey (0.12 and 0.06 at 1K), 750 took both to 1.00 (multi-needle
    # 0.67 and 0.88 at 1K); the compiled CPU paths make the 500 more steps affordable
    train=dict(steps=750, batch_size=16, lr=3e-3, eval_batches=1, log_every=50),
    # The Q-learning controller's schedule (docs/architecture.md): its exploring decisions
    # take the importance heuristic's choice (guided=1), so while epsilon falls, over all
    # 750 steps (3000 Q updates), the model learns to use a bounded bank managed well, and
    # the network learns off-policy from those decisions what they earn. Over the first
    # 150 steps only (600 updates), the greedy decisions that took over in training
    # damaged the model for some seeds (training seed 2: the passkey at 1K 0.88 and 0.75
    # for qlearning and full, importance's model 1.00; over all 750 steps 1.00 and 1.00;
    # docs/results.md).
    # No memory cost here: the bank is bounded anyway, and at 0.01 per entry and chunk (up
    # to 0.64 a sequence, against answer-loss rewards of 0.1-2 nats) storing nothing paid
    # best. prior 1.0 (QLearningConfig.prior): the policy leaves importance's choice only
    # where its Q values say another choice saves at least one nat of answer loss. Without
    # it the greedy policy stored almost nothing (full 0.12 on the passkey at 128K); full
    # at 128K from the demo's warm-up, by prior (docs/architecture.md): 0.1 passkey 0.75,
    # multi-needle 0.28; 0.5 1.00 / 0.59; 1.0 1.00 / 0.72; 2.0 1.00 / 0.84
    qlearning=dict(memory_cost=0.0, retrieve_cost=0.0, epsilon_decay=3000, min_buffer=64,
                   guided=1.0, prior=1.0),
    eval_tasks=[dict(_PASSKEY), dict(_NEEDLE)],
    eval_lengths=[1024, 8192, 32768, 131072],
    eval_n=16,
    eval_batch_size=16,
    # segments of 1024 tokens keep a segment's activations ([16, 1024, 64] floats) in the
    # CPU's cache: on the 2-core CPU, 16 sequences of 16K tokens streamed through full
    # 1.8x faster than in segments of 8192 (compiled; ssm eagerly 1.2x)
    segment=1024,
    seed=0,
    warmup_steps=800,
)

# --long: what changes (a longer budget, and 512K and 1M tokens)
LONG = dict(
    train=dict(steps=1500),
    warmup_steps=2000,
    eval_lengths=[1024, 8192, 32768, 131072, 524288, 1048576],
    # store_all's bank grows with T and its retrieval work with T squared: at 1M tokens
    # (65536 entries per sequence) it alone would take hours on a CPU
    eval_max=dict(store_all=131072),
    # the Q-learning variants from three controller seeds, their rows pooled
    controller_seeds=[0, 1, 2],
    # epsilon falls over the whole of the longer training, as in the short setting
    qlearning=dict(epsilon_decay=6000),
)


def demo_spec(long: bool = False) -> AblationSpec:
    """The demo's AblationSpec (`DEMO_SPEC`, with `LONG` applied when `long`)."""
    data = copy.deepcopy(DEMO_SPEC)
    if long:
        for key, value in LONG.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return AblationSpec.from_dict(data)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="The memory ablation from 1K to 128K tokens (the package's demo).")
    p.add_argument("--out", default="results", help="folder for the results and models")
    p.add_argument("--long", action="store_true",
                   help="train longer and evaluate at 512K and 1M tokens too")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of the variants (default: all of DEMO_SPEC's)")
    p.add_argument("--controller-seeds", default=None,
                   help="comma-separated Q-learning controller seeds: the qlearning and full "
                        "variants trained once per seed, their rows pooled (mean, spread)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated training seeds: the whole demo once per seed (into "
                        "<out>/seed-<s>/), its rows pooled in <out>/demo.json (mean, spread)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=None,
                   help="processes training and evaluating variants side by side (default: "
                        "one per CPU core, at most one per variant)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-spec", action="store_true",
                   help="print the resolved spec as JSON and exit")
    p.add_argument("--no-compile", action="store_true",
                   help="run the CPU fast paths eagerly (MEMMODEL_COMPILE=0); by default they "
                        "are compiled where a C++ compiler is found (MEMMODEL_COMPILE=auto)")
    args = p.parse_args(argv)
    if args.no_compile:
        os.environ["MEMMODEL_COMPILE"] = "0"
    spec = demo_spec(args.long)
    changes = {}
    if args.variants:
        changes["variants"] = args.variants.split(",")
    if args.controller_seeds:
        changes["controller_seeds"] = parse_seeds(p, "--controller-seeds", args.controller_seeds)
    if changes:
        try:
            spec = AblationSpec.from_dict({**spec.to_dict(), **changes})
        except ValueError as e:
            p.error(str(e))
    seeds = None if args.seeds is None else parse_seeds(p, "--seeds", args.seeds)
    if seeds is not None:
        try:
            check_seeds(spec, seeds)
        except ValueError as e:
            p.error(str(e))
    if args.print_spec:
        sys.stdout.write(json.dumps(spec.resolved(), indent=1) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(["python -m memmodel.training.demo",
                        *(sys.argv[1:] if argv is None else argv)])
    began = time.perf_counter()
    try:
        workers = worker_count(args.workers, len(spec.variants))
    except ValueError as e:
        p.error(str(e))
    if seeds is None:
        run_ablation(spec, args.out, progress=not args.no_progress, name="demo",
                     command=command, workers=workers)
    else:
        run_seeds(spec, seeds, args.out, progress=not args.no_progress, name="demo",
                  command=command, workers=workers)
    minutes = (time.perf_counter() - began) / 60
    sys.stdout.write("\n" + (Path(args.out) / "demo.md").read_text(encoding="utf-8") + "\n")
    log.info("%.1f minutes; results in %s/demo.json, demo.md, demo.png and models/",
             minutes, args.out)


if __name__ == "__main__":
    main()
