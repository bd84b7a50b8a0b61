"""LongTermMemory: chunks compressed into a bounded, hierarchical bank, read by interval attention.

    q, k, v, g = in_proj(x)                                   q, k, v: [B, T, H, Dh]
    s_k, s_v, score = chunk_compress(k, v, q_pool, C)         P summaries per chunk of C tokens
    at each chunk boundary the controller stores (level 0), compresses (level 1) or
    discards each summary; a full level l merges r of its entries into one level-(l+1)
    entry, chunk_compress(their k, v, merge_q[l], r); the top level evicts
    o = memory_retrieve(q, bank_k, bank_v, start, end)       one call per segment
    out = out_proj(o * sigmoid(g))                            [B, T, D]

Intervals. An entry is visible to the tokens `start <= t < end` (stream positions):
`start` is the position right after the chunk or merge that made it, `end` the boundary
at which it was merged or evicted (still live: open). A chunk's summaries are thus
invisible to its own tokens, and merged entries take over exactly where their parts stop.
Within a segment, every entry that was live at some point (carried in, made, merged or
evicted) is one column of the bank passed to `memory_retrieve`, with the interval shifted
to the segment (carried entries start at or before 0), so a segment costs one retrieval.

Streaming. The tokens of an unfinished chunk are carried in `LTMState.pending_k/v` and
compressed when a later segment completes the chunk; the live bank and its metadata
travel in `LayerState.ltm`. Segments of any lengths give the same outputs as one call
(the controller's `usage` feature aside, see `memmodel.controllers.base`), and the carried
state never exceeds the capacity: a 1M-token stream runs in constant memory (except under
an unbounded controller, `store_all`, which keeps every entry).

A drop-in `(B, T, D) -> (B, T, D)` module; `Block` adds it when
`config.ltm_controller != "none"`.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .bank import OPEN, Bank
from .config import CONTROLLER_NAMES, MemoryConfig
from .controllers import (
    Action,
    ChunkDecision,
    ChunkFeatures,
    LevelFeatures,
    MemoryController,
    build_controller,
)
from .kernels.chunk_compress import chunk_compress
from .kernels.memory_retrieve import memory_retrieve
from .kernels.utils import check_same_dtype, check_tensor
from .ssm import place
from .state import LayerState, LTMState

__all__ = ["OPEN", "Bank", "LongTermMemory", "Recall", "attention_mass"]

INT32_MIN = -(2**31) + 1


class Recall(NamedTuple):
    """o: [B, T, H, Dh] retrieved values (0 where a token sees no entry or skips retrieval);
    lse: [B, T, H] float32 (-inf there); bank: the segment's `Bank`, every entry the
    tokens could read (k, v, level, start, end, position)."""

    o: torch.Tensor
    lse: torch.Tensor
    bank: Bank


class LongTermMemory(nn.Module):
    """Hierarchical compressed memory over chunks, driven by a `MemoryController`; a drop-in
    `(B, T, D) -> (B, T, D)` layer.

    Args:
        d_model: model width D.
        controller: a controller name ("fifo", "importance", "store_all", "qlearning", or
            one registered) or a `MemoryController`; also settable later as
            `module.controller` (a submodule: it takes the module's train / eval mode).
        heads, head_dim: H and Dh (None: d_model // heads).
        chunk_size: C, tokens compressed together.
        summaries: P, entries made from each chunk.
        levels: L, levels of the bank; level l + 1 holds merges of level-l entries.
        capacity: entries per level, one int for every level or a list of L ints.
        merge: r, entries of a full level merged into one entry of the next.
        backend: "auto", "triton" or "torch" for compression and retrieval.
        n_layers: depth of the model it sits in (its output projection starts scaled by
            1 / sqrt(n_layers)).
        device, dtype: where and in which dtype the weights are made.

    The sizes are checked as the matching `MemoryConfig.ltm_*` fields (ValueError naming
    the field). `LongTermMemory.from_config(config)` builds one from a model's config.

    Example:
        >>> ltm = LongTermMemory(32, controller="fifo", heads=2, chunk_size=8, summaries=2,
        ...                      capacity=[9, 4])
        >>> state = LayerState()
        >>> ltm(torch.randn(2, 20, 32), state).shape     # 2 chunks stored, 4 tokens pending
        torch.Size([2, 20, 32])
        >>> state.ltm.k.shape, state.ltm.pending_k.shape
        (torch.Size([2, 4, 2, 16]), torch.Size([2, 4, 2, 16]))
    """

    def __init__(self, d_model: int, controller: Union[str, MemoryController] = "fifo",
                 heads: int = 4, head_dim: Optional[int] = None, chunk_size: int = 256,
                 summaries: int = 4, levels: int = 2, capacity: Union[int, list[int]] = 256,
                 merge: int = 4, backend: str = "auto", n_layers: int = 1, device=None,
                 dtype=None):
        super().__init__()
        name = controller if isinstance(controller, str) else getattr(controller, "name", None)
        if controller == "none":
            raise ValueError(
                "LongTermMemory: controller is 'none' (no long-term memory, so its sizes are "
                "unchecked; config.ltm_controller is 'none'); name a controller, and switch a "
                "built module off with module.controller = build_controller(name='none')")
        if not isinstance(controller, (str, MemoryController)):
            raise TypeError(f"LongTermMemory.controller: expected a name or a "
                            f"MemoryController, got {type(controller).__name__}")
        self.config = config = MemoryConfig(
            d_model=d_model, n_layers=n_layers,
            ltm_controller=name if name in CONTROLLER_NAMES else "fifo", ltm_heads=heads,
            ltm_head_dim=head_dim, ltm_chunk_size=chunk_size, ltm_summaries=summaries,
            ltm_levels=levels, ltm_capacity=copy.copy(capacity), ltm_merge=merge,
            backend=backend)
        D, H, Dh = config.d_model, config.ltm_heads, config.ltm_head_dim
        P, L = config.ltm_summaries, config.ltm_levels
        self.capacity = tuple(config.ltm_capacity)
        self.splits = [H * Dh] * 4  # q, k, v, output gate
        self.in_proj = nn.Linear(D, 4 * H * Dh, bias=True)
        self.out_proj = nn.Linear(H * Dh, D, bias=False)
        self.q_pool = nn.Parameter(torch.empty(H, P, Dh))
        self.merge_q = nn.Parameter(torch.empty(L - 1, H, 1, Dh))  # level l -> l + 1
        self.controller = controller if isinstance(controller, MemoryController) else \
            build_controller(config, controller)
        self.reset_parameters()
        place(self, device, dtype)

    @classmethod
    def from_config(cls, config: MemoryConfig, controller: Optional[MemoryController] = None,
                    device=None, dtype=None) -> LongTermMemory:
        """The long-term memory of a model: d_model, n_layers, the ltm_* fields and backend
        from `config`; `controller` overrides `config.ltm_controller`."""
        c = config
        if controller is None and c.ltm_controller != "none":
            # from the whole config, so that a controller's own fields (ltm_gate_*) reach it
            controller = build_controller(c)
        return cls(c.d_model, controller=controller if controller is not None
                   else c.ltm_controller, heads=c.ltm_heads, head_dim=c.ltm_head_dim,
                   chunk_size=c.ltm_chunk_size, summaries=c.ltm_summaries, levels=c.ltm_levels,
                   capacity=c.ltm_capacity, merge=c.ltm_merge, backend=c.backend,
                   n_layers=c.n_layers, device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self):
        c = self.config
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        self.out_proj.weight /= math.sqrt(c.n_layers)
        nn.init.normal_(self.q_pool, std=c.ltm_head_dim ** -0.5)
        nn.init.normal_(self.merge_q, std=c.ltm_head_dim ** -0.5)

    def __setattr__(self, name, value):
        # a controller attached to a module takes the module's train / eval mode; later
        # `train()` / `eval()` calls reach it as a submodule
        if name == "controller":
            if not isinstance(value, MemoryController):
                raise TypeError(f"LongTermMemory.controller: expected a MemoryController, got "
                                f"{type(value).__name__}")
            value.train(self.training)
        super().__setattr__(name, value)

    def check_state(self, st: LTMState, batch: int, where: str = "state.ltm"):
        """Raise a ValueError unless `st` is a bank this module can continue, for `batch`
        rows: its tensors' shapes, levels and unfinished chunk fit this config."""
        c = self.config
        if not isinstance(st, LTMState):
            raise TypeError(f"{where}: expected an LTMState, got {type(st).__name__}")
        if st.k.shape[0] != batch:
            raise ValueError(f"{where}: expected a state of batch size {batch}, got "
                             f"{st.k.shape[0]}")
        M = st.k.shape[1]
        H, Dh, C, L = c.ltm_heads, c.ltm_head_dim, c.ltm_chunk_size, c.ltm_levels
        n = st.pending_k.shape[1] if st.pending_k.dim() == 4 else -1
        shapes = {"k": (batch, M, H, Dh), "v": (batch, M, H, Dh), "level": (batch, M),
                  "start": (batch, M), "score": (batch, M), "usage": (batch, M),
                  "pending_k": (batch, n, H, Dh), "pending_v": (batch, n, H, Dh),
                  "retrieve": (batch,)}
        for name, shape in shapes.items():
            got = tuple(getattr(st, name).shape)
            if got != shape:
                raise ValueError(f"{where}.{name}: expected shape {list(shape)} (ltm_heads={H}, "
                                 f"ltm_head_dim={Dh}), got {list(got)} (a state of another "
                                 f"config)")
        if not 0 <= n < C:
            raise ValueError(f"{where}.pending_k: expected fewer than ltm_chunk_size={C} "
                             f"pending tokens, got {n} (a state of another chunk size)")
        if st.position % C != n:
            raise ValueError(f"{where}: {n} pending tokens at stream position {st.position} "
                             f"do not fit ltm_chunk_size={C} (a state of another chunk size)")
        if M and int(st.level.max()) >= L:
            raise ValueError(f"{where}.level: expected levels below ltm_levels={L}, got "
                             f"{int(st.level.max())} (a state of another config)")

    def initial_state(self, batch: int, device=None) -> LTMState:
        """An empty bank with nothing pending: the start of a stream."""
        H, Dh = self.config.ltm_heads, self.config.ltm_head_dim
        floats = lambda *shape: torch.zeros(*shape, device=device)
        return LTMState(
            k=floats(batch, 0, H, Dh), v=floats(batch, 0, H, Dh),
            level=torch.zeros(batch, 0, dtype=torch.int64),
            start=torch.zeros(batch, 0, dtype=torch.int64),
            score=floats(batch, 0), usage=floats(batch, 0),
            pending_k=floats(batch, 0, H, Dh), pending_v=floats(batch, 0, H, Dh),
            retrieve=torch.ones(batch, dtype=torch.bool),
            controller=self.controller.init_state(batch),
        )

    def forward(self, x: torch.Tensor, state: Optional[LayerState] = None) -> torch.Tensor:
        """Compress x's complete chunks into the bank and read the bank from every token.

        Args:
            x: [B, T, D].
            state: optional LayerState; its `ltm` (None: an empty bank) is the memory
                before x and is replaced by the memory after x.

        Returns:
            [B, T, D]; zeros when the controller is `none`.
        """
        if not self.controller.enabled:
            return torch.zeros_like(x)
        Bsz, T, _ = x.shape
        shape = (Bsz, T, self.config.ltm_heads, self.config.ltm_head_dim)
        q, k, v, gate = self.in_proj(x).split(self.splits, dim=-1)
        rec = self.remember(q.reshape(shape), k.reshape(shape), v.reshape(shape), state)
        return self.out_proj(rec.o.reshape(Bsz, T, -1) * torch.sigmoid(gate))

    def step(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        """One token per row: `forward` on x [B, D] as a segment of one token (the token
        joins the unfinished chunk, which is compressed and stored once complete).
        Returns [B, D]."""
        return self(x[:, None], state)[:, 0]

    def remember(self, q, k, v, state: Optional[LayerState] = None) -> Recall:
        """The memory without the projections: write k, v, read with q.

        Args:
            q, k, v: [B, T, H, Dh], one dtype.
            state: as in `forward`.

        Returns:
            Recall(o [B, T, H, Dh], lse [B, T, H], the segment's bank).
        """
        c = self.config
        dims = {"H": c.ltm_heads, "Dh": c.ltm_head_dim}
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_tensor(name, t, ("B", "T", "H", "Dh"), dims, device=q.device)
        check_same_dtype(("q", "k", "v"), (q, k, v))
        B, T = q.shape[:2]
        C = c.ltm_chunk_size
        st = state.ltm if state is not None and state.ltm is not None else \
            self.initial_state(B, q.device)
        if state is not None and state.ltm is not None:
            self.check_state(st, B)
        pos0, n_pend = st.position, st.pending_k.shape[1]
        kk = torch.cat([st.pending_k.to(k.dtype), k], 1)
        vv = torch.cat([st.pending_v.to(v.dtype), v], 1)
        n_chunks = (n_pend + T) // C
        bank = Bank(st, self.capacity, self._merge, c.ltm_merge)
        spans, flags = [0], [st.retrieve]  # token spans [spans[i], spans[i+1]) read if flags[i]
        if n_chunks:
            s_k, s_v, score = chunk_compress(kk[:, : n_chunks * C], vv[:, : n_chunks * C],
                                             self.q_pool, C, backend=c.backend)
            # once for all chunks, so that a boundary itself launches no device work
            s_k, s_v = s_k.transpose(2, 3).float(), s_v.transpose(2, 3).float()  # [B, n, P, H, Dh]
            score = score.mean(2)  # [B, n, P]: mean over heads
            usage = torch.zeros_like(score)
            first = (pos0 - n_pend) // C
            positions = [pos0 - n_pend + (i + 1) * C for i in range(n_chunks)]
            plan = self.controller.plan
            gate = None
            if plan is not None:  # one decision for every boundary, checked once
                decision = self._checked(plan.decision(B, score.shape[2]), B, score.shape[2])
            else:
                keys = s_k.detach().flatten(3)  # [B, n, P, H * Dh], what the controller sees
                if self.controller.differentiable:  # once per segment, with grad
                    gate = self.controller.gate(s_k.flatten(3))
                    # kept values times weight (exactly 1 forward): the loss reaches the gate
                    s_v = s_v * gate.weight[..., None, None].to(s_v.dtype)
            whole = _WholeChunks(self, s_k, s_v)
            for i, boundary in enumerate(positions):
                if plan is None:
                    decision = self._decide(bank, first + i, boundary, score[:, i],
                                            keys[:, i], st.controller,
                                            None if gate is None else gate.keep[:, i])
                flags.append(self._apply_decision(
                    bank, decision, boundary, s_k[:, i], s_v[:, i], score[:, i], usage[:, i],
                    st.controller, lambda i=i: whole[i]))
            spans += [boundary - pos0 for boundary in positions]
        spans.append(T)
        read = torch.cat([f[:, None].expand(B, spans[i + 1] - spans[i])
                          for i, f in enumerate(flags)], 1)  # [B, T] host

        mem_k, mem_v = bank.cat("k"), bank.cat("v")
        start = (bank.start - pos0).clamp(INT32_MIN, T)
        end = (bank.end.clamp(max=pos0 + T) - pos0).clamp(INT32_MIN, T)
        o, lse = self._retrieve(q, mem_k, mem_v, start, end, read)
        if self.controller.needs_usage:
            mass = attention_mass(q, mem_k, start.to(q.device), end.to(q.device), lse)
            bank.parts["usage"] = [bank.cat("usage") + mass]
        if state is not None:
            state.ltm = self._carry(bank, kk[:, n_chunks * C:], vv[:, n_chunks * C:],
                                    flags[-1], pos0 + T, st.controller)
        return Recall(o, lse, bank)

    def _decide(self, bank: Bank, chunk_index: int, position: int, score, keys, ctrl_state,
                gate=None) -> tuple[np.ndarray, torch.Tensor]:
        """Ask the controller about one chunk's summaries (score: [B, P]; keys: [B, P,
        H * Dh] detached; gate: [B, P] host bool, a differentiable controller's keep, or
        None); returns its checked answer, as `_checked`."""
        with torch.no_grad():
            features = ChunkFeatures(bank.view(position), chunk_index, position,
                                     score.detach(), keys, ctrl_state, gate)
            decision = self.controller.decide(features)
        return self._checked(decision, *score.shape)

    def _checked(self, decision: ChunkDecision, B: int, P: int
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """A ChunkDecision checked against B rows of P summaries: (action [B, P] int64
        array, retrieve [B] bool host tensor)."""
        action_t = torch.as_tensor(decision.action).cpu()
        retrieve = torch.as_tensor(decision.retrieve).cpu()
        action = action_t.numpy()
        if (action.shape != (B, P) or action_t.dtype.is_floating_point
                or retrieve.shape != (B,) or not ((action >= 0) & (action <= max(Action))).all()):
            raise ValueError(
                f"{self.controller!r}.decide: expected action [B={B}, P={P}] of Action values "
                f"and retrieve [B={B}], got action {list(action.shape)} {action_t.dtype} and "
                f"retrieve {list(retrieve.shape)}")
        return action, retrieve.bool()

    def _apply_decision(self, bank: Bank, decision, position: int, new_k, new_v, score, usage,
                        ctrl_state, whole=None) -> torch.Tensor:
        """Apply one boundary's checked decision (action, retrieve) to the chunk's summaries
        (new_k, new_v: [B, P, H, Dh]; score, usage: [B, P]); returns the [B] retrieve
        flags. whole: optional, () -> the chunk's P summaries pooled into one entry (k, v
        [B, 1, H, Dh], score [B, 1]), what COMPRESS makes when a row compresses all of them
        (made once per segment for every chunk, `_WholeChunks`)."""
        action, retrieve = decision
        store = action == Action.STORE
        if store.any():
            self._make_room(bank, 0, store.sum(1), position, ctrl_state)
            bank.add(new_k, new_v, score, usage, 0, position, store)
        compress = action == Action.COMPRESS
        if compress.any():
            if len(self.capacity) == 1:
                raise ValueError(f"{self.controller!r}.decide: COMPRESS needs ltm_levels >= 2")
            rows = compress.any(1)
            self._make_room(bank, 1, rows.astype(np.int64), position, ctrl_state)
            if whole is not None and compress[rows].all():  # every row that compresses, all P
                k1, v1, score1 = whole()
            else:
                k1, v1, score1 = self._merge_selected(new_k, new_v, torch.from_numpy(compress))
            bank.add(k1, v1, score1, torch.zeros_like(score1), 1, position, rows[:, None])
        return retrieve

    def _make_room(self, bank: Bank, level: int, need: np.ndarray, position: int,
                   ctrl_state):
        """Free level `level` until each row has room for need [B] more entries: merge r of
        its entries into the next level (making room there first), or evict at the top.
        An unbounded controller (`bounded = False`, store_all) never makes room."""
        if not self.controller.bounded:
            return
        top = level == len(self.capacity) - 1
        n = 1 if top else self.config.ltm_merge
        while True:
            rows = bank.count(level) + need > self.capacity[level]
            if not rows.any():
                return
            with torch.no_grad():
                idx = self.controller.select(LevelFeatures(
                    bank.view(position), level, n, torch.from_numpy(rows), top, ctrl_state))
            idx = self._check_selection(idx, bank, level, n, rows)
            if top:
                bank.close(idx, rows, position)
                continue
            bank.close(idx, rows, position)
            self._make_room(bank, level + 1, rows.astype(np.int64), position, ctrl_state)
            bank.add_merge(idx, level + 1, position, rows)

    def _merge(self, k: torch.Tensor, v: torch.Tensor, level: int, r: Optional[int] = None):
        """Pool each run of r entries (default ltm_merge) of k, v [B, n * r, H, Dh] into one
        entry of `level` with that level's merge query: k, v [B, n, H, Dh] and score
        [B, n]. COMPRESS is the same pooling into level 1, of a chunk's summaries."""
        r = self.config.ltm_merge if r is None else r
        s_k, s_v, score = chunk_compress(k, v, self.merge_q[level - 1], r,
                                         backend=self.config.backend)
        return s_k[:, :, :, 0], s_v[:, :, :, 0], score[..., 0].mean(2)

    def _check_selection(self, idx, bank: Bank, level: int, n: int, rows) -> np.ndarray:
        idx_t = torch.as_tensor(idx).cpu()
        if idx_t.shape != (rows.shape[0], n) or idx_t.dtype.is_floating_point:
            raise ValueError(f"{self.controller!r}.select: expected [B={rows.shape[0]}, {n}] "
                             f"int indices, got {list(idx_t.shape)} {idx_t.dtype}")
        idx = np.where(rows[:, None], idx_t.numpy().astype(np.int64), 0)
        ok = bank.holds(idx, level, rows)  # each of the level and live
        if ok and n > 1:  # and distinct
            ok = bool((np.diff(np.sort(idx[rows], 1), axis=1) != 0).all())
        if not ok:
            raise ValueError(f"{self.controller!r}.select: expected {n} distinct live entries "
                             f"of level {level} per row, got {idx[rows].tolist()}")
        return idx

    def _merge_selected(self, new_k, new_v, selected: torch.Tensor):
        """Pool each row's selected summaries (selected: [B, P] host bool) into one entry with
        level 0's merge query; rows are grouped by how many they select. Returns k, v
        [B, 1, H, Dh] and score [B, 1] (zeros in rows that select none)."""
        B, P, H, Dh = new_k.shape
        out_k, out_v = new_k.new_zeros(B, 1, H, Dh), new_v.new_zeros(B, 1, H, Dh)
        out_s = new_k.new_zeros(B, 1, dtype=torch.float32)
        counts = selected.sum(1)
        for n in counts.unique().tolist():
            if n == 0:
                continue
            rows = (counts == n).nonzero()[:, 0].to(new_k.device)
            order = torch.sort((~selected[counts == n]).long(), dim=1, stable=True).indices
            order = order[:, :n, None, None].expand(-1, -1, H, Dh).to(new_k.device)
            s_k, s_v, score = self._merge(new_k[rows].gather(1, order),
                                          new_v[rows].gather(1, order), 1, n)
            out_k = out_k.index_copy(0, rows, s_k)
            out_v = out_v.index_copy(0, rows, s_v)
            out_s = out_s.index_copy(0, rows, score)
        return out_k, out_v, out_s

    def _retrieve(self, q, mem_k, mem_v, start, end, read: torch.Tensor):
        """One memory_retrieve over the tokens that read (read: [B, T] host bool). Tokens no
        row reads are left out of the call; intervals are remapped to the kept tokens."""
        B, T, H, Dh = q.shape
        dev, backend = q.device, self.config.backend
        mem_k, mem_v = mem_k.to(q.dtype), mem_v.to(q.dtype)
        to_dev = lambda t: t.to(device=dev, dtype=torch.int32)
        if read.all():
            return memory_retrieve(q, mem_k, mem_v, to_dev(start), to_dev(end), backend=backend)
        o = q.new_zeros(B, T, H, Dh)
        lse = torch.full((B, T, H), float("-inf"), device=dev)
        keep = read.any(0)
        if keep.any():
            # kept tokens before position p: t >= start <=> kept(t) >= kept(start) for kept t
            kept_before = F.pad(keep.long().cumsum(0), (1, 0))
            tokens = keep.nonzero()[:, 0].to(dev)
            o_k, lse_k = memory_retrieve(
                q.index_select(1, tokens), mem_k, mem_v, to_dev(kept_before[start.clamp(0, T)]),
                to_dev(kept_before[end.clamp(0, T)]), backend=backend)
            o, lse = o.index_copy(1, tokens, o_k), lse.index_copy(1, tokens, lse_k)
        read = read.to(dev)[..., None]
        return torch.where(read[..., None], o, 0.0), lse.masked_fill(~read, float("-inf"))

    def _carry(self, bank: Bank, pending_k, pending_v, retrieve, position, controller
               ) -> LTMState:
        """The state after a segment: the live entries, compacted to the front of each row
        (bank order kept), and the unfinished chunk."""
        live = bank.live
        count = live.sum(1)
        M = int(count.max()) if live.numel() else 0
        order = torch.sort((~live).long(), dim=1, stable=True).indices[:, :M]
        used = torch.arange(M) < count[:, None]  # [B, M] host
        used_dev = used.to(bank.cat("k").device)
        take = lambda name: bank.gather(name, order)
        k = torch.where(used_dev[..., None, None], take("k"), 0.0)
        v = torch.where(used_dev[..., None, None], take("v"), 0.0)
        return LTMState(
            k=k, v=v, level=torch.where(used, bank.level.gather(1, order), -1),
            start=torch.where(used, bank.start.gather(1, order), 0),
            score=torch.where(used_dev, take("score"), 0.0),
            usage=torch.where(used_dev, take("usage"), 0.0),
            pending_k=pending_k.float(), pending_v=pending_v.float(), retrieve=retrieve,
            position=position, controller=controller,
        )


class _WholeChunks:
    """What COMPRESS makes of a chunk whose P summaries are all compressed, for every chunk of
    a segment at once: one `chunk_compress` call pools each chunk's summaries (s_k, s_v:
    [B, n, P, H, Dh]) into level 1 (`_merge`), the same pooling `_merge_selected` does
    for one chunk, made when a boundary first asks for it (a controller that never
    compresses pays nothing). `whole[i]` is chunk i's (k, v [B, 1, H, Dh], score [B, 1])."""

    def __init__(self, module: LongTermMemory, s_k: torch.Tensor, s_v: torch.Tensor):
        self.module, self.s_k, self.s_v = module, s_k, s_v
        self.pooled = None

    def __getitem__(self, i: int):
        if self.pooled is None:
            B, n, P, H, Dh = self.s_k.shape
            self.pooled = self.module._merge(self.s_k.reshape(B, n * P, H, Dh),
                                             self.s_v.reshape(B, n * P, H, Dh), 1, P)
        k, v, score = self.pooled
        return k[:, i: i + 1], v[:, i: i + 1], score[:, i: i + 1]


@torch.no_grad()
def attention_mass(q, mem_k, start, end, lse, block: int = 1024) -> torch.Tensor:
    """[B, M] float32: the softmax weight each entry received, mean over heads, summed over
    the tokens (its "usage"), recomputed from the retrieval's lse a block of tokens at a time.

    Args:
        q: [B, T, H, Dh]; mem_k: [B, M, H, Dh]; start, end: [B, M] intervals in the
            segment's positions; lse: [B, T, H] from the retrieval (-inf: the token read
            nothing).
    """
    B, T, H, Dh = q.shape
    mass = torch.zeros(B, mem_k.shape[1], device=q.device)
    if mem_k.shape[1] == 0:
        return mass
    for t0 in range(0, T, block):
        t = torch.arange(t0, min(T, t0 + block), device=q.device)
        z = torch.einsum("bthd,bmhd->bhtm", q[:, t0: t0 + block].float(), mem_k.float())
        lse_b = lse[:, t0: t0 + block].transpose(1, 2)[..., None]  # [B, H, tb, 1]
        vis = (start[:, None, :] <= t[:, None]) & (t[:, None] < end[:, None, :])
        vis = vis[:, None] & torch.isfinite(lse_b)
        p = torch.where(vis, torch.exp(z * Dh ** -0.5 - lse_b), 0.0)
        mass += p.sum(2).mean(1)
    return mass

