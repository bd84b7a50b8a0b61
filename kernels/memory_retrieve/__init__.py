"""Interval-masked retrieval from the long-term memory bank.

Each token t attends to the bank entries m that are live at t,
`mem_start[b, m] <= t < mem_end[b, m]`:

    o[t] = softmax over the live m of (scale * q[t] . mem_k[m]) @ mem_v[m]
    lse[t] = logsumexp over the live m of (scale * q[t] . mem_k[m])

`memory_retrieve` checks its inputs once and dispatches to a backend (see
`memmodel.kernels.utils.resolve_backend`): the Triton kernels in `parallel.py`, or on the
"torch" backend the PyTorch reference in `ref.py`, which autograd differentiates, and
for inference (no gradient wanted, finite inputs) its blocked form in `cpu.py`.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import INT_DTYPES, check_same_dtype, check_scale, check_tensor, resolve_backend
from .cpu import cpu_memory_retrieve
from .parallel import MAX_HEAD_DIM, live_blocks, parallel_memory_retrieve
from .ref import memory_retrieve_ref, visibility_mask

__all__ = [
    "memory_retrieve",
    "memory_retrieve_ref",
    "cpu_memory_retrieve",
    "parallel_memory_retrieve",
    "live_blocks",
    "visibility_mask",
]


def _check_bank_tensor(name, t, shape, dims, **kwargs):
    """`check_tensor` for a bank tensor, whose dimension 1 (M, the entry count) may be 0."""
    if isinstance(t, torch.Tensor) and t.dim() == len(shape) and t.shape[1] == 0:
        if dims.setdefault("M", 0) != 0:
            raise ValueError(
                f"{name}: expected shape with M={dims['M']} in dimension 1, got "
                f"{list(t.shape)}"
            )
        # check every other dimension, dtype and device on a one-entry stand-in
        stand_in = t.new_empty(t.shape[:1] + (1,) + t.shape[2:])
        check_tensor(name, stand_in, shape[:1] + (1,) + tuple(shape[2:]), dims, **kwargs)
        return t
    return check_tensor(name, t, shape, dims, **kwargs)


def memory_retrieve(
    q: torch.Tensor,
    mem_k: torch.Tensor,
    mem_v: torch.Tensor,
    mem_start: torch.Tensor,
    mem_end: torch.Tensor,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend from every token to the memory entries live at its position.

    Entry m of batch row b is visible to the tokens t (0-based positions in this call)
    with `mem_start[b, m] <= t < mem_end[b, m]`. Any integer values are accepted: an
    interval with end <= start is empty (the entry is visible to no token), and bounds
    below 0 or past T are simply clipped by the rule, so entries carried in from earlier
    segments can keep negative starts. Values are not checked against each other, which
    would cost a device synchronisation.

    A token that sees no entry gets o = 0 and lse = -inf; its gradients are zero (finite).
    Differentiable in q, mem_k and mem_v, through o and through lse.

    Non-finite values stay where the mask puts them: an entry a token cannot see never
    enters that token's o, lse or q gradient, and a token an entry is not visible to never
    enters that entry's gradients (given finite gradients of o and lse), even when the
    entry's key or value (or the token's query) holds NaN or inf. A token that sees such
    an entry gets NaN (in its whole row).

    The Triton path is fastest when entries with nearby intervals sit next to each other
    (for instance ordered by start, as a FIFO bank naturally is): it skips whole blocks
    of entries that no token of a block of queries can see. Any order is correct.

    Args:
        q: [B, T, H, Dk] queries, float32 / float16 / bfloat16; any strides.
        mem_k: [B, M, H, Dk] entry keys, q's dtype; M may be 0 (an empty bank).
        mem_v: [B, M, H, Dv] entry values, q's dtype; Dv may differ from Dk.
        mem_start: [B, M] int32 / int64, the first token that sees each entry.
        mem_end: [B, M] int32 / int64, one past the last token that sees it.
        scale: logit scale, a positive number; 1 / sqrt(Dk) when None.
        backend: "auto", "triton" or "torch" (see `resolve_backend`).

    Returns:
        o: [B, T, H, Dv] in q's dtype.
        lse: [B, T, H] float32 logsumexp of each token's visible logits (-inf: none).

    Example:
        >>> q = torch.randn(1, 512, 4, 32)
        >>> mem_k, mem_v = torch.randn(1, 8, 4, 32), torch.randn(1, 8, 4, 32)
        >>> start = torch.arange(1, 9, dtype=torch.int32)[None] * 64   # entry m made at 64(m+1)
        >>> end = start + 256                                          # and evicted 256 later
        >>> o, lse = memory_retrieve(q, mem_k, mem_v, start, end)
        >>> o.shape, bool(lse[0, :64].isinf().all())                   # nothing live yet
        (torch.Size([1, 512, 4, 32]), True)
    """
    dims: dict = {}
    check_tensor("q", q, ("B", "T", "H", "Dk"), dims)
    dev = q.device
    _check_bank_tensor("mem_k", mem_k, ("B", "M", "H", "Dk"), dims, device=dev)
    _check_bank_tensor("mem_v", mem_v, ("B", "M", "H", "Dv"), dims, device=dev)
    _check_bank_tensor("mem_start", mem_start, ("B", "M"), dims, dtypes=INT_DTYPES,
                       device=dev)
    _check_bank_tensor("mem_end", mem_end, ("B", "M"), dims, dtypes=INT_DTYPES, device=dev)
    check_same_dtype(("q", "mem_k", "mem_v"), (q, mem_k, mem_v))
    check_scale(scale)

    impl = resolve_backend(backend, dev)
    if impl == "triton":
        if max(dims["Dk"], dims["Dv"]) > MAX_HEAD_DIM:
            raise NotImplementedError(
                f"q, mem_v: the Triton kernels take head widths up to {MAX_HEAD_DIM}, got "
                f"Dk={dims['Dk']}, Dv={dims['Dv']}; use backend='torch'"
            )
        return parallel_memory_retrieve(q, mem_k, mem_v, mem_start, mem_end, scale)
    # the blocked path goes to the reference itself where a gradient is wanted
    return cpu_memory_retrieve(q, mem_k, mem_v, mem_start, mem_end, scale)
