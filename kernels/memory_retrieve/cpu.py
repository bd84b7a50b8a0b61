"""Interval-masked retrieval without a graph, in blocks of queries: the CPU fast path.

`cpu_memory_retrieve` computes what `ref.memory_retrieve_ref` computes, for inference:
the reference builds the whole [B, H, T, M] logit tensor and about ten passes over it
(NaN guards, masks, logsumexp, exponent), which is what an unbounded bank (store_all at
128K tokens holds thousands of entries) spends its time on. Here the queries go in blocks
of `block` tokens; each block makes its logits with one batched matmul, masks them in
place, takes its softmax in place and multiplies by the values, so the working set stays
a [B, H, block, M] tile. Entries no token of a block can see (made later in the segment,
or closed before it) are left out of that block's products when they are many.

Entries every token of the call sees, in every row (an unbounded bank's entries made before
the segment, the bulk of store_all's at long T), need no mask: when there are at least
`fused_min` of them and the key and value widths agree, they go through PyTorch's fused CPU
attention (`aten._scaled_dot_product_flash_attention_for_cpu`, one pass that never holds
the logits), and its o and logsumexp are combined with the masked blocks' over the other
entries. On the 2-core CPU, 16 rows of 1024 tokens reading 4096 such entries took 0.16 s
against 0.90 s in blocks (one thread, median of 3).

It is taken only where it gives the reference's answer: no gradient is needed (autograd
is off, or no input requires a gradient) and every q, mem_k and mem_v is finite (the
reference's NaN rules select per element; here a non-finite input sends the call to the
reference). Everything is computed in float32; o comes back in q's dtype.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .ref import memory_retrieve_ref

DEFAULT_BLOCK = 256
DEFAULT_FUSED_MIN = 64
_FUSED = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def fast_path_applies(q: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor) -> bool:
    """Whether `cpu_memory_retrieve` gives the reference's answer here: no gradient is
    wanted (it builds no graph) and the inputs are finite (checked on the host: one
    synchronisation)."""
    if torch.is_grad_enabled() and (q.requires_grad or mem_k.requires_grad
                                    or mem_v.requires_grad):
        return False
    return all(bool(torch.isfinite(x).all()) for x in (q, mem_k, mem_v))


def cpu_memory_retrieve(
    q: torch.Tensor,
    mem_k: torch.Tensor,
    mem_v: torch.Tensor,
    mem_start: torch.Tensor,
    mem_end: torch.Tensor,
    scale: Optional[float] = None,
    block: int = DEFAULT_BLOCK,
    fused_min: Optional[int] = DEFAULT_FUSED_MIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`memory_retrieve_ref`'s o and lse, computed in blocks of `block` queries.

    Args and returns as `memory_retrieve_ref`; `block` (a positive int) is the number of
    tokens whose logits are held at once; `fused_min` (a positive int, or None: never) is
    how many entries visible to every token of every row send those entries through the
    fused unmasked attention (the module docstring). Where `fast_path_applies` is False
    the call goes to the reference, so the answer is the same in every case; no input
    checks.

    Example:
        >>> q, k, v = torch.randn(1, 600, 2, 8), torch.randn(1, 40, 2, 8), torch.randn(1, 40, 2, 8)
        >>> start = torch.arange(40)[None] * 15
        >>> end = torch.full_like(start, 600)
        >>> o, lse = cpu_memory_retrieve(q, k, v, start, end, block=128)
        >>> o_ref, lse_ref = memory_retrieve_ref(q, k, v, start, end)
        >>> torch.allclose(o, o_ref, atol=1e-5), bool((lse.isinf() == lse_ref.isinf()).all())
        (True, True)
    """
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block: expected a positive int, got {block!r}")
    if fused_min is not None and (not isinstance(fused_min, int) or isinstance(fused_min, bool)
                                  or fused_min < 1):
        raise ValueError(f"fused_min: expected a positive int or None, got {fused_min!r}")
    if not fast_path_applies(q, mem_k, mem_v):
        return memory_retrieve_ref(q, mem_k, mem_v, mem_start, mem_end, scale)
    B, T, H, Dk = q.shape
    M, Dv = mem_k.shape[1], mem_v.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(Dk)
    o = torch.zeros(B, H, T, Dv, dtype=torch.float32, device=q.device)
    lse = torch.full((B, H, T), float("-inf"), dtype=torch.float32, device=q.device)
    if M == 0 or T == 0:
        return o.transpose(1, 2).to(q.dtype), lse.transpose(1, 2).contiguous()
    with torch.no_grad():
        qh = q.float().transpose(1, 2)  # [B, H, T, Dk]
        kh = mem_k.float().transpose(1, 2)  # [B, H, M, Dk]
        vh = mem_v.float().transpose(1, 2)  # [B, H, M, Dv]
        start, end = mem_start.long(), mem_end.long()
        fused = None
        if (fused_min is not None and _FUSED is not None and Dk == Dv
                and q.device.type == "cpu"):
            every = ((start <= 0) & (end >= T)).all(0)  # [M]: seen by every token and row
            if int(every.sum()) >= fused_min:
                idx = every.nonzero().squeeze(1)
                o_f, lse_f = _FUSED(qh, kh.index_select(2, idx), vh.index_select(2, idx), 0.0,
                                    False, scale=scale)
                fused = (o_f.float(), lse_f.float())
                rest = (~every).nonzero().squeeze(1)
                kh, vh = kh.index_select(2, rest), vh.index_select(2, rest)
                start, end = start.index_select(1, rest), end.index_select(1, rest)
                M = rest.numel()
        for t0 in range(0, T if M else 0, block):
            t1 = min(T, t0 + block)
            # entries some token of [t0, t1) may see, in any row
            cols = ((start < t1) & (end > t0) & (end > start)).any(0)
            if not bool(cols.any()):
                continue
            k_b, v_b, s_b, e_b = kh, vh, start, end
            if int(cols.sum()) * 2 <= M:
                idx = cols.nonzero().squeeze(1)
                k_b, v_b = kh.index_select(2, idx), vh.index_select(2, idx)
                s_b, e_b = start.index_select(1, idx), end.index_select(1, idx)
            t = torch.arange(t0, t1, device=q.device)[None, :, None]
            vis = ((s_b[:, None, :] <= t) & (t < e_b[:, None, :]))[:, None]  # [B, 1, L, m]
            z = torch.matmul(qh[:, :, t0:t1], k_b.transpose(-1, -2)).mul_(scale)
            z.masked_fill_(~vis, float("-inf"))
            m = z.amax(-1, keepdim=True)  # -inf for a token that sees nothing
            seen = torch.isfinite(m)
            m = torch.where(seen, m, 0.0)
            z.sub_(m).exp_()  # masked logits become exactly 0
            total = z.sum(-1, keepdim=True)
            o[:, :, t0:t1] = torch.matmul(z, v_b) / torch.where(seen, total, 1.0)
            lse[:, :, t0:t1] = torch.where(seen, m + total.log(), float("-inf"))[..., 0]
        if fused is not None:  # every token sees the fused entries: lse_f is finite
            o_f, lse_f = fused
            both = torch.logaddexp(lse, lse_f)
            o = o * (lse - both).exp()[..., None] + o_f * (lse_f - both).exp()[..., None]
            lse = both
    return o.transpose(1, 2).to(q.dtype), lse.transpose(1, 2).contiguous()
