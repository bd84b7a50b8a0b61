"""Gated cache write, fused recurrent Triton kernels: one program per (sequence, head)
walks the tokens in order with both slot matrices held in registers.

    Mk_t = (1 - w_t) Mk_{t-1} + w_t k_t^T,   Mv_t = (1 - w_t) Mv_{t-1} + w_t v_t^T
    p_t = softmax(scale * Mk_t q_t),          r_t = Mv_t^T p_t

The forward is one pass. The backward is two passes per program: a forward pass that
recomputes the slots, the read weights p and the score gradients dA = scale * dp_softmax
(stored in a float32 scratch) and writes dq, keeping the slots at every BT-th token; then
a reverse pass, chunk by chunk, that re-walks each chunk from its checkpoint into a
per-program stash (the slots before each token) and runs the reverse scan for dk, dv, dw
and the initial-state gradient. dw needs the slots *before* each token; recomputing them
rather than inverting the update keeps w = 1 (a full overwrite) exact.

Work is O(T * S * (Dk + Dv)) per head on CUDA cores and the parallelism is N * H programs:
this is the kernel for short sequences and decoding; `chunk.py` is the one for long ones.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..common.dots import not_finite
from .common import FlatInputs, apply_flat, block_sizes, num_warps, state_grads


@triton.jit
def _token(x, t, i_h, s_t, s_h, o_d, m_d):
    """Row t of x[:, i_h, :] as float32, zero past its width."""
    return tl.load(x + t * s_t + i_h * s_h + o_d, mask=m_d, other=0.0).to(tl.float32)


@triton.jit
def _store_token(y, b_y, t, i_h, o_d, m_d, H: tl.constexpr, D: tl.constexpr):
    """Store b_y as row t of the contiguous y[:, i_h, :], in y's dtype."""
    tl.store(y + (t * H + i_h) * D + o_d, b_y.to(y.dtype.element_ty), mask=m_d)


@triton.jit
def _written(b_w, b_x):
    """x [BD] as each slot takes it: the zero vector in the slots whose weight is 0 when x
    holds an inf or NaN, since a zero weight leaves a slot as it was and 0 * inf would be
    NaN. [BS, BD]"""
    b_bad = tl.max(not_finite(b_x).to(tl.int32), axis=0) > 0
    return tl.where((b_w[:, None] == 0.0) & b_bad, 0.0, b_x[None, :])


@triton.jit
def _write(b_m, b_w, b_x):
    """(1 - w) M + w x per slot: keeps w = 0 and w = 1 exact. [BS, BD]"""
    return (1.0 - b_w)[:, None] * b_m + b_w[:, None] * _written(b_w, b_x)


@triton.jit
def _read_weights(b_mk, b_q, scale, m_s):
    """p = softmax over the real slots of scale * Mk q. [BS]"""
    b_a = tl.where(m_s, tl.sum(b_mk * b_q[None, :], axis=1) * scale, float("-inf"))
    b_p = tl.exp(b_a - tl.max(b_a, axis=0))
    return b_p / tl.sum(b_p, axis=0)


@triton.jit
def _slots_or_zeros(h, p_h, m_h, BS: tl.constexpr, BD: tl.constexpr, LOAD: tl.constexpr):
    """[BS, BD] float32 slots at offsets p_h of h if LOAD, else zeros."""
    if LOAD:
        b_h = tl.load(h + p_h, mask=m_h, other=0.0).to(tl.float32)
    else:
        b_h = tl.zeros([BS, BD], dtype=tl.float32)
    return b_h


@triton.jit(do_not_specialize=["scale"])
def _fused_recurrent_gated_cache_fwd_kernel(
    q,  # [T_all, H, DK] queries, strides (sq_t, sq_h, 1)
    k,  # [T_all, H, DK] keys, strides (sk_t, sk_h, 1)
    v,  # [T_all, H, DV] values, strides (sv_t, sv_h, 1)
    w,  # [T_all, H, S] write weights in [0, 1], strides (sw_t, sw_h, 1)
    r,  # [T_all, H, DV] reads, contiguous
    h0k,  # [N, H, S, DK] float32 initial slot keys, contiguous (read if USE_H0)
    h0v,  # [N, H, S, DV] float32 initial slot values
    htk,  # [N, H, S, DK] float32 final slot keys (written if STORE_HT)
    htv,  # [N, H, S, DV] float32 final slot values
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    scale,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sw_t, sw_h,
    H: tl.constexpr,
    S: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    i_n, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    o_s, o_k, o_v = tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < S, o_k < DK, o_v < DV
    m_sk, m_sv = m_s[:, None] & m_k[None, :], m_s[:, None] & m_v[None, :]
    i_nh = (i_n * H + i_h).to(tl.int64)
    p_hk = i_nh * S * DK + o_s[:, None] * DK + o_k[None, :]  # [BS, BK] offsets in a state
    p_hv = i_nh * S * DV + o_s[:, None] * DV + o_v[None, :]  # [BS, BV]
    b_mk = _slots_or_zeros(h0k, p_hk, m_sk, BS, BK, USE_H0)  # [BS, BK]
    b_mv = _slots_or_zeros(h0v, p_hv, m_sv, BS, BV, USE_H0)  # [BS, BV]
    for t in range(bos, eos):
        b_q = _token(q, t, i_h, sq_t, sq_h, o_k, m_k)
        b_k = _token(k, t, i_h, sk_t, sk_h, o_k, m_k)
        b_v = _token(v, t, i_h, sv_t, sv_h, o_v, m_v)
        b_w = _token(w, t, i_h, sw_t, sw_h, o_s, m_s)
        b_mk = _write(b_mk, b_w, b_k)
        b_mv = _write(b_mv, b_w, b_v)
        b_p = _read_weights(b_mk, b_q, scale, m_s)  # [BS]
        b_r = tl.sum(b_p[:, None] * b_mv, axis=0)  # [BV]
        _store_token(r, b_r, t, i_h, o_v, m_v, H, DV)
    if STORE_HT:
        tl.store(htk + p_hk, b_mk, mask=m_sk)
        tl.store(htv + p_hv, b_mv, mask=m_sv)


@triton.jit(do_not_specialize=["scale"])
def _fused_recurrent_gated_cache_bwd_kernel(
    q,  # [T_all, H, DK] queries, strides (sq_t, sq_h, 1)
    k,  # [T_all, H, DK] keys, strides (sk_t, sk_h, 1)
    v,  # [T_all, H, DV] values, strides (sv_t, sv_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    dr,  # [T_all, H, DV] gradient of the reads, strides (sd_t, sd_h, 1)
    h0k,  # [N, H, S, DK] float32 initial slot keys (read if USE_H0)
    h0v,  # [N, H, S, DV] float32 initial slot values
    dhtk,  # [N, H, S, DK] float32 gradient of the final slot keys (read if USE_DHT)
    dhtv,  # [N, H, S, DV] float32 gradient of the final slot values
    dq,  # [T_all, H, DK] output, contiguous
    dk,  # [T_all, H, DK] output, contiguous
    dv,  # [T_all, H, DV] output, contiguous
    dw,  # [T_all, H, S] output, contiguous
    dh0k,  # [N, H, S, DK] float32 output: gradient of the initial slot keys (if USE_H0)
    dh0v,  # [N, H, S, DV] float32 output
    pa,  # [T_all, H, 2, BS] float32 scratch: p and dA of every token
    ck,  # [N, H, NCK, BS, BK] float32 scratch: slot keys at the start of each BT-chunk
    cv,  # [N, H, NCK, BS, BV] float32 scratch: slot values at the start of each BT-chunk
    stk,  # [N, H, BT, BS, BK] float32 scratch: slot keys before each token of one chunk
    stv,  # [N, H, BT, BS, BV] float32 scratch: slot values before each token of one chunk
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    scale,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sw_t, sw_h, sd_t, sd_h,
    NCK,
    H: tl.constexpr,
    S: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BT: tl.constexpr,
    USE_H0: tl.constexpr,
    USE_DHT: tl.constexpr,
):
    i_n, i_h = tl.program_id(0), tl.program_id(1)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    seq_len = eos - bos
    o_s, o_k, o_v = tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < S, o_k < DK, o_v < DV
    m_sk, m_sv = m_s[:, None] & m_k[None, :], m_s[:, None] & m_v[None, :]
    i_nh = (i_n * H + i_h).to(tl.int64)
    p_hk = i_nh * S * DK + o_s[:, None] * DK + o_k[None, :]  # [BS, BK] offsets in a state
    p_hv = i_nh * S * DV + o_s[:, None] * DV + o_v[None, :]  # [BS, BV]
    o_bk = o_s[:, None] * BK + o_k[None, :]  # [BS, BK] offsets in a padded scratch tile
    o_bv = o_s[:, None] * BV + o_v[None, :]  # [BS, BV]
    p_ck = ck + i_nh * NCK * BS * BK
    p_cv = cv + i_nh * NCK * BS * BV
    p_stk = stk + i_nh * BT * BS * BK
    p_stv = stv + i_nh * BT * BS * BV
    b_mk = _slots_or_zeros(h0k, p_hk, m_sk, BS, BK, USE_H0)  # [BS, BK]
    b_mv = _slots_or_zeros(h0v, p_hv, m_sv, BS, BV, USE_H0)  # [BS, BV]

    # pass 1, forward: slots, read weights, score gradients, dq; a checkpoint per chunk
    n_chunks = tl.cdiv(seq_len, BT)
    for i_c in range(0, n_chunks):
        tl.store(p_ck + i_c * BS * BK + o_bk, b_mk)
        tl.store(p_cv + i_c * BS * BV + o_bv, b_mv)
        for t in range(bos + i_c * BT, tl.minimum(bos + (i_c + 1) * BT, eos)):
            b_q = _token(q, t, i_h, sq_t, sq_h, o_k, m_k)
            b_k = _token(k, t, i_h, sk_t, sk_h, o_k, m_k)
            b_v = _token(v, t, i_h, sv_t, sv_h, o_v, m_v)
            b_w = _token(w, t, i_h, sw_t, sw_h, o_s, m_s)
            b_dr = _token(dr, t, i_h, sd_t, sd_h, o_v, m_v)
            b_mk = _write(b_mk, b_w, b_k)
            b_mv = _write(b_mv, b_w, b_v)
            b_p = _read_weights(b_mk, b_q, scale, m_s)  # [BS]
            b_dp = tl.sum(b_mv * b_dr[None, :], axis=1)  # [BS] gradient of p
            b_da = scale * b_p * (b_dp - tl.sum(b_p * b_dp, axis=0))  # [BS] of scale * score
            b_dq = tl.sum(b_da[:, None] * b_mk, axis=0)  # [BK]
            _store_token(dq, b_dq, t, i_h, o_k, m_k, H, DK)
            tl.store(pa + (t * H + i_h) * 2 * BS + o_s, b_p)
            tl.store(pa + (t * H + i_h) * 2 * BS + BS + o_s, b_da)
    # the reverse pass reads what other threads of this program stored
    tl.debug_barrier()

    # pass 2, reverse: G = gradient of the slots after token t, carried backwards
    b_gk = _slots_or_zeros(dhtk, p_hk, m_sk, BS, BK, USE_DHT)  # [BS, BK]
    b_gv = _slots_or_zeros(dhtv, p_hv, m_sv, BS, BV, USE_DHT)  # [BS, BV]
    for i_r in range(0, n_chunks):
        i_c = n_chunks - 1 - i_r
        t0 = bos + i_c * BT
        n_t = tl.minimum(BT, eos - t0)
        b_mk = tl.load(p_ck + i_c * BS * BK + o_bk)
        b_mv = tl.load(p_cv + i_c * BS * BV + o_bv)
        for j in range(0, n_t):
            tl.store(p_stk + j * BS * BK + o_bk, b_mk)
            tl.store(p_stv + j * BS * BV + o_bv, b_mv)
            t = t0 + j
            b_k = _token(k, t, i_h, sk_t, sk_h, o_k, m_k)
            b_v = _token(v, t, i_h, sv_t, sv_h, o_v, m_v)
            b_w = _token(w, t, i_h, sw_t, sw_h, o_s, m_s)
            b_mk = _write(b_mk, b_w, b_k)
            b_mv = _write(b_mv, b_w, b_v)
        tl.debug_barrier()
        for j_r in range(0, n_t):
            j = n_t - 1 - j_r
            t = t0 + j
            b_q = _token(q, t, i_h, sq_t, sq_h, o_k, m_k)
            b_k = _token(k, t, i_h, sk_t, sk_h, o_k, m_k)
            b_v = _token(v, t, i_h, sv_t, sv_h, o_v, m_v)
            b_w = _token(w, t, i_h, sw_t, sw_h, o_s, m_s)
            b_dr = _token(dr, t, i_h, sd_t, sd_h, o_v, m_v)
            b_p = tl.load(pa + (t * H + i_h) * 2 * BS + o_s)  # [BS]
            b_da = tl.load(pa + (t * H + i_h) * 2 * BS + BS + o_s)  # [BS]
            b_pk = tl.load(p_stk + j * BS * BK + o_bk)  # [BS, BK] slot keys before token t
            b_pv = tl.load(p_stv + j * BS * BV + o_bv)  # [BS, BV]
            b_gk += b_da[:, None] * b_q[None, :]
            b_gv += b_p[:, None] * b_dr[None, :]
            b_dk = tl.sum(b_w[:, None] * b_gk, axis=0)  # [BK]
            b_dv = tl.sum(b_w[:, None] * b_gv, axis=0)  # [BV]
            # d/dw of (1 - w) M + w x is x - M_prev, per slot
            b_dw = (tl.sum(b_gk * (_written(b_w, b_k) - b_pk), axis=1)
                    + tl.sum(b_gv * (_written(b_w, b_v) - b_pv), axis=1))  # [BS]
            _store_token(dk, b_dk, t, i_h, o_k, m_k, H, DK)
            _store_token(dv, b_dv, t, i_h, o_v, m_v, H, DV)
            _store_token(dw, b_dw, t, i_h, o_s, m_s, H, S)
            b_gk = (1.0 - b_w)[:, None] * b_gk
            b_gv = (1.0 - b_w)[:, None] * b_gv
        # the next chunk overwrites the stash
        tl.debug_barrier()
    if USE_H0:
        tl.store(dh0k + p_hk, b_gk, mask=m_sk)
        tl.store(dh0v + p_hv, b_gv, mask=m_sv)


def _fwd(x: FlatInputs, scale: float, h0k, h0v, store_final: bool):
    """Launch the forward. Returns (r [T_all, H, DV], htk, htv or None, None)."""
    T_all, H, DK = x.q.shape
    DV, S, N = x.v.shape[-1], x.w.shape[-1], x.num_seqs
    BS, BK, BV = block_sizes(S, DK, DV)
    r = x.q.new_empty(T_all, H, DV, dtype=x.v.dtype)
    htk = x.q.new_empty(N, H, S, DK, dtype=torch.float32) if store_final else None
    htv = x.q.new_empty(N, H, S, DV, dtype=torch.float32) if store_final else None
    _fused_recurrent_gated_cache_fwd_kernel[(N, H)](
        x.q, x.k, x.v, x.w, r, h0k, h0v, htk, htv, x.cu_seqlens, scale,
        *x.q.stride()[:2], *x.k.stride()[:2], *x.v.stride()[:2], *x.w.stride()[:2],
        H=H, S=S, DK=DK, DV=DV, BS=BS, BK=BK, BV=BV,
        USE_H0=h0k is not None, STORE_HT=store_final,
        num_warps=num_warps(BS, BK, BV),
    )
    return r, htk, htv


def _bwd(x: FlatInputs, scale: float, h0k, h0v, dr, dhtk, dhtv, bt: int = 32):
    """Launch the backward. Returns (dq, dk, dv, dw, dh0k, dh0v); dh0 are None without h0."""
    T_all, H, DK = x.q.shape
    DV, S, N = x.v.shape[-1], x.w.shape[-1], x.num_seqs
    BS, BK, BV = block_sizes(S, DK, DV)
    nck = triton.cdiv(x.max_len, bt)
    f32 = dict(dtype=torch.float32, device=x.q.device)
    dq = x.q.new_empty(T_all, H, DK)
    dk = x.k.new_empty(T_all, H, DK)
    dv = x.v.new_empty(T_all, H, DV)
    dw = x.w.new_empty(T_all, H, S)
    use_h0 = h0k is not None
    dh0k = torch.empty(N, H, S, DK, **f32) if use_h0 else None
    dh0v = torch.empty(N, H, S, DV, **f32) if use_h0 else None
    pa = torch.empty(T_all, H, 2, BS, **f32)
    ck = torch.empty(N, H, nck, BS, BK, **f32)
    cv = torch.empty(N, H, nck, BS, BV, **f32)
    stk = torch.empty(N, H, bt, BS, BK, **f32)
    stv = torch.empty(N, H, bt, BS, BV, **f32)
    _fused_recurrent_gated_cache_bwd_kernel[(N, H)](
        x.q, x.k, x.v, x.w, dr, h0k, h0v, dhtk, dhtv, dq, dk, dv, dw, dh0k, dh0v,
        pa, ck, cv, stk, stv, x.cu_seqlens, scale,
        *x.q.stride()[:2], *x.k.stride()[:2], *x.v.stride()[:2], *x.w.stride()[:2],
        *dr.stride()[:2], nck,
        H=H, S=S, DK=DK, DV=DV, BS=BS, BK=BK, BV=BV, BT=bt,
        USE_H0=use_h0, USE_DHT=dhtk is not None,
        num_warps=num_warps(BS, BK, BV),
    )
    return dq, dk, dv, dw, dh0k, dh0v


class FusedRecurrentGatedCacheWriteFunction(torch.autograd.Function):
    """Autograd wrapper around the fused recurrent kernels (inputs already flattened)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, k, v, w, h0k, h0v, scale, x: FlatInputs, output_final_state):
        r, htk, htv = _fwd(x, scale, h0k, h0v, output_final_state)
        ctx.save_for_backward(q, k, v, w, h0k, h0v)
        # the tensors go through save_for_backward; ctx keeps only the layout
        ctx.x, ctx.scale = x.with_tensors(None, None, None, None), scale
        return r, htk, htv

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dr, dhtk, dhtv):
        q, k, v, w, h0k, h0v = ctx.saved_tensors
        x = ctx.x.with_tensors(q, k, v, w)
        if dr is None:
            dr = torch.zeros_like(v)
        if dr.stride(-1) != 1:
            dr = dr.contiguous()
        dhtk, dhtv = state_grads(dhtk, dhtv, x, q.shape[-1], v.shape[-1])
        dq, dk, dv, dw, dh0k, dh0v = _bwd(x, ctx.scale, h0k, h0v, dr, dhtk, dhtv)
        return dq, dk, dv, dw, dh0k, dh0v, None, None, None


def fused_recurrent_gated_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
):
    """The fused recurrent Triton path. Arguments and results as `gated_cache_write`
    (no input checks here: call that function for validated input)."""
    return apply_flat(FusedRecurrentGatedCacheWriteFunction, q, k, v, w, scale, initial_state,
                      output_final_state, cu_seqlens)

