"""Interval-masked retrieval in Triton: flash-attention over the live blocks of the bank.

Token t attends to the entries m with start[m] <= t < end[m]. The entries are cut into
blocks of BM and the tokens into blocks of BT. Before the kernels run, `live_blocks`
finds, for every query block, the entry blocks that at least one of its tokens may see
(from each entry block's smallest start and largest end over its non-empty intervals);
the forward and the dq backward walk only that list, so their cost grows with T times the
live capacity, not T times M. The dk/dv backward walks, for each entry block, the query
blocks between its smallest start and largest end: again only where it is visible. That
range is cut into splits of about DKV_SPLIT_TOKENS tokens, one program each, so that an
entry seen by a whole long sequence does not leave one program with all of T.

Forward (one program per query block and (batch, head)): an online softmax in base 2 over
the listed entry blocks, keeping the running max, the running sum and the unnormalised
output in float32. Inside a listed block the exact interval mask applies; a row that has
seen nothing keeps max = -inf, sum = 0, and ends with o = 0 and lse = -inf.

Backward (recomputes the weights from lse): `_memory_retrieve_delta_bwd_kernel` forms
delta = rowsum(do * o) - dlse and a base-2 lse with +inf where lse = -inf (so that those
rows get weight exp2(z - inf) = 0 and zero gradient); `_memory_retrieve_dkv_bwd_kernel`
and `_memory_retrieve_dq_bwd_kernel` then form dk, dv and dq without atomics (several
splits write float32 partials of dk and dv, summed by the launcher), so results are
deterministic.

Dots take the inputs' own dtype (float16 / bfloat16 tensor cores with float32
accumulation, the softmax weights rounded to that dtype for the second dot, as every flash
attention does); float32 inputs use exact float32 products.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..common.dots import dot_hard_zeros
from ..utils import is_interpreter

MAX_HEAD_DIM = 256


def _configs():
    if is_interpreter():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2, 3)]


@triton.jit
def _tile(p0, o_r, s_r, o_c, s_c, m_r, m_c):
    """The [len(o_r), len(o_c)] block at rows o_r, columns o_c of the strided view at p0
    (zero where a mask is off)."""
    p = p0 + o_r[:, None] * s_r + o_c[None, :] * s_c
    return tl.load(p, mask=m_r[:, None] & m_c[None, :], other=0.0)


@triton.jit
def _intervals(start, end, i_b, o_m, m_m, s_sb, s_sm, s_eb, s_em):
    """[BM] first token and one-past-last token that see each entry (0, 0 past M)."""
    b_s = tl.load(start + i_b * s_sb + o_m * s_sm, mask=m_m, other=0)
    b_e = tl.load(end + i_b * s_eb + o_m * s_em, mask=m_m, other=0)
    return b_s, b_e


@triton.autotune(configs=_configs(), key=["BT", "BM", "BK", "BV"])
@triton.jit(do_not_specialize=["T", "M", "NQ", "NL"])
def _memory_retrieve_fwd_kernel(
    q,  # [B, T, H, DK] queries, strides (s_qb, s_qt, s_qh, s_qd)
    k,  # [B, M, H, DK] entry keys, strides (s_kb, s_km, s_kh, s_kd)
    v,  # [B, M, H, DV] entry values, strides (s_vb, s_vm, s_vh, s_vd)
    start,  # [B, M] int, first token that sees each entry, strides (s_sb, s_sm)
    end,  # [B, M] int, one past the last token that sees it, strides (s_eb, s_em)
    n_live,  # [B, NQ] int32, number of entry blocks listed for each query block
    live,  # [B, NQ, NL] int32, those entry blocks' indices (first n_live entries valid)
    o,  # [B, T, H, DV] out: retrieved values, contiguous
    lse,  # [B, T, H] out: float32 logsumexp of the visible logits, contiguous
    T,
    M,
    NQ,
    NL,
    scale,
    s_qb, s_qt, s_qh, s_qd,
    s_kb, s_km, s_kh, s_kd,
    s_vb, s_vm, s_vh, s_vd,
    s_sb, s_sm, s_eb, s_em,
    H: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    o_j = tl.arange(0, BM)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < DK, o_v < DV

    b_q = _tile(q + i_b * s_qb + i_h * s_qh, o_t, s_qt, o_k, s_qd, m_t, m_k)  # [BT, BK]
    p_k0 = k + i_b * s_kb + i_h * s_kh
    p_v0 = v + i_b * s_vb + i_h * s_vh
    qk_scale = scale * 1.4426950408889634  # logits in base 2: exp(x) = exp2(x log2 e)

    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)  # running max (base 2)
    b_l = tl.zeros([BT], dtype=tl.float32)  # running sum of exp2(z - max)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    i_list = i_b * NQ + i_t
    n_blocks = tl.load(n_live + i_list)
    for i in range(0, n_blocks):
        i_m = tl.load(live + i_list * NL + i).to(tl.int64)
        o_m = i_m * BM + o_j
        m_m = o_m < M
        b_s, b_e = _intervals(start, end, i_b, o_m, m_m, s_sb, s_sm, s_eb, s_em)  # [BM]
        b_k = _tile(p_k0, o_m, s_km, o_k, s_kd, m_m, m_k)  # [BM, BK]
        b_v = _tile(p_v0, o_m, s_vm, o_v, s_vd, m_m, m_v)  # [BM, BV]
        b_z = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BT, BM]
        m_vis = (b_s[None, :] <= o_t[:, None]) & (o_t[:, None] < b_e[None, :])
        b_z = tl.where(m_vis, b_z, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_z, 1))
        # a row that has seen nothing yet subtracts 0, not -inf (which would give NaN)
        b_mu = tl.where(b_mn == float("-inf"), 0.0, b_mn)
        b_r = tl.exp2(b_m - b_mu)
        b_p = tl.exp2(b_z - b_mu[:, None])  # [BT, BM]
        b_l = b_l * b_r + tl.sum(b_p, 1)
        # a NaN or inf in an entry this row cannot see (p = 0) stays out of its output
        b_o = b_o * b_r[:, None] + dot_hard_zeros(b_p, b_v, PRECISION)
        b_m = b_mn

    b_seen = b_l > 0
    b_o = b_o / tl.where(b_seen, b_l, 1.0)[:, None]
    b_lse = b_m + tl.log2(tl.where(b_seen, b_l, 1.0))
    b_lse = tl.where(b_seen, b_lse * 0.6931471805599453, float("-inf"))
    p_o = o + ((i_b * T + o_t[:, None]) * H + i_h) * DV + o_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
    tl.store(lse + (i_b * T + o_t) * H + i_h, b_lse, mask=m_t)


@triton.jit(do_not_specialize=["T"])
def _memory_retrieve_delta_bwd_kernel(
    o,  # [B, T, H, DV] forward output, contiguous
    do,  # [B, T, H, DV] gradient of o, strides (s_ob, s_ot, s_oh, s_od)
    lse,  # [B, T, H] forward logsumexp, float32, contiguous
    dlse,  # [B, T, H] gradient of lse, contiguous
    delta,  # [B, T, H] out: float32 rowsum(do * o) - dlse, contiguous
    lse2,  # [B, T, H] out: float32 lse in base 2, +inf where lse = -inf, contiguous
    T,
    s_ob, s_ot, s_oh, s_od,
    H: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    o_v = tl.arange(0, BV)
    m_t = o_t < T
    m_tv = m_t[:, None] & (o_v < DV)[None, :]
    b_o = tl.load(o + ((i_b * T + o_t[:, None]) * H + i_h) * DV + o_v[None, :], mask=m_tv,
                  other=0.0).to(tl.float32)  # [BT, BV]
    p_do = do + i_b * s_ob + o_t[:, None] * s_ot + i_h * s_oh + o_v[None, :] * s_od
    b_do = tl.load(p_do, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
    o_row = (i_b * T + o_t) * H + i_h
    b_lse = tl.load(lse + o_row, mask=m_t, other=0.0)
    b_dlse = tl.load(dlse + o_row, mask=m_t, other=0.0).to(tl.float32)
    b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)
    tl.store(delta + o_row, tl.sum(b_o * b_do, 1) - b_dlse, mask=m_t)
    tl.store(lse2 + o_row, b_lse2, mask=m_t)


@triton.autotune(configs=_configs(), key=["BT", "BM", "BK", "BV"])
@triton.jit(do_not_specialize=["T", "M", "TS"])
def _memory_retrieve_dkv_bwd_kernel(
    q,  # [B, T, H, DK] queries, strides (s_qb, s_qt, s_qh, s_qd)
    k,  # [B, M, H, DK] entry keys, strides (s_kb, s_km, s_kh, s_kd)
    v,  # [B, M, H, DV] entry values, strides (s_vb, s_vm, s_vh, s_vd)
    start,  # [B, M] int, strides (s_sb, s_sm)
    end,  # [B, M] int, strides (s_eb, s_em)
    do,  # [B, T, H, DV] gradient of o, strides (s_ob, s_ot, s_oh, s_od)
    delta,  # [B, T, H] float32 rowsum(do * o) - dlse, contiguous
    lse2,  # [B, T, H] float32 base-2 lse (+inf for rows that see nothing), contiguous
    dk,  # [NS, B, M, H, DK] out: gradient of the keys (per query split), contiguous
    dv,  # [NS, B, M, H, DV] out: gradient of the values (per query split), contiguous
    T,
    M,
    TS,
    scale,
    s_qb, s_qt, s_qh, s_qd,
    s_kb, s_km, s_kh, s_kd,
    s_vb, s_vm, s_vh, s_vd,
    s_sb, s_sm, s_eb, s_em,
    s_ob, s_ot, s_oh, s_od,
    H: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_m, i_bh, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    o_m = i_m.to(tl.int64) * BM + tl.arange(0, BM)
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_m, m_k, m_v = o_m < M, o_k < DK, o_v < DV
    b_s, b_e = _intervals(start, end, i_b, o_m, m_m, s_sb, s_sm, s_eb, s_em)  # [BM]
    # the tokens this block is visible to lie in [t_lo, t_hi): walk only those query blocks
    # of this program's split [i_s TS, (i_s + 1) TS) of the tokens (TS a multiple of BT)
    m_use = m_m & (b_s < b_e)
    t_lo = tl.maximum(tl.min(tl.where(m_use, b_s, T), 0), i_s * TS)
    t_hi = tl.minimum(tl.minimum(tl.max(tl.where(m_use, b_e, 0), 0), T), i_s * TS + TS)
    b_k = _tile(k + i_b * s_kb + i_h * s_kh, o_m, s_km, o_k, s_kd, m_m, m_k)  # [BM, BK]
    b_v = _tile(v + i_b * s_vb + i_h * s_vh, o_m, s_vm, o_v, s_vd, m_m, m_v)  # [BM, BV]
    qk_scale = scale * 1.4426950408889634

    t_first = (t_lo // BT) * BT
    n_steps = tl.cdiv(t_hi - t_first, BT)  # <= 0 when no token sees the block
    p_q = q + i_b * s_qb + i_h * s_qh + t_first.to(tl.int64) * s_qt
    p_q += o_i[:, None] * s_qt + o_k[None, :] * s_qd
    p_do = do + i_b * s_ob + i_h * s_oh + t_first.to(tl.int64) * s_ot
    p_do += o_i[:, None] * s_ot + o_v[None, :] * s_od

    b_dk = tl.zeros([BM, BK], dtype=tl.float32)
    b_dv = tl.zeros([BM, BV], dtype=tl.float32)
    for i in range(0, n_steps):
        o_t = t_first + i * BT + o_i
        m_t = o_t < T
        b_q = tl.load(p_q, mask=m_t[:, None] & m_k[None, :], other=0.0)  # [BT, BK]
        b_do = tl.load(p_do, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
        p_q += BT * s_qt
        p_do += BT * s_ot
        o_row = (i_b * T + o_t) * H + i_h
        b_lse2 = tl.load(lse2 + o_row, mask=m_t, other=float("inf"))  # [BT]
        b_delta = tl.load(delta + o_row, mask=m_t, other=0.0)  # [BT]
        b_zt = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION) * qk_scale  # [BM, BT]
        m_vis = (b_s[:, None] <= o_t[None, :]) & (o_t[None, :] < b_e[:, None]) & m_t[None, :]
        b_pt = tl.where(m_vis, tl.exp2(b_zt - b_lse2[None, :]), 0.0)  # [BM, BT]
        b_dv += tl.dot(b_pt.to(b_do.dtype), b_do, input_precision=PRECISION)
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # [BM, BT]
        # selected, not multiplied: dp or delta may be NaN where the pair is masked out
        b_dzt = tl.where(m_vis, b_pt * (b_dpt - b_delta[None, :]), 0.0)
        b_dk += dot_hard_zeros(b_dzt, b_q, PRECISION)

    i_row = i_s * (tl.num_programs(1) // H) + i_b  # row of [NS * B, M, H, ...]
    p_dk = dk + ((i_row * M + o_m[:, None]) * H + i_h) * DK + o_k[None, :]
    p_dv = dv + ((i_row * M + o_m[:, None]) * H + i_h) * DV + o_v[None, :]
    tl.store(p_dk, (b_dk * scale).to(dk.dtype.element_ty), mask=m_m[:, None] & m_k[None, :])
    tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=m_m[:, None] & m_v[None, :])


@triton.autotune(configs=_configs(), key=["BT", "BM", "BK", "BV"])
@triton.jit(do_not_specialize=["T", "M", "NQ", "NL"])
def _memory_retrieve_dq_bwd_kernel(
    q,  # [B, T, H, DK] queries, strides (s_qb, s_qt, s_qh, s_qd)
    k,  # [B, M, H, DK] entry keys, strides (s_kb, s_km, s_kh, s_kd)
    v,  # [B, M, H, DV] entry values, strides (s_vb, s_vm, s_vh, s_vd)
    start,  # [B, M] int, strides (s_sb, s_sm)
    end,  # [B, M] int, strides (s_eb, s_em)
    n_live,  # [B, NQ] int32, number of entry blocks listed for each query block
    live,  # [B, NQ, NL] int32, their indices
    do,  # [B, T, H, DV] gradient of o, strides (s_ob, s_ot, s_oh, s_od)
    delta,  # [B, T, H] float32 rowsum(do * o) - dlse, contiguous
    lse2,  # [B, T, H] float32 base-2 lse (+inf for rows that see nothing), contiguous
    dq,  # [B, T, H, DK] out: gradient of the queries, contiguous
    T,
    M,
    NQ,
    NL,
    scale,
    s_qb, s_qt, s_qh, s_qd,
    s_kb, s_km, s_kh, s_kd,
    s_vb, s_vm, s_vh, s_vd,
    s_sb, s_sm, s_eb, s_em,
    s_ob, s_ot, s_oh, s_od,
    H: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BT: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    o_j = tl.arange(0, BM)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < DK, o_v < DV

    b_q = _tile(q + i_b * s_qb + i_h * s_qh, o_t, s_qt, o_k, s_qd, m_t, m_k)  # [BT, BK]
    b_do = _tile(do + i_b * s_ob + i_h * s_oh, o_t, s_ot, o_v, s_od, m_t, m_v)  # [BT, BV]
    o_row = (i_b * T + o_t) * H + i_h
    b_lse2 = tl.load(lse2 + o_row, mask=m_t, other=float("inf"))  # [BT]
    b_delta = tl.load(delta + o_row, mask=m_t, other=0.0)  # [BT]
    p_k0 = k + i_b * s_kb + i_h * s_kh
    p_v0 = v + i_b * s_vb + i_h * s_vh
    qk_scale = scale * 1.4426950408889634

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    i_list = i_b * NQ + i_t
    n_blocks = tl.load(n_live + i_list)
    for i in range(0, n_blocks):
        i_m = tl.load(live + i_list * NL + i).to(tl.int64)
        o_m = i_m * BM + o_j
        m_m = o_m < M
        b_s, b_e = _intervals(start, end, i_b, o_m, m_m, s_sb, s_sm, s_eb, s_em)  # [BM]
        b_k = _tile(p_k0, o_m, s_km, o_k, s_kd, m_m, m_k)  # [BM, BK]
        b_v = _tile(p_v0, o_m, s_vm, o_v, s_vd, m_m, m_v)  # [BM, BV]
        b_z = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BT, BM]
        m_vis = (b_s[None, :] <= o_t[:, None]) & (o_t[:, None] < b_e[None, :])
        b_p = tl.where(m_vis, tl.exp2(b_z - b_lse2[:, None]), 0.0)  # [BT, BM]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BT, BM]
        b_dz = tl.where(m_vis, b_p * (b_dp - b_delta[:, None]), 0.0)
        b_dq += dot_hard_zeros(b_dz, b_k, PRECISION)

    p_dq = dq + o_row[:, None] * DK + o_k[None, :]
    tl.store(p_dq, (b_dq * scale).to(dq.dtype.element_ty), mask=m_t[:, None] & m_k[None, :])


def _blocks(DK, DV, dtype):
    """Block sizes: ((BT, BM) of the forward and dq kernels, (BT, BM) of the dk/dv kernel,
    BK, BV the padded head widths). Checked with ptxas on sm_90 for Dh = 64, 128, 256
    under Triton 3.6 and 3.9: with 16-bit inputs no 8-warp config spills more than 40 bytes.
    float32 takes smaller blocks, since its exact-product dots hold whole operands in
    registers, and still spills from Dh = 128 on (kilobytes at Dh = 256)."""
    BK = max(16, triton.next_power_of_2(DK))
    BV = max(16, triton.next_power_of_2(DV))
    widest = max(BK, BV)
    if dtype == torch.float32 or widest > 128:
        return (32, 32), (32, 32), BK, BV
    if widest > 64:
        return (64, 32), (32, 64), BK, BV
    return (128, 64), (64, 64), BK, BV


# The dk/dv kernel walks, for each block of entries, the tokens that see it. A block seen
# by all of a long sequence would make one program walk all of T while others have
# little to do, so the tokens are cut into splits of about this many, one program each
# (partial gradients in float32, at most DKV_SPLIT_BYTES of them).
DKV_SPLIT_TOKENS = 8192
DKV_SPLIT_BYTES = 1 << 28


def _query_splits(T, BT, n_grad):
    """(number of splits NS, tokens per split TS, a multiple of BT) for the dk/dv kernel;
    n_grad is the element count of dk and dv together."""
    NS = max(1, min(triton.cdiv(T, DKV_SPLIT_TOKENS), DKV_SPLIT_BYTES // max(4 * n_grad, 1)))
    TS = triton.cdiv(triton.cdiv(T, NS), BT) * BT
    return triton.cdiv(T, TS), TS


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def live_blocks(mem_start, mem_end, T, BT, BM):
    """List, for each block of BT tokens, the blocks of BM entries it may see.

    An entry block is listed for a query block when the block's smallest start (over its
    non-empty intervals) is at most the query block's last token and its largest end is
    past the query block's first token. This is conservative (a listed block may still
    be invisible to every token of the query block; the kernels mask exactly), and costs
    O(B M + B (T / BT) (M / BM)) small integer operations.

    Args:
        mem_start, mem_end: [B, M] int.
        T: the number of tokens.
        BT, BM: block sizes.

    Returns:
        n_live: [B, NQ] int32, NQ = ceil(T / BT).
        live: [B, NQ, max(NM, 1)] int32, NM = ceil(M / BM): the listed entry blocks of
            each query block first, in increasing order; the rest of the row is unused.
    """
    B, M = mem_start.shape
    NQ, NM = triton.cdiv(T, BT), triton.cdiv(M, BM)
    dev = mem_start.device
    if NM == 0:
        return (torch.zeros(B, NQ, dtype=torch.int32, device=dev),
                torch.zeros(B, NQ, 1, dtype=torch.int32, device=dev))
    s, e = mem_start.long(), mem_end.long()
    used = s < e  # an empty interval never makes its block live
    pad = NM * BM - M
    lo = torch.nn.functional.pad(torch.where(used, s, T), (0, pad), value=T)
    hi = torch.nn.functional.pad(torch.where(used, e, 0), (0, pad), value=0)
    lo = lo.view(B, NM, BM).amin(-1)  # [B, NM]
    hi = hi.view(B, NM, BM).amax(-1)
    t_first = torch.arange(NQ, device=dev) * BT
    t_last = (t_first + BT).clamp_max(T) - 1
    vis = (lo[:, None, :] <= t_last[None, :, None]) & (hi[:, None, :] > t_first[None, :, None])
    n_live = vis.sum(-1, dtype=torch.int32)  # [B, NQ]
    live = torch.argsort((~vis).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
    return n_live, live


def _fwd(q, mem_k, mem_v, mem_start, mem_end, scale):
    """Launch the forward. Returns (o, lse, n_live, live)."""
    B, T, H, DK = q.shape
    M, DV = mem_k.shape[1], mem_v.shape[-1]
    (BT, BM), _, BK, BV = _blocks(DK, DV, q.dtype)
    n_live, live = live_blocks(mem_start, mem_end, T, BT, BM)
    NQ, NL = n_live.shape[1], live.shape[2]
    o = q.new_empty(B, T, H, DV)
    lse = q.new_empty(B, T, H, dtype=torch.float32)
    _memory_retrieve_fwd_kernel[(NQ, B * H)](
        q, mem_k, mem_v, mem_start, mem_end, n_live, live, o, lse, T, M, NQ, NL, scale,
        *q.stride(), *mem_k.stride(), *mem_v.stride(), *mem_start.stride(), *mem_end.stride(),
        H=H, DK=DK, DV=DV, BT=BT, BM=BM, BK=BK, BV=BV, PRECISION=_precision(q.dtype),
    )
    return o, lse, n_live, live


def _bwd(q, mem_k, mem_v, mem_start, mem_end, o, lse, n_live, live, do, dlse, scale):
    """Launch the backward. Returns (dq, dmem_k, dmem_v) in the inputs' dtypes."""
    B, T, H, DK = q.shape
    M, DV = mem_k.shape[1], mem_v.shape[-1]
    (BT, BM), (BT2, BM2), BK, BV = _blocks(DK, DV, q.dtype)
    NQ, NL = n_live.shape[1], live.shape[2]
    delta = q.new_empty(B, T, H, dtype=torch.float32)
    lse2 = q.new_empty(B, T, H, dtype=torch.float32)
    BTD = 64
    _memory_retrieve_delta_bwd_kernel[(triton.cdiv(T, BTD), B * H)](
        o, do, lse, dlse.contiguous(), delta, lse2, T, *do.stride(),
        H=H, DV=DV, BT=BTD, BV=BV,
    )
    strides = (*q.stride(), *mem_k.stride(), *mem_v.stride(), *mem_start.stride(),
               *mem_end.stride(), *do.stride())
    consts = dict(H=H, DK=DK, DV=DV, BK=BK, BV=BV, PRECISION=_precision(q.dtype))
    dq = q.new_empty(B, T, H, DK)
    _memory_retrieve_dq_bwd_kernel[(NQ, B * H)](
        q, mem_k, mem_v, mem_start, mem_end, n_live, live, do, delta, lse2, dq,
        T, M, NQ, NL, scale, *strides, BT=BT, BM=BM, **consts,
    )
    NS, TS = _query_splits(T, BT2, B * M * H * (DK + DV))
    # one split writes the gradients directly; several write float32 partials, summed here
    dk = mem_k.new_empty(NS, B, M, H, DK, dtype=mem_k.dtype if NS == 1 else torch.float32)
    dv = mem_v.new_empty(NS, B, M, H, DV, dtype=mem_v.dtype if NS == 1 else torch.float32)
    if M > 0:
        _memory_retrieve_dkv_bwd_kernel[(triton.cdiv(M, BM2), B * H, NS)](
            q, mem_k, mem_v, mem_start, mem_end, do, delta, lse2, dk, dv,
            T, M, TS, scale, *strides, BT=BT2, BM=BM2, **consts,
        )
    if NS == 1:
        return dq, dk[0], dv[0]
    return dq, dk.sum(0).to(mem_k.dtype), dv.sum(0).to(mem_v.dtype)


class ParallelMemoryRetrieveFunction(torch.autograd.Function):
    """(q, mem_k, mem_v) -> (o, lse) over the given intervals, Triton forward and backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, mem_k, mem_v, mem_start, mem_end, scale):
        o, lse, n_live, live = _fwd(q, mem_k, mem_v, mem_start, mem_end, scale)
        ctx.save_for_backward(q, mem_k, mem_v, mem_start, mem_end, o, lse, n_live, live)
        ctx.scale = scale
        return o, lse

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(ctx, do, dlse):
        q, mem_k, mem_v, mem_start, mem_end, o, lse, n_live, live = ctx.saved_tensors
        dq, dk, dv = _bwd(q, mem_k, mem_v, mem_start, mem_end, o, lse, n_live, live, do, dlse,
                          ctx.scale)
        return dq, dk, dv, None, None, None


def parallel_memory_retrieve(q, mem_k, mem_v, mem_start, mem_end, scale=None):
    """The Triton path of `memory_retrieve`, differentiable in q, mem_k, mem_v; no checks."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return ParallelMemoryRetrieveFunction.apply(q, mem_k, mem_v, mem_start, mem_end, float(scale))
