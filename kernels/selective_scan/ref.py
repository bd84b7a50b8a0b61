"""Selective scan in pure PyTorch: the per-token oracle, the ground truth of every other
path, and the reference decode step.

Math (per batch b, channel e, state n; docs/kernels.md derives it in full):

    dt_t = softplus(delta_t + delta_bias)    (or delta_t + delta_bias without softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = C_t . h_t + D * u_t ;   y_t *= silu(z_t) when z is given

`selective_scan_ref` is a plain loop over tokens, differentiated by autograd;
`selective_state_update_ref` is one step of it on a pool of states. The chunked CPU fast
path (`cpu.py`) shares the step sizes, the output and the group expansion with them
(`prepare_dt`, `finish_output`, `expand_groups`) and the per-sequence driver
(`run_varlen`). Everything upcasts to float32; outputs come back in u's dtype, states in
float32.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def prepare_dt(delta, delta_bias, delta_softplus):
    """Step sizes dt = delta + delta_bias, through softplus if asked; float32."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()
    if delta_softplus:
        dt = F.softplus(dt)
    return dt


def finish_output(y, u, D, z):
    """y = y_ssm + D * u, then gated by silu(z); all [B, T, E] float32."""
    if D is not None:
        y = y + u.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y


def expand_groups(X: torch.Tensor, E: int) -> torch.Tensor:
    """[..., G, N] -> [..., E, N]: channel e reads group e // (E // G)."""
    G = X.shape[-2]
    return X.repeat_interleave(E // G, dim=-2)


def _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    """One sequence batch [B, T, ...], per-token loop. Returns (y float32, h_T)."""
    Bsz, _, E = u.shape
    dt = prepare_dt(delta, delta_bias, delta_softplus)
    uf, Af = u.float(), A.float()
    Bx, Cx = expand_groups(B.float(), E), expand_groups(C.float(), E)
    h = u.new_zeros(Bsz, E, A.shape[1], dtype=torch.float32) if h0 is None else h0.float()
    # unbind once: indexing x[:, t] in the loop would make autograd build a full-size
    # zero gradient per token, O(T^2) work in the backward.
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(1), uf.unbind(1), Bx.unbind(1), Cx.unbind(1)):
        h = torch.exp(dt_t[..., None] * Af) * h + (dt_t * u_t)[..., None] * B_t  # [B, E, N]
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=1)
    return finish_output(y, u, D, z), h


def _split_varlen(cu_seqlens):
    offsets = cu_seqlens.tolist()
    return list(zip(offsets[:-1], offsets[1:]))


def run_varlen(scan_fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
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
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The oracle: a per-token loop in float32, differentiated by autograd.

    Args and Returns: as `memmodel.kernels.selective_scan.selective_scan`
    (u, delta, z: [B, T, E]; A: [E, N]; B, C: [B, T, G, N]; D, delta_bias: [E];
    initial_state: [B or num_seqs, E, N]; returns y [B, T, E] in u's dtype and the
    final state [B or num_seqs, E, N] float32 or None). No input checks.
    """
    if cu_seqlens is None:
        y, h = _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    else:
        y, h = run_varlen(_scan_loop, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
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
    dt = prepare_dt(delta, delta_bias, delta_softplus)  # [B, E]
    h = state[idx].float()
    h = torch.exp(dt[..., None] * A.float()) * h + (dt * u.float())[..., None] * expand_groups(
        B.float(), E)
    state[idx] = h.to(state.dtype)
    y = (h * expand_groups(C.float(), E)).sum(-1)
    return finish_output(y, u, D, z).to(u.dtype)
