"""Chunk compression in pure PyTorch: the dense reference, differentiated by autograd.

Math (per batch b, chunk c, head h, summary p; docs/kernels.md derives it in full):

    z[t]     = scale * q_pool[h, p] . k[t, h]          for the tokens t of chunk c
    score    = logsumexp_t z[t]
    alpha[t] = exp(z[t] - score)                       (a softmax over the chunk's tokens)
    s_k      = sum_t alpha[t] k[t, h],   s_v = sum_t alpha[t] v[t, h]

Chunk c holds the tokens [c C, min((c + 1) C, T)); a partial last chunk pools over its
real tokens only. Everything is computed in float32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def chunk_compress_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    q_pool: torch.Tensor,
    chunk_size: int,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention pooling of each chunk of `chunk_size` tokens into P summaries per head.

    Args:
        k: [B, T, H, Dk] keys.
        v: [B, T, H, Dv] values, k's dtype.
        q_pool: [H, P, Dk] pooling queries.
        chunk_size: C, tokens per chunk.
        scale: logit scale; 1 / sqrt(Dk) when None.

    Returns:
        s_k: [B, NC, H, P, Dk] in k's dtype, NC = ceil(T / C).
        s_v: [B, NC, H, P, Dv] in v's dtype.
        score: [B, NC, H, P] float32, the logsumexp of each summary's pooling logits.

    No input checks (see `memmodel.kernels.chunk_compress.chunk_compress`).

    Example:
        >>> k, v = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
        >>> s_k, s_v, score = chunk_compress_ref(k, v, torch.randn(2, 3, 8), 4)
        >>> s_k.shape, score.shape
        (torch.Size([1, 3, 2, 3, 8]), torch.Size([1, 3, 2, 3]))
    """
    B, T, H, Dk = k.shape
    C = chunk_size
    NC = -(-T // C)
    if scale is None:
        scale = 1.0 / math.sqrt(Dk)
    pad = NC * C - T
    kf = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, pad)).view(B, NC, C, H, Dk)
    vf = torch.nn.functional.pad(v.float(), (0, 0, 0, 0, 0, pad)).view(B, NC, C, H, -1)
    z = torch.einsum("hpd,bnthd->bnhpt", q_pool.float(), kf) * scale  # [B, NC, H, P, C]
    real = (torch.arange(NC * C, device=k.device) < T).view(1, NC, 1, 1, C)
    z = z.masked_fill(~real, float("-inf"))
    score = torch.logsumexp(z, dim=-1)  # [B, NC, H, P]
    alpha = torch.softmax(z, dim=-1)
    s_k = torch.einsum("bnhpt,bnthd->bnhpd", alpha, kf)
    s_v = torch.einsum("bnhpt,bnthd->bnhpd", alpha, vf)
    return s_k.to(k.dtype), s_v.to(v.dtype), score
