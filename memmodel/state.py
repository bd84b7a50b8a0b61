"""MemoryState: everything a model carries from one segment of a stream to the next."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class LayerState:
    """One block's carried state.

    Attributes:
        conv: [B, E, d_conv - 1], the last inputs of the causal convolution (None: zeros).
        ssm: [B, E, N] float32, the selective scan's state (None: zeros).
    """

    conv: Optional[torch.Tensor] = None
    ssm: Optional[torch.Tensor] = None

    def tensors(self) -> List[Optional[torch.Tensor]]:
        return [self.conv, self.ssm]


@dataclass
class MemoryState:
    """Per-layer states of a MemoryLM, plus the number of tokens seen so far.

    A fresh state (all None) means "start of the stream". Pass the state a forward call
    returned to the next call to continue the same stream; call `detach()` between
    segments to stop gradients at the boundary (truncated backprop through time).
    """

    layers: List[LayerState] = field(default_factory=list)
    position: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> "MemoryState":
        return cls(layers=[LayerState() for _ in range(n_layers)])

    def detach(self) -> "MemoryState":
        """Detach every tensor in place; returns self."""
        for layer in self.layers:
            for name in ("conv", "ssm"):
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.detach())
        return self
