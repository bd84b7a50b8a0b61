"""Fused Triton selective scan: forward and backward, batched or packed (varlen).

One program owns a block of BE channels of one sequence and walks the sequence in chunks
of BT tokens, holding the [BE, N] state in registers. Inside a chunk the recurrence
h_t = a_t h_{t-1} + b_t is a parallel scan (`tl.associative_scan`) over a [BT, BE, N]
tile; across chunks the state is carried. The forward stores only the state at each
chunk's start (`ckpt`); the backward walks the chunks in reverse, recomputes the chunk's
states from its checkpoint, and runs the gradient recurrence as a reverse scan.
docs/kernels.md derives the backward; the names below follow it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import is_interpreter

# ---- shared jit helpers -------------------------------------------------------------


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier span, (a2, b2) the later one: h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _reverse_combine(p2, f2, v2, p1, f1, v1):
    # Reverse scan: (p2, f2, v2) spans later tokens, (p1, f1, v1) the span just before.
    # A span [i..j] holds v = g_i without the carry, p = a_{i+1}..a_j, f = a_i, so that
    # g_i = v + p * (a_{j+1} g_{j+1}).
    pf = p1 * f2
    return pf * p2, f1, v1 + pf * v2


@triton.jit
def _step_size(b_delta, b_bias, SOFTPLUS: tl.constexpr):
    b_x = b_delta + b_bias
    if SOFTPLUS:
        # softplus(x) = log(1 + e^x), returned as x above 20 like torch
        b_x = tl.where(b_x > 20.0, b_x, tl.log(1.0 + tl.exp(tl.minimum(b_x, 20.0))))
    return b_x


@triton.jit
def _optional_vector(x, o_e, m_e, BE: tl.constexpr, LOAD: tl.constexpr):
    """[BE] float32 per-channel parameter (D or delta_bias), zeros when absent."""
    b_x = tl.zeros([BE], dtype=tl.float32)
    if LOAD:
        b_x = tl.load(x + o_e, mask=m_e, other=0.0)
    return b_x


@triton.jit
def _optional_state(h, i_n, o_en, m_en, E: tl.constexpr, N: tl.constexpr, BE: tl.constexpr,
                    BN: tl.constexpr, LOAD: tl.constexpr):
    """[BE, BN] float32 block of sequence i_n's [E, N] state h, zeros when absent."""
    b_h = tl.zeros([BE, BN], dtype=tl.float32)
    if LOAD:
        b_h = tl.load(h + i_n.to(tl.int64) * E * N + o_en, mask=m_en, other=0.0)
    return b_h


@triton.jit
def _chunk_rows(p_u, p_d, p_B, p_C, o_tc, m_te, m_tn, s_u_t, s_d_t, s_bc_t, s_c_t):
    """A chunk's rows as float32, zero past the sequence: u, delta [BT, BE], B, C [BT, BN]."""
    b_u = tl.load(p_u + o_tc[:, None] * s_u_t, mask=m_te, other=0.0).to(tl.float32)
    b_dl = tl.load(p_d + o_tc[:, None] * s_d_t, mask=m_te, other=0.0).to(tl.float32)
    b_B = tl.load(p_B + o_tc[:, None] * s_bc_t, mask=m_tn, other=0.0).to(tl.float32)
    b_C = tl.load(p_C + o_tc[:, None] * s_c_t, mask=m_tn, other=0.0).to(tl.float32)
    return b_u, b_dl, b_B, b_C


@triton.jit
def _sequence_bounds(cu_seqlens, chunk_offsets, i_n, T, NT, IS_VARLEN: tl.constexpr):
    """(first token, end token, batch row, index of the first checkpoint) of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        i_b = 0
        i_ck = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = 0
        eos = T
        i_b = i_n.to(tl.int64)
        i_ck = i_n.to(tl.int64) * NT
    return bos, eos, i_b, i_ck


def _configs():
    """num_warps candidates; the interpreter needs only one."""
    if is_interpreter():
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (4, 8, 16)]


def _bwd_configs():
    """The backward's candidates. SPLIT = 2 gives each program half of the launcher's BE
    channels: ptxas then compiles it without register spills at 8 warps, but each token's
    dB and dC take twice the atomic adds. Which wins is measured on the GPU, per shape."""
    if is_interpreter():
        return [triton.Config({"SPLIT": 1}, num_warps=4)]
    return [triton.Config({"SPLIT": 1}, num_warps=8), triton.Config({"SPLIT": 1}, num_warps=16),
            triton.Config({"SPLIT": 2}, num_warps=8)]


def _prune_split(configs, named_args, **kwargs):
    """Drop the splits that would leave a program no channel."""
    return [c for c in configs if kwargs["BE"] >= c.kwargs["SPLIT"]]


# ---- forward ------------------------------------------------------------------------


@triton.autotune(configs=_configs(), key=["E", "N", "BT", "BE", "HAS_Z", "IS_VARLEN"])
@triton.jit(do_not_specialize=["T"])
def _selective_scan_fwd_kernel(
    u,  # [B, T, E] input
    delta,  # [B, T, E] step sizes before bias / softplus
    A,  # [E, N] float32 state matrix, contiguous
    Bm,  # [B, T, G, N] input projection
    Cm,  # [B, T, G, N] output projection
    D,  # [E] float32 skip, or a dummy
    z,  # [B, T, E] gate, or a dummy
    delta_bias,  # [E] float32, or a dummy
    h0,  # [num_seqs, E, N] float32 initial state, or a dummy
    y,  # [B, T, E] output, contiguous
    ht,  # [num_seqs, E, N] float32 final state, or a dummy
    ckpt,  # [num_chunks_total, E, N] float32: the state at each chunk's start
    cu_seqlens,  # [num_seqs + 1] offsets (varlen), or a dummy
    chunk_offsets,  # [num_seqs] index of each sequence's first checkpoint (varlen)
    s_u_b, s_u_t, s_u_e,  # strides of u
    s_d_b, s_d_t, s_d_e,  # strides of delta
    s_z_b, s_z_t, s_z_e,  # strides of z
    s_bc_b, s_bc_t, s_bc_g,  # strides of B (C has the same); last dim contiguous
    s_c_b, s_c_t, s_c_g,  # strides of C
    T, NT,  # tokens per row and chunks per row (batched layout)
    E: tl.constexpr, N: tl.constexpr, GS: tl.constexpr,  # channels, states, group size
    BT: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_e, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos, i_b, i_ck = _sequence_bounds(cu_seqlens, chunk_offsets, i_n, T, NT, IS_VARLEN)
    i_g = (i_e * BE) // GS  # the block never straddles groups (the launcher picks BE)

    o_e = i_e * BE + tl.arange(0, BE)
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    m_e = o_e < E
    m_n = o_n < N
    m_en = m_e[:, None] & m_n[None, :]
    o_en = o_e[:, None] * N + o_n[None, :]  # offsets into [E, N] arrays

    b_A = tl.load(A + o_en, mask=m_en, other=0.0)  # [BE, BN]
    b_bias = _optional_vector(delta_bias, o_e, m_e, BE, HAS_BIAS)  # [BE]
    b_D = _optional_vector(D, o_e, m_e, BE, HAS_D)  # [BE]
    b_h = _optional_state(h0, i_n, o_en, m_en, E, N, BE, BN, HAS_H0)  # [BE, BN]

    p_u = u + i_b * s_u_b + o_e[None, :] * s_u_e
    p_d = delta + i_b * s_d_b + o_e[None, :] * s_d_e
    p_z = z + i_b * s_z_b + o_e[None, :] * s_z_e
    p_y = y + i_b * T * E + o_e[None, :]
    p_B = Bm + i_b * s_bc_b + i_g * s_bc_g + o_n[None, :]
    p_C = Cm + i_b * s_c_b + i_g * s_c_g + o_n[None, :]
    n_chunks = tl.cdiv(eos - bos, BT)
    for i_c in range(0, n_chunks):
        tl.store(ckpt + (i_ck + i_c) * E * N + o_en, b_h, mask=m_en)
        o_tc = (bos + i_c * BT + o_t).to(tl.int64)
        m_t = o_tc < eos
        m_te = m_t[:, None] & m_e[None, :]
        m_tn = m_t[:, None] & m_n[None, :]
        b_u, b_dl, b_B, b_C = _chunk_rows(p_u, p_d, p_B, p_C, o_tc, m_te, m_tn,
                                          s_u_t, s_d_t, s_bc_t, s_c_t)
        # padded rows get dt = 0: a = 1, b = 0, so the state passes through them unchanged
        b_dt = tl.where(m_te, _step_size(b_dl, b_bias[None, :], SOFTPLUS), 0.0)  # [BT, BE]
        b_a = tl.exp(b_dt[:, :, None] * b_A[None, :, :])  # [BT, BE, BN]
        b_b = (b_dt * b_u)[:, :, None] * b_B[:, None, :]  # [BT, BE, BN]
        b_a, b_b = tl.associative_scan((b_a, b_b), 0, _linear_combine)
        b_hs = b_b + b_a * b_h[None, :, :]  # [BT, BE, BN] state after each token
        b_y = tl.sum(b_hs * b_C[:, None, :], axis=2) + b_D[None, :] * b_u  # [BT, BE]
        if HAS_Z:
            b_z = tl.load(p_z + o_tc[:, None] * s_z_t, mask=m_te, other=0.0).to(tl.float32)
            b_y = b_y * b_z * tl.sigmoid(b_z)
        tl.store(p_y + o_tc[:, None] * E, b_y.to(y.dtype.element_ty), mask=m_te)
        b_h = tl.sum(tl.where((o_t == BT - 1)[:, None, None], b_hs, 0.0), axis=0)  # [BE, BN]
    if STORE_FINAL:
        tl.store(ht + i_n.to(tl.int64) * E * N + o_en, b_h, mask=m_en)


# ---- backward -----------------------------------------------------------------------


# dB and dC are accumulated atomically: zero them before each tuning run
@triton.autotune(configs=_bwd_configs(), key=["E", "N", "BT", "BE", "HAS_Z", "IS_VARLEN"],
                 prune_configs_by={"early_config_prune": _prune_split},
                 reset_to_zero=["dB", "dC"])
@triton.jit(do_not_specialize=["T"])
def _selective_scan_bwd_kernel(
    u, delta, A, Bm, Cm, D, z, delta_bias,  # forward inputs, as in the forward kernel
    ckpt,  # [num_chunks_total, E, N] float32 chunk-start states from the forward
    dy,  # [B, T, E] gradient of y, contiguous
    dht,  # [num_seqs, E, N] float32 gradient of the final state, contiguous, or a dummy
    du, ddelta, dz,  # [B, T, E] gradients, contiguous, input dtype
    dB, dC,  # [B, T, G, N] float32 gradients, zeroed, accumulated atomically
    dA,  # [num_seqs, E, N] float32 per-sequence gradient of A
    dD, dbias,  # [num_seqs, E] float32 per-sequence gradients of D and delta_bias
    dh0,  # [num_seqs, E, N] float32 gradient of the initial state
    cu_seqlens, chunk_offsets,  # as in the forward
    s_u_b, s_u_t, s_u_e,
    s_d_b, s_d_t, s_d_e,
    s_z_b, s_z_t, s_z_e,
    s_bc_b, s_bc_t, s_bc_g,
    s_c_b, s_c_t, s_c_g,
    T, NT,
    E: tl.constexpr, N: tl.constexpr, GS: tl.constexpr, G: tl.constexpr,
    BT: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr, IS_VARLEN: tl.constexpr,
    SPLIT: tl.constexpr,  # from the tuner: 1, or 2 for half of BE per program
):
    BEP: tl.constexpr = BE // SPLIT  # channels of this program
    i_e, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos, i_b, i_ck = _sequence_bounds(cu_seqlens, chunk_offsets, i_n, T, NT, IS_VARLEN)
    i_g = (i_e * BEP) // GS

    o_e = i_e * BEP + tl.arange(0, BEP)
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    m_e = o_e < E
    m_n = o_n < N
    m_en = m_e[:, None] & m_n[None, :]
    o_en = o_e[:, None] * N + o_n[None, :]

    b_A = tl.load(A + o_en, mask=m_en, other=0.0)  # [BEP, BN]
    b_bias = _optional_vector(delta_bias, o_e, m_e, BEP, HAS_BIAS)  # [BEP]
    b_D = _optional_vector(D, o_e, m_e, BEP, HAS_D)  # [BEP]
    # carry: a_{j+1} g_{j+1} for the token after the chunk; at the end, the final state's grad
    b_carry = _optional_state(dht, i_n, o_en, m_en, E, N, BEP, BN, HAS_DHT)  # [BEP, BN]
    b_dA = tl.zeros([BEP, BN], dtype=tl.float32)
    b_dD = tl.zeros([BEP], dtype=tl.float32)
    b_dbias = tl.zeros([BEP], dtype=tl.float32)

    p_u = u + i_b * s_u_b + o_e[None, :] * s_u_e
    p_d = delta + i_b * s_d_b + o_e[None, :] * s_d_e
    p_z = z + i_b * s_z_b + o_e[None, :] * s_z_e
    o_out = i_b * T * E + o_e[None, :]  # into the contiguous [B, T, E] arrays
    p_B = Bm + i_b * s_bc_b + i_g * s_bc_g + o_n[None, :]
    p_C = Cm + i_b * s_c_b + i_g * s_c_g + o_n[None, :]
    o_dbc = (i_b * T * G + i_g) * N + o_n[None, :]  # into the contiguous [B, T, G, N] grads
    n_chunks = tl.cdiv(eos - bos, BT)
    for i_r in range(0, n_chunks):
        i_c = n_chunks - 1 - i_r
        o_tc = (bos + i_c * BT + o_t).to(tl.int64)
        m_t = o_tc < eos
        m_te = m_t[:, None] & m_e[None, :]
        m_tn = m_t[:, None] & m_n[None, :]
        b_u, b_dl, b_B, b_C = _chunk_rows(p_u, p_d, p_B, p_C, o_tc, m_te, m_tn,
                                          s_u_t, s_d_t, s_bc_t, s_c_t)
        b_dy = tl.load(dy + o_out + o_tc[:, None] * E, mask=m_te, other=0.0).to(tl.float32)
        b_x = b_dl + b_bias[None, :]
        b_dt = tl.where(m_te, _step_size(b_dl, b_bias[None, :], SOFTPLUS), 0.0)  # [BT, BEP]

        # recompute the chunk's states from its checkpoint
        b_h0 = tl.load(ckpt + (i_ck + i_c) * E * N + o_en, mask=m_en, other=0.0)
        b_a = tl.exp(b_dt[:, :, None] * b_A[None, :, :])  # [BT, BEP, BN]
        b_b = (b_dt * b_u)[:, :, None] * b_B[:, None, :]  # [BT, BEP, BN]
        b_pa, b_pb = tl.associative_scan((b_a, b_b), 0, _linear_combine)
        b_hs = b_pb + b_pa * b_h0[None, :, :]  # [BT, BEP, BN]
        b_ys = tl.sum(b_hs * b_C[:, None, :], axis=2)  # [BT, BEP] C . h

        # output gate and skip
        b_gy = b_dy  # gradient of the pre-gate output ys + D u
        if HAS_Z:
            b_z = tl.load(p_z + o_tc[:, None] * s_z_t, mask=m_te, other=0.0).to(tl.float32)
            b_sig = tl.sigmoid(b_z)
            b_pre = b_ys + b_D[None, :] * b_u
            b_dz = b_dy * b_pre * b_sig * (1.0 + b_z * (1.0 - b_sig))
            tl.store(dz + o_out + o_tc[:, None] * E, b_dz.to(dz.dtype.element_ty), mask=m_te)
            b_gy = b_dy * b_z * b_sig
        b_dD += tl.sum(b_gy * b_u, axis=0)

        # g_t = C_t gy_t + a_{t+1} g_{t+1}, as a reverse scan with the carry applied after
        b_c = b_C[:, None, :] * b_gy[:, :, None]  # [BT, BEP, BN]
        b_p, b_f, b_v = tl.associative_scan((tl.full(b_a.shape, 1.0, tl.float32), b_a, b_c),
                                            0, _reverse_combine, reverse=True)
        b_g = b_v + b_p * b_carry[None, :, :]  # [BT, BEP, BN] gradient of h_t
        b_carry = tl.sum(tl.where((o_t == 0)[:, None, None], b_a * b_g, 0.0), axis=0)

        # a_t h_{t-1} = h_t - b_t: the gradient of dt_t * A through a_t
        b_gdtA = b_g * (b_hs - b_b)  # [BT, BEP, BN]
        b_gB = tl.sum(b_g * b_B[:, None, :], axis=2)  # [BT, BEP]
        b_ddt = tl.sum(b_gdtA * b_A[None, :, :], axis=2) + b_gB * b_u
        b_du = b_gB * b_dt + b_gy * b_D[None, :]
        b_dA += tl.sum(b_gdtA * b_dt[:, :, None], axis=0)
        if SOFTPLUS:
            b_ddt = tl.where(b_x > 20.0, b_ddt, b_ddt * tl.sigmoid(b_x))
        b_ddt = tl.where(m_te, b_ddt, 0.0)
        b_dbias += tl.sum(b_ddt, axis=0)
        tl.store(du + o_out + o_tc[:, None] * E, b_du.to(du.dtype.element_ty), mask=m_te)
        tl.store(ddelta + o_out + o_tc[:, None] * E, b_ddt.to(ddelta.dtype.element_ty),
                 mask=m_te)
        # B and C are shared by the channels of a group: reduce the block, add atomically
        b_dB = tl.sum(b_g * (b_dt * b_u)[:, :, None], axis=1)  # [BT, BN]
        b_dC = tl.sum(b_hs * b_gy[:, :, None], axis=1)  # [BT, BN]
        tl.atomic_add(dB + o_dbc + o_tc[:, None] * G * N, b_dB, mask=m_tn)
        tl.atomic_add(dC + o_dbc + o_tc[:, None] * G * N, b_dC, mask=m_tn)

    o_sen = i_n.to(tl.int64) * E * N + o_en
    tl.store(dh0 + o_sen, b_carry, mask=m_en)
    tl.store(dA + o_sen, b_dA, mask=m_en)
    tl.store(dD + i_n.to(tl.int64) * E + o_e, b_dD, mask=m_e)
    tl.store(dbias + i_n.to(tl.int64) * E + o_e, b_dbias, mask=m_e)


# ---- launchers ----------------------------------------------------------------------

MAX_TILE = 8192  # elements of a [BT, BE, BN] register tile


def _block_sizes(E: int, N: int, G: int, chunk_size: int):
    """(BT, BE, BN): BT = chunk_size, BN covers N, and BE keeps the tile bounded and never
    lets a block straddle two groups of B / C."""
    BT = triton.next_power_of_2(chunk_size)
    BN = triton.next_power_of_2(N)
    BE = max(1, min(triton.next_power_of_2(E), MAX_TILE // (BT * BN)))
    if G > 1:
        group = E // G
        while group % BE:
            BE //= 2
    return BT, BE, BN


class _Layout:
    """Per-call sizes and the sequence layout shared by the forward and backward launch."""

    def __init__(self, u, A, B, cu_seqlens, chunk_size):
        self.Bsz, self.T, self.E = u.shape
        self.N, self.G = A.shape[1], B.shape[2]
        self.BT, self.BE, self.BN = _block_sizes(self.E, self.N, self.G, chunk_size)
        if self.BT != chunk_size:
            raise ValueError(
                f"chunk_size: the Triton scan needs a power of two, got {chunk_size}")
        self.varlen = cu_seqlens is not None
        if self.varlen:
            lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
            n_chunks = (lens + self.BT - 1) // self.BT
            self.chunk_offsets = torch.cumsum(n_chunks, 0) - n_chunks
            self.total_chunks = int(n_chunks.sum())
            self.n_seqs = cu_seqlens.numel() - 1
            self.NT = 0
        else:
            self.NT = triton.cdiv(self.T, self.BT)
            self.total_chunks = self.Bsz * self.NT
            self.n_seqs = self.Bsz
            self.chunk_offsets = None
        self.grid = (triton.cdiv(self.E, self.BE), self.n_seqs)

    def meta(self):
        return dict(E=self.E, N=self.N, GS=self.E // self.G, BT=self.BT, BE=self.BE,
                    BN=self.BN, IS_VARLEN=self.varlen)


def _strides3(x):
    return (x.stride(0), x.stride(1), x.stride(2)) if x is not None else (0, 0, 0)


def _bc_contiguous_n(x):
    # the kernels read B and C rows [N] with unit stride
    return x if x.stride(-1) == 1 else x.contiguous()


def _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
         output_final_state, cu_seqlens, chunk_size):
    lay = _Layout(u, A, B, cu_seqlens, chunk_size)
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    ckpt = u.new_empty(lay.total_chunks, lay.E, lay.N, dtype=torch.float32)
    ht = (u.new_empty(lay.n_seqs, lay.E, lay.N, dtype=torch.float32)
          if output_final_state else None)
    dummy = ckpt
    _selective_scan_fwd_kernel[lay.grid](
        u, delta, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        initial_state if initial_state is not None else dummy,
        y, ht if ht is not None else dummy, ckpt,
        cu_seqlens if cu_seqlens is not None else dummy,
        lay.chunk_offsets if lay.chunk_offsets is not None else dummy,
        *_strides3(u), *_strides3(delta), *_strides3(z), *_strides3(B), *_strides3(C),
        lay.T, lay.NT,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_H0=initial_state is not None,
        STORE_FINAL=output_final_state, **lay.meta(),
    )
    return y, ht, ckpt, lay


def _bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dy, dht, cu_seqlens, lay):
    # the kernel reads both gradients as contiguous arrays; autograd may hand them strided
    # or broadcast (stride 0, e.g. the gradient of a plain sum)
    dy = dy.contiguous()
    dht = dht.float().contiguous() if dht is not None else None
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=u.device)
    dz = torch.empty(z.shape, dtype=z.dtype, device=u.device) if z is not None else None
    dB = torch.zeros(B.shape, dtype=torch.float32, device=u.device)
    dC = torch.zeros(C.shape, dtype=torch.float32, device=u.device)
    dA = u.new_empty(lay.n_seqs, lay.E, lay.N, dtype=torch.float32)
    dD = u.new_empty(lay.n_seqs, lay.E, dtype=torch.float32)
    dbias = u.new_empty(lay.n_seqs, lay.E, dtype=torch.float32)
    dh0 = u.new_empty(lay.n_seqs, lay.E, lay.N, dtype=torch.float32)
    dummy = ckpt
    meta = lay.meta()

    def grid(config):  # the tuner's SPLIT divides the launcher's BE channels per program
        return (triton.cdiv(lay.E, lay.BE // config["SPLIT"]), lay.n_seqs)

    _selective_scan_bwd_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        ckpt, dy, dht if dht is not None else dummy,
        du, ddelta, dz if dz is not None else dummy, dB, dC, dA, dD, dbias, dh0,
        cu_seqlens if cu_seqlens is not None else dummy,
        lay.chunk_offsets if lay.chunk_offsets is not None else dummy,
        *_strides3(u), *_strides3(delta), *_strides3(z), *_strides3(B), *_strides3(C),
        lay.T, lay.NT, G=lay.G,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_DHT=dht is not None, **meta,
    )
    return du, ddelta, dA.sum(0), dB, dC, dD.sum(0), dz, dbias.sum(0), dh0


# ---- autograd -----------------------------------------------------------------------


class ChunkSelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                output_final_state, cu_seqlens, chunk_size):
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else None
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else None
        h0 = initial_state.contiguous() if initial_state is not None else None
        B, C = _bc_contiguous_n(B), _bc_contiguous_n(C)
        y, ht, ckpt, lay = _fwd(u, delta, A32, B, C, D32, z, bias32, delta_softplus, h0,
                                output_final_state, cu_seqlens, chunk_size)
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, ckpt, cu_seqlens)
        ctx.delta_softplus, ctx.lay = delta_softplus, lay
        ctx.dtypes = (A.dtype, None if D is None else D.dtype,
                      None if delta_bias is None else delta_bias.dtype)
        ctx.has_h0 = initial_state is not None
        return y, ht

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy, dht):
        u, delta, A, B, C, D, z, bias, ckpt, cu_seqlens = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _bwd(
            u, delta, A, B, C, D, z, bias, ctx.delta_softplus, ckpt, dy, dht, cu_seqlens,
            ctx.lay)
        A_dt, D_dt, bias_dt = ctx.dtypes
        return (du, ddelta, dA.to(A_dt), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D_dt) if D is not None else None, dz,
                dbias.to(bias_dt) if bias is not None else None, None,
                dh0 if ctx.has_h0 else None, None, None, None)


def chunk_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, initial_state=None, output_final_state=False,
                         cu_seqlens=None, chunk_size=64):
    """The Triton selective scan. Arguments and results as `selective_scan` (no checks).

    chunk_size must be a power of two: the tile of tokens scanned in registers, and the
    spacing of the checkpointed states kept for the backward.
    """
    if is_interpreter() and u.is_cuda:
        raise ValueError("TRITON_INTERPRET=1 runs Triton kernels on CPU tensors only")
    return ChunkSelectiveScanFunction.apply(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        output_final_state, cu_seqlens, chunk_size)
