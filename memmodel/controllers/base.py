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

A controller whose `decide` answers the same at every boundary, in every row, whatever
the bank and the chunk (fifo, store_all), states that answer as its `plan` (a `Plan`).
The module then applies the plan to a whole segment's boundaries without calling
`decide`, through the same code that applies a `decide` answer; `select` is still asked
whenever a level is full. A subclass that redefines `decide` or `select` and does not
restate `plan` has none, so it is never run by a rule it no longer follows.

Timing of the features. A segment's decisions are all made before its one retrieval
call, so `usage` (the attention mass an entry has received) covers the stream up to the
end of the previous segment; an entry made in the current segment has usage 0 (a merged
entry starts with the sum of its parts'). Everything else is exact at the boundary.

Differentiable controllers. `decide` runs under `torch.no_grad`, one boundary at a time,
so a controller that learns from the task loss (`differentiable = True`, the `gumbel`
controller) answers one more question, once per segment and with autograd on:

    gate(keys [B, n, P, H * Dh]) -> Gate(keep [B, n, P] bool, weight [B, n, P])
        for all n chunks the segment completes: `keep` is handed to `decide` as
        `ChunkFeatures.gate` (that chunk's [B, P]), and the value of every summary that
        enters the bank is multiplied by its `weight` (1 in the forward pass, a
        straight-through estimator's gradient in the backward pass), so the loss on
        what the memory returns reaches the controller's parameters.

Controllers are `nn.Module`s owned by the model: `model.train()`, `model.eval()`,
`model.to()` and `state_dict()` reach them (a learning controller's networks are in the
model's state_dict). One controller may be shared by every layer (one module, registered
under each layer); its per-stream state (`init_state`) lives in each layer's
`LTMState.controller`.

The package: this file (the interface, the features, shared helpers), `heuristics`
(`fifo`, `importance`, `store_all`, `none`), `qlearning` (the learned controller and its
learner), `gumbel` (the keep gate trained by the task loss) and `registry`
(`CONTROLLERS`, `register_controller`, `build_controller`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn


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
        gate: [B, P] bool (host), a differentiable controller's `Gate.keep` for this
            chunk, computed once for the segment; None for the other controllers.
    """

    bank: BankView
    chunk_index: int
    position: int
    score: torch.Tensor
    keys: torch.Tensor
    controller_state: Any = None
    gate: Optional[torch.Tensor] = None

    @cached_property
    def max_similarity(self) -> torch.Tensor:
        """[B, P] float32 (host): the novelty feature, the largest cosine similarity between
        each new summary's key and a live entry's (1: a duplicate; -1 when the bank is
        empty)."""
        keys = on_host(self.bank.keys).numpy()
        if keys.shape[1] == 0:
            return torch.full(tuple(self.score.shape), -1.0)
        sim = unit_rows(on_host(self.keys).numpy()) @ unit_rows(keys).transpose(0, 2, 1)
        return torch.from_numpy(np.where(self.bank.live.numpy()[:, None, :], sim, -1.0).max(-1))


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


class Gate(NamedTuple):
    """The answer of a differentiable controller's `gate` for one segment's new summaries.

    Attributes:
        keep: [B, n, P] bool (host), the hard keep decision of each summary.
        weight: [B, n, P] float (device, differentiable), equal to `keep` in the forward
            pass; the module multiplies each kept summary's value by it.
    """

    keep: torch.Tensor
    weight: torch.Tensor


@dataclass(frozen=True)
class Plan:
    """A decision that holds at every chunk boundary, in every row, whatever the data:
    `action` for every new summary, `retrieve` for every row.

    Example:
        >>> Plan(Action.STORE, retrieve=True).decision(batch=2, summaries=3).action
        tensor([[0, 0, 0],
                [0, 0, 0]])
    """

    action: Action
    retrieve: bool

    def decision(self, batch: int, summaries: int) -> ChunkDecision:
        """The plan as the ChunkDecision of one boundary: action [batch, summaries],
        retrieve [batch]."""
        return ChunkDecision(
            action=torch.full((batch, summaries), int(self.action), dtype=torch.int64),
            retrieve=torch.full((batch,), self.retrieve, dtype=torch.bool))


class MemoryController(nn.Module):
    """The interface `LongTermMemory` calls. Subclass it and register it with
    `register_controller`.

    An `nn.Module`: its mode follows the model's (a learning controller explores and
    records only in training mode) and its parameters, if any, are the model's. Those of
    a reinforcement learner (qlearning) never carry a gradient outside their own
    learner's update, so the language model's optimiser leaves them alone; those of a
    differentiable controller (`differentiable = True`: gumbel) get their gradient from
    the language model's loss through `gate` and are trained by its optimiser.

    Attributes:
        enabled: False turns the long-term memory off (the module returns zeros and does
            no work); only the `none` controller sets it.
        needs_usage: True makes the module compute each entry's attention mass after every
            retrieval (an extra pass over the attention scores); heuristics without it
            skip that cost.
        bounded: False lifts the capacity: the module never makes room, so `select` is
            never called and levels grow without limit (only `store_all` sets it).
        plan: a `Plan` when `decide` always returns `plan.decision(B, P)`, whatever the
            features: the module then applies it without calling `decide`. None (the
            default): `decide` is asked at every boundary. A subclass that defines
            `decide` or `select` and not `plan` gets None.
        differentiable: True makes the module call `gate` once per segment, with
            autograd on, and weight the kept summaries' values by its answer (see the
            module docstring); False (the default): `gate` is never called.
    """

    name = "base"
    enabled = True
    needs_usage = False
    bounded = True
    differentiable = False
    plan: Optional[Plan] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # an inherited plan states what the parent's rules do; a class that changes
        # them keeps it only by stating it again
        if ("decide" in cls.__dict__ or "select" in cls.__dict__) and "plan" not in cls.__dict__:
            cls.plan = None

    def __init__(self, config: Optional[Any] = None):
        super().__init__()
        self.config = config

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

    def gate(self, keys: torch.Tensor) -> Gate:
        """A differentiable controller's keep gate for one segment's new summaries
        (keys: [B, n, P, H * Dh], not detached); only called when `differentiable`."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""


def uniform_decision(features: ChunkFeatures, action: Action, retrieve: bool) -> ChunkDecision:
    """The same `action` for every new summary and the same `retrieve` for every row."""
    return Plan(action, retrieve).decision(*features.score.shape)


def on_host(t: torch.Tensor) -> torch.Tensor:
    """A device field (score, usage, keys) as a controller computes with it: detached,
    float32, on the host."""
    return t.detach().float().cpu()


def unit_rows(a: np.ndarray) -> np.ndarray:
    """a [..., K] float32 with each row scaled to unit L2 norm (as `F.normalize`: a zero row
    stays zero)."""
    norm = np.sqrt((a * a).sum(-1, keepdims=True))
    return a / np.maximum(norm, np.float32(1e-12))


def ranked(score: torch.Tensor) -> torch.Tensor:
    """Scores as the heuristics rank them: a NaN score (an entry made from non-finite
    activations) ranks lowest, so it is the first to go and never displaces a real one."""
    return score.nan_to_num(nan=float("-inf"))
