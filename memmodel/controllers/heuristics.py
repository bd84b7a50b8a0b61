"""The baseline controllers: `fifo`, `importance`, `store_all` and `none`."""

from __future__ import annotations

import torch

from .base import (
    Action,
    ChunkDecision,
    ChunkFeatures,
    LevelFeatures,
    MemoryController,
    Plan,
    on_host,
    ranked,
    uniform_decision,
)


def oldest(features: LevelFeatures) -> torch.Tensor:
    """[B, count] int64: per row, the live entries of the level that became visible first
    (ties, the summaries of one chunk, in bank order)."""
    bank = features.bank
    candidate = bank.live & (bank.level == features.level)
    key = torch.where(candidate, bank.start, torch.iinfo(torch.int64).max)
    return torch.sort(key, dim=1, stable=True).indices[:, : features.count]


STORE_AND_READ = Plan(Action.STORE, retrieve=True)  # fifo's and store_all's decision


class FifoController(MemoryController):
    """Store every summary and read every chunk; a full level merges (or, at the top,
    evicts) its oldest entries. The same decisions in every batch row, stated as its
    `plan`, so the module applies them without a `decide` call per boundary."""

    name = "fifo"
    plan = STORE_AND_READ

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        return STORE_AND_READ.decision(*features.score.shape)

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


def highest_scores(features: ChunkFeatures) -> ChunkDecision:
    """importance's decision at a boundary: STORE every new summary, except, with a single
    level, DISCARD those not among the `capacity` highest scores of the level's live
    entries and the chunk's summaries together; read every chunk."""
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
        return highest_scores(features)

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
    plan = STORE_AND_READ

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        return STORE_AND_READ.decision(*features.score.shape)

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
