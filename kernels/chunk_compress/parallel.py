"""Chunk compression in Triton: one program per (chunk, batch, head), one pass over k and v.

The forward walks the chunk's tokens in blocks of BT with an online softmax (running max
and sum), so a chunk of any length streams through registers once. The backward walks the
same blocks once more, recomputing the pooling weights from the saved logsumexp, and
writes dk and dv for each block as it goes; the q_pool gradient of each (batch, chunk) is
a float32 partial that the launcher sums.

All arithmetic is float32. Dots use exact float32 products for float32 inputs and TF32
tensor cores for float16 / bfloat16 inputs, whose values TF32 holds exactly (the other
operand, a float32 weight, is rounded to 11 bits, well below the half-precision outputs'
own rounding). The op moves far more bytes than it computes, so neither choice costs time.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..utils import is_interpreter

# Largest head width and summary count the kernels take (register budget of one program).
MAX_HEAD_DIM = 256
MAX_SUMMARIES = 128


def _configs():
    if is_interpreter():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4, 8) for s in (1, 2, 3)]


@triton.autotune(configs=_configs(), key=["C", "BP", "BK", "BV", "BT"])
@triton.jit(do_not_specialize=["T", "NC"])
def _chunk_compress_fwd_kernel(
    k,  # [B, T, H, DK] keys, strides (s_kb, s_kt, s_kh, s_kd)
    v,  # [B, T, H, DV] values, strides (s_vb, s_vt, s_vh, s_vd)
    q,  # [H, P, DK] pooling queries, strides (s_qh, s_qp, s_qd)
    s_k,  # [B, NC, H, P, DK] out: pooled keys, contiguous
    s_v,  # [B, NC, H, P, DV] out: pooled values, contiguous
    score,  # [B, NC, H, P] out: float32 logsumexp of the pooling logits, contiguous
    T,
    NC,
    scale,
    s_kb, s_kt, s_kh, s_kd,
    s_vb, s_vt, s_vh, s_vd,
    s_qh, s_qp, s_qd,
    H: tl.constexpr,
    P: tl.constexpr,
    C: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BP: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    t0 = i_c.to(tl.int64) * C  # first token of the chunk

    o_p = tl.arange(0, BP)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    m_p, m_k, m_v = o_p < P, o_k < DK, o_v < DV

    p_q = q + i_h * s_qh + o_p[:, None] * s_qp + o_k[None, :] * s_qd
    b_q = tl.load(p_q, mask=m_p[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BP, BK]
    p_k0 = k + i_b * s_kb + t0 * s_kt + i_h * s_kh
    p_v0 = v + i_b * s_vb + t0 * s_vt + i_h * s_vh

    b_m = tl.full([BP], float("-inf"), dtype=tl.float32)  # running max of the logits
    b_l = tl.zeros([BP], dtype=tl.float32)  # running sum of exp(logit - max)
    b_sk = tl.zeros([BP, BK], dtype=tl.float32)
    b_sv = tl.zeros([BP, BV], dtype=tl.float32)
    for i in range(0, C, BT):
        o_t = i + o_i
        # tokens past the chunk or past T (a partial last chunk) take no weight
        m_t = (o_t < C) & (t0 + o_t < T)
        p_k = p_k0 + o_t[:, None] * s_kt + o_k[None, :] * s_kd
        p_v = p_v0 + o_t[:, None] * s_vt + o_v[None, :] * s_vd
        b_k = tl.load(p_k, mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BT, BK]
        b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)  # [BT, BV]
        b_z = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BP, BT]
        b_z = tl.where(m_t[None, :], b_z, float("-inf"))
        # the first block always holds the chunk's first token, so b_mn is finite from here
        b_mn = tl.maximum(b_m, tl.max(b_z, 1))
        b_r = tl.exp(b_m - b_mn)
        b_a = tl.exp(b_z - b_mn[:, None])  # [BP, BT]
        b_l = b_l * b_r + tl.sum(b_a, 1)
        b_sk = b_sk * b_r[:, None] + tl.dot(b_a, b_k, input_precision=PRECISION)
        b_sv = b_sv * b_r[:, None] + tl.dot(b_a, b_v, input_precision=PRECISION)
        b_m = b_mn

    b_sk = b_sk / b_l[:, None]
    b_sv = b_sv / b_l[:, None]
    b_lse = b_m + tl.log(b_l)
    i_row = (i_b * NC + i_c) * H + i_h  # row of [B * NC * H, P, ...]
    p_sk = s_k + i_row * P * DK + o_p[:, None] * DK + o_k[None, :]
    p_sv = s_v + i_row * P * DV + o_p[:, None] * DV + o_v[None, :]
    tl.store(p_sk, b_sk.to(s_k.dtype.element_ty), mask=m_p[:, None] & m_k[None, :])
    tl.store(p_sv, b_sv.to(s_v.dtype.element_ty), mask=m_p[:, None] & m_v[None, :])
    tl.store(score + i_row * P + o_p, b_lse, mask=m_p)


@triton.autotune(configs=_configs(), key=["C", "BP", "BK", "BV", "BT"])
@triton.jit(do_not_specialize=["T", "NC"])
def _chunk_compress_bwd_kernel(
    k,  # [B, T, H, DK] keys, strides (s_kb, s_kt, s_kh, s_kd)
    v,  # [B, T, H, DV] values, strides (s_vb, s_vt, s_vh, s_vd)
    q,  # [H, P, DK] pooling queries, strides (s_qh, s_qp, s_qd)
    s_k,  # [B, NC, H, P, DK] forward output, contiguous
    s_v,  # [B, NC, H, P, DV] forward output, contiguous
    score,  # [B, NC, H, P] forward logsumexp, float32, contiguous
    ds_k,  # [B, NC, H, P, DK] gradient of s_k, contiguous
    ds_v,  # [B, NC, H, P, DV] gradient of s_v, contiguous
    dscore,  # [B, NC, H, P] gradient of score, contiguous
    dk,  # [B, T, H, DK] out: gradient of k, contiguous
    dv,  # [B, T, H, DV] out: gradient of v, contiguous
    dq,  # [B, NC, H, P, DK] out: float32 per-chunk partial gradient of q_pool, contiguous
    T,
    NC,
    scale,
    s_kb, s_kt, s_kh, s_kd,
    s_vb, s_vt, s_vh, s_vd,
    s_qh, s_qp, s_qd,
    H: tl.constexpr,
    P: tl.constexpr,
    C: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BP: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    t0 = i_c.to(tl.int64) * C

    o_p = tl.arange(0, BP)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    m_p, m_k, m_v = o_p < P, o_k < DK, o_v < DV
    m_pk = m_p[:, None] & m_k[None, :]
    m_pv = m_p[:, None] & m_v[None, :]

    i_row = (i_b * NC + i_c) * H + i_h
    o_pk = i_row * P * DK + o_p[:, None] * DK + o_k[None, :]
    o_pv = i_row * P * DV + o_p[:, None] * DV + o_v[None, :]
    p_q = q + i_h * s_qh + o_p[:, None] * s_qp + o_k[None, :] * s_qd
    b_q = tl.load(p_q, mask=m_pk, other=0.0).to(tl.float32)  # [BP, BK]
    b_sk = tl.load(s_k + o_pk, mask=m_pk, other=0.0).to(tl.float32)  # [BP, BK]
    b_sv = tl.load(s_v + o_pv, mask=m_pv, other=0.0).to(tl.float32)  # [BP, BV]
    b_dsk = tl.load(ds_k + o_pk, mask=m_pk, other=0.0).to(tl.float32)  # [BP, BK]
    b_dsv = tl.load(ds_v + o_pv, mask=m_pv, other=0.0).to(tl.float32)  # [BP, BV]
    b_lse = tl.load(score + i_row * P + o_p, mask=m_p, other=0.0)  # [BP]
    b_dls = tl.load(dscore + i_row * P + o_p, mask=m_p, other=0.0).to(tl.float32)  # [BP]
    # sum_t alpha_t dalpha_t = ds_k . s_k + ds_v . s_v, so the softmax backward needs no
    # second pass; the score gradient enters as d score / d z_t = alpha_t.
    b_delta = tl.sum(b_dsk * b_sk, 1) + tl.sum(b_dsv * b_sv, 1) - b_dls  # [BP]

    p_k0 = k + i_b * s_kb + t0 * s_kt + i_h * s_kh
    p_v0 = v + i_b * s_vb + t0 * s_vt + i_h * s_vh
    p_dk0 = dk + ((i_b * T + t0) * H + i_h) * DK
    p_dv0 = dv + ((i_b * T + t0) * H + i_h) * DV
    b_dq = tl.zeros([BP, BK], dtype=tl.float32)
    for i in range(0, C, BT):
        o_t = i + o_i
        m_t = (o_t < C) & (t0 + o_t < T)
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_k = p_k0 + o_t[:, None] * s_kt + o_k[None, :] * s_kd
        p_v = p_v0 + o_t[:, None] * s_vt + o_v[None, :] * s_vd
        b_k = tl.load(p_k, mask=m_tk, other=0.0).to(tl.float32)  # [BT, BK]
        b_v = tl.load(p_v, mask=m_tv, other=0.0).to(tl.float32)  # [BT, BV]
        b_z = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BP, BT]
        b_a = tl.exp(b_z - b_lse[:, None])
        b_a = tl.where(m_p[:, None] & m_t[None, :], b_a, 0.0)  # [BP, BT] pooling weights
        b_da = tl.dot(b_dsk, tl.trans(b_k), input_precision=PRECISION)
        b_da += tl.dot(b_dsv, tl.trans(b_v), input_precision=PRECISION)  # [BP, BT]
        b_dz = b_a * (b_da - b_delta[:, None])  # [BP, BT] gradient of the logits
        b_at = tl.trans(b_a)  # [BT, BP]
        b_dk = tl.dot(b_at, b_dsk, input_precision=PRECISION)
        b_dk += tl.dot(tl.trans(b_dz), b_q, input_precision=PRECISION) * scale  # [BT, BK]
        b_dv = tl.dot(b_at, b_dsv, input_precision=PRECISION)  # [BT, BV]
        p_dk = p_dk0 + o_t[:, None] * (H * DK) + o_k[None, :]
        p_dv = p_dv0 + o_t[:, None] * (H * DV) + o_v[None, :]
        tl.store(p_dk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
        tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        b_dq += tl.dot(b_dz, b_k, input_precision=PRECISION)
    tl.store(dq + o_pk, b_dq * scale, mask=m_pk)


def _blocks(C, P, DK, DV):
    """Block sizes: powers of two, at least 16 (the smallest tl.dot operand)."""
    BP = max(16, triton.next_power_of_2(P))
    BK = max(16, triton.next_power_of_2(DK))
    BV = max(16, triton.next_power_of_2(DV))
    widest = max(BK, BV)
    bt_max = 64 if widest <= 64 else (32 if widest <= 128 else 16)
    BT = max(16, min(bt_max, triton.next_power_of_2(C)))
    return BP, BT, BK, BV


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _fwd(k, v, q_pool, chunk_size, scale):
    """Launch the forward. Shapes as `chunk_compress`; returns (s_k, s_v, score)."""
    B, T, H, DK = k.shape
    DV, P, C = v.shape[-1], q_pool.shape[1], chunk_size
    NC = triton.cdiv(T, C)
    s_k = k.new_empty(B, NC, H, P, DK)
    s_v = v.new_empty(B, NC, H, P, DV)
    score = k.new_empty(B, NC, H, P, dtype=torch.float32)
    BP, BT, BK, BV = _blocks(C, P, DK, DV)
    _chunk_compress_fwd_kernel[(NC, B * H)](
        k, v, q_pool, s_k, s_v, score, T, NC, scale,
        *k.stride(), *v.stride(), *q_pool.stride(),
        H=H, P=P, C=C, DK=DK, DV=DV, BP=BP, BT=BT, BK=BK, BV=BV,
        PRECISION=_precision(k.dtype),
    )
    return s_k, s_v, score


def _bwd(k, v, q_pool, s_k, s_v, score, ds_k, ds_v, dscore, chunk_size, scale):
    """Launch the backward. Returns (dk, dv, dq_pool) in the dtypes of k, v, q_pool."""
    B, T, H, DK = k.shape
    DV, P, C = v.shape[-1], q_pool.shape[1], chunk_size
    NC = s_k.shape[1]
    dk = k.new_empty(B, T, H, DK)
    dv = v.new_empty(B, T, H, DV)
    dq = k.new_empty(B, NC, H, P, DK, dtype=torch.float32)
    BP, BT, BK, BV = _blocks(C, P, DK, DV)
    _chunk_compress_bwd_kernel[(NC, B * H)](
        k, v, q_pool, s_k, s_v, score,
        ds_k.contiguous(), ds_v.contiguous(), dscore.contiguous(),
        dk, dv, dq, T, NC, scale,
        *k.stride(), *v.stride(), *q_pool.stride(),
        H=H, P=P, C=C, DK=DK, DV=DV, BP=BP, BT=BT, BK=BK, BV=BV,
        PRECISION=_precision(k.dtype),
    )
    return dk, dv, dq.sum((0, 1)).to(q_pool.dtype)


class ParallelChunkCompressFunction(torch.autograd.Function):
    """(k, v, q_pool) -> (s_k, s_v, score) with the Triton forward and backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, k, v, q_pool, chunk_size, scale):
        s_k, s_v, score = _fwd(k, v, q_pool, chunk_size, scale)
        ctx.save_for_backward(k, v, q_pool, s_k, s_v, score)
        ctx.chunk_size, ctx.scale = chunk_size, scale
        return s_k, s_v, score

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(ctx, ds_k, ds_v, dscore):
        k, v, q_pool, s_k, s_v, score = ctx.saved_tensors
        dk, dv, dq = _bwd(k, v, q_pool, s_k, s_v, score, ds_k, ds_v, dscore, ctx.chunk_size,
                          ctx.scale)
        return dk, dv, dq, None, None


def parallel_chunk_compress(k, v, q_pool, chunk_size, scale=None):
    """The Triton path of `chunk_compress` (every chunk pooled independently, in parallel),
    differentiable; no input checks."""
    if scale is None:
        scale = 1.0 / math.sqrt(k.shape[-1])
    return ParallelChunkCompressFunction.apply(k, v, q_pool, chunk_size, float(scale))
