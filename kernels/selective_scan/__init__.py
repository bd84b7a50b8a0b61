"""Selective scan (Mamba-1 semantics): the SSM backbone's recurrence.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = C_t . h_t + D * u_t,  then y_t *= silu(z_t) when z is given

`selective_scan` checks its inputs once and dispatches to a backend (see
`memmodel.kernels.utils.resolve_backend`); `selective_state_update` is one decode step.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import (
    INT_DTYPES,
    check_cu_seqlens,
    check_positive_int,
    check_same_dtype,
    check_tensor,
    resolve_backend,
)
from .chunk import chunk_selective_scan
from .cpu import cpu_selective_scan
from .ref import selective_scan_ref, selective_state_update_ref
from .step import fused_selective_state_update

selective_scan_chunked = cpu_selective_scan  # the CPU path's earlier name, documented API

__all__ = [
    "selective_scan",
    "chunk_selective_scan",
    "fused_selective_state_update",
    "selective_state_update",
    "selective_scan_ref",
    "cpu_selective_scan",
    "selective_scan_chunked",
    "selective_state_update_ref",
]


def _check_params(A, D, delta_bias, dims, device):
    check_tensor("A", A, ("E", "N"), dims, device=device)
    if D is not None:
        check_tensor("D", D, ("E",), dims, device=device)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, ("E",), dims, device=device)


def _check_groups(dims):
    if dims["E"] % dims["G"] != 0:
        raise ValueError(
            f"B, C: the number of groups G={dims['G']} must divide E={dims['E']}"
        )


def selective_scan(
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
    backend: str = "auto",
    chunk_size: Optional[int] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Selective scan over a batch of sequences, differentiable in every tensor input.

    Args:
        u: [B, T, E] input, float32 / float16 / bfloat16.
        delta: [B, T, E] step sizes before `delta_bias` and softplus, u's dtype.
        A: [E, N] state matrix (diagonal per channel; negative for a stable scan).
        B: [B, T, G, N] input projection; G groups, channel e uses group e // (E // G).
        C: [B, T, G, N] output projection, B's dtype.
        D: [E] skip connection, optional.
        z: [B, T, E] gate, optional: y *= silu(z). u's dtype.
        delta_bias: [E] added to delta, optional.
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: [B, E, N] (with cu_seqlens: [num_seqs, E, N]) float32, optional.
        output_final_state: also return the state after the last token (of each sequence).
        cu_seqlens: [num_seqs + 1] int offsets of sequences packed along T (B must be 1);
            each sequence starts from its own initial state (zeros when none is given).
        backend: "auto", "triton" or "torch" (see `resolve_backend`).
        chunk_size: tokens per chunk: the spacing of the states kept for the backward, a
            positive int (not a bool). None picks 64 for Triton (a power of two is
            required there), 32 for torch.

    Returns:
        y: [B, T, E] in u's dtype.
        final_state: [B, E, N] (or [num_seqs, E, N]) float32, or None.

    Example:
        >>> u = torch.randn(2, 64, 32); dt = torch.rand(2, 64, 32)
        >>> A = -torch.rand(32, 16); Bm = torch.randn(2, 64, 1, 16); Cm = torch.randn(2, 64, 1, 16)
        >>> y, h = selective_scan(u, dt, A, Bm, Cm, output_final_state=True)
        >>> y.shape, h.shape
        (torch.Size([2, 64, 32]), torch.Size([2, 32, 16]))
    """
    dims: dict = {}
    check_tensor("u", u, ("B", "T", "E"), dims)
    dev = u.device
    check_tensor("delta", delta, ("B", "T", "E"), dims, device=dev)
    check_tensor("B", B, ("B", "T", "G", "N"), dims, device=dev)
    check_tensor("C", C, ("B", "T", "G", "N"), dims, device=dev)
    _check_params(A, D, delta_bias, dims, dev)
    _check_groups(dims)
    if z is not None:
        check_tensor("z", z, ("B", "T", "E"), dims, device=dev)
    check_same_dtype(("u", "delta", "z"), (u, delta, z))
    check_same_dtype(("B", "C"), (B, C))
    n_states = dims["B"]
    if cu_seqlens is not None:
        n_states = check_cu_seqlens(cu_seqlens, dims["T"], dims["B"], dev)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (n_states, "E", "N"), dims,
                     dtypes=(torch.float32,), device=dev)
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)

    impl = resolve_backend(backend, dev)
    scan = chunk_selective_scan if impl == "triton" else cpu_selective_scan
    if chunk_size is None:
        chunk_size = 64 if impl == "triton" else 32
    elif impl == "triton" and chunk_size & (chunk_size - 1):
        raise ValueError(
            f"chunk_size: the Triton scan needs a power of two, got {chunk_size}")
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                output_final_state, cu_seqlens, chunk_size=chunk_size)


def selective_state_update(
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
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """One decode step of the selective scan; `state` is updated in place.

    Args:
        state: [S, E, N] float32 contiguous, S >= batch; the pool of recurrent states.
        u, delta: [B, E]; z: [B, E] optional; u's dtype.
        A: [E, N]; B, C: [B, G, N]; D, delta_bias: [E] optional.
        delta_softplus: apply softplus to delta + delta_bias.
        state_batch_indices: [B] int32/int64, the row of `state` each batch row updates
            (continuous batching); rows must be distinct. None: row b updates state[b].
        backend: "auto", "triton" or "torch".
        validate: check the values of state_batch_indices (in range, distinct); this reads
            them on the host, a device sync per step. Shapes and dtypes are always checked.

    Returns:
        y: [B, E] in u's dtype; equal to the last position of `selective_scan` run over the
        same tokens from the same state.

    Example:
        >>> state = torch.zeros(4, 32, 16)
        >>> y = selective_state_update(state, torch.randn(4, 32), torch.rand(4, 32),
        ...                            -torch.rand(32, 16), torch.randn(4, 1, 16),
        ...                            torch.randn(4, 1, 16))
    """
    dims: dict = {}
    check_tensor("u", u, ("B", "E"), dims)
    dev = u.device
    check_tensor("delta", delta, ("B", "E"), dims, device=dev)
    check_tensor("B", B, ("B", "G", "N"), dims, device=dev)
    check_tensor("C", C, ("B", "G", "N"), dims, device=dev)
    _check_params(A, D, delta_bias, dims, dev)
    _check_groups(dims)
    if z is not None:
        check_tensor("z", z, ("B", "E"), dims, device=dev)
    check_same_dtype(("u", "delta", "z"), (u, delta, z))
    check_same_dtype(("B", "C"), (B, C))
    check_tensor("state", state, ("S", "E", "N"), dims, dtypes=(torch.float32,), device=dev,
                 contiguous=True)
    if state_batch_indices is None:
        if dims["S"] != dims["B"]:
            raise ValueError(
                f"state: without state_batch_indices, expected {dims['B']} rows (one per batch "
                f"row), got {dims['S']}"
            )
    else:
        check_tensor("state_batch_indices", state_batch_indices, ("B",), dims,
                     dtypes=INT_DTYPES, device=dev)
        idx = state_batch_indices.tolist() if validate else []
        if idx and (min(idx) < 0 or max(idx) >= dims["S"]):
            raise ValueError(
                f"state_batch_indices: expected values in [0, {dims['S']}), got {idx}"
            )
        if len(set(idx)) != len(idx):
            raise ValueError(f"state_batch_indices: expected distinct rows, got {idx}")
    impl = resolve_backend(backend, dev)
    step = fused_selective_state_update if impl == "triton" else selective_state_update_ref
    return step(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                state_batch_indices)
