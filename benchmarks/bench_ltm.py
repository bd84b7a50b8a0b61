"""Benchmark: the long-term-memory kernels, chunk_compress and memory_retrieve.

Correctness comes first (Triton against the float32 reference on CUDA; the PyTorch path
against independent formulations on a CPU), then timings.

On CUDA, with triton.testing.do_bench medians:
  chunk_compress   B=4, T=131072, H=8, Dh=64, C=256, P=4, bf16, forward and forward+backward,
                   against the copy-bandwidth floor: the bytes the op must move divided by
                   the bandwidth of a device-to-device copy measured in the same run.
  memory_retrieve  B=4, T=131072, H=8, Dh=64 over a FIFO bank holding 1024 live entries,
                   against torch SDPA on the equivalent dense non-causal shape (T queries x
                   1024 keys, no mask), forward and forward+backward, in the same run;
                   then its cost as T grows at the fixed capacity (it should be linear).
  the module       LongTermMemory (fifo, float32) on a segment of T tokens with its bank
                   full: the kernels plus the host-side bookkeeping of each chunk boundary.

The bank layout (--mem-chunk C_m, --capacity L): one entry per chunk of C_m tokens (the
chunk's summary), made at the end of its chunk and evicted L chunks later, as a FIFO bank
does. The segment is one of a long stream, so the bank is already full at its first token:
the L entries carried in from earlier segments have negative starts. Entry m (m = -L ..
T/C_m - 1) has the interval [(m + 1) C_m, (m + 1 + L) C_m); M = L + T / C_m entries in all,
exactly L live at every token, stored oldest first.

Without CUDA it runs a small correctness and timing smoke of the PyTorch path.

    python benchmarks/bench_ltm.py                       # the sizes above (CUDA)
    python benchmarks/bench_ltm.py --T 32768 --json results/ltm.json
    python benchmarks/dry_run.py benchmarks/bench_ltm.py --tiny   # the CUDA path, on a CPU
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from harness import add_tiny_flag, copy_bandwidth, median_seconds

from memmodel.kernels.chunk_compress import chunk_compress, chunk_compress_ref
from memmodel.kernels.memory_retrieve import (
    memory_retrieve,
    memory_retrieve_ref,
    visibility_mask,
)

BOUND = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_rms(a, e):
    a, e = a.detach().double(), e.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def check(name, a, e, dtype):
    err = rel_rms(a, e.to(a.dtype))
    if not (math.isfinite(err) and err <= BOUND[dtype]):
        raise SystemExit(f"correctness check failed: {name} relative RMS error {err:.2e}")
    return err


def fifo_bank(B, T, chunk, capacity, device):
    """[B, M] int32 intervals of a full FIFO bank (see the module docstring)."""
    m = torch.arange(-capacity, -(-T // chunk), device=device)
    start = (m + 1) * chunk
    end = start + capacity * chunk
    return (start.to(torch.int32).expand(B, -1).contiguous(),
            end.to(torch.int32).expand(B, -1).contiguous())


def leaves(*tensors):
    return [t.detach().requires_grad_() for t in tensors]


def grads_of(outputs, inputs, seed=1):
    g = torch.Generator(device=outputs[0].device).manual_seed(seed)
    loss = 0
    for o in outputs:
        w = torch.randn(o.shape, generator=g, device=o.device)
        loss = loss + (torch.where(o.isfinite(), o.float(), 0.0) * w).sum()
    return torch.autograd.grad(loss, inputs)


def fwd_bwd(fn, inputs, grads):
    """Run fn(*inputs) and backpropagate the given output gradients."""
    out = fn(*inputs)
    torch.autograd.backward([o for o in out], [g for g in grads])
    for x in inputs:
        x.grad = None


# ---- correctness -----------------------------------------------------------------------

def check_cuda(dtype, device, tiny=False):
    """The Triton kernels against the float32 reference, values and gradients."""
    B, T, H, D, C, P = (1, 70, 2, 16, 32, 2) if tiny else (2, 3000, 4, 64, 256, 4)
    k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype) for _ in range(2))
    q_pool = torch.randn(H, P, D, device=device)
    errs = {}
    x = leaves(k, v, q_pool)
    x32 = leaves(k.float(), v.float(), q_pool)
    out = chunk_compress(*x, C, backend="triton")
    ref = chunk_compress_ref(*x32, C)
    for n, a, e in zip(("s_k", "s_v", "score"), out, ref):
        errs[f"chunk_compress {n}"] = check(f"chunk_compress {n}", a, e, dtype)
    for n, a, e in zip(("dk", "dv", "dq_pool"), grads_of(out, x), grads_of(ref, x32)):
        errs[f"chunk_compress {n}"] = check(f"chunk_compress {n}", a, e, dtype)

    T, cap, Cm = (64, 4, 16) if tiny else (4096, 128, 16)
    start, end = fifo_bank(B, T, Cm, cap, device)
    M = start.shape[1]
    q = torch.randn(B, T, H, D, device=device, dtype=dtype)
    mk, mv = (torch.randn(B, M, H, D, device=device, dtype=dtype) for _ in range(2))
    x, x32 = leaves(q, mk, mv), leaves(q.float(), mk.float(), mv.float())
    out = memory_retrieve(*x, start, end, backend="triton")
    ref = memory_retrieve_ref(*x32, start, end)
    errs["memory_retrieve o"] = check("memory_retrieve o", out[0], ref[0], dtype)
    errs["memory_retrieve lse"] = check("memory_retrieve lse", out[1], ref[1], dtype)
    for n, a, e in zip(("dq", "dk", "dv"), grads_of(out, x), grads_of(ref, x32)):
        errs[f"memory_retrieve {n}"] = check(f"memory_retrieve {n}", a, e, dtype)
    return errs


def check_cpu():
    """The PyTorch path against formulations written independently of it."""
    B, T, H, D, C, P = 1, 200, 2, 16, 32, 2
    k, v, q_pool = torch.randn(B, T, H, D), torch.randn(B, T, H, D), torch.randn(H, P, D)
    s_k, s_v, score = chunk_compress(k, v, q_pool, C, backend="torch")
    errs = {}
    for c0 in range(0, T, C):  # each chunk as plain attention of q_pool over its tokens
        kc, vc = k[:, c0:c0 + C].transpose(1, 2), v[:, c0:c0 + C].transpose(1, 2)
        o = F.scaled_dot_product_attention(q_pool.expand(B, H, P, D), kc, vc)
        errs["chunk_compress s_v"] = max(errs.get("chunk_compress s_v", 0),
                                         check("chunk_compress s_v", s_v[:, c0 // C], o,
                                               torch.float32))
    q = torch.randn(B, T, H, D)
    start, end = fifo_bank(B, T, 8, 6, "cpu")
    mk, mv = torch.randn(B, start.shape[1], H, D), torch.randn(B, start.shape[1], H, D)
    o, _ = memory_retrieve(q, mk, mv, start, end, backend="torch")
    vis = visibility_mask(start, end, T)[:, None]
    o_sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), mk.transpose(1, 2),
                                            mv.transpose(1, 2), attn_mask=vis).transpose(1, 2)
    errs["memory_retrieve o"] = check("memory_retrieve o", o, o_sdpa, torch.float32)
    return errs


# ---- timing ------------------------------------------------------------------------------

def bench_chunk_compress(args, dtype, device, bw):
    import triton.testing

    B, T, H, D, C, P = args.B, args.T, args.H, args.D, args.C, args.P
    k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype) for _ in range(2))
    x = leaves(k, v, torch.randn(H, P, D, device=device))
    fn = lambda *a: chunk_compress(*a, C, backend="triton")  # noqa: E731
    with torch.no_grad():
        ms_fwd = triton.testing.do_bench(lambda: fn(*x))
    grads = [torch.randn_like(o) for o in fn(*x)]
    ms_all = triton.testing.do_bench(lambda: fwd_bwd(fn, x, grads))
    esize, NC = k.element_size(), -(-T // C)
    io = 2 * B * T * H * D * esize  # k and v, once
    small = B * NC * H * P * (2 * D * esize + 4)  # the outputs (or their gradients)
    bytes_fwd = io + small
    bytes_all = bytes_fwd + 2 * io + 2 * small  # the backward reads k, v, writes dk, dv
    res = dict(ms_fwd=ms_fwd, ms_fwd_bwd=ms_all,
               floor_ms_fwd=bytes_fwd / bw * 1e3, floor_ms_fwd_bwd=bytes_all / bw * 1e3)
    res["frac_fwd"] = res["floor_ms_fwd"] / ms_fwd
    res["frac_fwd_bwd"] = res["floor_ms_fwd_bwd"] / ms_all
    res["GBps_fwd"] = bytes_fwd / (ms_fwd * 1e-3) / 1e9
    res["GBps_fwd_bwd"] = bytes_all / (ms_all * 1e-3) / 1e9
    return res


def bench_retrieve(B, T, H, D, cap, chunk, dtype, device, with_sdpa):
    import triton.testing

    start, end = fifo_bank(B, T, chunk, cap, device)
    M = start.shape[1]
    q = torch.randn(B, T, H, D, device=device, dtype=dtype)
    mk, mv = (torch.randn(B, M, H, D, device=device, dtype=dtype) for _ in range(2))
    x = leaves(q, mk, mv)
    fn = lambda *a: memory_retrieve(*a, start, end, backend="triton")  # noqa: E731
    with torch.no_grad():
        ms_fwd = triton.testing.do_bench(lambda: fn(*x))
    grads = [torch.randn_like(q), torch.zeros(B, T, H, device=device)]
    ms_all = triton.testing.do_bench(lambda: fwd_bwd(fn, x, grads))
    flops_fwd = 4 * B * H * T * cap * D  # q k^T and p v over the live entries
    res = dict(T=T, M=M, ms_fwd=ms_fwd, ms_fwd_bwd=ms_all,
               tflops_fwd=flops_fwd / (ms_fwd * 1e-3) / 1e12,
               tflops_fwd_bwd=3.5 * flops_fwd / (ms_all * 1e-3) / 1e12)
    if with_sdpa:  # the dense equivalent: T queries over cap keys, no mask
        qs = q.transpose(1, 2).detach().requires_grad_()
        ks, vs = (torch.randn(B, H, cap, D, device=device, dtype=dtype, requires_grad=True)
                  for _ in range(2))
        sd = lambda a, b, c: (F.scaled_dot_product_attention(a, b, c),)  # noqa: E731
        with torch.no_grad():
            res["sdpa_ms_fwd"] = triton.testing.do_bench(lambda: sd(qs, ks, vs))
        g = [torch.randn_like(qs)]
        res["sdpa_ms_fwd_bwd"] = triton.testing.do_bench(lambda: fwd_bwd(sd, [qs, ks, vs], g))
        res["speedup_fwd"] = res["sdpa_ms_fwd"] / ms_fwd
        res["speedup_fwd_bwd"] = res["sdpa_ms_fwd_bwd"] / ms_all
    return res


def bench_module(args, device):
    """The LongTermMemory module (fifo, two levels of capacity/2, merges of 2, float32) on a
    segment of T tokens whose bank is already full: kernels plus the host-side bookkeeping
    of every chunk boundary (controller calls, merges, intervals)."""
    import triton.testing

    from memmodel.config import MemoryConfig
    from memmodel.long_term_memory import LongTermMemory
    from memmodel.state import LayerState

    B, T, H, D, C, P = args.B, args.T, args.H, args.D, args.C, args.P
    half = max(args.capacity // 2, P + 2)  # level 0 takes P at once and merges 2
    cfg = MemoryConfig(d_model=H * D, ltm_controller="fifo", ltm_heads=H, ltm_chunk_size=C,
                       ltm_summaries=P, ltm_levels=2, ltm_capacity=[half, half], ltm_merge=2,
                       backend="triton")
    ltm = LongTermMemory.from_config(cfg).to(device)
    x = torch.randn(B, T, H * D, device=device)
    warm = LayerState()
    with torch.no_grad():
        ltm(torch.randn(B, T, H * D, device=device), warm)  # fills the bank
    x_grad = x.clone().requires_grad_()
    g = torch.randn_like(x)

    def fwd():
        with torch.no_grad():
            ltm(x, LayerState(ltm=warm.ltm))

    def fwd_bwd():
        ltm(x_grad, LayerState(ltm=warm.ltm)).backward(g)

    ms_fwd = triton.testing.do_bench(fwd)
    ms_all = triton.testing.do_bench(fwd_bwd, grad_to_none=[x_grad, *ltm.parameters()])
    boundaries = T // C
    return dict(T=T, boundaries=boundaries, live=int(warm.ltm.live.sum(1).max()),
                ms_fwd=ms_fwd, ms_fwd_bwd=ms_all, ms_fwd_per_boundary=ms_fwd / boundaries,
                Mtok_s_fwd=B * T / ms_fwd / 1e3, Mtok_s_fwd_bwd=B * T / ms_all / 1e3)


def cpu_timer(fn, repeats):
    """ms: the median of `repeats` calls after one warm-up call."""
    fn()
    return median_seconds(fn, repeats) * 1e3


def smoke_cpu(args):
    B, T, H, D, C, P = 1, 4096, 2, 32, 64, 2
    k, v = torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    x = leaves(k, v, torch.randn(H, P, D))
    fn = lambda *a: chunk_compress(*a, C, backend="torch")  # noqa: E731
    grads = [torch.randn_like(o) for o in fn(*x)]
    res = {"chunk_compress ms_fwd_bwd": cpu_timer(lambda: fwd_bwd(fn, x, grads), args.repeats)}
    start, end = fifo_bank(B, T, 64, 16, "cpu")
    M = start.shape[1]
    x = leaves(torch.randn(B, T, H, D), torch.randn(B, M, H, D), torch.randn(B, M, H, D))
    fn = lambda *a: memory_retrieve(*a, start, end, backend="torch")  # noqa: E731
    grads = [torch.randn(B, T, H, D), torch.zeros(B, T, H)]
    res["memory_retrieve ms_fwd_bwd"] = cpu_timer(lambda: fwd_bwd(fn, x, grads), args.repeats)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=131072)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--D", type=int, default=64, help="head width Dh")
    p.add_argument("--C", type=int, default=256, help="chunk_compress chunk size")
    p.add_argument("--P", type=int, default=4, help="summaries per chunk")
    p.add_argument("--capacity", type=int, default=1024, help="live bank entries")
    p.add_argument("--mem-chunk", type=int, default=256, help="tokens per bank entry")
    p.add_argument("--scaling-T", type=int, nargs="*",
                   default=[16384, 32768, 65536, 131072], help="T values of the scaling run")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--repeats", type=int, default=5, help="CPU smoke repeats")
    add_tiny_flag(p)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    if args.tiny:
        args.B, args.T, args.H, args.D, args.C, args.P = 1, 96, 1, 16, 32, 2
        args.capacity, args.mem_chunk, args.scaling_T = 4, 16, [64, 128]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    results = {"args": vars(args)}

    if not torch.cuda.is_available():
        results["correctness_rel_rms"] = check_cpu()
        results["cpu_smoke"] = smoke_cpu(args)
        print("no CUDA: PyTorch-path smoke only")
        for name, val in {**results["correctness_rel_rms"], **results["cpu_smoke"]}.items():
            print(f"  {name:32s} {val:.3g}")
    else:
        device = torch.device("cuda")
        torch.manual_seed(0)
        results["device"] = torch.cuda.get_device_name()
        results["correctness_rel_rms"] = check_cuda(dtype, device, args.tiny)
        print(f"{results['device']}: correctness (relative RMS error vs fp32 reference)")
        for name, err in results["correctness_rel_rms"].items():
            print(f"  {name:28s} {err:.2e}")
        bw = copy_bandwidth(device, 1 << 26 if args.tiny else 1 << 30)
        results["copy_GBps"] = bw / 1e9
        print(f"copy bandwidth: {bw / 1e9:.0f} GB/s")

        cc = bench_chunk_compress(args, dtype, device, bw)
        results["chunk_compress"] = cc
        print(f"chunk_compress B={args.B} T={args.T} H={args.H} Dh={args.D} C={args.C} "
              f"P={args.P} {args.dtype}")
        for part in ("fwd", "fwd_bwd"):
            print(f"  {part:8s} {cc['ms_' + part]:8.3f} ms  {cc['GBps_' + part]:7.0f} GB/s  "
                  f"floor {cc['floor_ms_' + part]:.3f} ms  fraction {cc['frac_' + part]:.2f}")

        mr = bench_retrieve(args.B, args.T, args.H, args.D, args.capacity, args.mem_chunk,
                            dtype, device, with_sdpa=True)
        results["memory_retrieve"] = mr
        print(f"memory_retrieve B={args.B} T={args.T} H={args.H} Dh={args.D} "
              f"capacity={args.capacity} (M={mr['M']}) {args.dtype}")
        for part in ("fwd", "fwd_bwd"):
            print(f"  {part:8s} {mr['ms_' + part]:8.3f} ms  {mr['tflops_' + part]:6.1f} TFLOP/s"
                  f"  SDPA {mr['sdpa_ms_' + part]:8.3f} ms  SDPA/ours {mr['speedup_' + part]:.2f}")

        mod = bench_module(args, device)
        results["module"] = mod
        print(f"LongTermMemory module, fifo, float32, B={args.B} T={args.T} C={args.C} "
              f"P={args.P}, {mod['live']} live entries: {mod['boundaries']} chunk boundaries")
        print(f"  fwd      {mod['ms_fwd']:8.3f} ms  ({mod['ms_fwd_per_boundary']:.3f} ms per "
              f"boundary, {mod['Mtok_s_fwd']:.2f} Mtok/s)")
        print(f"  fwd_bwd  {mod['ms_fwd_bwd']:8.3f} ms  ({mod['Mtok_s_fwd_bwd']:.2f} Mtok/s)")

        rows = [bench_retrieve(args.B, T, args.H, args.D, args.capacity, args.mem_chunk,
                               dtype, device, with_sdpa=False) for T in args.scaling_T]
        results["retrieve_scaling"] = rows
        print(f"memory_retrieve scaling at capacity {args.capacity}: ms per 1K tokens "
              "(flat = linear in T)")
        for r in rows:
            print(f"  T={r['T']:7d} M={r['M']:5d}  fwd {r['ms_fwd']:8.3f} ms "
                  f"({r['ms_fwd'] / r['T'] * 1024:.4f}/1K)  fwd+bwd {r['ms_fwd_bwd']:8.3f} ms "
                  f"({r['ms_fwd_bwd'] / r['T'] * 1024:.4f}/1K)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
