"""What a saved model's long-term memory holds when the queries come: on multi-needle, which
facts its live entries are summaries of.

    python benchmarks/bank_contents.py results/models/importance.pt \
        results/models/store_all.pt --lengths 8K,128K --out results/bank.json

Each model is loaded with `memmodel.load` (eval mode, its controllers greedy) and streamed
(in the demo's segments) through the demo's multi-needle task (`--task` changes it, as in
eval_models.py) on the test split, up to the last whole chunk before the queries. Every
live level-0 entry of the last layer with a long-term memory is a summary of the chunk
that ended where the entry became visible (`LTMState.start`); an entry is counted as a
fact, a decoy or filler by the statements (`#N=V`, `%N=V`) that overlap that chunk. Per
(model, T), averaged over the n sequences: live entries and those that are facts, decoys,
filler or merged (a level above 0: made from other entries, not attributed); the distinct
facts held, the fact entries that repeat a fact already held, and the fraction of the
asked facts held; and over all sequences, the median cosine similarity of the keys (all
heads) of two entries that each hold one statement, for two copies of one fact
(`copy_similarity`) and for two different facts (`other_similarity`; None without such
pairs): what a controller that reads the similarity of a summary to the bank can tell.
With `repeats` > 1 (the demo's task states each fact three times), a bank that keeps
entries by their scores alone can hold copies of one fact and lose others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from harness import demo_task, json_object, parse_lengths

FIELDS = ("entries", "fact", "decoy", "filler", "merged", "distinct_facts",
          "repeated_fact_entries")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="checkpoints (results/models/<variant>.pt)")
    p.add_argument("--lengths", type=parse_lengths, default=[8192, 131072])
    p.add_argument("--n", type=int, default=16, help="sequences per length")
    p.add_argument("--task", default=None, metavar="JSON",
                   help="changes to the demo's multi-needle task, as JSON (e.g. "
                        "'{\"repeats\": 1}')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/bank.json")
    args = p.parse_args(argv)
    for path in args.models:
        if not Path(path).exists():
            p.error(f"models: {path} does not exist")
    if args.n < 1:
        p.error(f"--n: expected a positive int, got {args.n}")
    changes = {} if args.task is None else json_object(p, "--task", args.task)

    import torch

    import memmodel
    from memmodel.training.demo import demo_spec

    torch.set_num_threads(args.threads)
    spec = demo_spec()
    task = demo_task(p, "--task", spec, {**changes, "name": "multi_needle"})
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in args.models:
        model, _ = memmodel.load(path)
        for T in args.lengths:
            rows.append(dict(model=path, changes=changes, T=T, n=args.n,
                             **bank_contents(model, task, T, args.n, spec.segment)))
            sys.stdout.write(json.dumps(rows[-1]) + "\n")
            out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return rows


def bank_contents(model, task, T: int, n: int, segment: int) -> dict:
    """The counts of the module docstring for `model` on `task` at length T, n sequences."""
    import dataclasses

    import torch

    from memmodel.evaluation import stream_answer_logits

    task = dataclasses.replace(task, seq_len=T)
    C = model.config.ltm_chunk_size
    batch = task.sample(n, split="test", index=0)
    F, Q = task.fact_len, task.n_queries
    region = T + 1 - Q * F  # the queries start here
    cut = region // C * C
    model.eval()
    with torch.no_grad():
        _, state, _ = stream_answer_logits(model, batch.input_ids[:, :cut],
                                           torch.zeros(n, 1, 1, dtype=torch.long), segment)
    banks = [layer.ltm for layer in state.layers if layer.ltm is not None]
    if not banks:
        raise ValueError(f"bank_contents: expected a model with a long-term memory, got "
                         f"ltm_controller {model.config.ltm_controller!r}")
    ltm = banks[-1]
    fact, decoy = ord(task.marker), ord(task.decoy_marker)
    total, asked_held = Counter(), 0
    copies, others = [], []  # key similarities of single-statement fact entries
    for b in range(n):
        row = batch.input_ids[b].tolist()
        chunks = {}  # chunk index -> {(marker, name)}
        for i in range(cut):
            if row[i] in (fact, decoy):
                name = tuple(row[i + 1: i + 1 + task.name_len])
                for c in {i // C, (i + F - 1) // C}:
                    chunks.setdefault(c, set()).add((row[i], name))
        held = Counter()
        single = []  # (name, unit key) of entries holding one fact statement only
        for j, (level, start) in enumerate(zip(ltm.level[b].tolist(), ltm.start[b].tolist())):
            if level < 0:
                continue
            total["entries"] += 1
            if level > 0:
                total["merged"] += 1
                continue
            items = chunks.get(start // C - 1, set())
            names = {name for marker, name in items if marker == fact}
            total["fact" if names else "decoy" if items else "filler"] += 1
            held.update(names)
            if len(items) == 1 and names:
                key = ltm.k[b, j].flatten().float()
                single.append((next(iter(names)), key / key.norm().clamp_min(1e-12)))
        for x in range(len(single)):
            for y in range(x + 1, len(single)):
                sim = float(single[x][1] @ single[y][1])
                (copies if single[x][0] == single[y][0] else others).append(sim)
        total["distinct_facts"] += len(held)
        total["repeated_fact_entries"] += sum(held.values()) - len(held)
        asked = {tuple(row[region + q * F + 2: region + q * F + 2 + task.name_len])
                 if task.separator_first else
                 tuple(row[region + q * F + 1: region + q * F + 1 + task.name_len])
                 for q in range(Q)}
        asked_held += len(asked & set(held))
    return {**{k: total[k] / n for k in FIELDS}, "asked_held": asked_held / (n * Q),
            "copy_similarity": statistics.median(copies) if copies else None,
            "other_similarity": statistics.median(others) if others else None}


if __name__ == "__main__":
    main()
