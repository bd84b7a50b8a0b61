"""The chunked PyTorch selective scan against the per-token oracle, and input checks."""

import pytest
import torch
from helpers import assert_close
from scan_inputs import ALL_OPTS, detached_fp32, make_scan_inputs, run_and_grad

from memmodel.kernels.selective_scan import (
    cpu_selective_scan,
    selective_scan,
    selective_scan_ref,
    selective_state_update,
)

# (T, E, N, G, optional arguments): T crosses the 32-token chunk in every way, E is never a
# power of two, and each optional argument is both absent and present somewhere.
CASES = [
    pytest.param(1, 12, 4, 1, ALL_OPTS, id="T1-all"),
    pytest.param(63, 12, 4, 2, (), id="T63-G2-bare"),
    pytest.param(64, 20, 16, 1, ("D", "z"), id="T64-D-z"),
    pytest.param(65, 12, 4, 2, ("delta_bias", "softplus", "final_state"), id="T65-G2-bias-sp"),
    pytest.param(65, 12, 4, 1, ("initial_state", "final_state"), id="T65-h0"),
    pytest.param(300, 6, 4, 2, ALL_OPTS, id="T300-G2-all"),
]


def _check_against_oracle(kw_test, kw_oracle, dtype, cu_seqlens=None, **extra):
    y, h, g = run_and_grad(cpu_selective_scan, kw_test, cu_seqlens=cu_seqlens, **extra)
    y_ref, h_ref, g_ref = run_and_grad(selective_scan_ref, kw_oracle, cu_seqlens=cu_seqlens)
    assert y.dtype == kw_test["u"].dtype
    assert_close(y, y_ref.to(y.dtype), "y", dtype=dtype)
    if kw_test["output_final_state"]:
        assert h.dtype == torch.float32
        assert_close(h, h_ref, "final_state", dtype=dtype)
    else:
        assert h is None and h_ref is None
    assert g.keys() == g_ref.keys()
    for name in g:
        assert_close(g[name], g_ref[name].to(g[name].dtype), f"grad {name}", dtype=dtype)


@pytest.mark.parametrize("T,E,N,G,opts", CASES)
def test_chunked_equals_loop_fp32(T, E, N, G, opts):
    kw = make_scan_inputs(2, T, E, N, G, opts=opts)
    _check_against_oracle(kw, kw, torch.float32)


@pytest.mark.parametrize("T,E,N,G,opts", [CASES[2], CASES[5]])
def test_chunked_bf16_against_fp32_oracle(T, E, N, G, opts):
    kw = make_scan_inputs(2, T, E, N, G, dtype=torch.bfloat16, opts=opts)
    _check_against_oracle(kw, detached_fp32(kw), torch.bfloat16)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_size_does_not_change_results(chunk_size):
    kw = make_scan_inputs(1, 50, 6, 4, 1)
    _check_against_oracle(kw, kw, torch.float32, chunk_size=chunk_size)


def test_noncontiguous_input():
    kw = make_scan_inputs(2, 40, 8, 4, 1, requires_grad=False)
    u_wide = torch.randn(2, 40, 16)
    kw["u"] = u_wide[..., ::2].requires_grad_()  # stride 2 in E
    kw["u"].retain_grad()
    for k in ("delta", "B", "C", "D", "z", "delta_bias", "initial_state", "A"):
        if kw[k] is not None:
            kw[k].requires_grad_()
    _check_against_oracle(kw, kw, torch.float32)


def test_varlen_equals_each_sequence_alone():
    lens = [1, 40, 33, 7]
    cu = torch.tensor([0, 1, 41, 74, 81], dtype=torch.int32)
    kw = make_scan_inputs(1, sum(lens), 10, 4, 2, n_states=len(lens))
    y, h = selective_scan(**kw, cu_seqlens=cu, backend="torch")
    assert h.shape == (len(lens), 10, 4)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        one = {k: v for k, v in kw.items()}
        for k in ("u", "delta", "B", "C", "z"):
            one[k] = kw[k][:, s:e]
        one["initial_state"] = kw["initial_state"][i : i + 1]
        y_i, h_i = selective_scan_ref(**one)
        assert_close(y[:, s:e], y_i, f"y of sequence {i}")
        assert_close(h[i : i + 1], h_i, f"final state of sequence {i}")
    _check_against_oracle(kw, kw, torch.float32, cu_seqlens=cu)


@pytest.mark.parametrize("opts", [(), ("D", "z", "delta_bias", "softplus")], ids=["bare", "all"])
@pytest.mark.parametrize("indices", [False, True], ids=["rows", "indices"])
def test_state_update_equals_last_scan_position(opts, indices):
    B, T, E, N, G = 3, 9, 10, 4, 2
    kw = make_scan_inputs(B, T, E, N, G, opts=opts + ("initial_state", "final_state"),
                          requires_grad=False)
    y, h = selective_scan(**kw, backend="torch")
    prefix = {k: (v[:, : T - 1] if k in ("u", "delta", "B", "C", "z") and v is not None else v)
              for k, v in kw.items()}
    _, h_prev = selective_scan(**prefix, backend="torch")
    step = {k: (v[:, T - 1] if k in ("u", "delta", "B", "C", "z") and v is not None else v)
            for k, v in kw.items() if k not in ("initial_state", "output_final_state")}
    if indices:
        rows = torch.tensor([4, 0, 2])
        pool = torch.zeros(5, E, N)
        pool[rows] = h_prev
        untouched = pool[[1, 3]].clone()
        y_step = selective_state_update(pool, **step, state_batch_indices=rows,
                                        backend="torch")
        assert_close(pool[rows], h, "updated states")
        assert torch.equal(pool[[1, 3]], untouched)
    else:
        state = h_prev.clone()
        y_step = selective_state_update(state, **step, backend="torch")
        assert_close(state, h, "updated state")
    assert_close(y_step, y[:, T - 1], "y of the step")


def test_compiled_chunk_equals_eager(monkeypatch):
    """The torch.compile'd chunk functions give the eager results (one small shape)."""
    pytest.importorskip("torch._inductor")
    from memmodel.kernels.utils import compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler")
    kw = make_scan_inputs(1, 20, 6, 4, 1)
    y0, h0, g0 = run_and_grad(cpu_selective_scan, kw, chunk_size=4)
    monkeypatch.setenv("MEMMODEL_COMPILE", "1")
    y1, h1, g1 = run_and_grad(cpu_selective_scan, kw, chunk_size=4)
    assert_close(y1, y0, "y")
    assert_close(h1, h0, "final_state")
    for name in g0:
        assert_close(g1[name], g0[name], f"grad {name}")


def _good():
    return make_scan_inputs(2, 8, 6, 4, 2, requires_grad=False)


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda kw: kw.update(u=kw["u"][0]), ValueError, r"u: expected 3 dimensions"),
        (lambda kw: kw.update(delta=kw["delta"][:, :5]), ValueError, r"delta: expected shape"),
        (lambda kw: kw.update(A=kw["A"][:5]), ValueError, r"A: expected shape \[E=6, N=4\]"),
        (lambda kw: kw.update(B=kw["B"][:1]), ValueError, r"B: expected shape .*B=2"),
        (lambda kw: kw.update(C=kw["C"][..., :3]), ValueError, r"C: expected shape"),
        (lambda kw: kw.update(D=torch.ones(7)), ValueError, r"D: expected shape \[E=6\]"),
        (lambda kw: kw.update(z=kw["z"].double()), TypeError, r"z: expected dtype"),
        (lambda kw: kw.update(delta=kw["delta"].half()), TypeError,
         r"delta: expected the same dtype as u"),
        (lambda kw: kw.update(u=kw["u"][:, :0], delta=kw["delta"][:, :0]), ValueError,
         r"u: dimension 1 \(T\) is 0"),
        (lambda kw: kw.update(B=torch.randn(2, 8, 4, 4), C=torch.randn(2, 8, 4, 4)), ValueError,
         r"G=4 must divide E=6"),
        (lambda kw: kw.update(initial_state=torch.zeros(2, 6, 4, dtype=torch.bfloat16)),
         TypeError, r"initial_state: expected dtype in \(float32\)"),
        (lambda kw: kw.update(initial_state=torch.zeros(3, 6, 4)), ValueError,
         r"initial_state: expected shape \[2, E=6, N=4\]"),
        (lambda kw: kw.update(u="not a tensor"), TypeError, r"u: expected a torch.Tensor"),
        (lambda kw: kw.update(chunk_size=True), ValueError,
         r"chunk_size: expected a positive int, got True"),
        (lambda kw: kw.update(chunk_size=0), ValueError,
         r"chunk_size: expected a positive int, got 0"),
        (lambda kw: kw.update(chunk_size=-4), ValueError,
         r"chunk_size: expected a positive int, got -4"),
        (lambda kw: kw.update(chunk_size=8.0), ValueError,
         r"chunk_size: expected a positive int, got 8.0"),
    ],
    ids=["u-rank", "delta-T", "A-E", "B-batch", "C-N", "D-E", "z-dtype", "mixed-dtype", "T0",
         "groups", "h0-dtype", "h0-shape", "u-type", "chunk-bool", "chunk-zero",
         "chunk-negative", "chunk-float"],
)
def test_bad_input_is_rejected(change, exc, pattern):
    kw = _good()
    change(kw)
    with pytest.raises(exc, match=pattern):
        selective_scan(**kw)


@pytest.mark.parametrize(
    "cu,pattern",
    [
        ([0, 5, 5, 8], r"strictly increasing"),
        ([0, 3, 7], r"last offset to equal T=8"),
        ([1, 8], r"first offset to be 0"),
        ([0], r"at least 2 offsets"),
    ],
    ids=["repeat", "short", "start", "single"],
)
def test_bad_cu_seqlens_is_rejected(cu, pattern):
    kw = make_scan_inputs(1, 8, 6, 4, 1, opts=(), requires_grad=False)
    with pytest.raises(ValueError, match=pattern):
        selective_scan(**kw, cu_seqlens=torch.tensor(cu))


def test_cu_seqlens_needs_batch_one():
    kw = make_scan_inputs(2, 8, 6, 4, 1, opts=(), requires_grad=False)
    with pytest.raises(ValueError, match=r"batch size 1, got 2"):
        selective_scan(**kw, cu_seqlens=torch.tensor([0, 4, 8]))


def test_bad_backend_is_rejected():
    kw = _good()
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        selective_scan(**kw, backend="cuda")
