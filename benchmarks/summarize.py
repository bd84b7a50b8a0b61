"""Print a short table from the JSON lines the GPU benchmarks write.

    python benchmarks/summarize.py results.jsonl
"""

import json
import sys

COLUMNS = ("fwd_ms", "fwdbwd_ms", "ms", "fwd_x_floor", "fwdbwd_x_floor", "peak_GiB", "ok")
SHAPE = ("B", "T", "E", "N", "H", "S", "M", "batch", "Dh", "C", "P")


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    for r in rows:
        if r.get("name") == "device":
            print(f"{r['gpu']}, torch {r['torch']}, triton {r['triton']}, "
                  f"copy {r['copy_TBps']:.2f} TB/s")
    print(f"{'benchmark':<34} {'shape':<28} " + " ".join(f"{c:>12}" for c in COLUMNS))
    for r in rows:
        if r.get("name") == "device":
            continue
        shape = " ".join(f"{k}={r[k]}" for k in SHAPE if k in r)
        if "skipped" in r:
            print(f"{r['name']:<34} skipped: {r['skipped'][:60]}")
            continue
        cells = []
        for c in COLUMNS:
            v = r.get(c, "")
            cells.append(f"{v:>12.3f}" if isinstance(v, float) else f"{str(v):>12}")
        print(f"{r['name']:<34} {shape:<28} " + " ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1])
