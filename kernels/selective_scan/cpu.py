"""Selective scan in PyTorch, chunked: the CPU fast path (the "torch" backend).

`cpu_selective_scan` computes what `ref.selective_scan_ref` computes without a graph
per token: the core recurrence is one autograd Function that walks chunks of
`chunk_size` tokens, keeps only the state at each chunk boundary, and in the backward
recomputes each chunk's states from its boundary before a reverse scan. Each chunk's
steps run through one `torch.compile`d function where a C++ compiler is present, eagerly
otherwise. Everything upcasts to float32; outputs come back in u's dtype, states in
float32.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import (
    from_chunks,
    log_compile_fallback_once,
    maybe_compiled,
    pad_time,
    to_chunks,
)
from .ref import expand_groups, finish_output, prepare_dt, run_varlen


@maybe_compiled
def _chunk_fwd(h, u, dt, A, Bx, Cx):
    """One chunk forward. h: [B, E, N]; u, dt: [B, L, E]; A: [E, N]; Bx, Cx: [B, L, G, N].

    Returns y_ssm [B, L, E] (C . h only) and the state after the chunk.
    """
    E = u.shape[-1]
    dA = torch.exp(dt[..., None] * A)  # [B, L, E, N]
    dBu = (dt * u)[..., None] * expand_groups(Bx, E)  # [B, L, E, N]
    Cx = expand_groups(Cx, E)
    ys = []
    for t in range(u.shape[1]):
        h = dA[:, t] * h + dBu[:, t]
        ys.append((h * Cx[:, t]).sum(-1))
    return torch.stack(ys, dim=1), h


@maybe_compiled
def _chunk_bwd(h0, u, dt, A, Bx, Cx, gy, gh):
    """One chunk backward, recomputing the chunk's states from its boundary state h0.

    gy: [B, L, E] gradient of y_ssm; gh: [B, E, N] gradient of the state after the chunk.
    Returns gradients (du, ddt [B, L, E]; dA [E, N] summed over the chunk; dB, dC
    [B, L, G, N]; dh0 [B, E, N]).
    """
    Bsz, L, E = u.shape
    G, N = Bx.shape[-2], Bx.shape[-1]
    dA = torch.exp(dt[..., None] * A)  # [B, L, E, N]
    Bx_e, Cx_e = expand_groups(Bx, E), expand_groups(Cx, E)
    dBu = (dt * u)[..., None] * Bx_e
    states = []  # h_0 .. h_{L-1}: the state before each step
    h = h0
    for t in range(L):
        states.append(h)
        h = dA[:, t] * h + dBu[:, t]
    h_prev = torch.stack(states, dim=1)  # [B, L, E, N]
    h_post = torch.cat([h_prev[:, 1:], h[:, None]], dim=1)  # state after each step
    # reverse scan: grad of h_t = C_t gy_t + exp(dt_{t+1} A) * grad of h_{t+1}
    gCy = Cx_e * gy[..., None]
    grads = [None] * L
    g = gh
    for t in range(L - 1, -1, -1):
        g = g + gCy[:, t]
        grads[t] = g
        g = g * dA[:, t]
    gH = torch.stack(grads, dim=1)  # [B, L, E, N]
    g_dA = gH * h_prev * dA  # d/d(dt*A) of exp(dt*A)
    gHB = (gH * Bx_e).sum(-1)  # [B, L, E]
    ddt = (g_dA * A).sum(-1) + gHB * u
    du = gHB * dt
    dA_param = (g_dA * dt[..., None]).sum((0, 1))
    dB = (gH * (dt * u)[..., None]).view(Bsz, L, G, E // G, N).sum(3)
    dC = (h_post * gy[..., None]).view(Bsz, L, G, E // G, N).sum(3)
    return du, ddt, dA_param, dB, dC, g


class _ChunkedScanFn(torch.autograd.Function):
    """The core recurrence y_ssm = C . h, h_t = exp(dt A) h_{t-1} + dt B u, on float32 inputs.

    Padding to a whole number of chunks uses dt = 0, u = 0, B = C = 0: the state passes
    through unchanged and the padded outputs are zero, so every chunk has one shape and
    compiles once.
    """

    @staticmethod
    def forward(ctx, u, dt, A, Bx, Cx, h0, chunk_size):
        Bsz, T, E = u.shape
        L = chunk_size
        n_chunks = -(-T // L)
        Tp = n_chunks * L
        u_c, dt_c, B_c, C_c = (to_chunks(pad_time(x, Tp), L) for x in (u, dt, Bx, Cx))
        h = h0.contiguous()
        boundaries = u.new_empty(n_chunks, Bsz, E, A.shape[1])
        y = u.new_empty(n_chunks, Bsz, L, E)
        for c in range(n_chunks):
            boundaries[c] = h
            y[c], h = _chunk_fwd(h, u_c[c], dt_c[c], A, B_c[c], C_c[c])
        ctx.save_for_backward(u_c, dt_c, A, B_c, C_c, boundaries)
        ctx.T, ctx.L = T, L
        return from_chunks(y, T), h

    @staticmethod
    def backward(ctx, gy, gh):
        u_c, dt_c, A, B_c, C_c, boundaries = ctx.saved_tensors
        T, L = ctx.T, ctx.L
        n_chunks = u_c.shape[0]
        gy = (to_chunks(pad_time(gy.float(), n_chunks * L), L) if gy is not None
              else torch.zeros_like(u_c))
        g = gh.float().contiguous() if gh is not None else torch.zeros_like(boundaries[0])
        du, ddt = torch.empty_like(u_c), torch.empty_like(dt_c)
        dB, dC = torch.empty_like(B_c), torch.empty_like(C_c)
        dA = torch.zeros_like(A)
        for c in range(n_chunks - 1, -1, -1):
            du[c], ddt[c], dA_c, dB[c], dC[c], g = _chunk_bwd(
                boundaries[c], u_c[c], dt_c[c], A, B_c[c], C_c[c], gy[c], g
            )
            dA += dA_c
        return (from_chunks(du, T), from_chunks(ddt, T), dA, from_chunks(dB, T),
                from_chunks(dC, T), g, None)


def _scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, chunk_size):
    Bsz, T, E = u.shape
    dt = prepare_dt(delta, delta_bias, delta_softplus)
    if h0 is None:
        h0 = u.new_zeros(Bsz, E, A.shape[1], dtype=torch.float32)
    y, h = _ChunkedScanFn.apply(u.float(), dt, A.float(), B.float(), C.float(), h0.float(),
                                chunk_size)
    return finish_output(y, u, D, z), h


def cpu_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The CPU fast path: same arguments and results as `selective_scan_ref`.

    Memory: the forward keeps one [B, E, N] float32 state per chunk; the backward holds one
    chunk's [B, chunk_size, E, N] states at a time. No [B, T, E, N] tensor is made.
    """
    log_compile_fallback_once()

    def run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
        return _scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0,
                             chunk_size)

    if cu_seqlens is None:
        y, h = run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    else:
        y, h = run_varlen(run, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           initial_state, cu_seqlens)
    return y.to(u.dtype), (h if output_final_state else None)

