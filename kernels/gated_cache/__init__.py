"""Gated cache write: the working memory's slot cache, written through a gate, read by content.

    Mk_t[s] = (1 - w_t[s]) * Mk_{t-1}[s] + w_t[s] * k_t          slot keys   [S, Dk]
    Mv_t[s] = (1 - w_t[s]) * Mv_{t-1}[s] + w_t[s] * v_t          slot values [S, Dv]
    r_t = softmax_s(scale * Mk_t q_t) @ Mv_t                      read after the write

`gated_cache_write` checks its inputs once and dispatches to a backend (see
`memmodel.kernels.utils.resolve_backend`):
  "torch"   the chunked PyTorch path (`cpu_gated_cache_write`, torch.compile'd chunks);
  "triton"  `fused_recurrent_gated_cache_write` when every sequence fits in one chunk
            (T <= chunk_size, decoding included), `chunk_gated_cache_write` otherwise.
`gated_cache_step` is one decode step that returns the new slots (like fla's recurrent
states; the slots passed in are not modified).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import (
    FLOAT_DTYPES,
    check_cu_seqlens,
    check_positive_int,
    check_same_dtype,
    check_scale,
    check_tensor,
    resolve_backend,
)
from .chunk import chunk_gated_cache_write
from .cpu import cpu_gated_cache_write, default_chunk_size
from .fused_recurrent import fused_recurrent_gated_cache_write
from .ref import gated_cache_write_ref

__all__ = [
    "gated_cache_write",
    "gated_cache_step",
    "gated_cache_write_ref",
    "cpu_gated_cache_write",
    "fused_recurrent_gated_cache_write",
    "chunk_gated_cache_write",
]

State = tuple[torch.Tensor, torch.Tensor]
TRITON_CHUNK = 64  # tokens per chunk of the Triton backend by default
TRITON_MAX_WIDTH = 128  # S, Dk and Dv: the Triton kernels hold [S, D] slot tiles in registers


def _check_state(name, state, n, dims, device):
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name}: expected a pair (Mk, Mv) of tensors, got {type(state).__name__}"
                        + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    check_tensor(f"{name}[0] (Mk)", state[0], (n, "H", "S", "DK"), dims,
                 dtypes=(torch.float32,), device=device)
    check_tensor(f"{name}[1] (Mv)", state[1], (n, "H", "S", "DV"), dims,
                 dtypes=(torch.float32,), device=device)


def _check_w_range(w):
    w = w.detach()
    ok = (w >= 0) & (w <= 1)  # False for NaN
    if not bool(ok.all()):
        n_nan = int(torch.isnan(w).sum())
        finite = w[~torch.isnan(w)]
        lo = float(finite.min()) if finite.numel() else float("nan")
        hi = float(finite.max()) if finite.numel() else float("nan")
        raise ValueError(
            f"w: expected write weights in [0, 1], got min {lo:.4g}, max {hi:.4g} and {n_nan} "
            f"NaN ({int((~ok).sum())} values out of range; validate=False skips this check)")


def gated_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[State] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    validate: bool = True,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
) -> tuple[torch.Tensor, Optional[State]]:
    """Write every token into a gated slot cache and read it back, differentiable in every
    tensor input (the initial slots included).

    Args:
        q: [B, T, H, Dk] queries, float32 / float16 / bfloat16.
        k: [B, T, H, Dk] keys, q's dtype.
        v: [B, T, H, Dv] values, q's dtype.
        w: [B, T, H, S] write weights in [0, 1] (any float dtype): w = 0 leaves a slot
            bit-identical, even where k_t or v_t holds an inf or NaN (such a row counts
            as 0 for the slots it does not write; a token that writes no slot then acts
            as one with that row set to 0, gradients included); w = 1 replaces it by
            (k_t, v_t).
        scale: the read's softmax temperature; default 1 / sqrt(Dk).
        initial_state: a pair (Mk [N, H, S, Dk], Mv [N, H, S, Dv]) of float32 slots, N = B
            (with cu_seqlens: the number of sequences); zeros when None.
        output_final_state: also return the slots after the last token of each sequence.
        cu_seqlens: [N + 1] int offsets of sequences packed along T (B must be 1); each
            sequence starts from its own initial slots.
        validate: check that w lies in [0, 1] (one pass over w, a device sync); ValueError
            naming w otherwise, NaN included.
        backend: "auto", "triton" or "torch" (see the module docstring).
        chunk_size: tokens per chunk, a positive int (not a bool). None: for "torch" 8
            when a backward will follow, otherwise 16 up to 8 slots, 8 up to 32 and 16
            beyond (see `cpu.default_chunk_size`);
            for "triton" 64 (a multiple of 16 there), and sequences no longer than it run
            the fused recurrent kernel.

    Returns:
        r: [B, T, H, Dv] in v's dtype, the read after each token's write. A NaN or inf at
        token t never reaches the reads before t, on every backend.
        final_state: (Mk [N, H, S, Dk], Mv [N, H, S, Dv]) float32, or None.

    Example:
        >>> q, k = torch.randn(2, 64, 4, 32), torch.randn(2, 64, 4, 32)
        >>> v = torch.randn(2, 64, 4, 16)
        >>> gate, address = torch.randn(2, 64, 4, 1), torch.randn(2, 64, 4, 8)
        >>> w = torch.sigmoid(gate) * torch.softmax(address, dim=-1)
        >>> r, (Mk, Mv) = gated_cache_write(q, k, v, w, output_final_state=True)
        >>> r.shape, Mk.shape, Mv.shape
        (torch.Size([2, 64, 4, 16]), torch.Size([2, 4, 8, 32]), torch.Size([2, 4, 8, 16]))
    """
    dims: dict = {}
    check_tensor("q", q, ("B", "T", "H", "DK"), dims)
    dev = q.device
    check_tensor("k", k, ("B", "T", "H", "DK"), dims, device=dev)
    check_tensor("v", v, ("B", "T", "H", "DV"), dims, device=dev)
    check_tensor("w", w, ("B", "T", "H", "S"), dims, dtypes=FLOAT_DTYPES, device=dev)
    check_same_dtype(("q", "k", "v"), (q, k, v))
    n_seqs = dims["B"]
    if cu_seqlens is not None:
        n_seqs = check_cu_seqlens(cu_seqlens, dims["T"], dims["B"], dev)
    if initial_state is not None:
        _check_state("initial_state", initial_state, n_seqs, dims, dev)
    check_scale(scale)
    scale = dims["DK"] ** -0.5 if scale is None else float(scale)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state: expected a bool, got {output_final_state!r}")
    if validate:
        _check_w_range(w)
    impl = resolve_backend(backend, dev)
    if chunk_size is None:
        chunk_size = (default_chunk_size(q, k, v, w, *(initial_state or ())) if impl == "torch"
                      else TRITON_CHUNK)
    chunk_size = check_positive_int("chunk_size", chunk_size)

    args = (q, k, v, w, scale, initial_state, output_final_state, cu_seqlens)
    if impl == "torch":
        return cpu_gated_cache_write(*args, chunk_size=chunk_size)
    if chunk_size % 16:
        raise ValueError(f"chunk_size: the Triton backend needs a multiple of 16, got {chunk_size}")
    for name in ("S", "DK", "DV"):
        if dims[name] > TRITON_MAX_WIDTH:
            raise NotImplementedError(
                f"backend: the Triton kernels take {name} <= {TRITON_MAX_WIDTH}, got "
                f"{dims[name]}; use backend='torch'")
    max_len = dims["T"] if cu_seqlens is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if max_len <= chunk_size:
        return fused_recurrent_gated_cache_write(*args)
    return chunk_gated_cache_write(*args, chunk_size=chunk_size)


def gated_cache_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    state: State,
    scale: Optional[float] = None,
    validate: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, State]:
    """One decode step: write one token per sequence, read, return the new slots.

    The slots passed in are not modified (as fla's recurrent kernels return their final
    state); keep the returned pair for the next step. Differentiable like
    `gated_cache_write`.

    Args:
        q, k: [B, H, Dk]; v: [B, H, Dv]; w: [B, H, S] in [0, 1].
        state: (Mk [B, H, S, Dk], Mv [B, H, S, Dv]) float32, the slots before this token.
        scale, validate, backend: as `gated_cache_write`.

    Returns:
        r: [B, H, Dv] in v's dtype; equal to the last position of `gated_cache_write` run
        over the same tokens from the same slots.
        state: the new (Mk, Mv), float32.

    Example:
        >>> Mk, Mv = torch.zeros(2, 4, 8, 32), torch.zeros(2, 4, 8, 16)
        >>> r, (Mk, Mv) = gated_cache_step(torch.randn(2, 4, 32), torch.randn(2, 4, 32),
        ...                                torch.randn(2, 4, 16), torch.rand(2, 4, 8), (Mk, Mv))
    """
    dims: dict = {}
    check_tensor("q", q, ("B", "H", "DK"), dims)
    dev = q.device
    check_tensor("k", k, ("B", "H", "DK"), dims, device=dev)
    check_tensor("v", v, ("B", "H", "DV"), dims, device=dev)
    check_tensor("w", w, ("B", "H", "S"), dims, dtypes=FLOAT_DTYPES, device=dev)
    if state is None:
        raise TypeError("state: expected a pair (Mk, Mv) of tensors, got None")
    _check_state("state", state, dims["B"], dims, dev)
    impl = resolve_backend(backend, dev)
    if impl == "torch":  # one token: the oracle is the cheapest torch path
        check_same_dtype(("q", "k", "v"), (q, k, v))
        check_scale(scale)
        scale = dims["DK"] ** -0.5 if scale is None else float(scale)
        if validate:
            _check_w_range(w)
        r, new = gated_cache_write_ref(q[:, None], k[:, None], v[:, None], w[:, None], scale,
                                       state, output_final_state=True)
    else:
        r, new = gated_cache_write(q[:, None], k[:, None], v[:, None], w[:, None], scale,
                                   initial_state=state, output_final_state=True,
                                   validate=validate, backend=impl)
    return r[:, 0], new
