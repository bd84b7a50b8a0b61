"""GPU benchmark of the Triton selective scan, beside its peers, in one process.

1. Checks correctness first: at the benchmark size the forward (y and final state) against
   the chunked PyTorch path, and forward+backward at a shorter T against the same.
2. Measures the card's copy bandwidth (device-to-device, bytes read + written).
3. Times forward and forward+backward (median of `triton.testing.do_bench`) and reports
   ms, Mtokens/s and the fraction of the floor max(bytes / copy bandwidth, exps / exp rate)
   derived in docs/kernels.md.
4. Runs the peers that are importable in the same process: mamba_ssm's CUDA scan
   (`selective_scan_fn`), mamba_ssm's Triton decode step, and the per-token PyTorch loop
   at a small shape.
5. Runs T = 1,048,576 at B=1, E=2048, N=16 forward+backward and reports peak memory.

    python benchmarks/bench_selective_scan.py --json $OUT/scan.jsonl
    python benchmarks/bench_selective_scan.py --quick      # smaller sizes, a smoke run
    python benchmarks/dry_run.py benchmarks/bench_selective_scan.py --tiny
                                                           # the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from harness import add_tiny_flag, copy_bandwidth

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def log(rec, sink):
    print(json.dumps(rec), flush=True)
    if sink:
        sink.write(json.dumps(rec) + "\n")
        sink.flush()


def make_inputs(B, T, E, N, dtype, seed=0, grad=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    x = dict(
        u=r(B, T, E).to(dtype), delta=(r(B, T, E) * 0.5 - 1.0).to(dtype),
        A=-torch.exp(r(E, N) * 0.5), B=r(B, T, 1, N).to(dtype), C=r(B, T, 1, N).to(dtype),
        D=r(E), z=r(B, T, E).to(dtype), delta_bias=r(E) * 0.1,
    )
    if grad:
        for v in x.values():
            v.requires_grad_()
    return x


def exp_rate():
    """Special-function (exp2) rate: 16 per SM per clock on Hopper, at the max SM clock."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20).stdout.split()
        mhz = float(out[0])
    except Exception:
        mhz = 1980.0
    return 16 * sms * mhz * 1e6, sms, mhz


def floor_ms(B, T, E, N, G, itemsize, bw, rate, backward):
    if backward:  # reads u, delta, z, dy, B, C; writes du, ddelta, dz, dB, dC; recomputes a
        bytes_ = B * T * (7 * E + 4 * G * N) * itemsize
        exps = B * T * E * N
    else:
        bytes_ = B * T * (4 * E + 2 * G * N) * itemsize
        exps = B * T * E * N
    return max(bytes_ / bw, exps / rate) * 1e3


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_correctness(B, T, E, N, dtype, T_bwd, sink):
    from memmodel.kernels.selective_scan import chunk_selective_scan, cpu_selective_scan

    os.environ["MEMMODEL_COMPILE"] = "0"
    x = make_inputs(B, T, E, N, dtype, seed=1, grad=False)
    kw = dict(delta_softplus=True, output_final_state=True)
    with torch.no_grad():
        y, h = chunk_selective_scan(**x, **kw)
        y_ref, h_ref = cpu_selective_scan(**{k: v.float() for k, v in x.items()}, **kw)
    rec = {"name": "check_fwd", "B": B, "T": T, "E": E, "N": N,
           "rel_y": rel(y, y_ref), "rel_h": rel(h, h_ref)}
    log(rec, sink)
    assert rec["rel_y"] < 1e-2 and rec["rel_h"] < 1e-2, rec
    x = make_inputs(B, T_bwd, E, N, dtype, seed=2)
    x32 = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    gy = torch.randn(B, T_bwd, E, device="cuda")
    y, _ = chunk_selective_scan(**x, delta_softplus=True)
    (y.float() * gy).sum().backward()
    y_ref, _ = cpu_selective_scan(**x32, delta_softplus=True)
    (y_ref * gy).sum().backward()
    rec = {"name": "check_fwdbwd", "B": B, "T": T_bwd, "E": E, "N": N}
    rec.update({f"rel_d{k}": rel(x[k].grad, x32[k].grad) for k in x})
    log(rec, sink)
    assert all(v < 2e-2 for k, v in rec.items() if k.startswith("rel_")), rec


def time_ours(B, T, E, N, dtype, bw, rate, sink, label="memmodel_triton_scan"):
    import triton.testing

    from memmodel.kernels.selective_scan import chunk as scan_chunk
    from memmodel.kernels.selective_scan import chunk_selective_scan

    x = make_inputs(B, T, E, N, dtype)
    gy = torch.randn(B, T, E, device="cuda", dtype=dtype)
    fwd = lambda: chunk_selective_scan(**x, delta_softplus=True)
    def fwdbwd():
        y, _ = fwd()
        y.backward(gy)
    rec = {"name": label, "B": B, "T": T, "E": E, "N": N, "dtype": str(dtype)[6:]}
    with torch.no_grad():
        rec["fwd_ms"] = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median")
    rec["fwdbwd_ms"] = triton.testing.do_bench(fwdbwd, warmup=25, rep=200,
                                               return_mode="median", grad_to_none=list(x.values()))
    isz = torch.finfo(dtype).bits // 8
    rec["fwd_floor_ms"] = floor_ms(B, T, E, N, 1, isz, bw, rate, False)
    rec["fwdbwd_floor_ms"] = rec["fwd_floor_ms"] + floor_ms(B, T, E, N, 1, isz, bw, rate, True)
    rec["fwd_x_floor"] = rec["fwd_ms"] / rec["fwd_floor_ms"]
    rec["fwdbwd_x_floor"] = rec["fwdbwd_ms"] / rec["fwdbwd_floor_ms"]
    rec["fwd_Mtok_s"] = B * T / rec["fwd_ms"] / 1e3
    rec["fwdbwd_Mtok_s"] = B * T / rec["fwdbwd_ms"] / 1e3
    # what the autotuners picked at this shape (warps; the backward's SPLIT)
    rec["fwd_config"] = str(scan_chunk._selective_scan_fwd_kernel.best_config)
    rec["bwd_config"] = str(scan_chunk._selective_scan_bwd_kernel.best_config)
    log(rec, sink)
    return rec


def time_mamba_cuda(B, T, E, N, dtype, sink):
    """mamba_ssm's CUDA selective scan, when its extension is importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # not built on this machine
        log({"name": "mamba1_selective_scan_cuda", "skipped": str(err)[:200]}, sink)
        return None
    import triton.testing

    x = make_inputs(B, T, E, N, dtype)
    # mamba_ssm's layout: u, delta, z [B, E, T]; B, C [B, G, N, T]
    t = lambda v: v.detach().transpose(1, 2).contiguous().requires_grad_()
    args = dict(u=t(x["u"]), delta=t(x["delta"]), A=x["A"],
                B=x["B"].detach().permute(0, 2, 3, 1).contiguous().requires_grad_(),
                C=x["C"].detach().permute(0, 2, 3, 1).contiguous().requires_grad_(),
                D=x["D"], z=t(x["z"]), delta_bias=x["delta_bias"], delta_softplus=True)
    gy = torch.randn(B, E, T, device="cuda", dtype=dtype)
    fwd = lambda: selective_scan_fn(**args)
    def fwdbwd():
        fwd().backward(gy)
    rec = {"name": "mamba1_selective_scan_cuda", "B": B, "T": T, "E": E, "N": N}
    with torch.no_grad():
        rec["fwd_ms"] = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median")
    rec["fwdbwd_ms"] = triton.testing.do_bench(fwdbwd, warmup=25, rep=200,
                                               return_mode="median")
    log(rec, sink)
    return rec


def time_decode(batch, E, N, dtype, sink):
    import triton.testing

    from memmodel.kernels.selective_scan import fused_selective_state_update

    g = torch.Generator(device="cuda").manual_seed(3)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    state = r(batch, E, N)
    args = (r(batch, E).to(dtype), r(batch, E).to(dtype), -torch.exp(r(E, N)),
            r(batch, 1, N).to(dtype), r(batch, 1, N).to(dtype), r(E), r(batch, E).to(dtype),
            r(E))
    ms = triton.testing.do_bench(lambda: fused_selective_state_update(state, *args, True),
                                 warmup=25, rep=200, return_mode="median")
    log({"name": "memmodel_triton_decode_step", "batch": batch, "E": E, "N": N, "ms": ms}, sink)
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except Exception as err:
        log({"name": "mamba_triton_decode_step", "skipped": str(err)[:200]}, sink)
        return
    u, dl, A, Bm, Cm, D, z, bias = args
    ms = triton.testing.do_bench(
        lambda: selective_state_update(state, u, dl, A, Bm[:, 0], Cm[:, 0], D, z=z,
                                       dt_bias=bias, dt_softplus=True),
        warmup=25, rep=200, return_mode="median")
    log({"name": "mamba_triton_decode_step", "batch": batch, "E": E, "N": N, "ms": ms}, sink)


def time_torch_loop(sink, dtype, B=1, T=2048, E=4096, N=16):
    import triton.testing

    from memmodel.kernels.selective_scan import selective_scan_ref

    x = make_inputs(B, T, E, N, dtype, grad=False)
    with torch.no_grad():
        ms = triton.testing.do_bench(lambda: selective_scan_ref(**x, delta_softplus=True),
                                     warmup=1, rep=1, return_mode="median")
    log({"name": "torch_loop_reference", "B": B, "T": T, "E": E, "N": N, "fwd_ms": ms}, sink)


def long_sequence(T, dtype, sink, E=2048, N=16):
    from memmodel.kernels.selective_scan import chunk_selective_scan

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    rec = {"name": "memmodel_triton_scan_long", "B": 1, "T": T, "E": E, "N": N}
    try:
        x = make_inputs(1, T, E, N, dtype)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        y, h = chunk_selective_scan(**x, delta_softplus=True, output_final_state=True)
        y.backward(torch.ones_like(y))
        end.record()
        torch.cuda.synchronize()
        rec.update(ok=bool(torch.isfinite(x["u"].grad).all()), fwdbwd_ms=start.elapsed_time(end),
                   peak_GiB=torch.cuda.max_memory_allocated() / 2**30)
    except torch.cuda.OutOfMemoryError as err:
        rec.update(ok=False, error=str(err)[:200])
    log(rec, sink)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="append JSON lines here")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    add_tiny_flag(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = p.parse_args()
    dtype = DTYPES[args.dtype]
    if not torch.cuda.is_available():
        sys.exit("bench_selective_scan.py needs a CUDA GPU; on a CPU use "
                 "benchmarks/bench_selective_scan_cpu.py")
    import triton

    sink = open(args.json, "a") if args.json else None
    bw = copy_bandwidth("cuda", 2**26 if args.tiny else 2 * 1024**3)
    rate, sms, mhz = exp_rate()
    log({"name": "device", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
         "triton": triton.__version__, "copy_TBps": bw / 1e12, "sms": sms, "sm_mhz": mhz,
         "exp_rate_per_s": rate}, sink)
    if args.tiny:  # (B, T, E, N) of the check and of each timing; decode; loop; long T
        check, shapes = (1, 96, 32, 4, 80), [(1, 40, 16, 4), (1, 24, 24, 4)]
        decode, loop, long = (2, 32, 4), dict(T=16, E=32, N=4), dict(T=160, E=16, N=4)
    else:
        T_main = 16384 if args.quick else 131072
        check = (4, T_main, 2048, 16, 4096)
        shapes = [(4, T_main, 2048, 16), (1, T_main, 4096, 16), (1, 2048, 4096, 16)]
        decode, loop, long = (64, 4096, 16), {}, dict(T=65536 if args.quick else 1 << 20)
    B, T, E, N, T_bwd = check
    check_correctness(B, T, E, N, dtype, T_bwd, sink)
    for B, T, E, N in shapes:
        time_ours(B, T, E, N, dtype, bw, rate, sink)
        time_mamba_cuda(B, T, E, N, dtype, sink)
    time_decode(*decode, dtype, sink)
    time_torch_loop(sink, dtype, **loop)
    long_sequence(dtype=dtype, sink=sink, **long)
    if sink:
        sink.close()


if __name__ == "__main__":
    main()
