"""The domain runs as the tables of docs/results.md: a table per domain task, variants x
lengths, each cell accuracy [95% CI] and macro F1 [95% CI] (bits per byte for corpus_lm).

    python benchmarks/domains/summarize.py results/domains

Reads <out>/<domain>/results.json and, where present, <out>/<domain>/long_*.json (the
long-length rows of long_eval.py), and <out>/digits/digits.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cell(r):
    if "bpb" in r:
        out = f"{r['bpb']:.2f} [{r['bpb_low']:.2f}, {r['bpb_high']:.2f}]"
        if r.get("bpb_beyond") is not None:
            out += (f"; beyond {r['train_len']}: {r['bpb_beyond']:.2f} "
                    f"[{r['bpb_beyond_low']:.2f}, {r['bpb_beyond_high']:.2f}]")
        return out
    return (f"{r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] / "
            f"{r['macro_f1']:.2f} [{r['f1_low']:.2f}, {r['f1_high']:.2f}]")


def main(out):
    out = Path(out)
    for domain in ("vision", "biology", "language"):
        rows = []
        for path in [out / domain / "results.json", *sorted((out / domain).glob("long_*.json"))]:
            if path.is_file():
                rows += json.loads(path.read_text())
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if r["task"] == task]
            lengths = sorted({r["T"] for r in mine})
            ns = {T: next(r["n"] for r in mine if r["T"] == T) for T in lengths}
            what = "bits per byte [95% CI]" if "bpb" in mine[0] else \
                "accuracy [95% CI] / macro F1 [95% CI]"
            print(f"\n{domain}, {task} ({what}; n per length: "
                  + ", ".join(f"{T}: {n}" for T, n in ns.items()) + ")\n")
            print("| variant | " + " | ".join(f"T = {T}" for T in lengths) + " |")
            print("| --- |" + " --- |" * len(lengths))
            for v in dict.fromkeys(r["variant"] for r in mine):
                by_t = {r["T"]: r for r in mine if r["variant"] == v}
                print(f"| {v} | " + " | ".join(_cell(by_t[T]) if T in by_t else "-"
                                               for T in lengths) + " |")
    digits = out / "digits" / "digits.json"
    if digits.is_file():
        print("\ndigits, MemoryClassifier (test)\n")
        print("| variant | lr (val) | val macro F1 | accuracy [95% CI] | macro precision | "
              "macro recall | macro F1 [95% CI] |")
        print("| --- | ---: | ---: | --- | ---: | ---: | --- |")
        for r in json.loads(digits.read_text()):
            print(f"| {r['variant']} | {r['lr']:g} | {r['val_macro_f1']:.3f} | "
                  f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                  f"{r['macro_precision']:.3f} | {r['macro_recall']:.3f} | "
                  f"{r['macro_f1']:.3f} [{r['f1_low']:.3f}, {r['f1_high']:.3f}] |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/domains")
