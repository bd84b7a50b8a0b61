"""Gated cache write in PyTorch, chunked: the CPU fast path (the "torch" backend).

`cpu_gated_cache_write` computes what `ref.gated_cache_write_ref` computes without a
graph per token, in one of two ways:

- when a backward will follow, one autograd Function walks chunks of `chunk_size` tokens,
  keeps only the slots at each chunk boundary, and in the backward recomputes each chunk's
  slots from its boundary before a reverse scan with hand-written gradients. Each chunk
  runs through one `torch.compile`d function where a C++ compiler is present, eagerly
  otherwise. The slot update is the reference's (`ref.write`, `ref.written`);
- without one (evaluation, streaming, generation) and with few slots (`uses_parallel`),
  `_parallel` reads every token of a chunk at once from running products of the write
  weights, as batched matmuls, and walks only the chunk-start slots.

Either way a zero write weight keeps a slot bit-identical. Everything upcasts to float32;
r comes back in v's dtype, slots in float32.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import (
    from_chunks,
    log_compile_fallback_once,
    maybe_compiled,
    pad_time,
    to_chunks,
)
from .ref import State, default_scale, run_varlen, write, written, zero_state


def _write_read_fused(Mk, Mv, q_t, k_t, v_t, w_t, scale):
    """The reference's per-token step (`ref._write_read`) with the products written as
    broadcasts and sums rather than batched matmuls, so torch.compile fuses each into the
    slot update that feeds it."""
    w_e = w_t[..., None]
    Mk = write(Mk, w_e, k_t[:, :, None, :])
    Mv = write(Mv, w_e, v_t[:, :, None, :])
    p = torch.softmax(scale * (Mk * q_t[:, :, None, :]).sum(-1), dim=-1)  # [B, H, S]
    return (p[..., None] * Mv).sum(-2), p, Mk, Mv


@maybe_compiled
def _chunk_fwd(Mk, Mv, q, k, v, w, scale: float):
    """One chunk forward. Mk: [B, H, S, Dk]; Mv: [B, H, S, Dv]; q, k: [B, L, H, Dk];
    v: [B, L, H, Dv]; w: [B, L, H, S]. Returns (r [B, L, H, Dv], Mk, Mv after the chunk)."""
    rs = []
    for t in range(q.shape[1]):
        r, _, Mk, Mv = _write_read_fused(Mk, Mv, q[:, t], k[:, t], v[:, t], w[:, t], scale)
        rs.append(r)
    return torch.stack(rs, dim=1), Mk, Mv


@maybe_compiled
def _chunk_bwd(Mk, Mv, q, k, v, w, scale: float, dr, dMk, dMv):
    """One chunk backward, recomputing the chunk's slots from its boundary state (Mk, Mv).

    dr: [B, L, H, Dv], the gradient of r; dMk, dMv: gradients of the slots after the chunk.
    Returns (dq, dk [B, L, H, Dk]; dv [B, L, H, Dv]; dw [B, L, H, S]; dMk, dMv of the slots
    before the chunk).
    """
    L = q.shape[1]
    prev, probs = [], []  # slots before each token, read weights
    for t in range(L):
        prev.append((Mk, Mv))
        w_e = w[:, t, ..., None]
        Mk = write(Mk, w_e, k[:, t, :, None, :])
        Mv = write(Mv, w_e, v[:, t, :, None, :])
        probs.append(torch.softmax(scale * (Mk * q[:, t, :, None, :]).sum(-1), dim=-1))
    dq, dk, dv, dw = [None] * L, [None] * L, [None] * L, [None] * L
    Gk, Gv = dMk, dMv  # gradient of the slots after token t, from later tokens
    for t in range(L - 1, -1, -1):
        (Mk_prev, Mv_prev), p = prev[t], probs[t]
        w_e = w[:, t, ..., None]
        q_e, dr_e = q[:, t, :, None, :], dr[:, t, :, None, :]
        k_e, v_e = written(w_e, k[:, t, :, None, :]), written(w_e, v[:, t, :, None, :])
        # the slots after token t, recomputed where they are used (no stored copy)
        Mk_t = (1 - w_e) * Mk_prev + w_e * k_e
        Mv_t = (1 - w_e) * Mv_prev + w_e * v_e
        dp = (Mv_t * dr_e).sum(-1)  # [B, H, S]
        da = scale * p * (dp - (p * dp).sum(-1, keepdim=True))  # through the softmax
        dq[t] = (da[..., None] * Mk_t).sum(-2)
        Gk = Gk + da[..., None] * q_e
        Gv = Gv + p[..., None] * dr_e
        dk[t] = (w_e * Gk).sum(-2)
        dv[t] = (w_e * Gv).sum(-2)
        dw[t] = (Gk * (k_e - Mk_prev)).sum(-1) + (Gv * (v_e - Mv_prev)).sum(-1)
        Gk, Gv = (1 - w_e) * Gk, (1 - w_e) * Gv
    stack = lambda xs: torch.stack(xs, dim=1)
    return stack(dq), stack(dk), stack(dv), stack(dw), Gk, Gv


class _ChunkedCacheFn(torch.autograd.Function):
    """The gated cache recurrence on float32 inputs [B, T, H, *], chunk by chunk.

    Padding to a whole number of chunks uses w = 0 (and q = k = v = 0): the slots pass
    through unchanged, so every chunk has one shape and compiles once; padded outputs are
    dropped.
    """

    @staticmethod
    def forward(ctx, q, k, v, w, Mk0, Mv0, scale, chunk_size):
        T, L = q.shape[1], chunk_size
        n_chunks = -(-T // L)
        q_c, k_c, v_c, w_c = (to_chunks(pad_time(x, n_chunks * L), L) for x in (q, k, v, w))
        # contiguous starting slots: every call of the compiled chunk sees one layout
        Mk, Mv = Mk0.contiguous(), Mv0.contiguous()
        rs, bk, bv = [], [], []
        for c in range(n_chunks):
            bk.append(Mk)
            bv.append(Mv)
            r, Mk, Mv = _chunk_fwd(Mk, Mv, q_c[c], k_c[c], v_c[c], w_c[c], scale)
            rs.append(r)
        ctx.save_for_backward(q_c, k_c, v_c, w_c, torch.stack(bk), torch.stack(bv))
        ctx.T, ctx.L, ctx.scale = T, L, scale
        return from_chunks(torch.stack(rs), T), Mk, Mv

    @staticmethod
    def backward(ctx, dr, dMk, dMv):
        q_c, k_c, v_c, w_c, bk, bv = ctx.saved_tensors
        T, L, scale = ctx.T, ctx.L, ctx.scale
        n_chunks = q_c.shape[0]
        dr = (to_chunks(pad_time(dr.float(), n_chunks * L), L) if dr is not None
              else v_c.new_zeros(v_c.shape))
        Gk = dMk.float().contiguous() if dMk is not None else torch.zeros_like(bk[0])
        Gv = dMv.float().contiguous() if dMv is not None else torch.zeros_like(bv[0])
        outs = []
        for c in range(n_chunks - 1, -1, -1):
            *grads, Gk, Gv = _chunk_bwd(bk[c], bv[c], q_c[c], k_c[c], v_c[c], w_c[c], scale,
                                        dr[c], Gk, Gv)
            outs.append(grads)
        dq, dk, dv, dw = (from_chunks(torch.stack(g[::-1]), T) for g in zip(*outs))
        return dq, dk, dv, dw, Gk, Gv, None, None


def _chunked(q, k, v, w, scale, state, chunk_size):
    Mk0, Mv0 = zero_state(q, v, w.shape[-1]) if state is None else state
    r, Mk, Mv = _ChunkedCacheFn.apply(q.float(), k.float(), v.float(), w.float(),
                                      Mk0.float(), Mv0.float(), scale, chunk_size)
    return r, (Mk, Mv)


PARALLEL_BLOCK = 64  # chunks of the parallel forward held at once (bounds its memory)


def _hard(weight, x):
    """weight * x with a hard zero where weight is exactly 0 (0 * inf would be NaN): how a
    token whose k or v row is not finite reaches the slots it writes and no other."""
    return torch.where(weight == 0, 0.0, weight * x)


def _parallel_block(q, k, v, w, Mk, Mv, scale, L):
    """The forward of `_parallel` on one block of whole chunks: q, k, w [B, H, n, L, *];
    Mk, Mv the slots before it. Returns (r [B, H, n, L, Dv], Mk, Mv after it)."""
    keep = 1 - w  # [B, H, n, L, S]
    ar = torch.arange(L, device=q.device)
    later = (ar[:, None] > ar[None, :])[..., None]  # [u, i, 1]: u > i
    future = ar[:, None] < ar[None, :]  # [t, i]: i > t
    # x[u, i] = 1 - w_u after token i, w_i at i and 1 before it: its running product over
    # u is token i's weight in the slots after token t (t >= i; 1 for t < i, never used)
    x = torch.where(later, keep[..., :, None, :], 1.0)  # [B, H, n, u, i, S]
    x.diagonal(dim1=-3, dim2=-2).copy_(w.transpose(-1, -2))
    W = x.cumprod_(-3)  # [B, H, n, t, i, S]
    decay = keep.cumprod(-2)  # [B, H, n, t, S]: the chunk-start slots' weight after t
    # tokens whose k or v row is not finite enter through hard zeros only (`written`)
    # (a finite sum has only finite terms: one reduction is the common case's whole check)
    any_k, any_v = (not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all())
                    for t in (k, v))
    k_ok = k.masked_fill(~torch.isfinite(k).all(-1, keepdim=True), 0.0) if any_k else k
    v_ok = v.masked_fill(~torch.isfinite(v).all(-1, keepdim=True), 0.0) if any_v else v
    last = W[..., -1, :, :].transpose(-1, -2)  # [B, H, n, S, i]: weights in the chunk-end slots
    Uk, Uv = last @ k_ok, last @ v_ok  # [B, H, n, S, D]
    if any_k:
        Uk = Uk + _hard(last[..., None], (k - k_ok)[..., None, :, :]).sum(-2)
    if any_v:
        Uv = Uv + _hard(last[..., None], (v - v_ok)[..., None, :, :]).sum(-2)
    dl = decay[..., -1, :, None]  # [B, H, n, S, 1]
    starts_k, starts_v = [], []
    for c in range(q.shape[2]):  # the slots at each chunk start
        starts_k.append(Mk)
        starts_v.append(Mv)
        Mk = torch.addcmul(Uk[:, :, c], dl[:, :, c], Mk)
        Mv = torch.addcmul(Uv[:, :, c], dl[:, :, c], Mv)
    Mk0, Mv0 = torch.stack(starts_k, 2), torch.stack(starts_v, 2)  # [B, H, n, S, D]
    qk = (q @ k_ok.transpose(-1, -2)).masked_fill_(future, 0.0)  # [B, H, n, t, i]
    a = (qk.unsqueeze(-2) @ W).squeeze(-2) + decay * (q @ Mk0.transpose(-1, -2))
    if any_k:
        qk_bad = (q @ (k - k_ok).transpose(-1, -2)).masked_fill_(future, 0.0)
        a = a + _hard(W.masked_fill(future[..., None], 0.0), qk_bad[..., None]).sum(-2)
    p = torch.softmax(scale * a, dim=-1)  # [B, H, n, t, S]
    P = (W @ p.unsqueeze(-1)).squeeze(-1).masked_fill_(future, 0.0)  # [B, H, n, t, i]
    r = P @ v_ok + (p * decay) @ Mv0  # [B, H, n, t, Dv]
    if any_v:
        r = r + _hard(P[..., None], (v - v_ok)[..., None, :, :]).sum(-2)
    return r, Mk, Mv


def _parallel(q, k, v, w, scale, state, chunk_size):
    """The forward without a backward, every chunk's tokens at once (the chunked form of
    the Triton kernels, `chunk.py`): within a chunk of L tokens, token i's weight in slot s
    after token t >= i is w_i[s] * prod_{i < u <= t} (1 - w_u[s]), a running product (no
    logarithm: w = 1 and w = 0 stay exact); the reads are then batched matmuls over the
    chunk and only the slots at chunk starts are walked token-free across chunks. Same
    results as `_chunked` to float32 rounding; a slot that no token writes stays
    bit-identical, and a token's NaN or inf reaches no earlier read."""
    Mk, Mv = zero_state(q, v, w.shape[-1]) if state is None else (s.float() for s in state)
    T, L = q.shape[1], chunk_size
    n = -(-T // L)
    # [B, T, H, *] -> [B, H, n, L, *], padded with w = 0 (and q = k = v = 0): no-ops
    ch = lambda x: pad_time(x.float(), n * L).unflatten(1, (n, L)).permute(
        0, 3, 1, 2, 4).contiguous()  # one copy here, not one per matmul
    qc, kc, vc, wc = ch(q), ch(k), ch(v), ch(w)
    rs = []
    for b in range(0, n, PARALLEL_BLOCK):
        blk = slice(b, b + PARALLEL_BLOCK)
        r, Mk, Mv = _parallel_block(qc[:, :, blk], kc[:, :, blk], vc[:, :, blk],
                                    wc[:, :, blk], Mk, Mv, scale, L)
        rs.append(r)
    r = torch.cat(rs, 2).permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :T]
    return r, (Mk, Mv)


PARALLEL_MAX_WORK = 256  # slots x chunk tokens up to which the parallel forward is faster


def _will_backward(*tensors) -> bool:
    """Whether autograd records this call: grad mode on and a tensor that requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def uses_parallel(slots: int, chunk_size: int) -> bool:
    """Whether a forward without a backward goes through `_parallel`: its [t, i, S] weights
    grow with slots x chunk_size, the token walk's cost with slots x width, so it wins only
    while S * L <= `PARALLEL_MAX_WORK` (measured below, `default_chunk_size`)."""
    return slots * chunk_size <= PARALLEL_MAX_WORK


def default_chunk_size(q, k, v, w, *state) -> int:
    """Tokens per chunk of the CPU fast path: 8 when a backward will follow; without one, 16
    for S <= 8 slots, 8 for S <= 32 (both through `_parallel`), 16 beyond (the token walk).

    Measured on a 2-core CPU at T = 4096, B = 2, Dk = Dv = 64, medians of 5: the compiled
    backward of a chunk costs 0.10 ms a token at 8 tokens, 0.24 at 16 and 0.67 at 32 (the
    compiler's code for the unrolled reverse scan grows worse than linearly). The forward
    alone, parallel at L = 8 / parallel at L = 16 / compiled token walk at L = 16, in
    seconds: H = 2, S = 8: 0.037 / 0.024 / 0.081; S = 16: 0.053 / 0.045 / 0.080; S = 32:
    0.046 / 0.072 / 0.118; S = 64: 0.108 / 0.135 / 0.105; H = 4, S = 32: 0.098 / 0.166 /
    0.128; H = 4, S = 64: 0.27 / 0.43 / 0.17 (the walk at L = 8: 0.18).
    """
    if _will_backward(q, k, v, w, *state):
        return 8
    slots = w.shape[-1]
    return 16 if slots <= 8 else 8 if slots <= 32 else 16


def cpu_gated_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[State] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> tuple[torch.Tensor, Optional[State]]:
    """The CPU fast path: same arguments and results as `gated_cache_write_ref`;
    chunk_size: tokens per chunk, None for `default_chunk_size`.

    Memory: with a backward to follow, the forward keeps one pair of [B, H, S, D] float32
    slot tensors per chunk and the backward holds one chunk's per-token slots at a time;
    without one and with S * L <= `PARALLEL_MAX_WORK`, `_parallel` holds [B, H, n, L, L, S]
    float32 weights for a block of n = `PARALLEL_BLOCK` chunks of L tokens (B = 2, H = 4,
    S = 32, L = 8: 4 MiB). No [B, T, H, S, D] tensor is made.
    """
    log_compile_fallback_once()
    scale = default_scale(q, scale)
    if chunk_size is None:
        chunk_size = default_chunk_size(q, k, v, w, *(initial_state or ()))

    grad = _will_backward(q, k, v, w, *(initial_state or ()))
    step = _parallel if not grad and uses_parallel(w.shape[-1], chunk_size) else _chunked

    def run(q, k, v, w, scale, state):
        return step(q, k, v, w, scale, state, chunk_size)

    if cu_seqlens is None:
        r, st = run(q, k, v, w, scale, initial_state)
    else:
        r, st = run_varlen(run, q, k, v, w, scale, initial_state, cu_seqlens)
    return r.to(v.dtype), (st if output_final_state else None)
