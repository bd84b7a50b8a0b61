"""CPU benchmark: the chunked selective scan against the eager per-token loop.

Checks that the chunked path matches the loop at the benchmark size, then times forward
and forward+backward (median of --repeats runs, after one warm-up) for:
  loop      the per-token oracle, differentiated by autograd
  chunked   the chunked fast path run eagerly (MEMMODEL_COMPILE=0)
  compiled  the chunked fast path with each chunk fused by torch.compile
Compile time is measured apart, from a fresh inductor cache, as the first call's time
minus the steady-state time.

    python benchmarks/bench_selective_scan_cpu.py            # B=1, T=8192, E=256, N=16
    python benchmarks/bench_selective_scan_cpu.py --T 2048 --json results/scan_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

# A fresh inductor cache, so the compile time reported is a cold one.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="memmodel-inductor-"))

import torch  # noqa: E402
from harness import median_seconds  # noqa: E402

from memmodel.kernels.selective_scan import cpu_selective_scan, selective_scan_ref  # noqa: E402


def make_inputs(B, T, E, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    leaf = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=g) * scale + shift
                                             ).requires_grad_()
    return dict(
        u=leaf(B, T, E), delta=leaf(B, T, E, scale=0.5, shift=-2.0),
        A=(-0.5 - torch.rand(E, N, generator=g)).requires_grad_(),
        B=leaf(B, T, 1, N), C=leaf(B, T, 1, N), D=leaf(E), z=leaf(B, T, E),
        delta_bias=leaf(E, scale=0.1), delta_softplus=True,
    )


def run(fn, inputs, backward, **kw):
    y, _ = fn(**inputs, **kw)
    if backward:
        y.float().square().sum().backward()
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                v.grad = None
    return y


def timed(fn, inputs, backward, repeats, **kw):
    return median_seconds(lambda: run(fn, inputs, backward, **kw), repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--E", type=int, default=256)
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x = make_inputs(args.B, args.T, args.E, args.N)
    chunk = dict(chunk_size=args.chunk_size)

    os.environ["MEMMODEL_COMPILE"] = "0"
    y_ref = run(selective_scan_ref, x, False).detach()
    y_chk = run(cpu_selective_scan, x, False, **chunk).detach()
    err = ((y_chk - y_ref).norm() / y_ref.norm()).item()
    assert err < 1e-5, f"chunked scan differs from the loop: relative RMS error {err:.2e}"

    res = {"B": args.B, "T": args.T, "E": args.E, "N": args.N, "chunk_size": args.chunk_size,
           "threads": args.threads, "torch": torch.__version__, "rel_err": err}
    for mode in ("fwd", "fwdbwd"):
        bwd = mode == "fwdbwd"
        res[f"loop_{mode}_s"] = timed(selective_scan_ref, x, bwd, args.repeats)
        res[f"chunked_{mode}_s"] = timed(cpu_selective_scan, x, bwd, args.repeats, **chunk)

    os.environ["MEMMODEL_COMPILE"] = "1"
    for mode in ("fwd", "fwdbwd"):
        bwd = mode == "fwdbwd"
        t0 = time.perf_counter()
        run(cpu_selective_scan, x, bwd, **chunk)
        first = time.perf_counter() - t0
        res[f"compiled_{mode}_s"] = timed(cpu_selective_scan, x, bwd, args.repeats, **chunk)
        res[f"compile_{mode}_s"] = first - res[f"compiled_{mode}_s"]
    y_cmp = run(cpu_selective_scan, x, False, **chunk).detach()
    res["compiled_rel_err"] = ((y_cmp - y_ref).norm() / y_ref.norm()).item()

    print(f"selective scan, CPU, B={args.B} T={args.T} E={args.E} N={args.N}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'path':<10} {'fwd s':>9} {'fwd+bwd s':>10} {'x loop fwd':>11} {'x loop f+b':>11}")
    for path in ("loop", "chunked", "compiled"):
        f, fb = res[f"{path}_fwd_s"], res[f"{path}_fwdbwd_s"]
        print(f"{path:<10} {f:9.3f} {fb:10.3f} {res['loop_fwd_s'] / f:11.1f} "
              f"{res['loop_fwdbwd_s'] / fb:11.1f}")
    print(f"compile time (cold cache): fwd {res['compile_fwd_s']:.1f} s, "
          f"bwd {res['compile_fwdbwd_s']:.1f} s; relative error vs loop: "
          f"chunked {err:.1e}, compiled {res['compiled_rel_err']:.1e}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
