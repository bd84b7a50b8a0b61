"""Compile every Triton kernel of the package for an NVIDIA GPU, on a machine without one.

The interpreter (TRITON_INTERPRET=1) checks what kernels compute but not whether they
compile: an op it accepts may be refused by the GPU compiler, and it says nothing about
registers. This script runs each op's Triton path once, forward and backward, on small CPU
tensors with the launches intercepted (nothing executes), then compiles every launched
kernel with the arguments it got for the target architecture, for each autotuning config,
and reports registers and spills from ptxas.

    python benchmarks/compile_check.py                # sm_90 (H100 / H200), bf16 inputs
    python benchmarks/compile_check.py --dtype fp32 --arch 90

Exit status 1 if any kernel fails to compile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for real: the kernels must be JITFunctions

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8",
                torch.bool: "i1"}
LAUNCHES = []  # (JITFunction, bound arguments, launch options)


def _capture_run(self, *args, grid, warmup, **kwargs):
    LAUNCHES.append((self, args, kwargs))


def _capture_autotuned(self, *args, **kwargs):
    kwargs.pop("grid", None)
    kwargs.pop("warmup", None)
    for config in self.configs:
        self.fn.run(*args, grid=None, warmup=False, **kwargs, **config.all_kwargs())


def signature(fn: JITFunction, args, kwargs):
    """Split a launch's arguments into Triton's signature types and constexpr values."""
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    sig, consts = {}, {}
    for p in fn.params:
        val = bound.get(p.name, p.default if hasattr(p, "default") else None)
        if p.is_constexpr:
            sig[p.name], consts[p.name] = "constexpr", val
        elif isinstance(val, torch.Tensor):
            sig[p.name] = "*" + TRITON_TYPES[val.dtype]
        elif isinstance(val, bool):
            sig[p.name] = "i1"
        elif isinstance(val, int):
            sig[p.name] = "i32" if -(2**31) <= val < 2**31 else "i64"
        elif isinstance(val, float):
            sig[p.name] = "fp32"
        elif val is None:
            sig[p.name], consts[p.name] = "constexpr", None
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(val).__name__}")
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    return sig, consts, options


def ptxas_report(ptx: str, arch: int) -> str:
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if f"sm_{arch}a" in ptx else f"sm_{arch}"
    for exe in ("ptxas-blackwell", "ptxas"):  # the newest first: it reads the newest PTX
        path = os.path.join(bindir, exe)
        if not os.path.exists(path):
            continue
        out = subprocess.run([path, "--gpu-name", gpu, "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True)
        if out.returncode == 0:
            lines = [ln.split(":", 1)[-1].strip() for ln in out.stderr.splitlines()
                     if "registers" in ln or "spill" in ln]
            return " | ".join(lines)
    return "(no ptxas could read this PTX)"


def run_ops(dtype):
    """Call every op's Triton path, forward and backward, on small CPU tensors."""
    from memmodel.kernels.chunk_compress.parallel import parallel_chunk_compress
    from memmodel.kernels.gated_cache.chunk import chunk_gated_cache_write
    from memmodel.kernels.gated_cache.fused_recurrent import fused_recurrent_gated_cache_write
    from memmodel.kernels.memory_retrieve.parallel import parallel_memory_retrieve
    from memmodel.kernels.selective_scan.chunk import chunk_selective_scan
    from memmodel.kernels.selective_scan.step import fused_selective_state_update

    def leaf(*shape, dt=dtype):
        return torch.randn(*shape).to(dt).requires_grad_()

    def backward(*outs):
        grads = [torch.ones_like(o) for o in outs if o is not None and o.requires_grad]
        torch.autograd.backward([o for o in outs if o is not None and o.requires_grad], grads)

    B, T, E, N = 2, 256, 2048, 16
    y, h = chunk_selective_scan(leaf(B, T, E), leaf(B, T, E), leaf(E, N, dt=torch.float32),
                                leaf(B, T, 1, N), leaf(B, T, 1, N), leaf(E, dt=torch.float32),
                                leaf(B, T, E), leaf(E, dt=torch.float32), True,
                                leaf(B, E, N, dt=torch.float32), True)
    backward(y, h)
    fused_selective_state_update(torch.zeros(B, E, N), torch.randn(B, E).to(dtype),
                                 torch.randn(B, E).to(dtype), -torch.rand(E, N),
                                 torch.randn(B, 1, N).to(dtype), torch.randn(B, 1, N).to(dtype),
                                 torch.ones(E), torch.randn(B, E).to(dtype), torch.zeros(E), True)
    H, S, D = 8, 64, 64
    w = torch.rand(B, T, H, S).requires_grad_()
    for op in (chunk_gated_cache_write, fused_recurrent_gated_cache_write):
        r, final = op(leaf(B, T, H, D), leaf(B, T, H, D), leaf(B, T, H, D), w,
                      initial_state=(leaf(B, H, S, D, dt=torch.float32),
                                     leaf(B, H, S, D, dt=torch.float32)),
                      output_final_state=True)
        backward(r, *final)
    outs = parallel_chunk_compress(leaf(B, 1024, H, D), leaf(B, 1024, H, D),
                                   leaf(H, 4, D, dt=torch.float32), 256)
    backward(*outs)
    M = 512
    start = torch.arange(M).repeat(B, 1).to(torch.int32) * 2
    o, lse = parallel_memory_retrieve(leaf(B, 1024, H, D), leaf(B, M, H, D), leaf(B, M, H, D),
                                      start, start + 256)
    backward(o, lse)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 80")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    args = p.parse_args()
    JITFunction.run = _capture_run
    Autotuner.run = _capture_autotuned
    run_ops(DTYPES[args.dtype])
    target = GPUTarget("cuda", args.arch, 32)
    failed, seen = 0, set()
    print(f"Triton {triton.__version__}, target sm_{args.arch}, {args.dtype} inputs")
    for fn, a, kw in LAUNCHES:
        sig, consts, options = signature(fn, a, kw)
        key = (fn.__name__, tuple(sorted(sig.items())), repr(sorted(consts.items())),
               tuple(sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        label = f"{fn.__module__.rsplit('.', 2)[-2]}.{fn.__name__} warps={options.get('num_warps')}"
        try:
            out = triton.compile(ASTSource(fn, sig, consts), target=target, options=options)
            print(f"ok    {label:<58} {ptxas_report(out.asm['ptx'], args.arch)}")
        except Exception as err:  # report every failure, then exit non-zero
            failed += 1
            print(f"FAIL  {label}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
    print(f"{len(seen)} kernel variants compiled, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
