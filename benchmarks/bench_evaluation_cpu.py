"""Streamed evaluation on a CPU: tokens/s and memory against the stream length T.

    python benchmarks/bench_evaluation_cpu.py --lengths 16384,262144 --ltm none,fifo

Each (long-term memory controller, T) runs `memmodel.evaluation.evaluate_stream` in a
fresh process (peak RSS is per process), after one warm-up batch at T = segment, on an
untrained MemoryLM (speed and memory do not depend on the weights). One JSON line per
case on stdout: tokens/s, seconds, peak RSS and its rise during the evaluation, state
bytes per sequence, live entries.
"""

import argparse
import json
import subprocess
import sys


def run_case(args):
    import torch

    from memmodel.config import MemoryConfig
    from memmodel.evaluation import evaluate_stream
    from memmodel.model import MemoryLM
    from memmodel.tasks import build_task

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ltm = {} if args.case_ltm == "none" else dict(
        ltm_controller=args.case_ltm, ltm_heads=2, ltm_chunk_size=64, ltm_summaries=1,
        ltm_levels=2, ltm_capacity=[8, 8], ltm_merge=2)
    model = MemoryLM(MemoryConfig(d_model=args.d_model, n_layers=args.n_layers, d_state=16,
                                  **ltm))
    task = build_task("passkey", seq_len=args.case_T, chunk_size=64)
    evaluate_stream(model, task, seq_len=args.segment, n=args.batch, batch_size=args.batch,
                    segment=args.segment, progress=False)
    r = evaluate_stream(model, task, n=args.batch, batch_size=args.batch,
                        segment=args.segment, progress=False)
    keep = ("seq_len", "segment", "sequences", "tokens_per_s", "seconds", "peak_rss_mb",
            "rss_increase_mb", "state_bytes", "entries")
    row = {"ltm": args.case_ltm, "d_model": args.d_model, "n_layers": args.n_layers,
           **{k: v for k, v in r.to_dict().items() if k in keep}}
    sys.stdout.write(json.dumps(row) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="16384,262144")
    p.add_argument("--ltm", default="none,fifo", help="controllers ('none': SSM only)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--segment", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--case-ltm", default=None, help=argparse.SUPPRESS)
    p.add_argument("--case-T", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case_ltm is not None:
        return run_case(args)
    for ltm in args.ltm.split(","):
        for T in args.lengths.split(","):
            cmd = [sys.executable, __file__, "--case-ltm", ltm, "--case-T", T,
                   "--batch", str(args.batch), "--segment", str(args.segment),
                   "--d-model", str(args.d_model), "--n-layers", str(args.n_layers)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
