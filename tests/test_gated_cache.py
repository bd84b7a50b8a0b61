"""The gated cache write: every implementation against the per-token oracle, invariants,
streaming and decoding, and input checks.

Implementations: "torch" (the chunked PyTorch path, eager here: MEMMODEL_COMPILE=0),
"fused" (the fused recurrent Triton kernels) and "chunk" (the chunked Triton kernels),
both Triton ones under TRITON_INTERPRET=1 on a CPU, so sizes stay tiny.
"""

import pytest
import torch
from helpers import GRAD_LAYOUTS, assert_close, force_config, layout_loss

import memmodel.kernels.gated_cache.cpu as cpu_mod
from memmodel.kernels.gated_cache import (
    chunk_gated_cache_write,
    cpu_gated_cache_write,
    fused_recurrent_gated_cache_write,
    gated_cache_step,
    gated_cache_write,
    gated_cache_write_ref,
)

IMPLS = {
    "torch": lambda *a, chunk_size=16, **kw: cpu_gated_cache_write(
        *a, chunk_size=chunk_size, **kw),
    "fused": lambda *a, chunk_size=None, **kw: fused_recurrent_gated_cache_write(*a, **kw),
    "chunk": lambda *a, chunk_size=16, **kw: chunk_gated_cache_write(
        *a, chunk_size=chunk_size, **kw),
}
NAMES = ("q", "k", "v", "w", "h0k", "h0v")


def make_inputs(B, T, H, S, DK, DV, h0=True, n_states=None, dtype=torch.float32, w=None):
    """Random leaves requiring grad; w in [0, 1]. Returns (q, k, v, w, (h0k, h0v) or None)."""
    n = B if n_states is None else n_states
    leaf = lambda x, dt=dtype: x.to(dt).requires_grad_()
    q, k, v = leaf(torch.randn(B, T, H, DK)), leaf(torch.randn(B, T, H, DK)), leaf(
        torch.randn(B, T, H, DV))
    w = leaf(torch.rand(B, T, H, S) if w is None else w)
    state = (leaf(torch.randn(n, H, S, DK), torch.float32),
             leaf(torch.randn(n, H, S, DV), torch.float32)) if h0 else None
    return q, k, v, w, state


def fp32_copy(inputs):
    q, k, v, w, st = inputs
    f = lambda x: x.detach().float().requires_grad_()
    return f(q), f(k), f(v), f(w), None if st is None else (f(st[0]), f(st[1]))


def run_and_grad(fn, inputs, seed=1, final=(True, True), **kw):
    """Call fn, backprop a fixed random projection of r and of the final slots named in
    `final` (Mk, Mv); with neither, the final state is not asked for.
    Returns (r, final_state, {name: grad})."""
    q, k, v, w, st = inputs
    r, fin = fn(q, k, v, w, initial_state=st, output_final_state=any(final), **kw)
    g = torch.Generator().manual_seed(seed)
    loss = (r.float() * torch.randn(r.shape, generator=g)).sum()
    for use, m in zip(final, fin or ()):
        loss = loss + (m * torch.randn(m.shape, generator=g)).sum() if use else loss
    leaves = [q, k, v, w] + ([] if st is None else list(st))
    return r, fin, dict(zip(NAMES, torch.autograd.grad(loss, leaves)))


def check_against_oracle(impl, inputs, dtype=torch.float32, oracle_inputs=None,
                         final=(True, True), **kw):
    r, fin, g = run_and_grad(IMPLS[impl], inputs, final=final, **kw)
    r_ref, fin_ref, g_ref = run_and_grad(gated_cache_write_ref, oracle_inputs or inputs,
                                         final=final, cu_seqlens=kw.get("cu_seqlens"))
    assert r.dtype == inputs[2].dtype
    assert_close(r, r_ref.to(r.dtype), "r", dtype=dtype)
    assert (fin is None) == (fin_ref is None) == (not any(final))
    for name, a, b in zip(("Mk", "Mv"), fin or (), fin_ref or ()):
        assert a.dtype == torch.float32
        assert_close(a, b, f"final {name}", dtype=dtype)
    assert g.keys() == g_ref.keys()
    for name in g:
        assert_close(g[name], g_ref[name].to(g[name].dtype), f"grad {name}", dtype=dtype)


# (impl, B, T, H, S, DK, DV, initial state, chunk_size): T = 1, odd T, T crossing chunks
# and 16-token sub-chunks, S = 1, 7, 64 (small widths where S is large), Dk != Dv; S = 20
# splits the chunked dw kernel's and state walks' slots into a full block of 16 and a
# partial one; chunk_size = 48 makes the state walks take three 16-token steps a chunk.
CASES = [
    pytest.param("torch", 2, 1, 2, 7, 5, 4, True, 16, id="torch-T1-S7"),
    pytest.param("torch", 2, 65, 2, 7, 5, 4, True, 32, id="torch-T65-S7-cs32"),
    pytest.param("torch", 1, 17, 2, 64, 16, 8, False, 16, id="torch-T17-S64-noh0"),
    pytest.param("torch", 2, 33, 1, 1, 6, 3, True, 16, id="torch-T33-S1"),
    pytest.param("fused", 1, 1, 2, 7, 5, 4, True, None, id="fused-T1-S7"),
    pytest.param("fused", 1, 17, 2, 64, 16, 8, True, None, id="fused-T17-S64"),
    pytest.param("fused", 2, 40, 1, 1, 6, 3, False, None, id="fused-T40-S1-noh0"),
    pytest.param("chunk", 1, 1, 2, 7, 5, 4, True, 16, id="chunk-T1-S7"),
    pytest.param("chunk", 2, 65, 1, 7, 5, 4, True, 32, id="chunk-T65-S7-cs32"),
    pytest.param("chunk", 1, 40, 2, 64, 16, 8, True, 32, id="chunk-T40-S64-cs32"),
    pytest.param("chunk", 2, 33, 1, 1, 6, 3, False, 16, id="chunk-T33-S1-noh0"),
    pytest.param("chunk", 1, 70, 1, 7, 16, 16, True, 64, id="chunk-T70-S7-cs64"),
    pytest.param("chunk", 1, 50, 2, 20, 8, 6, True, 32, id="chunk-T50-S20-cs32"),
    pytest.param("chunk", 2, 100, 1, 20, 8, 8, True, 48, id="chunk-T100-S20-cs48"),
]


@pytest.mark.parametrize("impl,B,T,H,S,DK,DV,h0,cs", CASES)
def test_matches_oracle_fp32(impl, B, T, H, S, DK, DV, h0, cs):
    check_against_oracle(impl, make_inputs(B, T, H, S, DK, DV, h0=h0), chunk_size=cs)


@pytest.mark.parametrize("bs", [32, 64])
def test_chunk_state_walks_with_wider_slot_blocks(monkeypatch, bs):
    """The state walks' other tuning candidates (32 or 64 slots per program, one partial
    block at S = 20) give the oracle's results too; on a GPU the tuner may pick them."""
    from memmodel.kernels.gated_cache import chunk

    for kernel in (chunk._chunk_gated_cache_state_fwd_kernel,
                   chunk._chunk_gated_cache_state_bwd_kernel):
        force_config(monkeypatch, kernel, BS=bs)
    check_against_oracle("chunk", make_inputs(1, 50, 2, 20, 8, 6), chunk_size=32)


@pytest.mark.parametrize(
    "impl,final",
    [pytest.param("torch", (False, False), id="torch-no-final"),
     pytest.param("fused", (False, False), id="fused-no-final"),
     pytest.param("fused", (False, True), id="fused-only-Mv"),
     pytest.param("chunk", (False, False), id="chunk-no-final"),
     pytest.param("chunk", (True, False), id="chunk-only-Mk")])
def test_final_state_optional(impl, final):
    """Without the final state (or with a gradient on one half only), the initial-state
    and input gradients still match."""
    check_against_oracle(impl, make_inputs(1, 35, 1, 6, 5, 4), final=final, chunk_size=16)


@pytest.mark.parametrize(
    "impl,dtype",
    [pytest.param("torch", torch.bfloat16, id="torch-bf16"),
     pytest.param("fused", torch.float16, id="fused-fp16"),
     pytest.param("chunk", torch.float16, id="chunk-fp16")])
def test_half_inputs_against_fp32_oracle(impl, dtype):
    """16-bit inputs, float32 compute: the result is the fp32 oracle's up to input rounding."""
    inputs = make_inputs(1, 33, 2, 7, 16, 8, dtype=dtype)
    check_against_oracle(impl, inputs, dtype=dtype, oracle_inputs=fp32_copy(inputs),
                         chunk_size=16)


@pytest.mark.parametrize("impl", ["torch", "fused", "chunk"])
def test_exact_zero_and_one_weights_match_oracle(impl):
    """w with exact 0s and 1s (keep / overwrite), a token that writes no slot and a gate
    near 1, gradients included (dw of a zero weight is G . (k - M), k finite)."""
    w = torch.rand(1, 35, 2, 5)
    w[..., 0] = 0.0
    w[:, ::3, :, 1] = 1.0
    w[:, 5:9, :, 2] = 1.0
    w[..., 3] = 1.0 - 1e-4
    w[:, 20] = 0.0
    check_against_oracle(impl, make_inputs(1, 35, 2, 5, 6, 4, w=w), chunk_size=16)


@pytest.mark.parametrize("impl", ["torch", "fused", "chunk"])
def test_varlen_matches_each_sequence_alone(impl):
    """Packed sequences: a length-1 one, one longer than a chunk (16), one odd."""
    lens = [1, 40, 7, 18]
    cu = torch.tensor([0, 1, 41, 48, 66], dtype=torch.int32)
    inputs = make_inputs(1, sum(lens), 1, 7, 5, 4, n_states=len(lens))
    q, k, v, w, (h0k, h0v) = inputs
    r, (Mk, Mv) = IMPLS[impl](q, k, v, w, initial_state=(h0k, h0v), output_final_state=True,
                              cu_seqlens=cu)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        r_i, (mk_i, mv_i) = gated_cache_write_ref(
            q[:, s:e], k[:, s:e], v[:, s:e], w[:, s:e],
            initial_state=(h0k[i : i + 1], h0v[i : i + 1]), output_final_state=True)
        assert_close(r[:, s:e], r_i, f"r of sequence {i}")
        assert_close(Mk[i : i + 1], mk_i, f"final Mk of sequence {i}")
        assert_close(Mv[i : i + 1], mv_i, f"final Mv of sequence {i}")
    check_against_oracle(impl, inputs, cu_seqlens=cu)


@pytest.mark.parametrize("impl", ["torch", "fused", "chunk"])
def test_streaming_equals_one_call(impl):
    """Two calls with the slots carried (split inside a chunk) give the one-call result."""
    q, k, v, w, st = make_inputs(2, 45, 2, 6, 5, 4)
    with torch.no_grad():
        r, fin = IMPLS[impl](q, k, v, w, initial_state=st, output_final_state=True)
        r1, mid = IMPLS[impl](q[:, :19], k[:, :19], v[:, :19], w[:, :19], initial_state=st,
                              output_final_state=True)
        r2, fin2 = IMPLS[impl](q[:, 19:], k[:, 19:], v[:, 19:], w[:, 19:], initial_state=mid,
                               output_final_state=True)
    assert_close(torch.cat([r1, r2], dim=1), r, "r")
    assert_close(fin2[0], fin[0], "final Mk")
    assert_close(fin2[1], fin[1], "final Mv")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_step_equals_last_position(backend):
    q, k, v, w, (h0k, h0v) = make_inputs(2, 9, 2, 7, 5, 4)
    with torch.no_grad():
        r, (Mk, Mv) = gated_cache_write(q, k, v, w, initial_state=(h0k, h0v),
                                        output_final_state=True, backend=backend)
        _, prev = gated_cache_write(q[:, :8], k[:, :8], v[:, :8], w[:, :8],
                                    initial_state=(h0k, h0v), output_final_state=True,
                                    backend=backend)
        before = (prev[0].clone(), prev[1].clone())
        r_step, (mk, mv) = gated_cache_step(q[:, 8], k[:, 8], v[:, 8], w[:, 8], prev,
                                            backend=backend)
    assert torch.equal(prev[0], before[0]) and torch.equal(prev[1], before[1])
    assert_close(r_step, r[:, 8], "r of the step")
    assert_close(mk, Mk, "Mk after the step")
    assert_close(mv, Mv, "Mv after the step")


ALL = ["ref", "torch", "fused", "chunk"]


def _call(impl, *args, chunk_size=16, **kw):
    if impl == "ref":
        return gated_cache_write_ref(*args, **kw)
    if impl != "fused":
        kw["chunk_size"] = chunk_size
    return IMPLS[impl](*args, **kw)


@pytest.mark.parametrize("impl", ALL)
def test_zero_weight_leaves_cache_bit_identical(impl):
    q, k, v, w, st = make_inputs(1, 37, 2, 6, 5, 4)
    w = w.detach().clone()
    w[..., 2] = 0.0  # slot 2 is never written
    with torch.no_grad():
        _, (Mk, Mv) = _call(impl, q, k, v, w, initial_state=st, output_final_state=True)
        _, (Mk0, Mv0) = _call(impl, q, k, v, torch.zeros_like(w), initial_state=st,
                              output_final_state=True)
    assert torch.equal(Mk[:, :, 2], st[0][:, :, 2]) and torch.equal(Mv[:, :, 2], st[1][:, :, 2])
    assert not torch.equal(Mk[:, :, 1], st[0][:, :, 1])
    assert torch.equal(Mk0, st[0]) and torch.equal(Mv0, st[1])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter's NaN
@pytest.mark.parametrize("impl", ALL)
def test_nan_at_a_token_does_not_reach_earlier_reads(impl):
    """NaN in q, k, v and w at t = 21 (inside the second 16-token chunk, mid sub-chunk):
    the reads before t are finite and equal the clean run's, bit for bit."""
    t = 21
    q, k, v, w, st = (x.detach() if isinstance(x, torch.Tensor) else x
                      for x in make_inputs(1, 40, 2, 5, 6, 4))
    with torch.no_grad():
        r, _ = _call(impl, q, k, v, w, initial_state=st)
        poisoned = [x.clone() for x in (q, k, v, w)]
        for x in poisoned:
            x[:, t] = float("nan")
        r_nan, _ = _call(impl, *poisoned, initial_state=st)
    assert torch.isfinite(r_nan[:, :t]).all()
    assert torch.equal(r_nan[:, :t], r[:, :t])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("impl", ALL)
def test_zero_weight_keeps_an_infinite_key_or_value_out(impl):
    """Tokens that write nowhere (w = 0 on every slot) with keys holding +-inf (t = 5,
    both heads) or a value holding inf (t = 20, in the second chunk, head 0): the slots
    stay bit-identical, and reads, slots and every gradient equal those of the same tokens
    with those rows set to 0 (0 * inf is not let turn into NaN)."""
    q, k, v, w, st = make_inputs(1, 23, 2, 6, 5, 4)
    w = w.detach().clone()
    w[:, 5] = 0.0
    w[:, 20] = 0.0
    w[..., 2] = 0.0  # slot 2 is never written
    k_inf, k_zero = k.detach().clone(), k.detach().clone()
    k_inf[:, 5, 0, :2], k_inf[:, 5, 1, 3] = float("inf"), float("-inf")
    k_zero[:, 5] = 0.0
    v_inf, v_zero = v.detach().clone(), v.detach().clone()
    v_inf[:, 20, 0, 1], v_zero[:, 20, 0] = float("inf"), 0.0
    fn = lambda *a, **kw: _call(impl, *a, **kw)
    inputs = (q, k_inf.requires_grad_(), v_inf.requires_grad_(), w.requires_grad_(), st)
    r, fin, g = run_and_grad(fn, inputs)
    clean = (q, k_zero.requires_grad_(), v_zero.requires_grad_(), w, st)
    r0, fin0, g0 = run_and_grad(fn, clean)
    assert torch.equal(fin[0][:, :, 2], st[0][:, :, 2]) and torch.equal(fin[1][:, :, 2],
                                                                        st[1][:, :, 2])
    assert torch.isfinite(r).all()
    assert torch.equal(r, r0)
    assert torch.equal(fin[0], fin0[0]) and torch.equal(fin[1], fin0[1])
    for name in g:
        assert torch.isfinite(g[name]).all(), f"grad {name} is not finite"
        assert_close(g[name], g0[name], f"grad {name}")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_step_with_zero_weight_keeps_an_infinite_key_out(backend):
    q, k, v, w, st = (x.detach() if isinstance(x, torch.Tensor) else
                      tuple(s.detach() for s in x) for x in make_inputs(2, 1, 2, 7, 5, 4))
    k, v = k[:, 0].clone(), v[:, 0].clone()
    k[0], v[1] = float("inf"), float("nan")
    w = w[:, 0].clone()
    w[0], w[1, :, 3] = 0.0, 0.0  # row 0 writes nowhere; row 1 leaves slot 3 alone
    r, (Mk, Mv) = gated_cache_step(q[:, 0], k, v, w, st, backend=backend)
    assert torch.equal(Mk[0], st[0][0]) and torch.equal(Mv[0], st[1][0])
    assert torch.isfinite(r[0]).all()
    assert torch.equal(Mv[1, :, 3], st[1][1, :, 3])


@pytest.mark.parametrize("impl", ALL)
def test_full_weight_replaces_slot(impl):
    """w = 1 on slot 3 at the last token: that slot becomes (k_T, v_T), others do not."""
    q, k, v, w, st = make_inputs(1, 20, 2, 5, 6, 4)
    w = w.detach().clone()
    w[:, -1, :, 3] = 1.0
    with torch.no_grad():
        _, (Mk, Mv) = _call(impl, q, k, v, w, initial_state=st, output_final_state=True)
    if impl == "chunk":  # the old slot keeps a weight exp(-GMIN) ~ 1e-14
        assert_close(Mk[:, :, 3], k[:, -1].detach(), "replaced Mk", rtol=1e-7)
        assert_close(Mv[:, :, 3], v[:, -1].detach(), "replaced Mv", rtol=1e-7)
    else:
        assert torch.equal(Mk[:, :, 3], k[:, -1]) and torch.equal(Mv[:, :, 3], v[:, -1])
    assert not torch.equal(Mk[:, :, 2], k[:, -1])


@pytest.mark.parametrize("impl", ALL)
def test_read_is_convex_combination_of_slot_values(impl):
    """Identical slots are read back exactly (weights sum to 1); in general each coordinate
    of r lies between the smallest and largest slot value after the write."""
    B, T, H, S, DK, DV = 1, 21, 2, 6, 5, 4
    q, k, v, _, _ = make_inputs(B, T, H, S, DK, DV, h0=False)
    wt = torch.rand(B, T, H, 1).expand(B, T, H, S).contiguous()  # same gate for all slots
    mv0 = torch.randn(B, H, 1, DV).expand(B, H, S, DV).contiguous()
    st = (torch.randn(B, H, S, DK), mv0)
    with torch.no_grad():
        r, _ = _call(impl, q, k, v, wt, initial_state=st, output_final_state=True)
    expect, m = [], mv0[:, :, 0]
    for t in range(T):
        m = (1 - wt[:, t, :, :1]) * m + wt[:, t, :, :1] * v[:, t].detach()
        expect.append(m)
    assert_close(r, torch.stack(expect, dim=1), "read of identical slots", rtol=1e-6)
    q, k, v, w, st = make_inputs(B, 1, H, S, DK, DV)
    with torch.no_grad():
        r, (_, Mv) = _call(impl, q, k, v, w, initial_state=st, output_final_state=True)
    lo, hi = Mv.amin(dim=2), Mv.amax(dim=2)  # [B, H, DV]
    assert bool((r[:, 0] >= lo - 1e-6).all()) and bool((r[:, 0] <= hi + 1e-6).all())


@pytest.mark.parametrize("impl", ["torch", "fused", "chunk"])
def test_noncontiguous_input(impl):
    inputs = list(make_inputs(2, 20, 2, 5, 6, 4))
    inputs[0] = torch.randn(2, 20, 2, 12)[..., ::2].requires_grad_()  # stride 2 in Dk
    inputs[3] = torch.rand(2, 2, 20, 5).transpose(1, 2).requires_grad_()  # T, H swapped
    assert not inputs[0].is_contiguous() and not inputs[3].is_contiguous()
    check_against_oracle(impl, tuple(inputs))


@pytest.mark.parametrize("impl", ["torch", "fused", "chunk"])
@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_incoming_gradient_layouts(impl, layout):
    """The gradients of r and of the final slots may come strided or broadcast (stride 0,
    as a plain sum gives); every backward reads them as they are laid out."""
    inputs = make_inputs(2, 9 if impl == "fused" else 20, 2, 5, 6, 4)  # 20: two chunks
    q, k, v, w, st = inputs
    leaves = [q, k, v, w, *st]
    grads = []
    for fn in (IMPLS[impl], gated_cache_write_ref):
        r, fin = fn(q, k, v, w, initial_state=st, output_final_state=True)
        grads.append(torch.autograd.grad(layout_loss((r, *fin), layout), leaves))
    for name, g, g_ref in zip(NAMES, *grads):
        assert_close(g, g_ref, f"grad {name}")


def test_dispatch_rule():
    """backend="triton": the fused kernel when T <= chunk_size, the chunked one beyond."""
    q, k, v, w, st = make_inputs(1, 20, 1, 4, 5, 4)
    with torch.no_grad():
        for cs, impl in ((32, "fused"), (16, "chunk")):
            r, _ = gated_cache_write(q, k, v, w, initial_state=st, backend="triton",
                                     chunk_size=cs)
            assert torch.equal(r, IMPLS[impl](q, k, v, w, initial_state=st, chunk_size=cs)[0])
        r, _ = gated_cache_write(q, k, v, w, initial_state=st, backend="torch", chunk_size=7)
        assert torch.equal(r, cpu_gated_cache_write(q, k, v, w, initial_state=st,
                                                    chunk_size=7)[0])


def test_compiled_chunk_equals_eager(monkeypatch):
    """The torch.compile'd chunk functions give the eager results (one small shape)."""
    pytest.importorskip("torch._inductor")
    from memmodel.kernels.utils import compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler")
    inputs = make_inputs(1, 5, 1, 3, 4, 2)
    r0, f0, g0 = run_and_grad(IMPLS["torch"], inputs, chunk_size=2)
    monkeypatch.setenv("MEMMODEL_COMPILE", "1")
    r1, f1, g1 = run_and_grad(IMPLS["torch"], inputs, chunk_size=2)
    assert_close(r1, r0, "r")
    assert_close(f1[0], f0[0], "final Mk")
    for name in g0:
        assert_close(g1[name], g0[name], f"grad {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("impl,T,cs", [pytest.param("fused", 50, None, id="fused-T50"),
                                       pytest.param("chunk", 300, 64, id="chunk-T300-cs64")])
def test_bf16_against_fp32_oracle_gpu(impl, T, cs):
    inputs = make_inputs(2, T, 3, 64, 64, 32, dtype=torch.bfloat16)
    inputs = tuple(x.detach().cuda().requires_grad_() if isinstance(x, torch.Tensor) else
                   tuple(s.detach().cuda().requires_grad_() for s in x) for x in inputs)
    oracle = fp32_copy(inputs)
    check_against_oracle(impl, inputs, dtype=torch.bfloat16, oracle_inputs=oracle, chunk_size=cs)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["fused", "chunk"])
def test_fp32_long_on_gpu(impl):
    inputs = make_inputs(1, 1000, 2, 64, 64, 64)
    inputs = tuple(x.detach().cuda().requires_grad_() if isinstance(x, torch.Tensor) else
                   tuple(s.detach().cuda().requires_grad_() for s in x) for x in inputs)
    check_against_oracle(impl, inputs, chunk_size=64)


def _good():
    q, k, v, w, st = make_inputs(2, 8, 2, 5, 6, 4)
    return dict(q=q.detach(), k=k.detach(), v=v.detach(), w=w.detach(),
                initial_state=tuple(s.detach() for s in st))


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda kw: kw.update(q=kw["q"][0]), ValueError, r"q: expected 4 dimensions"),
        (lambda kw: kw.update(k=kw["k"][..., :5]), ValueError, r"k: expected shape .*DK=6"),
        (lambda kw: kw.update(v=kw["v"][:1]), ValueError, r"v: expected shape .*B=2"),
        (lambda kw: kw.update(w=kw["w"][:, :, :1]), ValueError, r"w: expected shape .*H=2"),
        (lambda kw: kw.update(w=kw["w"].to(torch.int32)), TypeError, r"w: expected dtype"),
        (lambda kw: kw.update(k=kw["k"].double()), TypeError, r"k: expected dtype"),
        (lambda kw: kw.update(v=kw["v"].half()), TypeError, r"v: expected the same dtype as q"),
        (lambda kw: kw.update(w=kw["w"] - 0.5), ValueError, r"w: expected write weights in"),
        (lambda kw: kw.update(w=kw["w"] + 0.5), ValueError, r"w: expected write weights in"),
        (lambda kw: kw["w"].__setitem__((0, 3, 1, 2), float("nan")), ValueError,
         r"w: expected write weights in .* 1 NaN"),
        (lambda kw: kw.update(q=kw["q"][:, :0], k=kw["k"][:, :0]), ValueError,
         r"q: dimension 1 \(T\) is 0"),
        (lambda kw: kw.update(initial_state=kw["initial_state"][0]), TypeError,
         r"initial_state: expected a pair"),
        (lambda kw: kw.update(initial_state=(kw["initial_state"][0].double(),
                                             kw["initial_state"][1])),
         TypeError, r"initial_state\[0\] \(Mk\): expected dtype in \(float32\)"),
        (lambda kw: kw.update(initial_state=(kw["initial_state"][0],
                                             kw["initial_state"][1][:, :, :4])),
         ValueError, r"initial_state\[1\] \(Mv\): expected shape \[2, H=2, S=5, DV=4\]"),
        (lambda kw: kw.update(scale="big"), TypeError, r"scale: expected None or a finite"),
        (lambda kw: kw.update(backend="cuda"), ValueError, r"backend: expected one of"),
        (lambda kw: kw.update(chunk_size=0), ValueError, r"chunk_size: expected a positive"),
        (lambda kw: kw.update(chunk_size=True), ValueError,
         r"chunk_size: expected a positive int, got True"),
        (lambda kw: kw.update(backend="triton", chunk_size=24), ValueError,
         r"chunk_size: the Triton backend needs a multiple of 16"),
        (lambda kw: kw.update(q="not a tensor"), TypeError, r"q: expected a torch.Tensor"),
    ],
    ids=["q-rank", "k-DK", "v-batch", "w-heads", "w-int", "k-double", "mixed-dtype",
         "w-negative", "w-above-one", "w-nan", "T0", "h0-not-pair", "h0-dtype", "h0-shape",
         "scale-type", "backend", "chunk-zero", "chunk-bool", "chunk-not-16", "q-type"],
)
def test_bad_input_is_rejected(change, exc, pattern):
    kw = _good()
    change(kw)
    with pytest.raises(exc, match=pattern):
        gated_cache_write(**kw)


def test_validate_false_skips_the_range_check():
    kw = _good()
    kw["w"] = kw["w"] * 1.5
    r, _ = gated_cache_write(**kw, validate=False, backend="torch")
    assert torch.isfinite(r).all()


def test_bad_cu_seqlens_and_step_state_are_rejected():
    q, k, v, w, _ = make_inputs(2, 8, 2, 5, 6, 4, h0=False)
    with pytest.raises(ValueError, match=r"cu_seqlens: packed sequences need batch size 1"):
        gated_cache_write(q, k, v, w, cu_seqlens=torch.tensor([0, 3, 8]))
    with pytest.raises(ValueError, match=r"cu_seqlens: expected strictly increasing"):
        gated_cache_write(q[:1], k[:1], v[:1], w[:1], cu_seqlens=torch.tensor([0, 3, 3, 8]))
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(Mk\): expected shape \[2,"):
        gated_cache_write(q[:1], k[:1], v[:1], w[:1], cu_seqlens=torch.tensor([0, 3, 8]),
                          initial_state=(torch.zeros(3, 2, 5, 6), torch.zeros(3, 2, 5, 4)))
    with pytest.raises(TypeError, match=r"state: expected a pair"):
        gated_cache_step(q[:, 0], k[:, 0], v[:, 0], w[:, 0], None)
    with pytest.raises(ValueError, match=r"w: expected write weights in"):
        gated_cache_step(q[:, 0], k[:, 0], v[:, 0], w[:, 0] + 2,
                         (torch.zeros(2, 2, 5, 6), torch.zeros(2, 2, 5, 4)))


# The CPU path's forward without a backward (`cpu._parallel`): every chunk's tokens at once.

PARALLEL_CASES = [  # (B, T, H, S, DK, DV, initial state, chunk_size)
    pytest.param(2, 1, 2, 7, 5, 4, True, 16, id="T1"),
    pytest.param(2, 37, 2, 7, 5, 4, True, 5, id="T37-cs5"),
    pytest.param(1, 19, 2, 64, 16, 8, False, 16, id="T19-S64-noh0"),
    pytest.param(2, 33, 1, 1, 6, 3, True, 1, id="T33-S1-cs1"),
    pytest.param(1, 70, 2, 6, 4, 9, True, 16, id="T70-DkltDv"),
]


def _no_grad_run(inputs, **kw):
    q, k, v, w, st = (x.detach() if isinstance(x, torch.Tensor) else x for x in inputs)
    st = None if st is None else tuple(s.detach() for s in st)
    with torch.no_grad():
        return cpu_gated_cache_write(q, k, v, w, initial_state=st, output_final_state=True,
                                     **kw)


@pytest.mark.parametrize("blocks", [64, 2])
@pytest.mark.parametrize("B,T,H,S,DK,DV,h0,cs", PARALLEL_CASES)
def test_parallel_forward_matches_oracle(monkeypatch, blocks, B, T, H, S, DK, DV, h0, cs):
    """Without a backward the CPU path reads every chunk at once; blocks = 2 splits the
    chunks into several blocks whose slots carry from one to the next."""
    monkeypatch.setattr(cpu_mod, "PARALLEL_BLOCK", blocks)
    monkeypatch.setattr(cpu_mod, "PARALLEL_MAX_WORK", 10**6)  # S = 64 too
    inputs = make_inputs(B, T, H, S, DK, DV, h0=h0)
    r, (Mk, Mv) = _no_grad_run(inputs, chunk_size=cs)
    with torch.no_grad():
        r_ref, (Mk_ref, Mv_ref) = gated_cache_write_ref(
            *inputs[:4], initial_state=inputs[4], output_final_state=True)
    assert_close(r, r_ref, "r")
    assert_close(Mk, Mk_ref, "final Mk")
    assert_close(Mv, Mv_ref, "final Mv")


def test_parallel_forward_matches_chunked_and_varlen(monkeypatch):
    """The parallel and the chunked forward agree to float32 rounding, per sequence of a
    packed batch too, and a sequence's reads do not depend on its neighbours."""
    monkeypatch.setattr(cpu_mod, "PARALLEL_BLOCK", 2)
    q, k, v, w, st = make_inputs(1, 61, 2, 6, 5, 4, n_states=3)
    cu = torch.tensor([0, 17, 18, 61])
    r, fin = _no_grad_run((q, k, v, w, st), chunk_size=8, cu_seqlens=cu)
    r_c, fin_c = cpu_gated_cache_write(q, k, v, w, initial_state=st, output_final_state=True,
                                       chunk_size=8, cu_seqlens=cu)  # grad: chunked
    assert_close(r, r_c.detach(), "r")
    for a, b in zip(fin, fin_c):
        assert_close(a, b.detach(), "final state")
    for i in range(3):
        s = slice(int(cu[i]), int(cu[i + 1]))
        one = (q[:, s], k[:, s], v[:, s], w[:, s], (st[0][i:i + 1], st[1][i:i + 1]))
        r_i, fin_i = _no_grad_run(one, chunk_size=8)
        assert torch.allclose(r[:, s], r_i, atol=1e-5, rtol=1e-5)
        assert torch.allclose(fin[0][i:i + 1], fin_i[0], atol=1e-5, rtol=1e-5)


def test_parallel_forward_keeps_bad_rows_to_the_slots_they_write(monkeypatch):
    """Rows of k and v holding inf or NaN at tokens that write some slots (w > 0 there,
    w = 0 elsewhere): the slots they do not write, and every read before them, equal the
    oracle's bit for bit or to rounding; nothing is turned into NaN through 0 * inf."""
    monkeypatch.setattr(cpu_mod, "PARALLEL_BLOCK", 2)
    q, k, v, w, st = (x.detach() if isinstance(x, torch.Tensor) else x
                      for x in make_inputs(1, 40, 1, 4, 5, 4))
    st = tuple(s.detach() for s in st)
    k, v, w = k.clone(), v.clone(), w.clone()
    k[:, 9, 0, 1] = float("inf")
    v[:, 27, 0, 2] = float("nan")
    for t in (9, 27):
        w[:, t, 0] = torch.tensor([0.0, 0.5, 0.0, 0.0])  # only slot 1
    r, (Mk, Mv) = _no_grad_run((q, k, v, w, st), chunk_size=8)
    with torch.no_grad():
        r_ref, (Mk_ref, Mv_ref) = gated_cache_write_ref(
            q, k, v, w, initial_state=st, output_final_state=True)
    assert torch.isfinite(r[:, :9]).all()
    assert_close(r[:, :9], r_ref[:, :9], "reads before the inf key")
    others = [0, 2, 3]
    assert torch.equal(torch.isfinite(Mk), torch.isfinite(Mk_ref))
    assert torch.equal(torch.isfinite(Mv), torch.isfinite(Mv_ref))
    assert_close(Mk[:, :, others], Mk_ref[:, :, others], "slots never written by bad rows")
    assert_close(Mv[:, :, others], Mv_ref[:, :, others], "slots never written by bad rows")


def test_parallel_forward_full_weight_is_exact():
    """w = 1 on a slot replaces it exactly: the final slot is the last token's key, bit for
    bit, whatever the earlier tokens wrote."""
    q, k, v, w = (x.detach() for x in make_inputs(1, 20, 1, 3, 4, 4, h0=False)[:4])
    w = w.clone()
    w[:, 13, 0, 2] = 1.0
    w[:, 14:, 0, 2] = 0.0
    _, (Mk, Mv) = _no_grad_run((q, k, v, w, None), chunk_size=8)
    assert torch.equal(Mk[0, 0, 2], k[0, 13, 0])
    assert torch.equal(Mv[0, 0, 2], v[0, 13, 0])


def test_cpu_path_picks_parallel_only_without_grad(monkeypatch):
    """The parallel forward runs under no_grad or on inputs that need no grad; a call
    that will be differentiated takes the chunked Function."""
    seen = []
    real_p, real_c = cpu_mod._parallel, cpu_mod._chunked
    monkeypatch.setattr(cpu_mod, "_parallel", lambda *a: seen.append("p") or real_p(*a))
    monkeypatch.setattr(cpu_mod, "_chunked", lambda *a: seen.append("c") or real_c(*a))
    q, k, v, w, st = make_inputs(1, 9, 1, 3, 4, 4)
    cpu_gated_cache_write(q, k, v, w, initial_state=st, chunk_size=4)
    with torch.no_grad():
        cpu_gated_cache_write(q, k, v, w, initial_state=st, chunk_size=4)
    cpu_gated_cache_write(q.detach(), k.detach(), v.detach(), w.detach(),
                          initial_state=tuple(s.detach() for s in st), chunk_size=4)
    with torch.no_grad():  # 3 slots x 100 tokens > PARALLEL_MAX_WORK: the token walk
        cpu_gated_cache_write(q, k, v, w, initial_state=st, chunk_size=100)
    assert seen == ["c", "p", "p", "c"]


def test_default_chunk_size_follows_slots_and_grad():
    q, k, v, w, st = make_inputs(1, 4, 1, 8, 4, 4)
    assert cpu_mod.default_chunk_size(q, k, v, w, *st) == 8
    with torch.no_grad():
        for slots, L in ((8, 16), (32, 8), (64, 16)):
            w_s = torch.rand(1, 4, 1, slots)
            assert cpu_mod.default_chunk_size(q, k, v, w_s, *st) == L
            assert cpu_mod.uses_parallel(slots, L) == (slots <= 32)
