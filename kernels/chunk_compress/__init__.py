"""Chunk compression: learned attention pooling of each chunk of C tokens into P summaries.

    alpha[t] = softmax over the chunk's tokens t of (scale * q_pool[h, p] . k[t, h])
    s_k[c, h, p] = sum_t alpha[t] k[t, h],  s_v[c, h, p] = sum_t alpha[t] v[t, h]
    score[c, h, p] = logsumexp_t (scale * q_pool[h, p] . k[t, h])

`chunk_compress` checks its inputs once and dispatches to a backend (see
`memmodel.kernels.utils.resolve_backend`): the Triton kernels in `parallel.py` or the
PyTorch reference in `ref.py`.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import (
    FLOAT_DTYPES,
    check_positive_int,
    check_same_dtype,
    check_scale,
    check_tensor,
    resolve_backend,
)
from .parallel import MAX_HEAD_DIM, MAX_SUMMARIES, parallel_chunk_compress
from .ref import chunk_compress_ref

__all__ = ["chunk_compress", "chunk_compress_ref", "parallel_chunk_compress"]

Q_POOL_DTYPES = FLOAT_DTYPES + (torch.float64,)  # a float64 q_pool is used in float32


def chunk_compress(
    k: torch.Tensor,
    v: torch.Tensor,
    q_pool: torch.Tensor,
    chunk_size: int,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compress each chunk of `chunk_size` tokens into P summaries per head.

    Chunk c holds the tokens [c C, min((c + 1) C, T)): a partial last chunk pools over
    its real tokens only. Differentiable in k, v and q_pool (and through score).

    Args:
        k: [B, T, H, Dk] keys, float32 / float16 / bfloat16; any strides.
        v: [B, T, H, Dv] values, k's dtype; Dv may differ from Dk.
        q_pool: [H, P, Dk] pooling queries, any float dtype: float32 / float16 /
            bfloat16 / float64 (a float32 parameter next to bfloat16 activations is fine;
            float64 is used in float32, as everything here computes in float32, and its
            gradient comes back in float64).
        chunk_size: C, tokens per chunk, a positive int (not a bool).
        scale: logit scale, a positive number; 1 / sqrt(Dk) when None.
        backend: "auto", "triton" or "torch" (see `resolve_backend`).

    Returns:
        s_k: [B, NC, H, P, Dk] pooled keys in k's dtype, NC = ceil(T / C).
        s_v: [B, NC, H, P, Dv] pooled values in v's dtype.
        score: [B, NC, H, P] float32, the logsumexp of each summary's pooling logits
            (a summary's log "attention mass", useful to rank summaries).

    Example:
        >>> k, v = torch.randn(2, 1000, 4, 32), torch.randn(2, 1000, 4, 32)
        >>> s_k, s_v, score = chunk_compress(k, v, torch.randn(4, 2, 32), chunk_size=256)
        >>> s_k.shape, score.shape
        (torch.Size([2, 4, 4, 2, 32]), torch.Size([2, 4, 4, 2]))
    """
    dims: dict = {}
    check_tensor("k", k, ("B", "T", "H", "Dk"), dims)
    dev = k.device
    check_tensor("v", v, ("B", "T", "H", "Dv"), dims, device=dev)
    check_tensor("q_pool", q_pool, ("H", "P", "Dk"), dims, dtypes=Q_POOL_DTYPES, device=dev)
    check_same_dtype(("k", "v"), (k, v))
    chunk_size = check_positive_int("chunk_size", chunk_size)
    check_scale(scale)
    if q_pool.dtype == torch.float64:
        q_pool = q_pool.float()  # the kernels compute in float32; autograd casts dq back

    impl = resolve_backend(backend, dev)
    if impl == "triton":
        if max(dims["Dk"], dims["Dv"]) > MAX_HEAD_DIM:
            raise NotImplementedError(
                f"k, v: the Triton kernels take head widths up to {MAX_HEAD_DIM}, got "
                f"Dk={dims['Dk']}, Dv={dims['Dv']}; use backend='torch'"
            )
        if dims["P"] > MAX_SUMMARIES:
            raise NotImplementedError(
                f"q_pool: the Triton kernels take up to {MAX_SUMMARIES} summaries per chunk, "
                f"got P={dims['P']}; use backend='torch'"
            )
        return parallel_chunk_compress(k, v, q_pool, chunk_size, scale)
    return chunk_compress_ref(k, v, q_pool, chunk_size, scale)
