"""Benchmark of the gated cache write (working memory), GPU or CPU.

GPU (CUDA present, or --mode gpu): checks the chunked and fused Triton kernels against the
float32 oracle at a small shape (outputs, final slots, every gradient), checks the chunked
kernel against the fused one at the benchmark shape, then times forward and forward+backward
with triton.testing.do_bench (median) at B=4, T=131072, H=8, S=64, Dk=Dv=64, bf16. Each time
is reported in ms and as a fraction of the bytes floor (the inputs read and the outputs
written once, at the device-to-device copy bandwidth measured in the same run). fla's
gated slot attention (fla.ops.gsa: chunk_gsa, fused_recurrent_gsa) runs beside it when
importable; it computes the same recurrence with s = w, g = log(1 - w) and its key slots
transposed, and that mapping is checked numerically first.

CPU (--mode cpu): checks the chunked PyTorch path against the per-token loop, then times
(median of --repeats runs after a warm-up) forward and forward+backward of
  loop      the per-token oracle, differentiated by autograd
  chunked   the chunked fast path run eagerly (MEMMODEL_COMPILE=0)
  compiled  the chunked fast path with each chunk fused by torch.compile
at B=2, T=4096, H=4, S=64, Dk=Dv=64. Compile time is measured apart, from a fresh
inductor cache, as the first call's time minus the steady-state time.

    python benchmarks/bench_gated_cache.py                      # picks gpu or cpu
    python benchmarks/bench_gated_cache.py --mode cpu --T 1024 --json results/gc_cpu.json
    python benchmarks/dry_run.py benchmarks/bench_gated_cache.py --mode gpu --tiny
                                                           # the GPU path itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import torch
from harness import add_tiny_flag, copy_bandwidth, median_seconds

from memmodel.kernels.gated_cache import (
    chunk_gated_cache_write,
    cpu_gated_cache_write,
    fused_recurrent_gated_cache_write,
    gated_cache_write_ref,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_inputs(B, T, H, S, DK, DV, dtype=torch.float32, device="cpu", seed=0, h0=True):
    """Inputs as the WorkingMemory module makes them: w = sigmoid(importance) *
    softmax(address), keys and values of unit scale. Leaves require grad."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    w = torch.sigmoid(rnd(B, T, H, 1)) * torch.softmax(rnd(B, T, H, S) * 2, dim=-1)
    leaf = lambda x, dt=dtype: x.to(device=device, dtype=dt).requires_grad_()
    x = dict(q=leaf(rnd(B, T, H, DK)), k=leaf(rnd(B, T, H, DK)), v=leaf(rnd(B, T, H, DV)),
             w=leaf(w))
    x["initial_state"] = ((leaf(rnd(B, H, S, DK) * 0.1, torch.float32),
                           leaf(rnd(B, H, S, DV) * 0.1, torch.float32)) if h0 else None)
    return x


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def leaves(x):
    out = [x["q"], x["k"], x["v"], x["w"]]
    return out + (list(x["initial_state"]) if x["initial_state"] is not None else [])


def fwd_bwd(fn, x, backward, **kw):
    """One call; with backward, gradients of sum(r^2) + sum(final slots) (no grads kept);
    without, the forward runs under no_grad, as inference would."""
    if not backward:
        with torch.no_grad():
            return fn(**x, output_final_state=True, **kw)
    r, fin = fn(**x, output_final_state=True, **kw)
    loss = r.float().square().sum() + sum(m.sum() for m in fin)
    torch.autograd.grad(loss, leaves(x))
    return r, fin


def compare(fn_a, x_a, fn_b, x_b, kw_a=None, kw_b=None):
    """Largest relative RMS error over r, the final slots and every gradient."""
    outs = []
    for fn, x, kw in ((fn_a, x_a, kw_a or {}), (fn_b, x_b, kw_b or {})):
        r, fin = fn(**x, output_final_state=True, **kw)
        g = torch.Generator(device=r.device).manual_seed(1)
        loss = (r.float() * torch.randn(r.shape, generator=g, device=r.device)).sum()
        loss = loss + sum((m * torch.randn(m.shape, generator=g, device=r.device)).sum()
                          for m in fin)
        outs.append([r, *fin, *torch.autograd.grad(loss, leaves(x))])
    return max(rel_err(a, b) for a, b in zip(*outs))


def fp32_copy(x):
    f = lambda t: t.detach().float().requires_grad_()
    y = {k: f(v) for k, v in x.items() if k != "initial_state"}
    y["initial_state"] = tuple(f(s) for s in x["initial_state"])
    return y


# GPU ------------------------------------------------------------------------------------


def _fla():
    try:
        from fla.ops.gsa import chunk_gsa, fused_recurrent_gsa
    except Exception:  # fla absent or broken on this machine: run without the peer
        return None
    return chunk_gsa, fused_recurrent_gsa


def fla_call(fla_fn, q, k, v, w, initial_state=None, output_final_state=False):
    """Our op through fla's GSA: s = w, g = log(1 - w) (floored as in chunk.py); fla keeps
    slot keys as [N, H, Dk, S]."""
    g = torch.log(torch.clamp(1 - w.float(), min=math.exp(-32.0))).to(w.dtype)
    h0 = None
    if initial_state is not None:
        h0 = (initial_state[0].transpose(-1, -2).contiguous(), initial_state[1])
    o, fin = fla_fn(q, k, v, w, g, initial_state=h0, output_final_state=output_final_state)
    if output_final_state:
        fin = (fin[0].transpose(-1, -2), fin[1])
    return o, fin


def run_gpu(args):
    import triton

    dev, dtype = args.device, DTYPES[args.dtype]
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "triton": triton.__version__, "dtype": args.dtype}
    cs = dict(chunk_size=args.chunk_size)
    small = make_inputs(2, args.check_T, 2, args.S, args.DK, args.DV, dtype, dev)
    oracle = fp32_copy(small)
    res["check_chunk_vs_oracle"] = compare(chunk_gated_cache_write, small, gated_cache_write_ref,
                                           oracle, kw_a=cs)
    res["check_fused_vs_oracle"] = compare(fused_recurrent_gated_cache_write, small,
                                           gated_cache_write_ref, oracle)
    bound = 2e-2 if dtype != torch.float32 else 1e-4
    for key in ("check_chunk_vs_oracle", "check_fused_vs_oracle"):
        assert res[key] < bound, f"{key}: relative RMS error {res[key]:.2e} > {bound}"
    fla = _fla()
    if fla is not None:
        res["check_fla_mapping"] = compare(lambda **kw: fla_call(fla[0], **kw), small,
                                           gated_cache_write_ref, oracle)
        assert res["check_fla_mapping"] < bound, "fla.ops.gsa does not match the mapping"

    x = make_inputs(args.B, args.T, args.H, args.S, args.DK, args.DV, dtype, dev)
    with torch.no_grad():
        r_c, _ = chunk_gated_cache_write(**x, **cs)
        r_f, _ = fused_recurrent_gated_cache_write(**x)
    res["check_chunk_vs_fused_full_size"] = rel_err(r_c, r_f)
    assert res["check_chunk_vs_fused_full_size"] < bound
    del r_c, r_f

    bw = copy_bandwidth(dev, 2**26 if args.tiny else 2**30)
    B, T, H, S, DK, DV = args.B, args.T, args.H, args.S, args.DK, args.DV
    esz = torch.finfo(dtype).bits // 8
    fwd_bytes = B * T * H * (2 * DK + DV + S + DV) * esz  # read q, k, v, w; write r
    bwd_bytes = B * T * H * (2 * (2 * DK + DV + S) + DV) * esz  # + dr in, dq dk dv dw out
    floors = {"fwd": fwd_bytes, "fwdbwd": fwd_bytes + bwd_bytes}
    res.update(copy_GBps=bw / 1e9, floor_bytes_fwd=floors["fwd"],
               floor_bytes_fwdbwd=floors["fwdbwd"])

    paths = {"chunk": (chunk_gated_cache_write, cs),
             "fused_recurrent": (fused_recurrent_gated_cache_write, {})}
    if fla is not None:
        paths["fla_chunk_gsa"] = (lambda **kw: fla_call(fla[0], **kw), {})
        paths["fla_fused_recurrent_gsa"] = (lambda **kw: fla_call(fla[1], **kw), {})
    for name, (fn, kw) in paths.items():
        for mode in ("fwd", "fwdbwd"):
            if mode == "fwdbwd" and name in args.skip_bwd:
                continue
            try:
                ms = triton.testing.do_bench(
                    lambda fn=fn, bwd=mode == "fwdbwd", kw=kw: fwd_bwd(fn, x, bwd, **kw))
            except torch.OutOfMemoryError:
                res[f"{name}_{mode}_ms"] = None
                torch.cuda.empty_cache()
                continue
            res[f"{name}_{mode}_ms"] = ms
            res[f"{name}_{mode}_floor_frac"] = floors[mode] / bw / (ms * 1e-3)
    # slots per program the state walks' tuners picked at this shape
    from memmodel.kernels.gated_cache import chunk as gc_chunk
    res["state_walk_configs"] = [str(k.best_config) for k in (
        gc_chunk._chunk_gated_cache_state_fwd_kernel, gc_chunk._chunk_gated_cache_state_bwd_kernel)]

    print(f"gated cache write, {res['device']}, B={B} T={T} H={H} S={S} Dk={DK} Dv={DV} "
          f"{args.dtype}, torch {torch.__version__}, triton {triton.__version__}")
    print("checks (relative RMS error): " + ", ".join(
        f"{k[6:]} {v:.1e}" for k, v in res.items() if k.startswith("check_")))
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s; bytes floor fwd {floors['fwd'] / 1e9:.2f} GB "
          f"= {floors['fwd'] / bw * 1e3:.2f} ms, fwd+bwd {floors['fwdbwd'] / 1e9:.2f} GB "
          f"= {floors['fwdbwd'] / bw * 1e3:.2f} ms")
    print(f"{'path':<26} {'fwd ms':>9} {'of floor':>9} {'f+b ms':>9} {'of floor':>9}")
    for name in paths:
        cells = []
        for mode in ("fwd", "fwdbwd"):
            ms = res.get(f"{name}_{mode}_ms")
            cells += ([f"{ms:9.2f}", f"{res[f'{name}_{mode}_floor_frac']:9.1%}"] if ms
                      else [f"{'-':>9}", f"{'-':>9}"])
        print(f"{name:<26} " + " ".join(cells))
    print("state walks (forward, backward): " + "; ".join(res["state_walk_configs"]))
    return res


# CPU ------------------------------------------------------------------------------------


def timed(fn, x, backward, repeats, **kw):
    return median_seconds(lambda: fwd_bwd(fn, x, backward, **kw), repeats)


def run_cpu(args):
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="memmodel-ind-"))
    torch.set_num_threads(args.threads)
    x = make_inputs(args.B, args.T, args.H, args.S, args.DK, args.DV)
    cs = dict(chunk_size=args.chunk_size)
    os.environ["MEMMODEL_COMPILE"] = "0"
    small = make_inputs(1, 100, 2, args.S, 16, 8, seed=1)
    res = {"B": args.B, "T": args.T, "H": args.H, "S": args.S, "DK": args.DK, "DV": args.DV,
           "chunk_size": args.chunk_size, "threads": args.threads, "torch": torch.__version__,
           "check_chunked_vs_loop_small_grads": compare(cpu_gated_cache_write, small,
                                                        gated_cache_write_ref, small, kw_a=cs)}
    with torch.no_grad():
        r_ref, fin_ref = gated_cache_write_ref(**x, output_final_state=True)
        r_chk, fin_chk = cpu_gated_cache_write(**x, output_final_state=True, **cs)
    res["check_chunked_vs_loop"] = max(rel_err(r_chk, r_ref), rel_err(fin_chk[0], fin_ref[0]))
    for key in ("check_chunked_vs_loop", "check_chunked_vs_loop_small_grads"):
        assert res[key] < 1e-5, f"{key}: relative RMS error {res[key]:.2e}"

    for mode in ("fwd", "fwdbwd"):
        bwd = mode == "fwdbwd"
        fwd_bwd(gated_cache_write_ref, x, bwd)  # warm-up
        res[f"loop_{mode}_s"] = timed(gated_cache_write_ref, x, bwd, args.repeats)
        fwd_bwd(cpu_gated_cache_write, x, bwd, **cs)
        res[f"chunked_{mode}_s"] = timed(cpu_gated_cache_write, x, bwd, args.repeats, **cs)
    os.environ["MEMMODEL_COMPILE"] = "1"
    for mode in ("fwd", "fwdbwd"):
        bwd = mode == "fwdbwd"
        t0 = time.perf_counter()
        fwd_bwd(cpu_gated_cache_write, x, bwd, **cs)
        first = time.perf_counter() - t0
        res[f"compiled_{mode}_s"] = timed(cpu_gated_cache_write, x, bwd, args.repeats, **cs)
        res[f"compile_{mode}_s"] = first - res[f"compiled_{mode}_s"]
    with torch.no_grad():
        r_cmp, _ = cpu_gated_cache_write(**x, output_final_state=True, **cs)
    res["check_compiled_vs_loop"] = rel_err(r_cmp, r_ref)
    assert res["check_compiled_vs_loop"] < 1e-5

    print(f"gated cache write, CPU, B={args.B} T={args.T} H={args.H} S={args.S} "
          f"Dk={args.DK} Dv={args.DV}, chunk {args.chunk_size or 'default'}, "
          f"{args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'path':<10} {'fwd s':>9} {'fwd+bwd s':>10} {'x loop fwd':>11} {'x loop f+b':>11}")
    for path in ("loop", "chunked", "compiled"):
        f, fb = res[f"{path}_fwd_s"], res[f"{path}_fwdbwd_s"]
        print(f"{path:<10} {f:9.3f} {fb:10.3f} {res['loop_fwd_s'] / f:11.1f} "
              f"{res['loop_fwdbwd_s'] / fb:11.1f}")
    print(f"compile time (cold cache): fwd {res['compile_fwd_s']:.1f} s, then bwd "
          f"{res['compile_fwdbwd_s']:.1f} s; relative error vs loop: chunked "
          f"{res['check_chunked_vs_loop']:.1e} (grads at T=100: "
          f"{res['check_chunked_vs_loop_small_grads']:.1e}), compiled "
          f"{res['check_compiled_vs_loop']:.1e}")
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto")
    p.add_argument("--B", type=int)
    p.add_argument("--T", type=int)
    p.add_argument("--H", type=int)
    p.add_argument("--S", type=int, default=64)
    p.add_argument("--DK", type=int, default=64)
    p.add_argument("--DV", type=int, default=64)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="GPU only")
    p.add_argument("--device", default="cuda", help="GPU only: the CUDA device")
    p.add_argument("--chunk-size", type=int,
                   help="default: 64 on GPU; on CPU the library's (16 forward, 8 with backward)")
    p.add_argument("--skip-bwd", nargs="*", default=[],
                   help="GPU paths timed forward only (e.g. fused_recurrent)")
    p.add_argument("--repeats", type=int, default=3, help="CPU only")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU only")
    p.add_argument("--check-T", type=int, default=1000,
                   help="GPU only: T of the check against the oracle")
    add_tiny_flag(p)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    if args.tiny:
        args.check_T, args.S, args.DK, args.DV = 40, 8, 16, 16
        args.B, args.T, args.H = args.B or 1, args.T or 48, args.H or 1
        args.chunk_size = args.chunk_size or 16
    gpu = args.mode == "gpu" or (args.mode == "auto" and torch.cuda.is_available())
    defaults = dict(B=4, T=131072, H=8, chunk_size=64) if gpu else dict(B=2, T=4096, H=4)
    for key, val in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    res = run_gpu(args) if gpu else run_cpu(args)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
