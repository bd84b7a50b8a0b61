"""Evaluate the domain ablation's trained models at one long length (128K by default).

    OMP_NUM_THREADS=1 python benchmarks/domains/long_eval.py results/domains biology \
        --T 131072 --n 8

Reads <out>/<domain>/spec.json and models/<variant>.pt (written by run.sh), evaluates each
variant on each evaluation task of the spec at T with n sequences of the test split
(`evaluate_stream`, or `lm_row` for a language-modelling task), and writes
<out>/<domain>/long_<T>.json (rows like the runner's) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

import memmodel
from memmodel.evaluation import evaluate_stream
from memmodel.training.ablation import CLASS_FIELDS, AblationSpec, _interval, lm_row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the run.sh output folder")
    p.add_argument("domain", help="vision, biology or language")
    p.add_argument("--T", type=int, default=131072)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--variants", default=None, help="comma-separated (default: the spec's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    folder = Path(args.out) / args.domain
    spec = AblationSpec.from_json(folder / "spec.json")
    spec.eval_n, spec.eval_batch_size = args.n, args.batch_size
    variants = args.variants.split(",") if args.variants else spec.variants
    rows = []
    for variant in variants:
        model, _ = memmodel.load(folder / "models" / f"{variant}.pt")
        for task in spec.evaluation_tasks():
            task = dataclasses.replace(task, seq_len=args.T)
            if task.scoring == "lm":
                rows.append(lm_row(spec, model, variant, task))
                continue
            r = evaluate_stream(model, task, n=args.n, batch_size=args.batch_size,
                                segment=spec.segment, split=spec.eval_split,
                                progress=False).to_dict()
            rows.append(dict(variant=variant, task=r["task"], T=args.T, n=r["n"],
                             accuracy=r["accuracy"], ci_low=r["ci_low"],
                             ci_high=r["ci_high"], chance=r["chance"],
                             **{k: r[k] for k in CLASS_FIELDS}, entries=r["entries"],
                             tokens_per_s=r["tokens_per_s"]))
        (folder / f"long_{args.T}.json").write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        if "bpb" in r:
            print(f"| {r['variant']} | {r['task']} | {r['T']} | {r['n']} | "
                  f"{_interval(r, 'bpb')} | {_interval(r, 'bpb_within')} | "
                  f"{_interval(r, 'bpb_beyond')} |")
        else:
            print(f"| {r['variant']} | {r['task']} | {r['T']} | {r['n']} | "
                  f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                  f"{r['macro_f1']:.3f} [{r['f1_low']:.3f}, {r['f1_high']:.3f}] |")


if __name__ == "__main__":
    main()
