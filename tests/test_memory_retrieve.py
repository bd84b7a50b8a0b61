"""memory_retrieve: the reference against a direct loop and against PyTorch SDPA, the Triton
kernels (under the interpreter on a CPU) against the reference, the block-skipping list,
and input checks."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import GRAD_LAYOUTS, assert_close, layout_loss

from memmodel.kernels.memory_retrieve import (
    cpu_memory_retrieve,
    live_blocks,
    memory_retrieve,
    memory_retrieve_ref,
    visibility_mask,
)
from memmodel.kernels.utils import is_interpreter

# The gpu tests check the compiled kernels; with the interpreter on they would run through
# it instead (slowly, and Triton 3.9's interpreter multiplies bfloat16 blocks wrongly).
COMPILED = pytest.mark.skipif(is_interpreter() and torch.cuda.is_available(),
                              reason="the gpu tests need TRITON_INTERPRET=0")


def fifo_intervals(B, M, chunk, life, first=0, dtype=torch.int32):
    """A FIFO bank: entry m is made at the end of chunk first + m, evicted `life` chunks later."""
    start = (torch.arange(M) + first + 1) * chunk
    return start.repeat(B, 1).to(dtype), (start + life * chunk).repeat(B, 1).to(dtype)


def random_intervals(B, M, T):
    """Starts before 0 and past T, ends past T, empty (start == end) and reversed intervals."""
    start = torch.randint(-T // 4, T + 4, (B, M))
    end = start + torch.randint(-3, T // 2, (B, M))
    return start.int(), end.int()


def make_inputs(B, T, H, Dk, Dv, M, dtype=torch.float32):
    q = torch.randn(B, T, H, Dk).to(dtype).requires_grad_()
    mem_k = torch.randn(B, M, H, Dk).to(dtype).requires_grad_()
    mem_v = torch.randn(B, M, H, Dv).to(dtype).requires_grad_()
    return q, mem_k, mem_v


def run_and_grad(fn, q, mem_k, mem_v, start, end, seed=1, **kw):
    """Outputs of fn and the gradients of a random projection of o and of the finite lse."""
    o, lse = fn(q, mem_k, mem_v, start, end, **kw)
    g = torch.Generator().manual_seed(seed)
    w_o, w_l = (torch.randn(x.shape, generator=g).to(x.device) for x in (o, lse))
    loss = (o.float() * w_o).sum() + (torch.where(lse.isfinite(), lse, 0.0) * w_l).sum()
    return (o, lse), dict(zip(("q", "mem_k", "mem_v"), grads_of(loss, (q, mem_k, mem_v))))


def grads_of(loss, inputs):
    """Gradients of loss; zeros for inputs it does not use (an oracle whose tokens see
    nothing builds no graph at all)."""
    if not loss.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)


def memory_retrieve_loop(q, mem_k, mem_v, start, end, scale=None):
    """The definition, one (batch, token, head) at a time over its visible entries, float64."""
    B, T, H, Dk = q.shape
    scale = 1.0 / math.sqrt(Dk) if scale is None else scale
    o, lse = [], []
    for b in range(B):
        for t in range(T):
            seen = [m for m in range(mem_k.shape[1]) if start[b, m] <= t < end[b, m]]
            for h in range(H):
                if not seen:
                    o.append(q.new_zeros(mem_v.shape[-1], dtype=torch.float64))
                    lse.append(torch.tensor(float("-inf"), dtype=torch.float64))
                    continue
                z = mem_k[b, seen, h].double() @ q[b, t, h].double() * scale
                o.append(torch.softmax(z, 0) @ mem_v[b, seen, h].double())
                lse.append(torch.logsumexp(z, 0))
    return torch.stack(o).view(B, T, H, -1), torch.stack(lse).view(B, T, H)


def triton(*args, **kw):
    return memory_retrieve(*args, backend="triton", **kw)


def check_against(fn, oracle, q, mem_k, mem_v, start, end, **kw):
    (o, lse), grads = run_and_grad(fn, q, mem_k, mem_v, start, end, **kw)
    (o_r, lse_r), grads_r = run_and_grad(oracle, q, mem_k, mem_v, start, end, **kw)
    assert o.shape == q.shape[:3] + mem_v.shape[-1:] and o.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    none = torch.isneginf(lse_r)
    assert torch.equal(torch.isneginf(lse), none), "lse = -inf exactly where nothing is seen"
    assert torch.equal(o[none], torch.zeros_like(o[none])), "o = 0 where nothing is seen"
    assert_close(o, o_r.to(o.dtype), "o")
    assert_close(lse[~none], lse_r[~none].float(), "lse")
    for name in grads:
        assert torch.isfinite(grads[name]).all(), f"grad {name} is not finite"
        assert_close(grads[name], grads_r[name].to(grads[name].dtype), f"grad {name}")
    if none.any():  # a token that sees nothing takes no gradient
        assert (grads["q"][none] == 0).all()


def _interval_case(kind, B, T, M):
    if kind == "random":
        return random_intervals(B, M, T)
    if kind == "all":
        return torch.zeros(B, M, dtype=torch.int32), torch.full((B, M), T, dtype=torch.int32)
    if kind == "none":  # an empty and a reversed interval
        return torch.tensor([[5, 9]] * B)[:, :M].int(), torch.tensor([[5, 2]] * B)[:, :M].int()
    if kind == "single":
        return torch.full((B, M), 10, dtype=torch.int32), torch.full((B, M), 11, dtype=torch.int32)
    if kind == "fifo":  # entries of a bank of 40 chunks of 8, the first made at token 8
        return fifo_intervals(B, M, 8, 40, first=-M // 2)
    if kind == "fifo-shuffled":
        start, end = fifo_intervals(B, M, 8, 40, first=-M // 2)
        perm = torch.randperm(M)
        return start[:, perm], end[:, perm]
    raise ValueError(kind)


# (B, T, H, Dk, Dv, M, intervals): M in {0, 1, 2, 40, 1000}; entries visible to no token, to
# every token and to a single one; T = 1, T < one 128-token block, T over several blocks.
CASES = [
    pytest.param(2, 50, 2, 16, 16, 0, "random", id="M0"),
    pytest.param(1, 1, 1, 16, 16, 1, "all", id="T1-M1-all"),
    pytest.param(2, 40, 2, 16, 8, 1, "single", id="M1-single-token"),
    pytest.param(1, 30, 2, 16, 16, 2, "none", id="M2-visible-to-none"),
    pytest.param(2, 70, 2, 16, 16, 3, "all", id="M3-all"),
    pytest.param(2, 300, 2, 16, 8, 40, "random", id="M40-random-intervals"),
    pytest.param(1, 300, 1, 16, 16, 1000, "fifo", id="M1000-fifo"),
    pytest.param(1, 300, 1, 16, 16, 1000, "fifo-shuffled", id="M1000-fifo-shuffled"),
]
LOOP_CASES = [p for p in CASES if p.values[1] * p.values[5] <= 12000]


@pytest.mark.parametrize("B,T,H,Dk,Dv,M,kind", LOOP_CASES)
def test_ref_equals_loop(B, T, H, Dk, Dv, M, kind):
    start, end = _interval_case(kind, B, T, M)
    check_against(memory_retrieve_ref, memory_retrieve_loop, *make_inputs(B, T, H, Dk, Dv, M),
                  start, end)


@pytest.mark.parametrize("B,T,H,Dk,Dv,M,kind", CASES)
def test_triton_equals_ref(B, T, H, Dk, Dv, M, kind):
    start, end = _interval_case(kind, B, T, M)
    check_against(triton, memory_retrieve_ref, *make_inputs(B, T, H, Dk, Dv, M), start, end)


def _no_grad_outputs(fn, q, mem_k, mem_v, start, end, **kw):
    with torch.no_grad():
        return fn(q, mem_k, mem_v, start, end, **kw)


@pytest.mark.parametrize("block", [1, 7, 256])
@pytest.mark.parametrize("B,T,H,Dk,Dv,M,kind", CASES)
def test_cpu_blocked_path_equals_ref(B, T, H, Dk, Dv, M, kind, block):
    """The inference path (no gradient wanted): the reference's o and lse, with blocks of
    one token, of a size that divides nothing and of more than T tokens."""
    start, end = _interval_case(kind, B, T, M)
    inputs = make_inputs(B, T, H, Dk, Dv, M)
    o, lse = _no_grad_outputs(cpu_memory_retrieve, *inputs, start, end, block=block)
    o_r, lse_r = _no_grad_outputs(memory_retrieve_ref, *inputs, start, end)
    assert o.shape == o_r.shape and o.dtype == q_dtype(inputs) and lse.dtype == torch.float32
    none = torch.isneginf(lse_r)
    assert torch.equal(torch.isneginf(lse), none)
    assert torch.equal(o[none], torch.zeros_like(o[none]))
    assert_close(o, o_r, "o")
    assert_close(lse[~none], lse_r[~none], "lse")


def q_dtype(inputs):
    return inputs[0].dtype


def test_cpu_blocked_path_scale_half_inputs_and_dispatch():
    """An explicit scale, float16 inputs (computed in float32, o in float16), and the
    "torch" backend taking the blocked path without gradients and the reference with."""
    B, T, H, D, M = 2, 90, 2, 8, 33
    start, end = random_intervals(B, M, T)
    q, k, v = (x.detach().half() for x in make_inputs(B, T, H, D, D, M))
    o, lse = cpu_memory_retrieve(q, k, v, start, end, scale=0.3, block=16)
    o_r, lse_r = memory_retrieve_ref(q, k, v, start, end, scale=0.3)
    assert o.dtype == torch.float16
    assert_close(o.float(), o_r.float(), "o")
    fin = lse_r.isfinite()
    assert_close(lse[fin], lse_r[fin], "lse")
    inputs = make_inputs(B, T, H, D, D, M)
    (o_g, _), grads = run_and_grad(memory_retrieve, *inputs, start, end, backend="torch")
    (o_e, _), grads_e = run_and_grad(memory_retrieve_ref, *inputs, start, end)
    assert torch.equal(o_g, o_e) and all(torch.equal(grads[n], grads_e[n]) for n in grads)


def test_cpu_blocked_path_sends_non_finite_inputs_to_the_reference():
    """A NaN anywhere: the answer is the reference's, NaN exactly where it has NaN."""
    B, T, H, D, M = 1, 40, 2, 8, 12
    start, end = random_intervals(B, M, T)
    start[0, 3], end[0, 3] = 17, 30
    q, k, v = (x.detach() for x in make_inputs(B, T, H, D, D, M))
    k[0, 3, 1], v[0, 3, 0, 2] = float("nan"), float("inf")
    o, lse = cpu_memory_retrieve(q, k, v, start, end, block=8)
    o_r, lse_r = memory_retrieve_ref(q, k, v, start, end)
    assert torch.equal(o.isnan(), o_r.isnan()) and o.isnan().any()
    assert torch.equal(torch.nan_to_num(o), torch.nan_to_num(o_r))
    assert torch.equal(lse.isnan(), lse_r.isnan())


def test_cpu_blocked_path_rejects_a_bad_block():
    q = torch.randn(1, 4, 1, 8)
    start, end = torch.zeros(1, 2, dtype=torch.int32), torch.full((1, 2), 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"block: expected a positive int, got 0"):
        cpu_memory_retrieve(q, q[:, :2], q[:, :2], start, end, block=0)


def _unbounded_bank_intervals(B, T, old, chunk):
    """An unbounded bank at a segment of T tokens: `old` entries made before it (negative or
    zero starts, never closed), one per chunk made inside it, an entry closed inside it, and
    one that only row 0 made before it (so not seen by every row's every token)."""
    made = torch.arange(chunk, T + 1, chunk)
    start = torch.cat([-torch.arange(old), made, torch.tensor([-3, 0])])
    end = torch.cat([torch.full((old + len(made),), 10 ** 6), torch.tensor([T // 2, 10 ** 6])])
    start, end = start[None].repeat(B, 1), end[None].repeat(B, 1)
    start[1:, -1] = T // 3
    return start.int(), end.int()


@pytest.mark.parametrize("T,old,Dv", [(50, 70, 16), (9, 3, 16), (64, 40, 8)])
def test_cpu_fused_path_for_entries_every_token_sees(T, old, Dv, monkeypatch):
    """Entries every token of every row sees go through the fused unmasked attention (when
    the widths agree), combined with the masked blocks: the reference's o and lse."""
    cpu = sys.modules[cpu_memory_retrieve.__module__]

    calls = []
    fused = cpu._FUSED
    assert fused is not None  # the op this torch provides; without it the path is skipped
    monkeypatch.setattr(cpu, "_FUSED", lambda *a, **kw: calls.append(a[1].shape) or fused(*a, **kw))
    B, H, Dk = 2, 2, 16
    start, end = _unbounded_bank_intervals(B, T, old, 8)
    inputs = make_inputs(B, T, H, Dk, Dv, start.shape[1])
    o_r, lse_r = _no_grad_outputs(memory_retrieve_ref, *inputs, start, end)
    for fused_min, block in ((1, 16), (old, 7), (None, 16)):
        calls.clear()
        o, lse = _no_grad_outputs(cpu_memory_retrieve, *inputs, start, end, block=block,
                                  fused_min=fused_min)
        assert_close(o, o_r, "o")
        assert_close(lse, lse_r, "lse")
        takes = fused_min is not None and Dv == Dk
        assert calls == ([torch.Size([B, H, old, Dk])] if takes else [])  # the old entries


def test_cpu_fused_path_threshold_and_bad_fused_min():
    B, T, H, D = 1, 20, 2, 8
    start, end = _unbounded_bank_intervals(B, T, 5, 8)
    inputs = make_inputs(B, T, H, D, D, start.shape[1])
    o_r, lse_r = _no_grad_outputs(memory_retrieve_ref, *inputs, start, end)
    o, lse = _no_grad_outputs(cpu_memory_retrieve, *inputs, start, end, fused_min=100)
    assert_close(o, o_r, "o")
    assert_close(lse, lse_r, "lse")
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"fused_min: expected a positive int or None"):
            cpu_memory_retrieve(*inputs, start, end, fused_min=bad)


def test_triton_explicit_scale_int64_intervals_and_lse_only_loss():
    B, T, H, D, M = 1, 150, 2, 16, 30
    start, end = random_intervals(B, M, T)
    inputs = make_inputs(B, T, H, D, D, M)
    check_against(triton, memory_retrieve_ref, *inputs, start.long(), end.long(), scale=0.7)
    # a loss on lse alone: o's gradient arrives as zeros
    lse = triton(*inputs, start, end)[1]
    lse_r = memory_retrieve_ref(*inputs, start, end)[1]
    fin = lse_r.isfinite()
    g = grads_of(lse[fin].sum(), inputs)
    g_r = grads_of(lse_r[fin].sum(), inputs)
    assert_close(g[0], g_r[0], "grad q")
    assert_close(g[1], g_r[1], "grad mem_k")
    assert torch.equal(g[2], torch.zeros_like(g[2])), "lse does not depend on mem_v"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_unseen_rows_take_finite_zero_gradient_even_from_lse(backend):
    """Backpropagating through lse = -inf itself (a nonzero dlse) still gives zeros."""
    q, mem_k, mem_v = make_inputs(1, 20, 1, 16, 16, 2)
    start, end = torch.tensor([[8, 12]]).int(), torch.tensor([[15, 20]]).int()
    o, lse = memory_retrieve(q, mem_k, mem_v, start, end, backend=backend)
    assert torch.isneginf(lse[0, :8]).all() and torch.isfinite(lse[0, 8:]).all()
    dq, dk, dv = torch.autograd.grad((o.sum() + lse * torch.ones_like(lse)).sum(),
                                     (q, mem_k, mem_v))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert torch.equal(dq[0, :8], torch.zeros_like(dq[0, :8]))
    assert dq[0, 8:].abs().amax() > 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_reaches_only_what_sees_it(backend):
    """NaN in the key and value of entry 3, live on tokens [17, 30), and in the query of
    token 34: the outputs of the other tokens, their q gradients and the k and v gradients
    of the entries none of the poisoned tokens sees are finite and equal the clean run's,
    bit for bit (0 * NaN from a masked-out pair must not enter any sum)."""
    B, T, H, D, M, m_nan, t_nan = 1, 40, 2, 16, 12, 3, 34
    start, end = random_intervals(B, M, T)
    start[0, m_nan], end[0, m_nan] = 17, 30
    fn = lambda *a: memory_retrieve(*a, backend=backend)
    inputs = make_inputs(B, T, H, D, 8, M)
    (o, lse), grads = run_and_grad(fn, *inputs, start, end)
    q, k, v = (x.detach().clone() for x in inputs)
    k[0, m_nan, 1], v[0, m_nan, 0, 3], q[0, t_nan, 0] = float("nan"), float("nan"), float("nan")
    poisoned = [x.requires_grad_() for x in (q, k, v)]
    (o_n, lse_n), grads_n = run_and_grad(fn, *poisoned, start, end)

    vis = visibility_mask(start, end, T)[0]  # [T, M]
    bad_t = vis[:, m_nan].clone()
    bad_t[t_nan] = True
    good_m = ~(vis & bad_t[:, None]).any(0)
    good_m[m_nan] = False
    assert 5 < int((~bad_t).sum()) < T and 0 < int(good_m.sum()) < M - 1, "a case of both"
    for name, a, e in (("o", o_n, o), ("lse", lse_n, lse), ("grad q", grads_n["q"], grads["q"])):
        assert not torch.isnan(a[0, ~bad_t]).any(), name
        assert torch.equal(a[0, ~bad_t], e[0, ~bad_t]), name
    for name in ("mem_k", "mem_v"):
        a, e = grads_n[name][0, good_m], grads[name][0, good_m]
        assert torch.isfinite(a).all() and torch.equal(a, e), f"grad {name}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_equals_sdpa_with_interval_mask(backend):
    B, T, H, D, M = 2, 96, 2, 16, 24
    start, end = fifo_intervals(B, M, 4, 10)  # tokens 0-3 see nothing yet
    q, mem_k, mem_v = (x.detach() for x in make_inputs(B, T, H, D, D, M))
    o, lse = memory_retrieve(q, mem_k, mem_v, start, end, backend=backend)
    vis = visibility_mask(start, end, T)  # [B, T, M]
    seen = vis.any(-1)  # [B, T]
    assert not seen.all() and seen.any(), "the case must mix seen and unseen tokens"
    o_sdpa = F.scaled_dot_product_attention(
        q.transpose(1, 2), mem_k.transpose(1, 2), mem_v.transpose(1, 2),
        attn_mask=vis[:, None]).transpose(1, 2)  # [B, T, H, D]
    assert_close(o[seen], o_sdpa[seen], "o on tokens that see entries")
    assert torch.equal(o[~seen], torch.zeros_like(o[~seen]))
    assert torch.isneginf(lse[~seen]).all() and torch.isfinite(lse[seen]).all()


@pytest.mark.parametrize("split", [64, 100], ids=["split64", "split100-rounded-up"])
def test_triton_dkv_query_splits(monkeypatch, split):
    """The dk/dv kernel cut over the tokens (float32 partials, summed) equals the reference;
    entries straddle the split boundaries."""
    from memmodel.kernels.memory_retrieve import parallel

    monkeypatch.setattr(parallel, "DKV_SPLIT_TOKENS", split)
    B, T, H, D, M = 1, 300, 2, 16, 70
    assert parallel._query_splits(T, 64, 1)[0] == (5 if split == 64 else 3)
    start, end = random_intervals(B, M, T)
    check_against(triton, memory_retrieve_ref, *make_inputs(B, T, H, D, D, M), start, end)


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_triton_incoming_gradient_layouts(layout):
    """The gradients of o and lse may come strided or broadcast (stride 0, as a plain sum
    gives); the backward reads them as they are laid out. Entry 0 is seen by every token,
    so every lse is finite."""
    B, T, H, D, M = 2, 45, 2, 16, 12
    start, end = random_intervals(B, M, T)
    start[:, 0], end[:, 0] = 0, T
    inputs = make_inputs(B, T, H, D, 8, M)
    grads = []
    for backend in ("triton", "torch"):
        out = memory_retrieve(*inputs, start, end, backend=backend)
        grads.append(torch.autograd.grad(layout_loss(out, layout), inputs))
    for name, g, g_ref in zip(("q", "mem_k", "mem_v"), *grads):
        assert_close(g, g_ref, f"grad {name}")


def test_triton_noncontiguous_inputs():
    B, T, H, D, M = 2, 140, 2, 16, 50
    start, end = random_intervals(B, M, T)
    q = torch.randn(B, H, T, D).transpose(1, 2).requires_grad_()  # time not outermost
    mem_k = torch.randn(B, M, H, 2 * D)[..., ::2].requires_grad_()  # stride 2 in Dh
    mem_v = torch.randn(M, B, H, D).transpose(0, 1).requires_grad_()
    wide = torch.stack([start, end], -1)  # [B, M, 2]: stride 2 along M
    assert not any(x.is_contiguous() for x in (q, mem_k, mem_v, wide[..., 0]))
    check_against(triton, memory_retrieve_ref, q, mem_k, mem_v, wide[..., 0], wide[..., 1])


def test_live_blocks_lists_every_visible_block_and_skips_the_rest():
    """On a FIFO bank the list holds about capacity / BM blocks per query block, and every
    entry block that some token of a query block sees is on that block's list."""
    T, BT, BM, cap = 2048, 128, 64, 256
    M = T // 2 + cap  # chunks of 2 tokens, the bank full (cap live entries) from token 0
    start, end = fifo_intervals(2, M, 2, cap, first=-cap)
    start[1] = start[1].flip(0)  # batch 1: the same bank stored newest first
    end[1] = end[1].flip(0)
    n_live, live = live_blocks(start, end, T, BT, BM)
    NQ, NM = T // BT, M // BM
    assert n_live.shape == (2, NQ) and live.shape == (2, NQ, NM)
    vis = visibility_mask(start, end, T).view(2, NQ, BT, NM, BM).any(4).any(2)  # [B, NQ, NM]
    for b in range(2):
        for i in range(NQ):
            listed = live[b, i, : n_live[b, i]].tolist()
            assert listed == sorted(set(listed))
            assert set(torch.nonzero(vis[b, i]).flatten().tolist()) <= set(listed)
    # exact here: cap / BM blocks plus the ones straddling the query block's two ends
    assert int(n_live.max()) <= cap // BM + 2
    assert int(n_live.sum()) <= (cap // BM + 2) * 2 * NQ < 0.4 * 2 * NQ * NM


def test_live_blocks_skip_empty_banks_and_intervals():
    n_live, live = live_blocks(torch.zeros(3, 0, dtype=torch.int32),
                               torch.zeros(3, 0, dtype=torch.int32), 300, 128, 64)
    assert torch.equal(n_live, torch.zeros(3, 3, dtype=torch.int32)) and live.shape == (3, 3, 1)
    # block 0: reversed and empty intervals within [0, T); blocks 1, 2: before 0, after T
    start = torch.tensor([[50] * 32 + [20] * 32 + [-9] * 64 + [300] * 64])
    end = torch.tensor([[10] * 32 + [20] * 32 + [0] * 64 + [400] * 64])
    n_live, _ = live_blocks(start, end, 300, 128, 64)
    assert torch.equal(n_live, torch.zeros(1, 3, dtype=torch.int32))


def test_triton_fp16_half_dots():
    """float16 inputs take half-precision dots (the weights rounded to float16 for the
    second one) with float32 softmax statistics. (bfloat16 runs only on a GPU: Triton
    3.9's interpreter multiplies bfloat16 blocks as raw integers.)"""
    B, T, H, D, M = 1, 200, 2, 32, 60
    start, end = random_intervals(B, M, T)
    x = make_inputs(B, T, H, D, D, M, dtype=torch.float16)
    (o, lse), grads = run_and_grad(triton, *x, start, end)
    x32 = [t.detach().float().requires_grad_() for t in x]
    (o_r, lse_r), grads_r = run_and_grad(memory_retrieve_ref, *x32, start, end)
    none = torch.isneginf(lse_r)
    assert o.dtype == torch.float16 and torch.equal(torch.isneginf(lse), none)
    assert_close(o, o_r.half(), "o")
    assert_close(lse[~none], lse_r[~none], "lse", dtype=torch.float16)
    for name in grads:
        assert grads[name].dtype == torch.float16
        assert_close(grads[name], grads_r[name].half(), f"grad {name}")


@pytest.mark.gpu
@COMPILED
@pytest.mark.parametrize(
    "dtype,T,M",
    [pytest.param(torch.bfloat16, 8192, 1000, id="bf16-T8192-M1000"),
     pytest.param(torch.float16, 3000, 300, id="fp16-T3000-M300"),
     pytest.param(torch.float32, 4096, 1000, id="fp32-T4096-M1000")],
)
def test_triton_on_gpu(dtype, T, M):
    B, H, D = 2, 4, 64
    start, end = fifo_intervals(B, M, 16, 256, first=-M // 4)
    q, mem_k, mem_v = (x.detach().cuda().requires_grad_()
                       for x in make_inputs(B, T, H, D, D, M, dtype=dtype))
    start, end = start.cuda(), end.cuda()
    (o, lse), grads = run_and_grad(triton, q, mem_k, mem_v, start, end)
    leaves = [x.detach().float().requires_grad_() for x in (q, mem_k, mem_v)]
    (o_r, lse_r), grads_r = run_and_grad(memory_retrieve_ref, *leaves, start, end)
    none = torch.isneginf(lse_r)
    assert torch.equal(torch.isneginf(lse), none)
    assert_close(o, o_r.to(dtype), "o", dtype=dtype)
    assert_close(lse[~none], lse_r[~none], "lse", dtype=dtype)
    for name in grads:
        assert_close(grads[name], grads_r[name].to(dtype), f"grad {name}", dtype=dtype)


def _good():
    B, T, H, M = 2, 8, 2, 5
    start, end = random_intervals(B, M, T)
    return dict(q=torch.randn(B, T, H, 16), mem_k=torch.randn(B, M, H, 16),
                mem_v=torch.randn(B, M, H, 12), mem_start=start, mem_end=end)


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda kw: kw.update(q=kw["q"][0]), ValueError, r"q: expected 4 dimensions"),
        (lambda kw: kw.update(mem_k=kw["mem_k"][:, :, :1]), ValueError,
         r"mem_k: expected shape .*H=2"),
        (lambda kw: kw.update(mem_k=kw["mem_k"][..., :8]), ValueError,
         r"mem_k: expected shape .*Dk=16"),
        (lambda kw: kw.update(mem_v=kw["mem_v"][:, :3]), ValueError,
         r"mem_v: expected shape .*M=5"),
        (lambda kw: kw.update(mem_v=kw["mem_v"][:1]), ValueError, r"mem_v: expected shape .*B=2"),
        (lambda kw: kw.update(mem_start=kw["mem_start"].float()), TypeError,
         r"mem_start: expected dtype in \(int32, int64\)"),
        (lambda kw: kw.update(mem_end=kw["mem_end"][:, :4]), ValueError,
         r"mem_end: expected shape \[B=2, M=5\]"),
        (lambda kw: kw.update(mem_end=kw["mem_end"][0]), ValueError,
         r"mem_end: expected 2 dimensions"),
        (lambda kw: kw.update(mem_k=kw["mem_k"].double()), TypeError, r"mem_k: expected dtype"),
        (lambda kw: kw.update(mem_v=kw["mem_v"].half()), TypeError,
         r"mem_v: expected the same dtype as q"),
        (lambda kw: kw.update(mem_k=kw["mem_k"][:, :0]), ValueError,
         r"mem_k: expected shape with M=0 .*|mem_v: expected shape .*M=0"),
        (lambda kw: kw.update(mem_start=kw["mem_start"].to("meta")), ValueError,
         r"mem_start: expected a tensor on cpu"),
        (lambda kw: kw.update(scale=0.0), ValueError, r"scale: .* positive number, got 0"),
        (lambda kw: kw.update(backend="gpu"), ValueError, r"backend: expected one of"),
    ],
    ids=["q-rank", "k-H", "k-Dk", "v-M", "v-B", "start-dtype", "end-M", "end-rank",
         "k-float64", "mixed-dtype", "k-M0-only", "device", "scale-0", "backend"],
)
def test_bad_input_is_rejected(change, exc, pattern):
    kw = _good()
    change(kw)
    with pytest.raises(exc, match=pattern):
        memory_retrieve(**kw)


def test_triton_rejects_too_wide_heads():
    q = torch.randn(1, 4, 1, 300)
    start, end = torch.zeros(1, 2, dtype=torch.int32), torch.full((1, 2), 4, dtype=torch.int32)
    with pytest.raises(NotImplementedError, match=r"head widths up to 256"):
        memory_retrieve(q, q[:, :2], q[:, :2], start, end, backend="triton")
