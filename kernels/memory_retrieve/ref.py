"""Interval-masked retrieval in pure PyTorch: the dense reference, differentiated by autograd.

Math (per batch b, head h, token t; docs/kernels.md derives it in full):

    visible(t, m) = mem_start[b, m] <= t < mem_end[b, m]
    z[t, m] = scale * q[t, h] . mem_k[m, h]            over the visible entries m only
    lse[t]  = logsumexp_m z[t, m]
    o[t]    = sum_m exp(z[t, m] - lse[t]) mem_v[m, h]

A token that sees no entry gets o = 0 and lse = -inf, and passes no gradient. An entry
a token cannot see never enters its output or the gradients through it, whatever its
values (NaN and inf included). Everything is computed in float32; memory is O(B H T M).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def _finite_rows(x: torch.Tensor):
    """x [B, L, H, D] in float32 with inf / NaN replaced by 0, and [B, L, H] True for the
    rows that held one."""
    x = x.float()
    ok = torch.isfinite(x)
    return torch.where(ok, x, 0.0), ~ok.all(-1)


def visibility_mask(mem_start: torch.Tensor, mem_end: torch.Tensor, T: int) -> torch.Tensor:
    """[B, M] intervals -> [B, T, M] bool, True where token t sees entry m."""
    t = torch.arange(T, device=mem_start.device)[None, :, None]
    return (mem_start[:, None, :] <= t) & (t < mem_end[:, None, :])


def memory_retrieve_ref(
    q: torch.Tensor,
    mem_k: torch.Tensor,
    mem_v: torch.Tensor,
    mem_start: torch.Tensor,
    mem_end: torch.Tensor,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked softmax attention of each token over the entries visible to it.

    Args:
        q: [B, T, H, Dk] queries.
        mem_k: [B, M, H, Dk] entry keys (M may be 0).
        mem_v: [B, M, H, Dv] entry values.
        mem_start, mem_end: [B, M] int; entry m is visible to the tokens
            mem_start[b, m] <= t < mem_end[b, m] (empty when end <= start).
        scale: logit scale; 1 / sqrt(Dk) when None.

    Returns:
        o: [B, T, H, Dv] in q's dtype; 0 for a token that sees no entry.
        lse: [B, T, H] float32 logsumexp of the visible logits; -inf for such a token.

    No input checks (see `memmodel.kernels.memory_retrieve.memory_retrieve`).

    Example:
        >>> q, k, v = torch.randn(1, 6, 2, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8)
        >>> start, end = torch.tensor([[0, 2, 4]]), torch.tensor([[3, 6, 4]])
        >>> o, lse = memory_retrieve_ref(q, k, v, start, end)
        >>> o.shape, lse.shape
        (torch.Size([1, 6, 2, 8]), torch.Size([1, 6, 2]))
    """
    T, Dk = q.shape[1], q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(Dk)
    vis = visibility_mask(mem_start, mem_end, T)[:, None]  # [B, 1, T, M]
    seen = vis.any(-1)  # [B, 1, T]
    # The products run on copies with inf / NaN zeroed, which are put back as NaN by
    # selection where a token sees them: a masked-out pair then adds 0 to every sum, in
    # the forward and in autograd's backward, where 0 * NaN would add NaN.
    (qf, q_bad), (kf, k_bad), (vf, v_bad) = (_finite_rows(x) for x in (q, mem_k, mem_v))
    z = torch.einsum("bthd,bmhd->bhtm", qf, kf) * scale  # [B, H, T, M]
    z = torch.where(q_bad.transpose(1, 2)[..., None] | k_bad.transpose(1, 2)[:, :, None],
                    float("nan"), z)
    z = z.masked_fill(~vis, float("-inf"))
    # rows that see nothing get finite dummy logits, so no NaN reaches the backward
    z = torch.where(seen[..., None], z, torch.zeros_like(z))
    lse = torch.logsumexp(z, dim=-1)  # [B, H, T]
    p = torch.exp(z - lse[..., None]).masked_fill(~vis, 0.0)
    # a visible entry (p > 0) whose value is not finite makes the token's output NaN
    v_nan = torch.where(v_bad, float("nan"), 0.0).transpose(1, 2)[:, :, None]  # [B, H, 1, M]
    p = torch.where(p == 0, 0.0, p + v_nan)
    o = torch.einsum("bhtm,bmhd->bthd", p, vf)
    lse = torch.where(seen, lse, torch.full_like(lse, float("-inf")))
    return o.to(q.dtype), lse.transpose(1, 2).contiguous()
