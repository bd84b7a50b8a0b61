"""The bank of one segment of LongTermMemory: its entries' bookkeeping and data.

`memmodel.long_term_memory` documents the bank's intervals and levels; this file holds how
a segment's bank is kept while the chunk boundaries change it, and what `remember`
returns of it once the segment is done.
"""

from __future__ import annotations

import numpy as np
import torch

from .controllers.base import BankView
from .state import LTMState

OPEN = torch.iinfo(torch.int64).max  # the end of a live entry's interval


class Bank:
    """Every entry live at some point of one segment (carried in, made, merged or
    evicted), one column each, in the order the bank made them.

    Columns are only appended, never removed, so an index names one entry for the whole
    segment. The bookkeeping is on the host, in NumPy arrays: a chunk boundary does a few
    dozen operations on them, and a NumPy operation on a small array costs a fraction of a
    torch one. Device data (k, v, score, usage) is kept as a list of [B, m, ...] blocks,
    concatenated when read. An entry merged from others is only recorded when it is made
    (its column, level and source columns); merges are pooled when the data is next read,
    all merges into one level in one `merge` call, so a controller that reads no device
    field (fifo) costs no device work at a chunk boundary.

    Read (torch tensors; the bookkeeping on the host, zero-copy views of the arrays):
        k, v: [B, M, H, Dh] float32, the entries' keys and values.
        level: [B, M] int64, the entry's level; -1 where the column holds no entry of
            that row.
        start, end: [B, M] int64 stream positions: the entry is visible to the tokens
            `start <= t < end`; end is `OPEN` for an entry still live.
        live: [B, M] bool, the entry is in the bank now.
        position: the segment's first stream position.

    Args:
        st: the LTMState the segment starts from.
        capacity: entries per level.
        merge: merge(k, v [B, n * r, H, Dh], level) -> (k, v [B, n, H, Dh], score [B, n]),
            pooling each run of r entries into one entry of `level`.
        r: entries per merge.
    """

    FIELDS = ("k", "v", "score", "usage")

    def __init__(self, st: LTMState, capacity, merge, r: int):
        self.capacity, self.merge, self.r = capacity, merge, r
        self.position = st.position
        self.parts = {name: [getattr(st, name)] for name in self.FIELDS}
        self.concrete = list(range(st.k.shape[1]))  # columns held in parts, in order
        self.merges = []  # (column, level, source columns [B, r] host), in making order
        self._level = st.level.numpy()
        self._start = st.start.numpy()
        self._end = np.where(st.live.numpy(), OPEN, self._start)  # empty slots: empty intervals
        # the segment's grad mode: merges pooled while a controller looks (under no_grad)
        # must still be differentiable
        self.grad = torch.is_grad_enabled()

    @property
    def k(self) -> torch.Tensor:
        return self.cat("k")

    @property
    def v(self) -> torch.Tensor:
        return self.cat("v")

    @property
    def level(self) -> torch.Tensor:
        return torch.from_numpy(self._level)

    @property
    def start(self) -> torch.Tensor:
        return torch.from_numpy(self._start)

    @property
    def end(self) -> torch.Tensor:
        return torch.from_numpy(self._end)

    @property
    def live(self) -> torch.Tensor:
        return torch.from_numpy(self._live())

    @property
    def columns(self) -> int:
        """M, the columns so far."""
        return self._level.shape[1]

    def cat(self, name: str) -> torch.Tensor:
        """The device field `name` over every column: [B, M, ...]."""
        self._resolve()
        return self.parts[name][0]

    def count(self, level: int) -> np.ndarray:
        """[B] int64: live entries of `level` per row."""
        return ((self._level == level) & self._live()).sum(1)

    def add(self, k, v, score, usage, level: int, start: int, live: np.ndarray):
        """Append entries k, v [B, n, H, Dh], score, usage [B, n] of `level`, visible from
        `start`, in the rows where live: [B, n] bool array."""
        col = self.columns
        self.concrete.extend(range(col, col + live.shape[1]))
        self.parts["k"].append(k.float())
        self.parts["v"].append(v.float())
        self.parts["score"].append(score.detach().float())
        self.parts["usage"].append(usage.detach().float())
        self._append_meta(live, level, start)

    def add_merge(self, idx: np.ndarray, level: int, start: int, rows: np.ndarray):
        """Append one entry of `level` per row, pooled from the columns idx [B, r] in the
        rows [B] (bool) that merge; pooled when the data is next read."""
        self.merges.append((self.columns, level, idx))
        self._append_meta(rows[:, None], level, start)

    def close(self, idx: np.ndarray, rows: np.ndarray, position: int):
        """End the intervals of entries idx [B, n] in the rows [B] at `position`."""
        b = np.nonzero(rows)[0]
        self._end[b[:, None], idx[b]] = position

    def holds(self, idx: np.ndarray, level: int, rows: np.ndarray) -> bool:
        """Whether, in each of the rows [B] (bool), the columns idx [B, n] are live
        entries of `level`."""
        r = np.nonzero(rows)[0][:, None]
        chosen = idx[r[:, 0]]
        if chosen.size == 0:
            return True
        if chosen.min() < 0 or chosen.max() >= self.columns:
            return False
        return bool((self._level[r, chosen] == level).all()
                    and (self._end[r, chosen] == OPEN).all())

    def gather(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """The device field `name` at the columns idx [B, n] -> [B, n, ...]."""
        return _take(self.cat(name), idx.to(self.parts[name][0].device))

    def view(self, position: int) -> BankView:
        """What a controller sees at the boundary at `position`: host fields as they are
        now, device fields read when first asked for."""
        M = self.columns

        def device_field(name):
            if name == "keys":
                return self.cat("k")[:, :M].detach().flatten(2)
            return self.cat(name)[:, :M]

        return BankView(position, self.capacity, self.live, self.level, self.start,
                        device_field)

    def _live(self) -> np.ndarray:
        return self._end == OPEN

    def _append_meta(self, live: np.ndarray, level: int, start: int):
        self._level = np.concatenate([self._level, np.where(live, level, -1)], 1)
        self._start = np.concatenate([self._start, np.full(live.shape, start, np.int64)], 1)
        self._end = np.concatenate([self._end, np.where(live, OPEN, start)], 1)

    def _resolve(self):
        """Concatenate the blocks and pool the recorded merges, level by level (a merge's
        sources are one level below it, so they are ready when its level comes)."""
        if len(self.parts["k"]) == 1 and not self.merges:
            return
        with torch.set_grad_enabled(self.grad):
            self.parts = self._pooled()

    def _pooled(self):
        """{field: [one [B, M, ...] tensor]}: the blocks concatenated, merges pooled."""
        data = {name: torch.cat(self.parts[name], 1) for name in self.FIELDS}
        if self.merges:
            B, M, dev = self._level.shape[0], self.columns, data["k"].device
            cols = torch.tensor(self.concrete, device=dev)
            data = {name: t.new_zeros((B, M, *t.shape[2:])).index_copy(1, cols, t)
                    for name, t in data.items()}
            for level in sorted({lv for _, lv, _ in self.merges}):
                group = [(col, idx) for col, lv, idx in self.merges if lv == level]
                target = torch.tensor([col for col, _ in group], device=dev)
                src = torch.from_numpy(np.concatenate([idx for _, idx in group], 1)).to(dev)
                k, v, score = self.merge(_take(data["k"], src), _take(data["v"], src), level)
                usage = _take(data["usage"], src).view(B, len(group), self.r).sum(2)
                for name, t in (("k", k), ("v", v), ("score", score.detach().float()),
                                ("usage", usage)):
                    data[name] = data[name].index_copy(1, target, t.to(data[name].dtype))
            self.concrete, self.merges = list(range(M)), []
        return {name: [t] for name, t in data.items()}


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, M, ...] gathered along the columns idx [B, n] -> [B, n, ...]."""
    if t.dim() > 2:
        idx = idx[..., None, None].expand(-1, -1, *t.shape[2:])
    return t.gather(1, idx)
