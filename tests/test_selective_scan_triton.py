"""The Triton selective scan and decode step against the per-token oracle.

On a CPU these run under TRITON_INTERPRET=1 (set by conftest) at small sizes; the
`gpu`-marked tests repeat the comparison in bf16 and at larger sizes on CUDA.
"""

import importlib

import pytest
import torch
from helpers import GRAD_LAYOUTS, assert_close, force_config, layout_loss
from scan_inputs import ALL_OPTS, detached_fp32, grad_leaves, make_scan_inputs, run_and_grad

from memmodel.config import MemoryConfig
from memmodel.kernels.selective_scan import (
    chunk_selective_scan,
    cpu_selective_scan,
    selective_scan,
    selective_scan_ref,
    selective_state_update,
)
from memmodel.model import MemoryLM

# (T, E, N, G, optional arguments, chunk size)
CASES = [
    pytest.param(1, 12, 4, 1, ALL_OPTS, 16, id="T1-all"),
    pytest.param(17, 12, 4, 2, ("D", "z"), 8, id="T17-G2-D-z"),
    pytest.param(64, 20, 16, 1, ("delta_bias", "softplus", "final_state"), 16, id="T64-N16"),
    pytest.param(65, 6, 16, 2, ("initial_state", "final_state"), 16, id="T65-G2-h0"),
    pytest.param(65, 10, 4, 1, (), 64, id="T65-bare-c64"),
    pytest.param(200, 12, 4, 2, ALL_OPTS, 32, id="T200-G2-all"),
]


def _compare(kw, kw_oracle, dtype, **extra):
    y, h, g = run_and_grad(chunk_selective_scan, kw, **extra)
    y_ref, h_ref, g_ref = run_and_grad(selective_scan_ref, kw_oracle,
                                       cu_seqlens=extra.get("cu_seqlens"))
    assert y.dtype == kw["u"].dtype
    assert_close(y, y_ref.to(y.dtype), "y", dtype=dtype)
    if kw["output_final_state"]:
        assert h.dtype == torch.float32
        assert_close(h, h_ref, "final_state", dtype=dtype)
    else:
        assert h is None
    assert g.keys() == g_ref.keys()
    for name in g:
        assert g[name].dtype == kw[name].dtype, name
        assert_close(g[name], g_ref[name].to(g[name].dtype), f"grad {name}", dtype=dtype)


@pytest.mark.parametrize("T,E,N,G,opts,chunk", CASES)
def test_triton_scan_equals_oracle(T, E, N, G, opts, chunk):
    kw = make_scan_inputs(2, T, E, N, G, opts=opts)
    _compare(kw, kw, torch.float32, chunk_size=chunk)


@pytest.mark.parametrize("T,E,N,G,opts", [
    pytest.param(40, 12, 4, 2, ALL_OPTS, id="G2-one-channel-per-program"),
    pytest.param(33, 20, 16, 1, ("D", "initial_state", "final_state"), id="G1-partial-block"),
])
def test_triton_scan_backward_split(monkeypatch, T, E, N, G, opts):
    """The backward's SPLIT = 2 candidate (half the channels per program) gives the oracle's
    gradients too; on a GPU the tuner may pick it."""
    from memmodel.kernels.selective_scan import chunk

    force_config(monkeypatch, chunk._selective_scan_bwd_kernel, SPLIT=2)
    kw = make_scan_inputs(2, T, E, N, G, opts=opts)
    _compare(kw, kw, torch.float32, chunk_size=16)


def test_triton_scan_noncontiguous_inputs():
    kw = make_scan_inputs(2, 30, 8, 4, 2, requires_grad=False)
    kw["u"] = torch.randn(2, 30, 16)[..., ::2]  # stride 2 along E
    kw["B"] = torch.randn(2, 2, 30, 4).transpose(1, 2)  # [B, T, G, N] with G, T swapped
    kw["delta"] = torch.rand(30, 2, 8).transpose(0, 1)  # batch-minor layout
    assert not kw["u"].is_contiguous() and not kw["B"].is_contiguous()
    for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"):
        kw[k].requires_grad_()
    _compare(kw, kw, torch.float32, chunk_size=8)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_scan_incoming_gradient_layouts(impl, layout):
    """The gradients of y and of the final state may come strided or broadcast (stride 0,
    as a plain sum gives); both backward paths read them as they are laid out."""
    scan = chunk_selective_scan if impl == "triton" else cpu_selective_scan
    kw = make_scan_inputs(2, 40, 8, 4, 1, opts=("D", "initial_state", "final_state"))
    grads = []
    for fn, extra in ((scan, dict(chunk_size=16)), (selective_scan_ref, {})):
        leaves = grad_leaves(kw)
        loss = layout_loss(fn(**kw, **extra), layout)
        grads.append(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())))))
    for name, g in grads[0].items():
        assert_close(g, grads[1][name], f"grad {name}")


SCANS = {"ref": selective_scan_ref,
         "torch": lambda **kw: cpu_selective_scan(**kw, chunk_size=16),
         "triton": lambda **kw: chunk_selective_scan(**kw, chunk_size=16)}


@pytest.mark.parametrize("impl", ["ref", "torch", "triton"])
def test_nan_at_a_token_does_not_reach_earlier_outputs(impl):
    """NaN in every per-token input at t = 21 (inside the second 16-token chunk): y before
    t is finite and equals the clean run's, bit for bit."""
    t = 21
    kw = make_scan_inputs(2, 40, 8, 4, 1, opts=("D", "z", "initial_state"),
                          requires_grad=False)
    with torch.no_grad():
        y, _ = SCANS[impl](**kw)
        for name in ("u", "delta", "B", "C", "z"):
            kw[name] = kw[name].clone()
            kw[name][:, t] = float("nan")
        y_nan, _ = SCANS[impl](**kw)
    assert torch.isfinite(y_nan[:, :t]).all()
    assert torch.equal(y_nan[:, :t], y[:, :t])
    assert torch.isnan(y_nan[:, t]).all()


def test_triton_scan_varlen():
    lens = [1, 21, 8, 3]  # a single token, one longer than a chunk, one exactly a chunk
    cu = torch.tensor([0, 1, 22, 30, 33], dtype=torch.int32)
    kw = make_scan_inputs(1, sum(lens), 10, 4, 2, n_states=len(lens))
    _compare(kw, kw, torch.float32, chunk_size=8, cu_seqlens=cu)


def test_triton_scan_varlen_without_states():
    cu = torch.tensor([0, 9, 10, 26], dtype=torch.int64)
    kw = make_scan_inputs(1, 26, 6, 4, 1, opts=("D", "softplus"))
    _compare(kw, kw, torch.float32, chunk_size=8, cu_seqlens=cu)


def test_public_function_dispatches_to_triton_under_the_interpreter(monkeypatch):
    calls = []
    ops = importlib.import_module("memmodel.kernels.selective_scan")

    monkeypatch.setattr(ops, "chunk_selective_scan",
                        lambda *a, **k: calls.append(k) or chunk_selective_scan(*a, **k))
    kw = make_scan_inputs(1, 9, 6, 4, 1, opts=(), requires_grad=False)
    y, _ = selective_scan(**kw)
    assert calls and calls[0]["chunk_size"] == 64
    y_ref, _ = selective_scan_ref(**kw)
    assert_close(y, y_ref, "y")
    with pytest.raises(ValueError, match=r"chunk_size: the Triton scan needs a power of two"):
        selective_scan(**kw, chunk_size=24)


@pytest.mark.parametrize("indices", [False, True], ids=["rows", "indices"])
def test_triton_decode_step_equals_last_position(indices):
    B, T, E, N, G = 3, 6, 12, 4, 2
    kw = make_scan_inputs(B, T, E, N, G, opts=("D", "z", "delta_bias", "softplus",
                                               "initial_state", "final_state"),
                          requires_grad=False)
    y, h = selective_scan_ref(**kw)
    prefix = {k: (v[:, : T - 1] if k in ("u", "delta", "B", "C", "z") else v)
              for k, v in kw.items()}
    _, h_prev = selective_scan_ref(**prefix)
    step = {k: (v[:, T - 1] if k in ("u", "delta", "B", "C", "z") else v)
            for k, v in kw.items() if k not in ("initial_state", "output_final_state")}
    if indices:
        rows = torch.tensor([2, 4, 0], dtype=torch.int32)
        pool = torch.randn(5, E, N)
        pool[rows.long()] = h_prev
        untouched = pool[[1, 3]].clone()
        y_step = selective_state_update(pool, **step, state_batch_indices=rows,
                                        backend="triton")
        assert_close(pool[rows.long()], h, "updated states")
        assert torch.equal(pool[[1, 3]], untouched)
    else:
        state = h_prev.clone()
        y_step = selective_state_update(state, **step, backend="triton")
        assert_close(state, h, "state updated in place")
    assert_close(y_step, y[:, T - 1], "y of the step")


def test_model_streams_on_the_triton_backend():
    model = MemoryLM(MemoryConfig(d_model=16, n_layers=1, d_state=4, backend="triton",
                                  scan_chunk_size=8))
    ids = torch.randint(0, 256, (1, 20))
    full = model(ids, labels=ids)
    full.loss.backward()
    out = model(ids[:, :11])
    out = model(ids[:, 11:], state=out.state)
    assert_close(out.logits, full.logits[:, 11:], "streamed logits")
    ref_model = MemoryLM(MemoryConfig(d_model=16, n_layers=1, d_state=4, backend="torch"))
    ref_model.load_state_dict(model.state_dict())
    assert_close(full.logits, ref_model(ids).logits, "triton vs torch logits")


# ---- GPU ---------------------------------------------------------------------------


def _to_cuda(kw):
    return {k: (v.detach().cuda().requires_grad_(v.requires_grad)
                if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("T,E,N,G,opts", [
    pytest.param(1000, 96, 16, 1, ALL_OPTS, id="T1000-all"),
    pytest.param(4097, 192, 16, 2, ("D", "z", "delta_bias", "softplus"), id="T4097-G2"),
])
def test_triton_scan_bf16_against_fp32_oracle_gpu(T, E, N, G, opts):
    kw = _to_cuda(make_scan_inputs(2, T, E, N, G, dtype=torch.bfloat16, opts=opts))
    _compare(kw, detached_fp32(kw), torch.bfloat16)


@pytest.mark.gpu
def test_triton_scan_fp32_equals_loop_gpu():
    kw = _to_cuda(make_scan_inputs(2, 300, 64, 16, 1))
    _compare(kw, kw, torch.float32)


@pytest.mark.gpu
def test_triton_scan_varlen_gpu():
    cu = torch.tensor([0, 1, 700, 1000, 1064], dtype=torch.int32, device="cuda")
    kw = _to_cuda(make_scan_inputs(1, 1064, 64, 16, 1, n_states=4))
    _compare(kw, kw, torch.float32, cu_seqlens=cu)


@pytest.mark.gpu
def test_triton_decode_step_gpu():
    kw = _to_cuda(make_scan_inputs(8, 2, 256, 16, 1, opts=("D", "z", "softplus",
                                                           "initial_state", "final_state"),
                                   requires_grad=False))
    y, h = selective_scan_ref(**kw)
    state = kw["initial_state"].clone()
    for t in range(2):
        step = {k: (v[:, t] if k in ("u", "delta", "B", "C", "z") else v)
                for k, v in kw.items() if k not in ("initial_state", "output_final_state")}
        y_t = selective_state_update(state, **step)
        assert_close(y_t, y[:, t], f"y at step {t}")
    assert_close(state, h, "state")
