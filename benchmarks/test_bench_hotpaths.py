"""pytest-benchmark suites of the CPU hot paths, for comparisons between runs.

    make bench                                        # runs them, saves the run (.benchmarks/)
    make bench BENCH_ARGS=--benchmark-compare         # and compares with the last saved run
    .venv/bin/python -m pytest benchmarks --benchmark-only -k scan

Collected only from this folder (pyproject's testpaths is tests/, so `make test` never
sees them). One thread, fixed seeds, the sizes of `bench_throughput.py`'s CPU runs (B=2,
d_model 128: E=256, N=16; segments of 4096). The CPU fast paths run as they would in a
user's process (MEMMODEL_COMPILE as set; by default compiled where a C++ compiler is):
every benchmark calls its function once before timing, so compilation is not timed.
"""

from __future__ import annotations

import pytest
import torch

from memmodel.kernels.gated_cache import gated_cache_write
from memmodel.kernels.memory_retrieve import memory_retrieve
from memmodel.kernels.selective_scan import selective_scan
from memmodel.long_term_memory import LongTermMemory
from memmodel.state import LayerState

pytest.importorskip("pytest_benchmark")

B, T, E, N = 2, 4096, 256, 16


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def run(benchmark, fn, rounds=3):
    """fn() once untimed (compilation, allocator warm-up), then `rounds` timed rounds."""
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def scan_inputs(T=T, grad=False):
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g).requires_grad_(grad)
    u, z, delta = make(B, T, E), make(B, T, E), make(B, T, E)
    A = (-torch.rand(E, N, generator=g) * 4).requires_grad_(grad)
    Bm, Cm = make(B, T, 1, N), make(B, T, 1, N)
    D, bias = make(E), make(E)
    return u, delta, A, Bm, Cm, D, z, bias


def test_selective_scan_inference(benchmark):
    u, delta, A, Bm, Cm, D, z, bias = scan_inputs()
    h0 = torch.zeros(B, E, N)

    @torch.no_grad()
    def fn():
        return selective_scan(u, delta, A, Bm, Cm, D=D, z=z, delta_bias=bias,
                              delta_softplus=True, initial_state=h0, output_final_state=True,
                              backend="torch")

    y, h = run(benchmark, fn)
    assert torch.isfinite(y).all() and h.shape == (B, E, N)


def test_selective_scan_forward_backward(benchmark):
    u, delta, A, Bm, Cm, D, z, bias = scan_inputs(T=1024, grad=True)

    def fn():
        y, _ = selective_scan(u, delta, A, Bm, Cm, D=D, z=z, delta_bias=bias,
                              delta_softplus=True, backend="torch")
        y.square().mean().backward()
        for t in (u, delta, A, Bm, Cm, D, z, bias):
            t.grad = None

    run(benchmark, fn)


def cache_inputs(T=T, H=2, S=8, Dh=64, grad=False):
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g).requires_grad_(grad)
    q, k, v = make(B, T, H, Dh), make(B, T, H, Dh), make(B, T, H, Dh)
    w = torch.softmax(torch.randn(B, T, H, S, generator=g), -1).requires_grad_(grad)
    state = (torch.randn(B, H, S, Dh, generator=g), torch.zeros(B, H, S, Dh))
    return q, k, v, w, state


def test_gated_cache_inference(benchmark):
    q, k, v, w, state = cache_inputs()

    @torch.no_grad()
    def fn():
        return gated_cache_write(q, k, v, w, initial_state=state, output_final_state=True,
                                 backend="torch")

    r, _ = run(benchmark, fn)
    assert torch.isfinite(r).all()


def test_gated_cache_forward_backward(benchmark):
    q, k, v, w, state = cache_inputs(T=1024, grad=True)

    def fn():
        r, _ = gated_cache_write(q, k, v, w, initial_state=state, backend="torch")
        r.square().mean().backward()
        for t in (q, k, v, w):
            t.grad = None

    run(benchmark, fn)


def test_memory_retrieve_inference(benchmark):
    """A segment's retrieval: 4096 tokens against 256 columns with FIFO-like intervals."""
    H, Dh, M = 2, 64, 256
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, Dh, generator=g)
    k, v = torch.randn(B, M, H, Dh, generator=g), torch.randn(B, M, H, Dh, generator=g)
    start = (torch.arange(M) * 16 - 64).expand(B, M).to(torch.int32).contiguous()
    end = (start + 256).clamp(max=T)

    @torch.no_grad()
    def fn():
        return memory_retrieve(q, k, v, start, end, backend="torch")

    o, lse = run(benchmark, fn)
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("controller", ["fifo", "qlearning"])
def test_long_term_memory_segment(benchmark, controller):
    """One segment of 4096 tokens through LongTermMemory (chunks of 32, the ablation's
    bank: one summary a chunk, two levels of 4 and 2): compression, 128 chunk boundaries
    of host work, one retrieval."""
    ltm = LongTermMemory(128, controller=controller, heads=2, chunk_size=32, summaries=1,
                         levels=2, capacity=[4, 2], merge=2, backend="torch").eval()
    x = torch.randn(B, T, 128, generator=torch.Generator().manual_seed(0))
    state = LayerState()
    with torch.no_grad():
        ltm(x, state)  # a full bank to start from

    @torch.no_grad()
    def fn():
        s = LayerState(ltm=state.ltm)
        return ltm(x, s)

    y = run(benchmark, fn)
    assert y.shape == x.shape


@pytest.mark.parametrize("variant", ["ssm", "full"])
def test_model_segment(benchmark, variant):
    """One 4096-token segment of inference through the benchmark's model, from a fresh
    stream (the bank fills within its first chunks)."""
    import bench_throughput as bt

    sizes = bt.Sizes()
    model = bt.build(variant, sizes, torch.device("cpu"))
    ids, _ = bt._segment_ids(sizes, 0, T, "cpu")

    @torch.no_grad()
    def fn():
        return model(ids)

    out = run(benchmark, fn)
    assert out.logits.shape == (B, T, 256)
