"""Memory controllers: who decides what the long-term memory stores, merges, evicts and reads.

`LongTermMemory` calls its controller at every chunk boundary, that is each time C more
tokens of a stream have been compressed into P new summaries, and shows it chunk-level
features only (`ChunkFeatures`, `LevelFeatures`, both over a `BankView`). Two questions:

    decide(ChunkFeatures) -> ChunkDecision
        per new summary: STORE (into level 0), COMPRESS (merge the chunk's COMPRESS
        summaries into one level-1 entry) or DISCARD; per batch row: RETRIEVE during the
        next chunk or skip it (a chunk no row retrieves costs no retrieval work).
    select(LevelFeatures) -> [B, n] entry indices
        a level is full: which n of its live entries go. Below the top level they are
        merged (n = r of them into one entry of the next level); at the top, evicted.

Every decision is per batch row, so a controller that ranks entries by content may treat
each row differently. Decisions are applied in order and turned into the `[start, end)`
intervals the single retrieval call of a segment reads (docs/architecture.md).

Timing of the features. A segment's decisions are all made before its one retrieval
call, so `usage` (the attention mass an entry has received) covers the stream up to the
end of the previous segment; an entry made in the current segment has usage 0 (a merged
entry starts with the sum of its parts'). Everything else is exact at the boundary.

Controllers are plain objects, not `nn.Module`s: a learned controller's network is not a
parameter of the language model. They follow the train / eval mode of the module that
runs them (`model.eval()` reaches them). One controller may be shared by every layer; its
per-stream state (`init_state`) lives in each layer's `LTMState.controller`.

Shipped here, the baselines: `fifo` (store everything, merge or evict the oldest),
`importance` (keep the highest pooling scores), `store_all` (keep everything: no capacity,
the upper bound) and `none` (no long-term memory). The learned controller, `qlearning`,
lives in `memmodel.rl`. `build_controller(config)` looks a name up in `CONTROLLERS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F


class Action(enum.IntEnum):
    """What happens to one new summary."""

    STORE = 0  # a new level-0 entry
    COMPRESS = 1  # merged with the chunk's other COMPRESS summaries into one level-1 entry
    DISCARD = 2  # dropped


@dataclass
class BankView:
    """The bank at one chunk boundary, as a controller sees it.

    One column per entry the current segment knows of (live or not); index m of every
    [B, M] field is the same entry, and `select` answers with these indices. Host
    fields are snapshots; device fields are computed on first use and read the bank as
    it is during the controller call (use them then, not later).

    Attributes:
        position: the boundary's token position in the stream.
        capacity: entries per level.
        live: [B, M] bool (host), the entry is in the bank now.
        level: [B, M] int64 (host), its level; -1 where never live in that row.
        start: [B, M] int64 (host), the first token position that sees it.
    """

    position: int
    capacity: Sequence[int]
    live: torch.Tensor
    level: torch.Tensor
    start: torch.Tensor
    _device_fields: Callable[[str], torch.Tensor] = field(repr=False)

    @property
    def age(self) -> torch.Tensor:
        """[B, M] int64 (host): tokens since the entry became visible."""
        return self.position - self.start

    @cached_property
    def occupancy(self) -> torch.Tensor:
        """[B, levels] int64 (host): live entries per level."""
        levels = torch.arange(len(self.capacity))
        return ((self.level[..., None] == levels) & self.live[..., None]).sum(1)

    @cached_property
    def usage(self) -> torch.Tensor:
        """[B, M] float32 (device): attention mass received, mean over heads, summed over
        tokens, up to the end of the previous segment."""
        return self._device_fields("usage")

    @cached_property
    def score(self) -> torch.Tensor:
        """[B, M] float32 (device): the entry's pooling score (logsumexp, mean over heads)."""
        return self._device_fields("score")

    @cached_property
    def keys(self) -> torch.Tensor:
        """[B, M, H * Dh] float32 (device, detached): the entries' keys."""
        return self._device_fields("keys")


@dataclass
class ChunkFeatures:
    """What `decide` sees when a chunk is complete.

    Attributes:
        bank: the bank before this chunk's summaries arrive.
        chunk_index: which chunk of the stream (0 is tokens [0, C)).
        position: token position right after the chunk: where its entries become visible.
        score: [B, P] float32 (device), each new summary's pooling score (mean over heads).
        keys: [B, P, H * Dh] float32 (device, detached), the new summaries' keys.
        controller_state: this stream's `init_state` value, for the controller to update.
    """

    bank: BankView
    chunk_index: int
    position: int
    score: torch.Tensor
    keys: torch.Tensor
    controller_state: Any = None

    @cached_property
    def max_similarity(self) -> torch.Tensor:
        """[B, P] float32: the novelty feature, the largest cosine similarity between each new
        summary's key and a live entry's (1: a duplicate; -1 when the bank is empty)."""
        keys = self.bank.keys
        if keys.shape[1] == 0:
            return self.score.new_full(self.score.shape, -1.0)
        sim = F.normalize(self.keys, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)
        live = self.bank.live.to(sim.device)[:, None, :]
        return sim.masked_fill(~live, -1.0).amax(-1)

    def relative_position(self, horizon: int) -> float:
        """position / horizon, clipped to [0, 1]: how far into a stream of `horizon` tokens."""
        return min(max(self.position / horizon, 0.0), 1.0)


@dataclass
class LevelFeatures:
    """What `select` sees when level `level` must give up entries.

    Attributes:
        bank: the bank now (this boundary's earlier decisions applied).
        level: the full level.
        count: n, entries to choose per row (r to merge below the top level, 1 at the top).
        rows: [B] bool (host), the rows that need room; other rows' answers are ignored.
        top: True when the chosen entries are evicted rather than merged.
        controller_state: as in ChunkFeatures.
    """

    bank: BankView
    level: int
    count: int
    rows: torch.Tensor
    top: bool
    controller_state: Any = None


@dataclass
class ChunkDecision:
    """The answer of `decide`.

    Attributes:
        action: [B, P] int64, an `Action` per new summary.
        retrieve: [B] bool, read the bank during the next chunk's tokens.
    """

    action: torch.Tensor
    retrieve: torch.Tensor


class MemoryController:
    """The interface `LongTermMemory` calls. Subclass it and register in `CONTROLLERS`.

    Attributes:
        enabled: False turns the long-term memory off (the module returns zeros and does
            no work); only the `none` controller sets it.
        needs_usage: True makes the module compute each entry's attention mass after every
            retrieval (an extra pass over the attention scores); heuristics without it
            skip that cost.
        bounded: False lifts the capacity: the module never makes room, so `select` is
            never called and levels grow without limit (only `store_all` sets it).
    """

    name = "base"
    enabled = True
    needs_usage = False
    bounded = True
    training = True

    def __init__(self, config: Optional[Any] = None):
        self.config = config
        self.training = True

    def train(self, mode: bool = True) -> "MemoryController":
        """Training (True) or evaluation (False) mode. `LongTermMemory` sets it to its own
        mode, so `model.train()` / `model.eval()` reach every controller; a learning
        controller explores and records only in training mode."""
        self.training = bool(mode)
        return self

    def eval(self) -> "MemoryController":
        return self.train(False)

    def init_state(self, batch_size: int) -> Any:
        """Per-stream state kept in `LTMState.controller` (None: nothing to keep)."""
        return None

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        """STORE / COMPRESS / DISCARD each new summary and RETRIEVE or not, per row."""
        raise NotImplementedError

    def select(self, features: LevelFeatures) -> torch.Tensor:
        """[B, features.count] int64: distinct live entries of `features.level`, per row
        (only the rows in `features.rows` are read)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def uniform_decision(features: ChunkFeatures, action: Action, retrieve: bool) -> ChunkDecision:
    """The same `action` for every new summary and the same `retrieve` for every row."""
    B, P = features.score.shape
    return ChunkDecision(action=torch.full((B, P), int(action), dtype=torch.int64),
                         retrieve=torch.full((B,), retrieve, dtype=torch.bool))


def on_host(t: torch.Tensor) -> torch.Tensor:
    """A device field (score, usage, keys) as a controller computes with it: detached,
    float32, on the host."""
    return t.detach().float().cpu()


def ranked(score: torch.Tensor) -> torch.Tensor:
    """Scores as the heuristics rank them: a NaN score (an entry made from non-finite
    activations) ranks lowest, so it is the first to go and never displaces a real one."""
    return score.nan_to_num(nan=float("-inf"))


def oldest(features: LevelFeatures) -> torch.Tensor:
    """[B, count] int64: per row, the live entries of the level that became visible first
    (ties, the summaries of one chunk, in bank order)."""
    bank = features.bank
    candidate = bank.live & (bank.level == features.level)
    key = torch.where(candidate, bank.start, torch.iinfo(torch.int64).max)
    return torch.sort(key, dim=1, stable=True).indices[:, : features.count]


class FifoController(MemoryController):
    """Store every summary and read every chunk; a full level merges (or, at the top,
    evicts) its oldest entries. The same decisions in every batch row."""

    name = "fifo"

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        return uniform_decision(features, Action.STORE, retrieve=True)

    def select(self, features: LevelFeatures) -> torch.Tensor:
        return oldest(features)


def lowest_scores(features: LevelFeatures) -> torch.Tensor:
    """[B, count] int64: per row, the live entries of the level with the lowest pooling
    scores (ties: the older first)."""
    bank = features.bank
    candidate = bank.live & (bank.level == features.level)
    score = ranked(on_host(bank.score))
    key = torch.where(candidate, score, float("inf"))
    return torch.sort(key, dim=1, stable=True).indices[:, : features.count]


class ImportanceController(MemoryController):
    """`importance`: keep the summaries with the highest pooling scores; read every chunk.

    A full level gives up its lowest-scored entries (merged into the next level, or
    evicted at the top). With a single level the new summaries compete too: `decide`
    DISCARDs each new summary that would not be among the `capacity` highest scores of
    the live entries and the chunk's summaries together, so the bank always holds the
    highest scores seen. With several levels every summary is STOREd (level 0 keeps the
    highest scores, and what it gives up is merged upward, not lost); the top level
    admits each merged entry and evicts its lowest-scored live one.
    """

    name = "importance"

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        B, P = features.score.shape
        action = torch.full((B, P), int(Action.STORE), dtype=torch.int64)
        bank = features.bank
        if len(bank.capacity) == 1:
            live = bank.live & (bank.level == 0)
            old = torch.where(live, ranked(on_host(bank.score)), float("-inf"))
            both = torch.cat([ranked(on_host(features.score)), old], 1)  # new first
            keep = min(bank.capacity[0], both.shape[1])
            top = torch.sort(both, dim=1, descending=True, stable=True).indices[:, :keep]
            kept = torch.zeros_like(both, dtype=torch.bool).scatter_(1, top, True)[:, :P]
            action[~kept] = int(Action.DISCARD)
        return ChunkDecision(action=action, retrieve=torch.ones(B, dtype=torch.bool))

    def select(self, features: LevelFeatures) -> torch.Tensor:
        return lowest_scores(features)


class StoreAllController(MemoryController):
    """`store_all`: store every summary at level 0, never merge or evict, read every chunk.

    The upper bound of the ablations: the bank holds every chunk of the stream, so
    memory and retrieval work grow linearly with its length. The capacity is bypassed by
    `bounded = False`: `LongTermMemory` then never makes room (no merge, no eviction, no
    `select` call), whatever `ltm_capacity` says.
    """

    name = "store_all"
    bounded = False

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        return uniform_decision(features, Action.STORE, retrieve=True)

    def select(self, features: LevelFeatures) -> torch.Tensor:
        raise RuntimeError("the 'store_all' controller is unbounded, so no level fills")


class NoMemoryController(MemoryController):
    """`none`: no long-term memory. `Block` builds no LongTermMemory for it, and a
    LongTermMemory given it returns zeros without touching its state."""

    name = "none"
    enabled = False

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        return uniform_decision(features, Action.DISCARD, retrieve=False)

    def select(self, features: LevelFeatures) -> torch.Tensor:
        raise RuntimeError("the 'none' controller keeps no entries, so no level fills")


def _qlearning(config: Optional[Any] = None) -> MemoryController:
    from .rl import QLearningController  # rl imports this module: look it up when built

    return QLearningController(config)


# name -> factory(config): every entry returns a MemoryController built from the config.
CONTROLLERS: Dict[str, Callable[..., MemoryController]] = {
    "none": NoMemoryController,
    "fifo": FifoController,
    "importance": ImportanceController,
    "store_all": StoreAllController,
    "qlearning": _qlearning,
}


def build_controller(config: Optional[Any] = None, name: Optional[str] = None) -> MemoryController:
    """The controller named `name` (default: `config.ltm_controller`).

    Args:
        config: a MemoryConfig, or None when `name` is given.
        name: a key of `CONTROLLERS`.

    Example:
        >>> build_controller(name="fifo")
        FifoController()
    """
    if name is None:
        if config is None:
            raise ValueError("build_controller: expected a config or a name, got neither")
        name = config.ltm_controller
    if name not in CONTROLLERS:
        raise ValueError(f"controller: expected one of {sorted(CONTROLLERS)}, got {name!r}")
    return CONTROLLERS[name](config)
