"""MemoryState: everything a model carries from one segment of a stream to the next."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

LTM_TENSORS = ("k", "v", "level", "start", "score", "usage", "pending_k", "pending_v",
               "retrieve")


@dataclass
class LTMState:
    """The long-term memory's carried state: its live bank and the unfinished chunk.

    Bank fields hold one slot per entry, M <= sum of the level capacities; rows with fewer
    live entries are padded with empty slots (level -1). Entries are in the order they
    were made, so `start` is non-decreasing over a row's live slots. Bookkeeping that the
    controller reads on the host stays on the host, so heuristic controllers never wait
    for the device.

    Attributes:
        k, v: [B, M, H, Dh] float32, the entries' keys and values.
        level: [B, M] int64 (host), the entry's level; -1 for an empty slot.
        start: [B, M] int64 (host), the stream position from which it is visible.
        score: [B, M] float32, its pooling score (logsumexp, mean over heads).
        usage: [B, M] float32, attention mass received so far (mean over heads, summed
            over tokens); only accumulated when the controller asks for it.
        pending_k, pending_v: [B, n, H, Dh] float32, the n < C tokens of the chunk in
            progress, compressed once the next segment completes it.
        retrieve: [B] bool (host), whether the chunk in progress reads the bank.
        position: tokens of the stream seen so far.
        controller: the controller's per-stream state (`init_state`).
    """

    k: torch.Tensor
    v: torch.Tensor
    level: torch.Tensor
    start: torch.Tensor
    score: torch.Tensor
    usage: torch.Tensor
    pending_k: torch.Tensor
    pending_v: torch.Tensor
    retrieve: torch.Tensor
    position: int = 0
    controller: Any = None

    @property
    def live(self) -> torch.Tensor:
        """[B, M] bool (host): the slots holding an entry."""
        return self.level >= 0

    def detach(self) -> LTMState:
        """Detach every device tensor in place; returns self."""
        for name in ("k", "v", "score", "usage", "pending_k", "pending_v"):
            setattr(self, name, getattr(self, name).detach())
        return self


@dataclass
class LayerState:
    """One block's carried state.

    Attributes:
        conv: [B, E, d_conv - 1], the last inputs of the causal convolution (None: zeros).
        ssm: [B, E, N] float32, the selective scan's state (None: zeros).
        wm: (Mk, Mv), the working memory's slots [B, H, S, Dh] float32 (None: the
            learned initial slots).
        ltm: the long-term memory's bank and unfinished chunk (None: an empty bank).
    """

    conv: Optional[torch.Tensor] = None
    ssm: Optional[torch.Tensor] = None
    wm: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ltm: Optional[LTMState] = None


@dataclass
class MemoryState:
    """Per-layer states of a MemoryLM, plus the number of tokens seen so far.

    A fresh state (all None) means "start of the stream". Pass the state a forward call
    returned to the next call to continue the same stream; call `detach()` between
    segments to stop gradients at the boundary (truncated backprop through time).

    `signature` records what made the state (the model's state-shaping sizes and the batch
    size, set by the first forward call); a model refuses a state whose signature or
    tensors do not fit it.
    """

    layers: list[LayerState] = field(default_factory=list)
    position: int = 0
    signature: Optional[dict[str, Any]] = None
    # A MemoryClassifier with mean pooling: [B, D] float32, the sum of its final hidden
    # states over the stream so far (None otherwise).
    pool: Optional[torch.Tensor] = None

    @classmethod
    def empty(cls, n_layers: int) -> MemoryState:
        return cls(layers=[LayerState() for _ in range(n_layers)])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds (the controllers' per-stream records aside)."""
        out = []
        for layer in self.layers:
            out += [t for t in (layer.conv, layer.ssm) if t is not None]
            if layer.wm is not None:
                out += list(layer.wm)
            if layer.ltm is not None:
                out += [getattr(layer.ltm, name) for name in LTM_TENSORS]
        if self.pool is not None:
            out.append(self.pool)
        return out

    def nbytes(self) -> int:
        """Bytes held by the state's tensors, all rows together."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def detach(self) -> MemoryState:
        """Detach every tensor in place; returns self."""
        for layer in self.layers:
            if layer.conv is not None:
                layer.conv = layer.conv.detach()
            if layer.ssm is not None:
                layer.ssm = layer.ssm.detach()
            if layer.wm is not None:
                layer.wm = (layer.wm[0].detach(), layer.wm[1].detach())
            if layer.ltm is not None:
                layer.ltm.detach()
        if self.pool is not None:
            self.pool = self.pool.detach()
        return self
