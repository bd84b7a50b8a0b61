"""Interval-masked retrieval in pure PyTorch: the dense reference, differentiated by autograd.

Math (per batch b, head h, token t; docs/kernels.md derives it in full):

    visible(t, m) = mem_start[b, m] <= t < mem_end[b, m]
    z[t, m] = scale * q[t, h] . mem_k[m, h]            over the visible entries m only
    lse[t]  = logsumexp_m z[t, m]
    o[t]    = sum_m exp(z[t, m] - lse[t]) mem_v[m, h]

A token that sees no entry gets o = 0 and lse = -inf, and passes no gradient.
Everything is computed in float32; memory is O(B H T M).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


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
) -> Tuple[torch.Tensor, torch.Tensor]:
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
    z = torch.einsum("bthd,bmhd->bhtm", q.float(), mem_k.float()) * scale  # [B, H, T, M]
    z = z.masked_fill(~vis, float("-inf"))
    # rows that see nothing get finite dummy logits, so no NaN reaches the backward
    z = torch.where(seen[..., None], z, torch.zeros_like(z))
    lse = torch.logsumexp(z, dim=-1)  # [B, H, T]
    p = torch.exp(z - lse[..., None]).masked_fill(~vis, 0.0)
    o = torch.einsum("bhtm,bmhd->bthd", p, mem_v.float())
    lse = torch.where(seen, lse, torch.full_like(lse, float("-inf")))
    return o.to(q.dtype), lse.transpose(1, 2).contiguous()
