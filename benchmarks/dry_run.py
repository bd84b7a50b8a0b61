"""Run a GPU benchmark script end to end on a CPU: a check of the script, not a timing.

    python benchmarks/dry_run.py benchmarks/bench_ltm.py --tiny [script args ...]

The GPU benchmarks only run where CUDA is, and a GPU's time is scarce: a script that
fails there on a typo wastes it. This runs one under Triton's interpreter with CUDA
stood in for by the CPU, so that every code path of the script (its correctness checks,
timings, peer hooks and printing) executes at toy sizes:

- `TRITON_INTERPRET=1`, so the Triton kernels run on CPU tensors;
- a `TorchFunctionMode` that turns every `device="cuda"` (string, `torch.device` or
  `.cuda()`) into the CPU;
- `torch.cuda.is_available()` answers True, and the few `torch.cuda` calls the scripts
  make (device name and properties, events, synchronize, memory statistics) answer as a
  CPU would; `torch.Generator(device="cuda")` makes a CPU generator;
- `triton.testing.do_bench` times one call with `time.perf_counter`.

Every figure it prints is meaningless as a GPU figure; the exit code is what counts (the
scripts' own correctness checks run and must pass). Triton 3.9's interpreter multiplies
bfloat16 blocks inside `tl.dot` wrongly, so run `bench_ltm.py` with `--dtype fp16` here.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
os.environ.setdefault("MEMMODEL_COMPILE", "0")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402


def _is_cuda(value) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    return isinstance(value, str) and value.split(":")[0] == "cuda"


def _to_cpu(value):
    return torch.device("cpu") if _is_cuda(value) else value


class CudaOnCpu(TorchFunctionMode):
    """Every CUDA device argument of a torch call becomes the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        args = tuple(_to_cpu(a) for a in args)
        return func(*args, **kwargs)


class _Event:
    """torch.cuda.Event on the host clock."""

    def __init__(self, enable_timing: bool = False, **_):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1e3


class _Props:
    name = "CPU (dry run)"
    multi_processor_count = 1
    total_memory = 0


def do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean",
             **_):
    """triton.testing.do_bench's interface on the host clock: one call, timed (a dry run
    needs the code path, not a statistic)."""
    if grad_to_none is not None:
        for x in grad_to_none:
            x.grad = None
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return [ms] * len(quantiles) if quantiles is not None else ms


def install():
    """Patch torch.cuda, torch.Generator and triton.testing.do_bench; enter CudaOnCpu."""
    import triton.testing

    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.get_device_name = lambda *a, **k: _Props.name
    cuda.get_device_properties = lambda *a, **k: _Props()
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.reset_peak_memory_stats = lambda *a, **k: None
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.Event = _Event
    generator = torch.Generator
    torch.Generator = lambda device="cpu": generator(device=_to_cpu(device))
    triton.testing.do_bench = do_bench
    CudaOnCpu().__enter__()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not argv[0].endswith(".py"):
        sys.exit("usage: python benchmarks/dry_run.py <benchmark script.py> [its args ...]")
    install()
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
