"""Selective scan in pure PyTorch: the per-token oracle and the chunked CPU fast path.

Math (per batch b, channel e, state n; docs/kernels.md derives it in full):

    dt_t = softplus(delta_t + delta_bias)    (or delta_t + delta_bias without softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = C_t . h_t + D * u_t ;   y_t *= silu(z_t) when z is given

`selective_scan_ref` is the oracle: a plain loop over tokens, differentiated by autograd.
`selective_scan_chunked` computes the same thing without a graph per token: the core
recurrence is one autograd Function that walks chunks of `chunk_size` tokens, keeps only
the state at each chunk boundary, and in the backward recomputes each chunk's states
from its boundary before a reverse scan. Each chunk's steps run through one
`torch.compile`d function where a C++ compiler is present, eagerly otherwise.
Everything upcasts to float32; outputs come back in u's dtype, states in float32.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..utils import log_compile_fallback_once, maybe_compiled


def _prepare_dt(delta, delta_bias, delta_softplus):
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()
    if delta_softplus:
        dt = F.softplus(dt)
    return dt


def _finish_output(y, u, D, z):
    """y = y_ssm + D * u, then gated by silu(z); all [B, T, E] float32."""
    if D is not None:
        y = y + u.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y


def _expand_groups(X: torch.Tensor, E: int) -> torch.Tensor:
    """[..., G, N] -> [..., E, N]: channel e reads group e // (E // G)."""
    G = X.shape[-2]
    return X.repeat_interleave(E // G, dim=-2)


def _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    """One sequence batch [B, T, ...], per-token loop. Returns (y float32, h_T)."""
    Bsz, _, E = u.shape
    dt = _prepare_dt(delta, delta_bias, delta_softplus)
    uf, Af = u.float(), A.float()
    Bx, Cx = _expand_groups(B.float(), E), _expand_groups(C.float(), E)
    h = u.new_zeros(Bsz, E, A.shape[1], dtype=torch.float32) if h0 is None else h0.float()
    # unbind once: indexing x[:, t] in the loop would make autograd build a full-size
    # zero gradient per token, O(T^2) work in the backward.
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(1), uf.unbind(1), Bx.unbind(1), Cx.unbind(1)):
        h = torch.exp(dt_t[..., None] * Af) * h + (dt_t * u_t)[..., None] * B_t  # [B, E, N]
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=1)
    return _finish_output(y, u, D, z), h


def _split_varlen(cu_seqlens):
    offsets = cu_seqlens.tolist()
    return list(zip(offsets[:-1], offsets[1:]))


def _run_varlen(scan_fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                cu_seqlens):
    """Run `scan_fn` on each packed sequence alone; return (y, stacked final states)."""
    ys, hs = [], []
    for i, (s, e) in enumerate(_split_varlen(cu_seqlens)):
        sl = slice(s, e)
        h0 = None if initial_state is None else initial_state[i : i + 1]
        y_i, h_i = scan_fn(
            u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl], D,
            None if z is None else z[:, sl], delta_bias, delta_softplus, h0,
        )
        ys.append(y_i)
        hs.append(h_i)
    return torch.cat(ys, dim=1), torch.cat(hs, dim=0)


def selective_scan_ref(
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
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The oracle: a per-token loop in float32, differentiated by autograd.

    Args and Returns: as `memmodel.kernels.selective_scan.selective_scan`
    (u, delta, z: [B, T, E]; A: [E, N]; B, C: [B, T, G, N]; D, delta_bias: [E];
    initial_state: [B or num_seqs, E, N]; returns y [B, T, E] in u's dtype and the
    final state [B or num_seqs, E, N] float32 or None). No input checks.
    """
    if cu_seqlens is None:
        y, h = _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    else:
        y, h = _run_varlen(_scan_loop, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           initial_state, cu_seqlens)
    return y.to(u.dtype), (h if output_final_state else None)


@maybe_compiled
def _chunk_fwd(h, u, dt, A, Bx, Cx):
    """One chunk forward. h: [B, E, N]; u, dt: [B, L, E]; A: [E, N]; Bx, Cx: [B, L, G, N].

    Returns y_ssm [B, L, E] (C . h only) and the state after the chunk.
    """
    E = u.shape[-1]
    dA = torch.exp(dt[..., None] * A)  # [B, L, E, N]
    dBu = (dt * u)[..., None] * _expand_groups(Bx, E)  # [B, L, E, N]
    Cx = _expand_groups(Cx, E)
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
    Bx_e, Cx_e = _expand_groups(Bx, E), _expand_groups(Cx, E)
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


def _pad_time(x, Tp):
    T = x.shape[1]
    if T == Tp:
        return x
    pad = x.new_zeros((x.shape[0], Tp - T) + tuple(x.shape[2:]))
    return torch.cat([x, pad], dim=1)


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
        u_p, dt_p, B_p, C_p = (_pad_time(x, Tp) for x in (u, dt, Bx, Cx))
        h = h0
        boundaries = u.new_empty(n_chunks, Bsz, E, A.shape[1])
        y = u.new_empty(Bsz, Tp, E)
        for c in range(n_chunks):
            sl = slice(c * L, (c + 1) * L)
            boundaries[c] = h
            y[:, sl], h = _chunk_fwd(h, u_p[:, sl], dt_p[:, sl], A, B_p[:, sl], C_p[:, sl])
        ctx.save_for_backward(u_p, dt_p, A, B_p, C_p, boundaries)
        ctx.T, ctx.L = T, L
        return y[:, :T], h

    @staticmethod
    def backward(ctx, gy, gh):
        u_p, dt_p, A, B_p, C_p, boundaries = ctx.saved_tensors
        T, L = ctx.T, ctx.L
        Tp = u_p.shape[1]
        gy = _pad_time(gy.float(), Tp) if gy is not None else torch.zeros_like(u_p)
        g = gh.float() if gh is not None else torch.zeros_like(boundaries[0])
        du, ddt = torch.empty_like(u_p), torch.empty_like(dt_p)
        dB, dC = torch.empty_like(B_p), torch.empty_like(C_p)
        dA = torch.zeros_like(A)
        for c in range(boundaries.shape[0] - 1, -1, -1):
            sl = slice(c * L, (c + 1) * L)
            du[:, sl], ddt[:, sl], dA_c, dB[:, sl], dC[:, sl], g = _chunk_bwd(
                boundaries[c], u_p[:, sl], dt_p[:, sl], A, B_p[:, sl], C_p[:, sl], gy[:, sl], g
            )
            dA += dA_c
        return du[:, :T], ddt[:, :T], dA, dB[:, :T], dC[:, :T], g, None


def _scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, chunk_size):
    Bsz, T, E = u.shape
    dt = _prepare_dt(delta, delta_bias, delta_softplus)
    if h0 is None:
        h0 = u.new_zeros(Bsz, E, A.shape[1], dtype=torch.float32)
    y, h = _ChunkedScanFn.apply(u.float(), dt, A.float(), B.float(), C.float(), h0.float(),
                                chunk_size)
    return _finish_output(y, u, D, z), h


def selective_scan_chunked(
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
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
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
        y, h = _run_varlen(run, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           initial_state, cu_seqlens)
    return y.to(u.dtype), (h if output_final_state else None)


def selective_state_update_ref(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    state_batch_indices: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One decode step; `state` is updated in place.

    Args:
        state: [S, E, N] float32, S >= batch (a pool of states for continuous batching).
        u, delta, z: [B, E]; A: [E, N]; B, C: [B, G, N]; D, delta_bias: [E].
        state_batch_indices: [B] int, the row of `state` that batch row b uses; the
            identity (S == B) when None.
    Returns:
        y: [B, E] in u's dtype.
    """
    E = u.shape[-1]
    idx = (torch.arange(u.shape[0], device=u.device) if state_batch_indices is None
           else state_batch_indices.long())
    dt = _prepare_dt(delta, delta_bias, delta_softplus)  # [B, E]
    h = state[idx].float()
    h = torch.exp(dt[..., None] * A.float()) * h + (dt * u.float())[..., None] * _expand_groups(
        B.float(), E)
    state[idx] = h.to(state.dtype)
    y = (h * _expand_groups(C.float(), E)).sum(-1)
    return _finish_output(y, u, D, z).to(u.dtype)
