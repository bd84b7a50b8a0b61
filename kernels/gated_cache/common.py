"""Launcher helpers shared by the Triton variants of the gated cache: flattening the
inputs to packed [T_all, H, D] sequences and shaping the results back, block sizes, and
chunk bookkeeping."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import triton


@dataclasses.dataclass(frozen=True)
class FlatInputs:
    """q, k: [T_all, H, Dk]; v: [T_all, H, Dv]; w: [T_all, H, S], each with stride 1 in
    the last dimension; the sequences lie at `cu_seqlens` ([N + 1] int32, on the device)
    along T_all. A batch of B equal-length sequences is B packed sequences of length T."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: tuple[int, ...]

    @property
    def num_seqs(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def with_tensors(self, q, k, v, w) -> FlatInputs:
        return dataclasses.replace(self, q=q, k=k, v=v, w=w)


def _flat(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-2], x.shape[-1])  # a view unless B and T cannot merge
    return x if x.stride(-1) == 1 else x.contiguous()


def flatten_inputs(q, k, v, w, cu_seqlens: Optional[torch.Tensor]) -> FlatInputs:
    Bsz, T = q.shape[:2]
    if cu_seqlens is None:
        offsets = [i * T for i in range(Bsz + 1)]
    else:
        offsets = cu_seqlens.tolist()
    cu = torch.tensor(offsets, dtype=torch.int32, device=q.device)
    lengths = tuple(b - a for a, b in zip(offsets[:-1], offsets[1:]))
    return FlatInputs(_flat(q), _flat(k), _flat(v), _flat(w), cu, lengths)


def block_sizes(S: int, DK: int, DV: int) -> tuple[int, int, int]:
    """Power-of-two register tiles, at least 16 wide (the smallest tl.dot operand)."""
    return tuple(max(16, triton.next_power_of_2(n)) for n in (S, DK, DV))


def num_warps(BS: int, BK: int, BV: int) -> int:
    """Warps per program: 8 once the [S, Dk] + [S, Dv] slot tiles pass 4096 elements, so
    they stay in registers (a guess: the kernels have not been tuned on a GPU)."""
    return 4 if BS * (BK + BV) <= 4096 else 8


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision: exact float32 for float32 inputs, tf32 (tensor cores) for 16-bit
    inputs, whose own rounding is coarser than tf32's."""
    return "ieee" if dtype == torch.float32 else "tf32"


def chunk_layout(lengths, bt: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Chunks of `bt` tokens, each sequence starting a new chunk.

    Returns chunk_offsets [N + 1] int32 (the first global chunk of each sequence),
    chunk_indices [NT, 2] int32 ((sequence, chunk within it) of each global chunk), NT.
    """
    counts: list[int] = [triton.cdiv(n, bt) for n in lengths]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    indices = [(i, j) for i, c in enumerate(counts) for j in range(c)]
    chunk_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
    chunk_indices = torch.tensor(indices, dtype=torch.int32, device=device)
    return chunk_offsets, chunk_indices, offsets[-1]


def state_grads(dhtk, dhtv, x: FlatInputs, DK: int, DV: int):
    """Gradients of the final slots as autograd hands them: both None, or both tensors
    (a zero tensor stands in for the one that got no gradient), contiguous float32."""
    if dhtk is None and dhtv is None:
        return None, None
    H, S = x.q.shape[1], x.w.shape[-1]
    f32 = dict(dtype=torch.float32, device=x.q.device)
    dhtk = torch.zeros(x.num_seqs, H, S, DK, **f32) if dhtk is None else dhtk
    dhtv = torch.zeros(x.num_seqs, H, S, DV, **f32) if dhtv is None else dhtv
    return dhtk.float().contiguous(), dhtv.float().contiguous()


def apply_flat(fn, q, k, v, w, scale, initial_state, output_final_state, cu_seqlens, *extra):
    """Run the autograd Function `fn` of a Triton variant on the flattened inputs and shape
    its results as `gated_cache_write` returns them: (r [B, T, H, Dv], (Mk, Mv) or None).
    `extra`: the variant's own trailing arguments (the chunked one's chunk_size)."""
    Bsz, T, H, _ = q.shape
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    x = flatten_inputs(q, k, v, w, cu_seqlens)
    h0k, h0v = (None, None) if initial_state is None else (
        initial_state[0].contiguous(), initial_state[1].contiguous())
    r, htk, htv = fn.apply(x.q, x.k, x.v, x.w, h0k, h0v, scale, x, output_final_state, *extra)
    r = r.view(Bsz, T, H, v.shape[-1])
    return r, ((htk, htv) if output_final_state else None)
