"""Triton decode step of the selective scan: one token, the state updated in place.

One program updates a block of BE channels of one batch row: it reads the row's [BE, N]
state (row `state_batch_indices[b]` of the pool for continuous batching), applies
h = exp(dt A) h + dt B u, writes it back and emits y = C . h + D u (gated by silu(z)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk import _optional_vector, _step_size


@triton.jit
def _selective_state_update_fwd_kernel(
    state,  # [S, E, N] float32 pool of states, contiguous; rows updated in place
    u,  # [B, E] input
    delta,  # [B, E] step sizes before bias / softplus
    A,  # [E, N] float32, contiguous
    Bm,  # [B, G, N] input projection, last dim contiguous
    Cm,  # [B, G, N] output projection, last dim contiguous
    D,  # [E] float32, or a dummy
    z,  # [B, E] gate, or a dummy
    delta_bias,  # [E] float32, or a dummy
    idx,  # [B] int row of `state` for each batch row, or a dummy
    y,  # [B, E] output, contiguous
    s_u_b, s_u_e, s_d_b, s_d_e, s_z_b, s_z_e,  # strides of u, delta, z
    s_b_b, s_b_g, s_c_b, s_c_g,  # strides of B and C
    E: tl.constexpr, N: tl.constexpr, GS: tl.constexpr,
    BE: tl.constexpr, BN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_IDX: tl.constexpr,
):
    i_e, i_b = tl.program_id(0), tl.program_id(1)
    i_s = i_b
    if HAS_IDX:
        i_s = tl.load(idx + i_b)
    i_g = (i_e * BE) // GS  # blocks never straddle groups (the launcher picks BE)
    o_e = i_e * BE + tl.arange(0, BE)
    o_n = tl.arange(0, BN)
    m_e = o_e < E
    m_n = o_n < N
    m_en = m_e[:, None] & m_n[None, :]
    o_en = o_e[:, None] * N + o_n[None, :]
    p_h = state + i_s.to(tl.int64) * E * N + o_en

    b_h = tl.load(p_h, mask=m_en, other=0.0)  # [BE, BN]
    b_A = tl.load(A + o_en, mask=m_en, other=0.0)  # [BE, BN]
    b_u = tl.load(u + i_b * s_u_b + o_e * s_u_e, mask=m_e, other=0.0).to(tl.float32)
    b_dl = tl.load(delta + i_b * s_d_b + o_e * s_d_e, mask=m_e, other=0.0).to(tl.float32)
    b_bias = _optional_vector(delta_bias, o_e, m_e, BE, HAS_BIAS)  # [BE]
    b_dt = _step_size(b_dl, b_bias, SOFTPLUS)  # [BE]
    b_B = tl.load(Bm + i_b * s_b_b + i_g * s_b_g + o_n, mask=m_n, other=0.0).to(tl.float32)
    b_C = tl.load(Cm + i_b * s_c_b + i_g * s_c_g + o_n, mask=m_n, other=0.0).to(tl.float32)

    b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_u)[:, None] * b_B[None, :]
    tl.store(p_h, b_h, mask=m_en)
    b_y = tl.sum(b_h * b_C[None, :], axis=1)  # [BE]
    if HAS_D:
        b_y += tl.load(D + o_e, mask=m_e, other=0.0) * b_u
    if HAS_Z:
        b_z = tl.load(z + i_b * s_z_b + o_e * s_z_e, mask=m_e, other=0.0).to(tl.float32)
        b_y = b_y * b_z * tl.sigmoid(b_z)
    tl.store(y + i_b * E + o_e, b_y.to(y.dtype.element_ty), mask=m_e)


def fused_selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, state_batch_indices=None):
    """The Triton decode step. Arguments and result as `selective_state_update` (no checks).

    Not differentiable: it is meant for inference, where the state is updated in place.
    """
    Bsz, E = u.shape
    N, G = A.shape[1], B.shape[1]
    BN = triton.next_power_of_2(N)
    BE = max(1, min(triton.next_power_of_2(E), 4096 // BN, 64))
    if G > 1:
        while (E // G) % BE:
            BE //= 2
    A = A.float().contiguous()
    D = D.float().contiguous() if D is not None else None
    delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
    B = B if B.stride(-1) == 1 else B.contiguous()
    C = C if C.stride(-1) == 1 else C.contiguous()
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    dummy = state
    zs = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    _selective_state_update_fwd_kernel[(triton.cdiv(E, BE), Bsz)](
        state, u, delta, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        state_batch_indices if state_batch_indices is not None else dummy, y,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), *zs,
        B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        E=E, N=N, GS=E // G, BE=BE, BN=BN,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_IDX=state_batch_indices is not None,
        num_warps=4,
    )
    return y
