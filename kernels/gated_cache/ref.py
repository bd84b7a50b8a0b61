"""Gated cache write in pure PyTorch: the per-token oracle, the ground truth of every
other path.

Math (per sequence, head and slot s; docs/kernels.md derives it in full):

    Mk_t[s] = (1 - w_t[s]) * Mk_{t-1}[s] + w_t[s] * k_t          slot keys    [S, Dk]
    Mv_t[s] = (1 - w_t[s]) * Mv_{t-1}[s] + w_t[s] * v_t          slot values  [S, Dv]
    p_t = softmax_s(scale * Mk_t q_t),   r_t = p_t @ Mv_t         read after the write

`gated_cache_write_ref` is a plain loop over tokens, differentiated by autograd; the
chunked CPU fast path (`cpu.py`) uses its slot update (`write`, `written`) and its
per-sequence driver (`run_varlen`). Everything upcasts to float32; r comes back in v's
dtype, slots in float32. A slot whose weight is 0 takes a k_t or v_t that holds an inf or
NaN as the zero vector (`written`), so it stays bit-identical as the math says rather
than turning NaN through 0 * inf.
"""

from __future__ import annotations

from typing import Optional

import torch

State = tuple[torch.Tensor, torch.Tensor]


def written(w_e, x):
    """x [B, H, 1, D] as each slot takes it: the zero vector in the slots whose weight
    w_e [B, H, S, 1] is 0 when x holds an inf or NaN, since a zero weight leaves a slot
    as it was and 0 * inf would be NaN. [B, H, S, D]; a finite x comes back unchanged
    (gradients included)."""
    return torch.where((w_e == 0) & ~torch.isfinite(x).all(-1, keepdim=True), 0.0, x)


def write(M, w_e, x):
    """(1 - w) M + w x, not M + w (x - M): w = 0 and w = 1 are then exact (keep / replace)."""
    return (1 - w_e) * M + w_e * written(w_e, x)


def _write_read(Mk, Mv, q_t, k_t, v_t, w_t, scale):
    """One token. Mk: [B, H, S, Dk], Mv: [B, H, S, Dv]; q_t, k_t: [B, H, Dk];
    v_t: [B, H, Dv]; w_t: [B, H, S]. Returns (r_t [B, H, Dv], p_t [B, H, S], Mk, Mv)."""
    w_e = w_t[..., None]
    Mk = write(Mk, w_e, k_t[:, :, None, :])
    Mv = write(Mv, w_e, v_t[:, :, None, :])
    p = torch.softmax(scale * (Mk @ q_t[..., None]).squeeze(-1), dim=-1)  # [B, H, S]
    r = (p[:, :, None, :] @ Mv).squeeze(-2)  # [B, H, Dv]
    return r, p, Mk, Mv


def zero_state(q, v, S):
    """Empty slots for q [B, T, H, Dk], v [B, T, H, Dv] and S slots: float32 zeros
    ([B, H, S, Dk], [B, H, S, Dv])."""
    Bsz, _, H, Dk = q.shape
    Mk = q.new_zeros(Bsz, H, S, Dk, dtype=torch.float32)
    return Mk, q.new_zeros(Bsz, H, S, v.shape[-1], dtype=torch.float32)


def _loop(q, k, v, w, scale, state):
    """One batch of equal-length sequences [B, T, H, *], per-token loop (autograd)."""
    Mk, Mv = zero_state(q, v, w.shape[-1]) if state is None else (s.float() for s in state)
    rs = []
    # unbind once: indexing x[:, t] in the loop would make autograd build a full-size zero
    # gradient per token, O(T^2) work in the backward.
    for q_t, k_t, v_t, w_t in zip(q.float().unbind(1), k.float().unbind(1),
                                  v.float().unbind(1), w.float().unbind(1)):
        r, _, Mk, Mv = _write_read(Mk, Mv, q_t, k_t, v_t, w_t, scale)
        rs.append(r)
    return torch.stack(rs, dim=1), (Mk, Mv)


def run_varlen(fn, q, k, v, w, scale, initial_state, cu_seqlens):
    """Run `fn` on each packed sequence alone; return (r, stacked final slots)."""
    rs, mks, mvs = [], [], []
    offsets = cu_seqlens.tolist()
    for i, (s, e) in enumerate(zip(offsets[:-1], offsets[1:])):
        st = None if initial_state is None else tuple(x[i : i + 1] for x in initial_state)
        r, (mk, mv) = fn(q[:, s:e], k[:, s:e], v[:, s:e], w[:, s:e], scale, st)
        rs.append(r)
        mks.append(mk)
        mvs.append(mv)
    return torch.cat(rs, dim=1), (torch.cat(mks, dim=0), torch.cat(mvs, dim=0))


def default_scale(q, scale):
    """The read's softmax temperature: `scale`, or 1 / sqrt(Dk) when None."""
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def gated_cache_write_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[State] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, Optional[State]]:
    """The oracle: a per-token loop in float32, differentiated by autograd.

    Args and Returns: as `memmodel.kernels.gated_cache.gated_cache_write`
    (q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; w: [B, T, H, S]; initial_state: a pair
    ([N, H, S, Dk], [N, H, S, Dv]) float32; returns r [B, T, H, Dv] in v's dtype and the
    final pair or None). No input checks.
    """
    scale = default_scale(q, scale)
    if cu_seqlens is None:
        r, st = _loop(q, k, v, w, scale, initial_state)
    else:
        r, st = run_varlen(_loop, q, k, v, w, scale, initial_state, cu_seqlens)
    return r.to(v.dtype), (st if output_final_state else None)

