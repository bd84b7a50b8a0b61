"""The bank of one segment of LongTermMemory: its entries' bookkeeping and data.

Internal to `memmodel.long_term_memory`, which documents the bank's intervals and levels;
this file holds how a segment's bank is kept while the chunk boundaries change it.
"""

from __future__ import annotations

import numpy as np
import torch

from .controllers.base import BankView
from .state import LTMState

OPEN = torch.iinfo(torch.int64).max  # the end of a live entry's interval


class Bank:
    """A segment's bank as it evolves: columns are only appended, never removed, so an
    index names one entry for the whole segment. Bookkeeping (level, start, end: [B, M]
    int64) is on the host, in NumPy arrays: a chunk boundary does a few dozen operations on
    them, and a NumPy operation on a small array costs a fraction of a torch one.

    Device data (k, v, score, usage) is kept as a list of [B, m, ...] blocks, concatenated
    when read. An entry merged from others is only recorded when it is made (its column,
    level and source columns); merges are pooled when the data is next read, all merges
    into one level in one `merge` call, so a controller that reads no device field (fifo)
    costs no device work at a chunk boundary.

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
        self.parts = {name: [getattr(st, name)] for name in self.FIELDS}
        self.concrete = list(range(st.k.shape[1]))  # columns held in parts, in order
        self.merges = []  # (column, level, source columns [B, r] host), in making order
        self.level = st.level.numpy()
        self.start = st.start.numpy()
        self.end = np.where(st.live.numpy(), OPEN, self.start)  # empty slots: empty intervals
        # the segment's grad mode: merges pooled while a controller looks (under no_grad)
        # must still be differentiable
        self.grad = torch.is_grad_enabled()

    def cat(self, name: str) -> torch.Tensor:
        self._resolve()
        return self.parts[name][0]

    def live(self) -> np.ndarray:
        return self.end == OPEN

    def count(self, level: int) -> np.ndarray:
        return ((self.level == level) & self.live()).sum(1)

    def add(self, k, v, score, usage, level: int, start: int, live: torch.Tensor):
        """Append entries k, v [B, n, H, Dh], score, usage [B, n]; live: [B, n] bool array."""
        col = self.level.shape[1]
        self.concrete.extend(range(col, col + live.shape[1]))
        self.parts["k"].append(k.float())
        self.parts["v"].append(v.float())
        self.parts["score"].append(score.detach().float())
        self.parts["usage"].append(usage.detach().float())
        self._append_meta(live, level, start)

    def add_merge(self, idx: np.ndarray, level: int, start: int, rows: np.ndarray):
        """Append one entry of `level` per row, pooled from the columns idx [B, r] in the
        rows [B] (bool) that merge; pooled when the data is next read."""
        self.merges.append((self.level.shape[1], level, idx))
        self._append_meta(rows[:, None], level, start)

    def _append_meta(self, live: np.ndarray, level: int, start: int):
        self.level = np.concatenate([self.level, np.where(live, level, -1)], 1)
        self.start = np.concatenate([self.start, np.full(live.shape, start, np.int64)], 1)
        self.end = np.concatenate([self.end, np.where(live, OPEN, start)], 1)

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
            B, M, dev = self.level.shape[0], self.level.shape[1], data["k"].device
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

    def close(self, idx: np.ndarray, rows: np.ndarray, position: int):
        """End the intervals of entries idx [B, n] in the rows [B] at `position`."""
        b = np.nonzero(rows)[0]
        self.end[b[:, None], idx[b]] = position

    def gather(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        return _take(self.cat(name), idx.to(self.parts[name][0].device))

    def view(self, position: int) -> BankView:
        M = self.level.shape[1]

        def device_field(name):
            if name == "keys":
                return self.cat("k")[:, :M].detach().flatten(2)
            return self.cat(name)[:, :M]

        return BankView(position, self.capacity, torch.from_numpy(self.live()),
                        torch.from_numpy(self.level), torch.from_numpy(self.start), device_field)


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, M, ...] gathered along the columns idx [B, n] -> [B, n, ...]."""
    if t.dim() > 2:
        idx = idx[..., None, None].expand(-1, -1, *t.shape[2:])
    return t.gather(1, idx)
