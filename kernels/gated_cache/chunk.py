"""Gated cache write, chunked Triton kernels: parallel over chunks of BT tokens.

Per slot s the write is a gated linear recurrence with decay 1 - w and input w; with
g = log(1 - w), gc its running sum inside a sub-chunk of BC tokens and M the slots at
the sub-chunk start (docs/kernels.md has the derivation):

    Mk_t[s] = exp(gc_t[s]) Mk[s] + sum_{i<=t} exp(gc_t[s] - gc_i[s]) w_i[s] k_i
    a_t[s]  = scale * (exp(gc_t[s]) (Mk q_t)[s] + sum_{i<=t} (q_t . k_i) w_i[s] E[t, i, s])
    r_t     = (p_t * exp(gc_t)) @ Mv + sum_{i<=t} P[t, i] v_i,
              P[t, i] = sum_s p_t[s] w_i[s] E[t, i, s],   E[t, i, s] = exp(gc_t[s] - gc_i[s])

The terms with i > t are selected away (`_write_decay`, `dot_hard_zeros`), never
multiplied by a zero mask, so a NaN or inf at token i cannot reach the reads of earlier
tokens through 0 * NaN. Likewise a zero weight is a hard zero: the state updates sum
through `dot_hard_zeros`, and a k or v row that holds an inf or NaN is read as 0 for a
token that writes no slot, so it leaves the slots, the reads and the gradients as a zero
row would.

Every exponent is a sum of log(1 - w) <= 0 over a range of tokens, so nothing overflows;
log(1 - w) is floored at -GMIN so that w = 1 (a full overwrite) stays finite: the old
slot then keeps a weight exp(-GMIN) ~ 1e-14 instead of 0.

Forward: `_chunk_gated_cache_state_fwd_kernel` walks each sequence once (64 tokens a
step, parallel over heads and blocks of slots and features) and stores the slots at every
chunk start; `_chunk_gated_cache_fwd_kernel` then runs every chunk in parallel from its
stored slots.
Backward: `_chunk_gated_cache_dq_bwd_kernel` (per chunk) recomputes p, gets the score
gradients dA and dq; `_chunk_gated_cache_state_bwd_kernel` carries the slot gradients back
across chunks; `_chunk_gated_cache_dkv_bwd_kernel` (per chunk) gives dk and dv;
`_chunk_gated_cache_dw_bwd_kernel` (per chunk and block of BSW_DW slots: every term of dw
is per slot) gives dw = d(write) - d(decay), with
the decay part sum_d G_t[s, d] M_{t-1}[s, d] expanded into four chunk-local terms (T1-T4
below) instead of the usual reverse cumsum of dlog(1 - w), which would divide by 1 - w.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..common.dots import dot_hard_zeros, not_finite
from ..utils import is_interpreter
from .common import (
    FlatInputs,
    apply_flat,
    block_sizes,
    chunk_layout,
    dot_precision,
    num_warps,
    state_grads,
)

GMIN = 32.0  # floor of -log(1 - w)
EPS = math.exp(-GMIN)  # ~1.3e-14, the floor of 1 - w
BC = 16  # tokens per sub-chunk (the smallest tl.dot operand)
BSW_DW = 16  # slots per dw program: [BC, BC, S] tiles for all S slots would spill registers


@triton.jit
def _gates(w, t0, eos, i_h, sw_t, sw_h, o_c, o_s, m_s, EPS: tl.constexpr):
    """Write weights of one sub-chunk and their log-decay sums (rows past eos: w = 0)."""
    o_t = t0 + o_c
    m_w = (o_t < eos)[:, None] & m_s[None, :]
    b_w = tl.load(w + o_t[:, None] * sw_t + i_h * sw_h + o_s[None, :], mask=m_w,
                  other=0.0).to(tl.float32)  # [BC, BS]
    b_g = tl.log(tl.maximum(1.0 - b_w, EPS))  # [BC, BS], 0 where w = 0
    b_gc = tl.cumsum(b_g, axis=0)  # [BC, BS] decay from the sub-chunk start through t
    b_gl = tl.sum(b_g, axis=0)  # [BS] decay over the whole sub-chunk
    return b_w, b_g, b_gc, b_gl


@triton.jit
def _rows(x, t0, eos, i_h, s_t, s_h, o_c, o_d, m_d):
    """[BC, BD] float32 rows t0 .. t0 + BC of x[:, i_h, :] (zero past eos or D)."""
    o_t = t0 + o_c
    p_x = x + o_t[:, None] * s_t + i_h * s_h + o_d[None, :]
    return tl.load(p_x, mask=(o_t < eos)[:, None] & m_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def _writers(b_w):
    """[BC] True for the tokens whose weights b_w [BC, BS] are not all 0."""
    return tl.max(tl.where(b_w != 0.0, 1, 0), axis=1) > 0


@triton.jit
def _written_rows(x, b_writes, t0, eos, i_h, s_t, s_h, o_c, o_d, m_d):
    """`_rows` of k or v, with the rows that hold an inf or NaN read as 0 for the tokens
    that write no slot (b_writes False): w = 0 multiplies them in every term, and 0 * inf
    would be NaN where the math has 0. Finite rows stay: dw of a zero weight needs them."""
    b_x = _rows(x, t0, eos, i_h, s_t, s_h, o_c, o_d, m_d)  # [BC, BD]
    b_bad = tl.max(not_finite(b_x).to(tl.int32), axis=1) > 0  # [BC]
    return tl.where((b_writes | ~b_bad)[:, None], b_x, 0.0)


@triton.jit
def _store_rows(y, b_y, t0, eos, i_h, o_c, o_d, m_d, H: tl.constexpr, D: tl.constexpr):
    """Store [BC, BD] rows t0 .. t0 + BC of the contiguous y[:, i_h, :] (up to eos and D)."""
    o_t = t0 + o_c
    p_y = y + (o_t[:, None] * H + i_h) * D + o_d[None, :]
    tl.store(p_y, b_y.to(y.dtype.element_ty), mask=(o_t < eos)[:, None] & m_d[None, :])


@triton.jit
def _chunk_bounds(cu_seqlens, chunk_indices, i_c, BT: tl.constexpr):
    """(first token of global chunk i_c, end of its sequence)."""
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    j_c = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    return bos + j_c * BT, tl.load(cu_seqlens + i_n + 1).to(tl.int64)


@triton.jit
def _slots(h, i_ch, o_s, o_d, m_s, m_d, S: tl.constexpr, D: tl.constexpr):
    """[BS, BD] float32 block of the [S, D] slots (or slot gradients) h[i_ch]."""
    p_h = h + i_ch * S * D + o_s[:, None] * D + o_d[None, :]
    return tl.load(p_h, mask=m_s[:, None] & m_d[None, :], other=0.0)


@triton.jit
def _pair_decay(b_gc, o_c):
    """E[t, i, s] = exp(gc_t[s] - gc_i[s]) for i <= t, else 0. [BC, BC, BS]"""
    m_ti = (o_c[:, None] >= o_c[None, :])[:, :, None]  # [BC, BC, 1]
    b_d = tl.minimum(b_gc[:, None, :] - b_gc[None, :, :], 0.0)
    return tl.where(m_ti, tl.exp(b_d), 0.0)


@triton.jit
def _write_decay(b_w, b_gc, o_c):
    """WE[t, i, s] = w_i[s] E[t, i, s] for i <= t, else 0, selected rather than multiplied
    by a mask: a NaN in a later token's w must not reach token t. [BC, BC, BS]"""
    m_ti = (o_c[:, None] >= o_c[None, :])[:, :, None]  # [BC, BC, 1]
    b_d = tl.minimum(b_gc[:, None, :] - b_gc[None, :, :], 0.0)
    return tl.where(m_ti, b_w[None, :, :] * tl.exp(b_d), 0.0)


@triton.jit
def _read_weights(b_q, b_k, b_gc, b_WE, b_mk, scale, m_s, PREC: tl.constexpr):
    """Read weights p [BC, BS] of a sub-chunk that starts from slot keys b_mk [BS, BK];
    b_WE from `_write_decay`."""
    b_qk = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)  # [BC, BC]
    b_a = tl.exp(b_gc) * tl.dot(b_q, tl.trans(b_mk), input_precision=PREC)  # [BC, BS]
    # q_t . k_i of a later (or non-writing) token i may be NaN or inf: select, not multiply
    b_a += tl.sum(tl.where(b_WE == 0.0, 0.0, b_qk[:, :, None] * b_WE), axis=1)
    b_a = tl.where(m_s[None, :], b_a * scale, float("-inf"))
    b_p = tl.exp(b_a - tl.max(b_a, axis=1)[:, None])
    return b_p / tl.sum(b_p, axis=1)[:, None]


@triton.jit
def _advance(b_m, b_w, b_gc, b_gl, b_x, PREC: tl.constexpr):
    """Slots after a sub-chunk: exp(gl) M + sum_i (w_i exp(gl - gc_i)) x_i. [BS, BD]"""
    b_wd = b_w * tl.exp(b_gl[None, :] - b_gc)  # [BC, BS]
    # a zero weight leaves its slot as it was, even where x is inf or NaN
    return tl.exp(b_gl)[:, None] * b_m + dot_hard_zeros(tl.trans(b_wd), b_x, PREC)


@triton.jit
def _advance_block(b_m, b_w, b_g, b_gl, b_x, PREC: tl.constexpr):
    """Slots after a block of any length: exp(gl) M + sum_i w_i exp(g_{i+1} + ...) x_i.
    The decay after token i is a reverse cumsum, not gl - gc_i: over long blocks both sums
    grow large and their difference would lose digits. [BS, BD]"""
    b_wd = b_w * tl.exp(tl.cumsum(b_g, axis=0, reverse=True) - b_g)  # [BL, BS]
    return tl.exp(b_gl)[:, None] * b_m + dot_hard_zeros(tl.trans(b_wd), b_x, PREC)


@triton.jit
def _carry_back(b_G, b_y, b_z, b_gc, b_gl, PREC: tl.constexpr):
    """Slot gradients at a block's start from those at its end, for reads weighted y
    [BL, BS] of vectors z [BL, BD]: exp(gl) G + (y exp(gc))^T z. [BS, BD]"""
    b_yd = b_y * tl.exp(b_gc)  # [BL, BS]
    return tl.exp(b_gl)[:, None] * b_G + tl.dot(tl.trans(b_yd), b_z, input_precision=PREC)


def _state_configs():
    """Slots per program of the state walks: 16 (more programs, the walks being the serial
    part) up to 64 (fewer programs, each reading x fewer times); the GPU's timing picks."""
    if is_interpreter():
        return [triton.Config({"BS": 16}, num_warps=4)]
    return [triton.Config({"BS": bs}, num_warps=w) for bs, w in ((16, 4), (32, 4), (64, 8))]


def _prune_slot_blocks(configs, named_args, **kwargs):
    """Drop slot blocks wider than the padded slot count (duplicates of the widest)."""
    return [c for c in configs if c.kwargs["BS"] <= max(16, triton.next_power_of_2(kwargs["S"]))]


@triton.autotune(configs=_state_configs(), key=["H", "S", "D", "BT", "BL"],
                 prune_configs_by={"early_config_prune": _prune_slot_blocks})
@triton.jit
def _chunk_gated_cache_state_fwd_kernel(
    x,  # [T_all, H, D] keys or values, strides (sx_t, sx_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    h0,  # [N, H, S, D] float32 initial slots, contiguous (read if USE_H0)
    hs,  # [NT, H, S, D] float32 output: slots at the start of every chunk
    ht,  # [N, H, S, D] float32 output: final slots (written if STORE_HT)
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    chunk_offsets,  # [N + 1] first global chunk of each sequence
    sx_t, sx_h, sw_t, sw_h,
    H: tl.constexpr, S: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BD: tl.constexpr, BT: tl.constexpr, BL: tl.constexpr, EPS: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr,
):
    # every slot and feature is its own recurrence: a program owns BS slots x BD features
    i_nh, i_sd = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    i_s, i_d = i_sd // tl.cdiv(D, BD), i_sd % tl.cdiv(D, BD)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    i_c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    o_l, o_s, o_d = tl.arange(0, BL), i_s * BS + tl.arange(0, BS), i_d * BD + tl.arange(0, BD)
    m_s, m_d = o_s < S, o_d < D
    m_sd = m_s[:, None] & m_d[None, :]
    o_sd = o_s[:, None] * D + o_d[None, :]  # [BS, BD] offsets in one [S, D] state
    if USE_H0:
        b_h = tl.load(h0 + i_nh.to(tl.int64) * S * D + o_sd, mask=m_sd, other=0.0)
    else:
        b_h = tl.zeros([BS, BD], dtype=tl.float32)
    for i_c in range(0, tl.cdiv(eos - bos, BT)):
        tl.store(hs + ((i_c0 + i_c) * H + i_h) * S * D + o_sd, b_h, mask=m_sd)
        for i_l in range(0, BT // BL):
            t0 = bos + i_c * BT + i_l * BL
            b_w, b_g, b_gc, b_gl = _gates(w, t0, eos, i_h, sw_t, sw_h, o_l, o_s, m_s, EPS)
            b_x = _rows(x, t0, eos, i_h, sx_t, sx_h, o_l, o_d, m_d)  # [BL, BD]
            b_h = _advance_block(b_h, b_w, b_g, b_gl, b_x, PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * S * D + o_sd, b_h, mask=m_sd)


@triton.jit(do_not_specialize=["scale"])
def _chunk_gated_cache_fwd_kernel(
    q,  # [T_all, H, DK] queries, strides (sq_t, sq_h, 1)
    k,  # [T_all, H, DK] keys, strides (sk_t, sk_h, 1)
    v,  # [T_all, H, DV] values, strides (sv_t, sv_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    r,  # [T_all, H, DV] output reads, contiguous
    hk,  # [NT, H, S, DK] float32 slot keys at every chunk start
    hv,  # [NT, H, S, DV] float32 slot values at every chunk start
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    chunk_indices,  # [NT, 2] (sequence, chunk within it) of every global chunk
    scale,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sw_t, sw_h,
    H: tl.constexpr, S: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, EPS: tl.constexpr, PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t_c, eos = _chunk_bounds(cu_seqlens, chunk_indices, i_c, BT)
    o_c, o_s = tl.arange(0, BC), tl.arange(0, BS)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < S, o_k < DK, o_v < DV
    i_ch = i_c.to(tl.int64) * H + i_h
    b_mk = _slots(hk, i_ch, o_s, o_k, m_s, m_k, S, DK)  # [BS, BK]
    b_mv = _slots(hv, i_ch, o_s, o_v, m_s, m_v, S, DV)  # [BS, BV]
    for i_s in range(0, BT // BC):
        t0 = t_c + i_s * BC
        if t0 < eos:
            b_w, b_g, b_gc, b_gl = _gates(w, t0, eos, i_h, sw_t, sw_h, o_c, o_s, m_s, EPS)
            b_q = _rows(q, t0, eos, i_h, sq_t, sq_h, o_c, o_k, m_k)  # [BC, BK]
            b_k = _rows(k, t0, eos, i_h, sk_t, sk_h, o_c, o_k, m_k)  # [BC, BK]
            b_v = _rows(v, t0, eos, i_h, sv_t, sv_h, o_c, o_v, m_v)  # [BC, BV]
            b_WE = _write_decay(b_w, b_gc, o_c)  # [BC, BC, BS]
            b_p = _read_weights(b_q, b_k, b_gc, b_WE, b_mk, scale, m_s, PREC)
            b_P = tl.sum(b_p[:, None, :] * b_WE, axis=2)  # [BC, BC], 0 for i > t
            b_r = tl.dot(b_p * tl.exp(b_gc), b_mv, input_precision=PREC)
            b_r += dot_hard_zeros(b_P, b_v, PREC)  # [BC, BV]: later v_i stay out of r_t
            _store_rows(r, b_r, t0, eos, i_h, o_c, o_v, m_v, H, DV)
            b_mk = _advance(b_mk, b_w, b_gc, b_gl, b_k, PREC)
            b_mv = _advance(b_mv, b_w, b_gc, b_gl, b_v, PREC)


@triton.jit(do_not_specialize=["scale"])
def _chunk_gated_cache_dq_bwd_kernel(
    q,  # [T_all, H, DK] queries, strides (sq_t, sq_h, 1)
    k,  # [T_all, H, DK] keys, strides (sk_t, sk_h, 1)
    v,  # [T_all, H, DV] values, strides (sv_t, sv_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    dr,  # [T_all, H, DV] gradient of the reads, strides (sd_t, sd_h, 1)
    hk,  # [NT, H, S, DK] float32 slot keys at every chunk start
    hv,  # [NT, H, S, DV] float32 slot values at every chunk start
    dq,  # [T_all, H, DK] output, contiguous
    pb,  # [T_all, H, BS] float32 output: read weights p
    dab,  # [T_all, H, BS] float32 output: score gradients dA = d loss / d (scale * score)
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    chunk_indices,  # [NT, 2] (sequence, chunk within it) of every global chunk
    scale,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sw_t, sw_h, sd_t, sd_h,
    H: tl.constexpr, S: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, EPS: tl.constexpr, PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t_c, eos = _chunk_bounds(cu_seqlens, chunk_indices, i_c, BT)
    o_c, o_s = tl.arange(0, BC), tl.arange(0, BS)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < S, o_k < DK, o_v < DV
    i_ch = i_c.to(tl.int64) * H + i_h
    b_mk = _slots(hk, i_ch, o_s, o_k, m_s, m_k, S, DK)  # [BS, BK]
    b_mv = _slots(hv, i_ch, o_s, o_v, m_s, m_v, S, DV)  # [BS, BV]
    for i_s in range(0, BT // BC):
        t0 = t_c + i_s * BC
        if t0 < eos:
            b_w, b_g, b_gc, b_gl = _gates(w, t0, eos, i_h, sw_t, sw_h, o_c, o_s, m_s, EPS)
            b_writes = _writers(b_w)  # [BC]
            b_q = _rows(q, t0, eos, i_h, sq_t, sq_h, o_c, o_k, m_k)  # [BC, BK]
            b_k = _written_rows(k, b_writes, t0, eos, i_h, sk_t, sk_h, o_c, o_k, m_k)
            b_v = _written_rows(v, b_writes, t0, eos, i_h, sv_t, sv_h, o_c, o_v, m_v)
            b_dr = _rows(dr, t0, eos, i_h, sd_t, sd_h, o_c, o_v, m_v)  # [BC, BV]
            b_WE = _write_decay(b_w, b_gc, o_c)  # [BC, BC, BS]
            b_p = _read_weights(b_q, b_k, b_gc, b_WE, b_mk, scale, m_s, PREC)
            # dp_t[s] = Mv_t[s] . dr_t, in the same chunked form as the scores
            b_dv = tl.dot(b_dr, tl.trans(b_v), input_precision=PREC)  # [BC, BC]
            b_dp = tl.exp(b_gc) * tl.dot(b_dr, tl.trans(b_mv), input_precision=PREC)
            b_dp += tl.sum(b_dv[:, :, None] * b_WE, axis=1)  # [BC, BS]
            b_da = scale * b_p * (b_dp - tl.sum(b_p * b_dp, axis=1)[:, None])
            b_Pq = tl.sum(b_da[:, None, :] * b_WE, axis=2)  # [BC, BC]
            b_dq = tl.dot(b_da * tl.exp(b_gc), b_mk, input_precision=PREC)
            b_dq += tl.dot(b_Pq, b_k, input_precision=PREC)  # [BC, BK]
            _store_rows(dq, b_dq, t0, eos, i_h, o_c, o_k, m_k, H, DK)
            _store_rows(pb, b_p, t0, eos, i_h, o_c, o_s, m_s, H, BS)
            _store_rows(dab, b_da, t0, eos, i_h, o_c, o_s, m_s, H, BS)
            b_mk = _advance(b_mk, b_w, b_gc, b_gl, b_k, PREC)
            b_mv = _advance(b_mv, b_w, b_gc, b_gl, b_v, PREC)


@triton.autotune(configs=_state_configs(), key=["H", "S", "D", "BT", "BL"],
                 prune_configs_by={"early_config_prune": _prune_slot_blocks})
@triton.jit
def _chunk_gated_cache_state_bwd_kernel(
    y,  # [T_all, H, BSY] float32 per-slot weights of the reads: dA (keys) or p (values)
    z,  # [T_all, H, D] the read vectors: q (keys) or dr (values), strides (sz_t, sz_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    dht,  # [N, H, S, D] float32 gradient of the final slots (read if USE_DHT)
    dhs,  # [NT, H, S, D] float32 output: gradient of the slots at every chunk end
    dh0,  # [N, H, S, D] float32 output: gradient of the initial slots (if STORE_DH0)
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    chunk_offsets,  # [N + 1] first global chunk of each sequence
    sz_t, sz_h, sw_t, sw_h,
    H: tl.constexpr, S: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BD: tl.constexpr, BT: tl.constexpr, BL: tl.constexpr, EPS: tl.constexpr,
    BSY: tl.constexpr,  # row width of y (S padded)
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr,
):
    # as in the forward walk: a program owns BS slots x BD features
    i_nh, i_sd = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    i_s, i_d = i_sd // tl.cdiv(D, BD), i_sd % tl.cdiv(D, BD)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    i_c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    o_l, o_s, o_d = tl.arange(0, BL), i_s * BS + tl.arange(0, BS), i_d * BD + tl.arange(0, BD)
    m_s, m_d = o_s < S, o_d < D
    m_sd = m_s[:, None] & m_d[None, :]
    o_sd = o_s[:, None] * D + o_d[None, :]  # [BS, BD] offsets in one [S, D] state
    if USE_DHT:
        b_dh = tl.load(dht + i_nh.to(tl.int64) * S * D + o_sd, mask=m_sd, other=0.0)
    else:
        b_dh = tl.zeros([BS, BD], dtype=tl.float32)
    n_chunks = tl.cdiv(eos - bos, BT)
    for i_r in range(0, n_chunks):
        i_c = n_chunks - 1 - i_r
        tl.store(dhs + ((i_c0 + i_c) * H + i_h) * S * D + o_sd, b_dh, mask=m_sd)
        for i_lr in range(0, BT // BL):
            t0 = bos + i_c * BT + (BT // BL - 1 - i_lr) * BL
            b_w, b_g, b_gc, b_gl = _gates(w, t0, eos, i_h, sw_t, sw_h, o_l, o_s, m_s, EPS)
            b_y = _rows(y, t0, eos, i_h, H * BSY, BSY, o_l, o_s, m_s)  # [BL, BS]
            b_z = _rows(z, t0, eos, i_h, sz_t, sz_h, o_l, o_d, m_d)  # [BL, BD]
            b_dh = _carry_back(b_dh, b_y, b_z, b_gc, b_gl, PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * S * D + o_sd, b_dh, mask=m_sd)


@triton.jit
def _chunk_gated_cache_dkv_bwd_kernel(
    q,  # [T_all, H, DK] queries, strides (sq_t, sq_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    dr,  # [T_all, H, DV] gradient of the reads, strides (sd_t, sd_h, 1)
    pb,  # [T_all, H, BS] float32 read weights p
    dab,  # [T_all, H, BS] float32 score gradients dA
    dhk,  # [NT, H, S, DK] float32 gradient of the slot keys at every chunk end
    dhv,  # [NT, H, S, DV] float32 gradient of the slot values at every chunk end
    dk,  # [T_all, H, DK] output, contiguous
    dv,  # [T_all, H, DV] output, contiguous
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    chunk_indices,  # [NT, 2] (sequence, chunk within it) of every global chunk
    sq_t, sq_h, sw_t, sw_h, sd_t, sd_h,
    H: tl.constexpr, S: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, EPS: tl.constexpr, PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t_c, eos = _chunk_bounds(cu_seqlens, chunk_indices, i_c, BT)
    o_c, o_s = tl.arange(0, BC), tl.arange(0, BS)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < S, o_k < DK, o_v < DV
    i_ch = i_c.to(tl.int64) * H + i_h
    b_gk = _slots(dhk, i_ch, o_s, o_k, m_s, m_k, S, DK)  # [BS, BK] at the chunk end
    b_gv = _slots(dhv, i_ch, o_s, o_v, m_s, m_v, S, DV)  # [BS, BV]
    for i_sr in range(0, BT // BC):
        t0 = t_c + (BT // BC - 1 - i_sr) * BC
        if t0 < eos:
            b_w, b_g, b_gc, b_gl = _gates(w, t0, eos, i_h, sw_t, sw_h, o_c, o_s, m_s, EPS)
            b_q = _rows(q, t0, eos, i_h, sq_t, sq_h, o_c, o_k, m_k)  # [BC, BK]
            b_dr = _rows(dr, t0, eos, i_h, sd_t, sd_h, o_c, o_v, m_v)  # [BC, BV]
            b_p = _rows(pb, t0, eos, i_h, H * BS, BS, o_c, o_s, m_s)  # [BC, BS]
            b_da = _rows(dab, t0, eos, i_h, H * BS, BS, o_c, o_s, m_s)  # [BC, BS]
            b_WE = _write_decay(b_w, b_gc, o_c)  # [BC, BC, BS]
            b_P = tl.sum(b_p[:, None, :] * b_WE, axis=2)  # [BC, BC]
            b_Pq = tl.sum(b_da[:, None, :] * b_WE, axis=2)  # [BC, BC]
            b_wd = b_w * tl.exp(b_gl[None, :] - b_gc)  # [BC, BS] w_i exp(gl - gc_i)
            b_dk = tl.dot(tl.trans(b_Pq), b_q, input_precision=PREC)
            b_dk += tl.dot(b_wd, b_gk, input_precision=PREC)  # [BC, BK]
            b_dv = tl.dot(tl.trans(b_P), b_dr, input_precision=PREC)
            b_dv += tl.dot(b_wd, b_gv, input_precision=PREC)  # [BC, BV]
            _store_rows(dk, b_dk, t0, eos, i_h, o_c, o_k, m_k, H, DK)
            _store_rows(dv, b_dv, t0, eos, i_h, o_c, o_v, m_v, H, DV)
            # gradient of the slots at the sub-chunk start
            b_gk = _carry_back(b_gk, b_da, b_q, b_gc, b_gl, PREC)
            b_gv = _carry_back(b_gv, b_p, b_dr, b_gc, b_gl, PREC)


@triton.jit
def _chunk_gated_cache_dw_bwd_kernel(
    q,  # [T_all, H, DK] queries, strides (sq_t, sq_h, 1)
    k,  # [T_all, H, DK] keys, strides (sk_t, sk_h, 1)
    v,  # [T_all, H, DV] values, strides (sv_t, sv_h, 1)
    w,  # [T_all, H, S] write weights, strides (sw_t, sw_h, 1)
    dr,  # [T_all, H, DV] gradient of the reads, strides (sd_t, sd_h, 1)
    pb,  # [T_all, H, BS] float32 read weights p
    dab,  # [T_all, H, BS] float32 score gradients dA
    hk,  # [NT, H, S, DK] float32 slot keys at every chunk start
    hv,  # [NT, H, S, DV] float32 slot values at every chunk start
    dhk,  # [NT, H, S, DK] float32 gradient of the slot keys at every chunk end
    dhv,  # [NT, H, S, DV] float32 gradient of the slot values at every chunk end
    dw,  # [T_all, H, S] output, contiguous
    cu_seqlens,  # [N + 1] offsets of the sequences along T_all
    chunk_indices,  # [NT, 2] (sequence, chunk within it) of every global chunk
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sw_t, sw_h, sd_t, sd_h,
    H: tl.constexpr, S: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    BS: tl.constexpr, BSW: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, EPS: tl.constexpr, PREC: tl.constexpr,
):
    # every term of dw is per slot: a program owns BSW slots of one chunk and head; the
    # slot blocks of a chunk are neighbouring programs, so they share its rows in L2
    i_sc, i_h = tl.program_id(0), tl.program_id(1)
    i_sb, i_c = i_sc % tl.cdiv(S, BSW), i_sc // tl.cdiv(S, BSW)
    t_c, eos = _chunk_bounds(cu_seqlens, chunk_indices, i_c, BT)
    o_c, o_s = tl.arange(0, BC), i_sb * BSW + tl.arange(0, BSW)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < S, o_k < DK, o_v < DV
    i_ch = i_c.to(tl.int64) * H + i_h
    b_gk = _slots(dhk, i_ch, o_s, o_k, m_s, m_k, S, DK)  # [BSW, BK] at the chunk end
    b_gv = _slots(dhv, i_ch, o_s, o_v, m_s, m_v, S, DV)  # [BSW, BV]
    m_gt = (o_c[:, None] > o_c[None, :])[:, :, None]  # [BC, BC, 1] strictly
    for i_sr in range(0, BT // BC):
        i_s = BT // BC - 1 - i_sr
        t0 = t_c + i_s * BC
        if t0 < eos:
            # slots at the start of this sub-chunk, recomputed from the chunk start
            b_mk = _slots(hk, i_ch, o_s, o_k, m_s, m_k, S, DK)  # [BSW, BK]
            b_mv = _slots(hv, i_ch, o_s, o_v, m_s, m_v, S, DV)  # [BSW, BV]
            for i_p in range(0, i_s):
                tp = t_c + i_p * BC
                b_w, b_g, b_gc, b_gl = _gates(w, tp, eos, i_h, sw_t, sw_h, o_c, o_s, m_s, EPS)
                b_mk = _advance(b_mk, b_w, b_gc, b_gl,
                                _rows(k, tp, eos, i_h, sk_t, sk_h, o_c, o_k, m_k), PREC)
                b_mv = _advance(b_mv, b_w, b_gc, b_gl,
                                _rows(v, tp, eos, i_h, sv_t, sv_h, o_c, o_v, m_v), PREC)
            b_w, b_g, b_gc, b_gl = _gates(w, t0, eos, i_h, sw_t, sw_h, o_c, o_s, m_s, EPS)
            o_sa = tl.arange(0, BS)  # every slot: which tokens write anywhere
            b_writes = _writers(_rows(w, t0, eos, i_h, sw_t, sw_h, o_c, o_sa, o_sa < S))
            b_q = _rows(q, t0, eos, i_h, sq_t, sq_h, o_c, o_k, m_k)  # [BC, BK]
            b_k = _written_rows(k, b_writes, t0, eos, i_h, sk_t, sk_h, o_c, o_k, m_k)
            b_v = _written_rows(v, b_writes, t0, eos, i_h, sv_t, sv_h, o_c, o_v, m_v)
            b_dr = _rows(dr, t0, eos, i_h, sd_t, sd_h, o_c, o_v, m_v)  # [BC, BV]
            b_p = _rows(pb, t0, eos, i_h, H * BS, BS, o_c, o_s, m_s)  # [BC, BSW]
            b_da = _rows(dab, t0, eos, i_h, H * BS, BS, o_c, o_s, m_s)  # [BC, BSW]
            b_E = _pair_decay(b_gc, o_c)  # [BC, BC, BSW] exp(gc_t - gc_i), i <= t
            b_qk = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)  # [BC, BC] q_t . k_i
            b_rv = tl.dot(b_dr, tl.trans(b_v), input_precision=PREC)  # [BC, BC] dr_t . v_i
            # d(write)_i[s] = G_i[s] . x_i: the chunk-end gradient plus later reads
            b_xg = (tl.dot(b_k, tl.trans(b_gk), input_precision=PREC)
                    + tl.dot(b_v, tl.trans(b_gv), input_precision=PREC))  # [BC, BSW]
            b_X = b_da[:, None, :] * b_qk[:, :, None] + b_p[:, None, :] * b_rv[:, :, None]
            b_dbeta = tl.exp(b_gl[None, :] - b_gc) * b_xg + tl.sum(b_E * b_X, axis=0)
            # d(decay)_t[s] = G_t[s] . M_{t-1}[s] = T1 + T2 + T3 + T4
            b_gcp = b_gc - b_g  # [BC, BSW] decay through t - 1
            b_c1 = tl.sum(b_mk * b_gk, axis=1) + tl.sum(b_mv * b_gv, axis=1)  # [BSW]
            b_t1 = tl.exp(b_gcp + b_gl[None, :] - b_gc) * b_c1[None, :]
            b_y = (b_da * tl.dot(b_q, tl.trans(b_mk), input_precision=PREC)
                   + b_p * tl.dot(b_dr, tl.trans(b_mv), input_precision=PREC))  # [BC, BSW]
            b_t2 = tl.exp(b_gcp) * tl.sum(b_E * b_y[:, None, :], axis=0)
            b_Es = tl.where(m_gt, b_E, 0.0)  # i < t
            # exp(-g_t) <= exp(GMIN) undoes the factor 1 - w_t inside E: no cancellation
            b_t3 = tl.exp(b_gl[None, :] - b_gc - b_g) * tl.sum(
                b_Es * (b_w * b_xg)[None, :, :], axis=1)
            b_V = b_Es * b_w[None, :, :] * b_X  # [BC(u), BC(i), BSW], i < u
            # D[t, i] = sum over u >= t of V[u, i]; for i < t every term carries the factor
            # 1 - w_t, so the scan has no cancellation for exp(-g_t) to amplify
            b_D = tl.cumsum(b_V, axis=0, reverse=True)
            b_t4 = tl.exp(-b_g) * tl.sum(tl.where(m_gt, b_D, 0.0), axis=1)
            b_dw = b_dbeta - (b_t1 + b_t2 + b_t3 + b_t4)
            _store_rows(dw, b_dw, t0, eos, i_h, o_c, o_s, m_s, H, S)
            # gradient of the slots at the sub-chunk start
            b_gk = _carry_back(b_gk, b_da, b_q, b_gc, b_gl, PREC)
            b_gv = _carry_back(b_gv, b_p, b_dr, b_gc, b_gl, PREC)


def _state_launch(kernel, args, D, S, N, H, chunk_size, meta):
    """One walk over every sequence, in steps of BL tokens (the largest power of two, up
    to 64, that divides the chunk), parallel over sequences x heads x blocks of slots (BS,
    tuned) and of up to 64 features."""
    BD = min(64, max(16, triton.next_power_of_2(D)))
    BL = min(64, chunk_size & -chunk_size)

    def grid(config):
        return (N * H, triton.cdiv(S, config["BS"]) * triton.cdiv(D, BD))

    kernel[grid](*args, D=D, BD=BD, BT=chunk_size, BL=BL, **meta)


def _fwd(x: FlatInputs, scale: float, h0k, h0v, chunk_size: int):
    """Launch the forward. Returns (r [T_all, H, DV], htk, htv [N, H, S, D], hk, hv
    [NT, H, S, D] the slots at every chunk start, chunk layout)."""
    T_all, H, DK = x.q.shape
    DV, S, N = x.v.shape[-1], x.w.shape[-1], x.num_seqs
    BS, BK, BV = block_sizes(S, DK, DV)
    dev = x.q.device
    chunk_offsets, chunk_indices, NT = chunk_layout(x.lengths, chunk_size, dev)
    f32 = dict(dtype=torch.float32, device=dev)
    hk, hv = torch.empty(NT, H, S, DK, **f32), torch.empty(NT, H, S, DV, **f32)
    htk, htv = torch.empty(N, H, S, DK, **f32), torch.empty(N, H, S, DV, **f32)
    meta = dict(H=H, S=S, EPS=EPS, USE_H0=h0k is not None, STORE_HT=True,
                PREC=dot_precision(x.q.dtype))
    for xs, h0, hs, ht in ((x.k, h0k, hk, htk), (x.v, h0v, hv, htv)):
        _state_launch(_chunk_gated_cache_state_fwd_kernel,
                      (xs, x.w, h0, hs, ht, x.cu_seqlens, chunk_offsets,
                       *xs.stride()[:2], *x.w.stride()[:2]),
                      xs.shape[-1], S, N, H, chunk_size, meta)
    r = x.q.new_empty(T_all, H, DV, dtype=x.v.dtype)
    _chunk_gated_cache_fwd_kernel[(NT, H)](
        x.q, x.k, x.v, x.w, r, hk, hv, x.cu_seqlens, chunk_indices, scale,
        *x.q.stride()[:2], *x.k.stride()[:2], *x.v.stride()[:2], *x.w.stride()[:2],
        H=H, S=S, DK=DK, DV=DV, BS=BS, BK=BK, BV=BV, BT=chunk_size, BC=BC, EPS=EPS,
        PREC=dot_precision(x.q.dtype), num_warps=num_warps(BS, BK, BV),
    )
    return r, htk, htv, hk, hv, (chunk_offsets, chunk_indices, NT)


def _bwd(x: FlatInputs, scale: float, hk, hv, layout, dr, dhtk, dhtv, chunk_size: int,
         need_dh0: bool):
    """Launch the backward. Returns (dq, dk, dv, dw, dh0k, dh0v); dh0 None unless need_dh0."""
    T_all, H, DK = x.q.shape
    DV, S, N = x.v.shape[-1], x.w.shape[-1], x.num_seqs
    BS, BK, BV = block_sizes(S, DK, DV)
    chunk_offsets, chunk_indices, NT = layout
    f32 = dict(dtype=torch.float32, device=x.q.device)
    prec = dot_precision(x.q.dtype)
    strides = (*x.q.stride()[:2], *x.k.stride()[:2], *x.v.stride()[:2], *x.w.stride()[:2],
               *dr.stride()[:2])
    consts = dict(H=H, S=S, DK=DK, DV=DV, BS=BS, BK=BK, BV=BV, BT=chunk_size, BC=BC,
                  EPS=EPS, PREC=prec, num_warps=num_warps(BS, BK, BV))
    dq = x.q.new_empty(T_all, H, DK)
    pb, dab = torch.empty(T_all, H, BS, **f32), torch.empty(T_all, H, BS, **f32)
    _chunk_gated_cache_dq_bwd_kernel[(NT, H)](
        x.q, x.k, x.v, x.w, dr, hk, hv, dq, pb, dab, x.cu_seqlens, chunk_indices, scale,
        *strides, **consts)
    dhk, dhv = torch.empty(NT, H, S, DK, **f32), torch.empty(NT, H, S, DV, **f32)
    dh0k = torch.empty(N, H, S, DK, **f32) if need_dh0 else None
    dh0v = torch.empty(N, H, S, DV, **f32) if need_dh0 else None
    meta = dict(H=H, S=S, EPS=EPS, BSY=BS, USE_DHT=dhtk is not None, STORE_DH0=need_dh0,
                PREC=prec)
    for y, z, dht, dhs, dh0 in ((dab, x.q, dhtk, dhk, dh0k), (pb, dr, dhtv, dhv, dh0v)):
        _state_launch(_chunk_gated_cache_state_bwd_kernel,
                      (y, z, x.w, dht, dhs, dh0, x.cu_seqlens, chunk_offsets,
                       *z.stride()[:2], *x.w.stride()[:2]),
                      z.shape[-1], S, N, H, chunk_size, meta)
    dk, dv, dw = x.k.new_empty(T_all, H, DK), x.v.new_empty(T_all, H, DV), x.w.new_empty(
        T_all, H, S)
    _chunk_gated_cache_dkv_bwd_kernel[(NT, H)](
        x.q, x.w, dr, pb, dab, dhk, dhv, dk, dv, x.cu_seqlens, chunk_indices,
        *x.q.stride()[:2], *x.w.stride()[:2], *dr.stride()[:2], **consts)
    BSW = min(BS, BSW_DW)
    _chunk_gated_cache_dw_bwd_kernel[(triton.cdiv(S, BSW) * NT, H)](
        x.q, x.k, x.v, x.w, dr, pb, dab, hk, hv, dhk, dhv, dw, x.cu_seqlens,
        chunk_indices, *strides, BSW=BSW,
        **dict(consts, num_warps=8))  # ptxas (sm_90): fewest spills of 2, 4, 8, 16 warps
    return dq, dk, dv, dw, dh0k, dh0v


class ChunkGatedCacheWriteFunction(torch.autograd.Function):
    """Autograd wrapper around the chunked kernels (inputs already flattened). Saves the
    inputs and the slots at every chunk start, [NT, H, S, Dk + Dv] float32."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, k, v, w, h0k, h0v, scale, x: FlatInputs, output_final_state,
                chunk_size):
        r, htk, htv, hk, hv, layout = _fwd(x, scale, h0k, h0v, chunk_size)
        ctx.save_for_backward(q, k, v, w, hk, hv)
        # the tensors go through save_for_backward; ctx keeps only the layout
        ctx.x = x.with_tensors(None, None, None, None)
        ctx.scale, ctx.layout, ctx.chunk_size = scale, layout, chunk_size
        ctx.need_dh0 = h0k is not None
        if not output_final_state:
            return r, None, None
        return r, htk, htv

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dr, dhtk, dhtv):
        q, k, v, w, hk, hv = ctx.saved_tensors
        x = ctx.x.with_tensors(q, k, v, w)
        dr = torch.zeros_like(v) if dr is None else dr
        dr = dr if dr.stride(-1) == 1 else dr.contiguous()
        dhtk, dhtv = state_grads(dhtk, dhtv, x, q.shape[-1], v.shape[-1])
        dq, dk, dv, dw, dh0k, dh0v = _bwd(x, ctx.scale, hk, hv, ctx.layout, dr, dhtk, dhtv,
                                          ctx.chunk_size, ctx.need_dh0)
        return dq, dk, dv, dw, dh0k, dh0v, None, None, None, None


def chunk_gated_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
):
    """The chunked Triton path. Arguments and results as `gated_cache_write` (no input
    checks here: call that function for validated input); chunk_size: a multiple of 16,
    the tokens between stored slot checkpoints."""
    return apply_flat(ChunkGatedCacheWriteFunction, q, k, v, w, scale, initial_state,
                      output_final_state, cu_seqlens, chunk_size)
