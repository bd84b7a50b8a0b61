"""MemoryLM: token embedding, residual SSM blocks, final norm, tied output head.

    h = embed(input_ids)
    for each block:  h = h + mixer(RMSNorm(h))
    logits = head(RMSNorm(h))

The forward takes and returns a MemoryState, so a long stream can be fed segment by
segment with the same result as one call.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemoryConfig
from .long_term_memory import LongTermMemory
from .ssm import SelectiveSSM
from .state import LayerState, MemoryState
from .working_memory import WorkingMemory


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32.

    Args:
        dim: width of the last dimension.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class Block(nn.Module):
    """Pre-norm residual block:
    x + mixer(norm(x)) [+ working_memory(norm(x))] [+ long_term_memory(norm(x))].

    `(B, T, D) -> (B, T, D)`; the working memory is there when config.wm_slots > 0, the
    long-term memory when config.ltm_controller != "none".
    """

    def __init__(self, config: MemoryConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = SelectiveSSM(config)
        self.working_memory = WorkingMemory(config) if config.wm_slots else None
        self.long_term_memory = (LongTermMemory(config)
                                 if config.ltm_controller != "none" else None)

    def forward(self, x: torch.Tensor, state: Optional[LayerState] = None) -> torch.Tensor:
        h = self.norm(x)
        y = self.mixer(h, state)
        if self.working_memory is not None:
            y = y + self.working_memory(h, state)
        if self.long_term_memory is not None:
            y = y + self.long_term_memory(h, state)
        return x + y


class LMOutput(NamedTuple):
    """logits: [B, T, vocab]; loss: scalar or None; state: the MemoryState after the input."""

    logits: torch.Tensor
    loss: Optional[torch.Tensor]
    state: MemoryState


class MemoryLM(nn.Module):
    """Language model over the blocks.

    Args:
        config: MemoryConfig.

    Example:
        >>> model = MemoryLM(MemoryConfig(d_model=64, n_layers=2))
        >>> ids = torch.randint(0, 256, (2, 32))
        >>> out = model(ids[:, :16], labels=ids[:, 1:17])
        >>> out = model(ids[:, 16:], state=out.state)   # continue the same stream
    """

    def __init__(self, config: MemoryConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.embedding.weight, std=0.02)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        for layer in self.layers:
            layer.norm.reset_parameters()
            layer.mixer.reset_parameters()
            # Keep the residual stream's variance independent of depth (GPT-2, Mamba).
            layer.mixer.out_proj.weight /= math.sqrt(self.config.n_layers)
            if layer.working_memory is not None:
                layer.working_memory.reset_parameters()
            if layer.long_term_memory is not None:
                layer.long_term_memory.reset_parameters()
        self.norm_f.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        state: Optional[MemoryState] = None,
    ) -> LMOutput:
        """Run the model on a segment.

        Args:
            input_ids: [B, T] int64 token ids in [0, vocab_size).
            labels: [B, T] int64, the target of each position (already shifted: labels[t]
                is the token after input_ids[t]); -100 positions are ignored. Optional.
            state: the MemoryState returned by the previous segment of the same streams,
                or None to start fresh. It is updated in place and returned.

        Returns:
            LMOutput(logits [B, T, vocab], loss (mean cross-entropy) or None, state).
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids: expected a [B, T] tensor, got "
                f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids}"
            )
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"input_ids: expected int64 token ids, got {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids: expected at least one token, got T=0")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels: expected shape {tuple(input_ids.shape)} like input_ids, got "
                f"{tuple(labels.shape)}"
            )
        if state is None:
            state = MemoryState.empty(len(self.layers))
        elif len(state.layers) != len(self.layers):
            raise ValueError(
                f"state: expected {len(self.layers)} layer states, got {len(state.layers)}"
            )
        h = self.embedding(input_ids)
        for layer, layer_state in zip(self.layers, state.layers):
            h = layer(h, layer_state)
        logits = self.lm_head(self.norm_f(h))
        state.position += input_ids.shape[1]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().long(),
                                   ignore_index=-100)
        return LMOutput(logits, loss, state)
