"""WorkingMemory: a learnable slot cache per head, written through importance gates.

    w_t   = sigmoid(importance(x_t)) * softmax_s(address(x_t))        [B, T, H, S]
    Mk_t  = (1 - w_t) * Mk_{t-1} + w_t * k_t,  Mv_t likewise           slots [B, H, S, Dh]
    r_t   = softmax_s(Mk_t q_t / sqrt(Dh)) @ Mv_t                      [B, T, H, Dh]
    out_t = out_proj(r_t * sigmoid(gate(x_t)))                         [B, T, D]

The slots start from learned values (`slot_keys`, `slot_values`) at the start of a
stream and are carried in the LayerState across segments. A drop-in
`(B, T, D) -> (B, T, D)` module.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .config import MemoryConfig
from .kernels.gated_cache import gated_cache_step, gated_cache_write
from .ssm import place
from .state import LayerState


class WorkingMemory(nn.Module):
    """Gated slot-cache memory (a gated RNN with a content-addressed read), a drop-in
    `(B, T, D) -> (B, T, D)` layer.

    Args:
        d_model: model width D.
        slots: S, slots per head (>= 1).
        heads: H.
        head_dim: Dh (None: d_model // heads).
        backend: "auto", "triton" or "torch" for the write and the decode step.
        n_layers: depth of the model it sits in; its output projection starts scaled by
            1 / sqrt(n_layers), so the residual stream's variance does not grow with depth.
        device, dtype: where and in which dtype the weights are made.

    `WorkingMemory.from_config(config)` builds one from a model's config (wm_slots,
    wm_heads, wm_head_dim).

    Example:
        >>> wm = WorkingMemory(d_model=32, slots=8, heads=2)
        >>> wm(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, d_model: int, slots: int = 16, heads: int = 4,
                 head_dim: Optional[int] = None, backend: str = "auto", n_layers: int = 1,
                 device=None, dtype=None):
        super().__init__()
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError(f"WorkingMemory.slots: expected a positive int, got {slots!r}")
        self.config = config = MemoryConfig(d_model=d_model, n_layers=n_layers, wm_slots=slots,
                                            wm_heads=heads, wm_head_dim=head_dim,
                                            backend=backend)
        D, H, S, Dh = config.d_model, config.wm_heads, config.wm_slots, config.wm_head_dim
        # one projection for q, k, v, the output gate, the importance and the address
        self.splits = [H * Dh, H * Dh, H * Dh, H * Dh, H, H * S]
        self.in_proj = nn.Linear(D, sum(self.splits), bias=True)
        self.out_proj = nn.Linear(H * Dh, D, bias=False)
        self.slot_keys = nn.Parameter(torch.empty(H, S, Dh))
        self.slot_values = nn.Parameter(torch.empty(H, S, Dh))
        self.reset_parameters()
        place(self, device, dtype)

    @classmethod
    def from_config(cls, config: MemoryConfig, device=None, dtype=None) -> WorkingMemory:
        c = config
        return cls(c.d_model, slots=c.wm_slots, heads=c.wm_heads, head_dim=c.wm_head_dim,
                   backend=c.backend, n_layers=c.n_layers, device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self):
        c = self.config
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        self.out_proj.weight /= math.sqrt(c.n_layers)
        nn.init.normal_(self.slot_keys, std=c.wm_head_dim ** -0.5)
        nn.init.zeros_(self.slot_values)
        # start with sparse writes: importance sigmoid(-2) ~ 0.12
        H, Dh = c.wm_heads, c.wm_head_dim
        self.in_proj.bias[4 * H * Dh: 4 * H * Dh + H].fill_(-2.0)

    def initial_slots(self, batch: int):
        """The learned slots, expanded to a batch: (Mk, Mv) [batch, H, S, Dh] float32."""
        expand = lambda p: p.float().unsqueeze(0).expand(batch, *p.shape)
        return expand(self.slot_keys), expand(self.slot_values)

    def forward(self, x: torch.Tensor, state: Optional[LayerState] = None) -> torch.Tensor:
        """Write a segment into the slots and read them back.

        Args:
            x: [B, T, D].
            state: optional LayerState; its `wm` slots (None: the learned initial slots)
                are the memory before x and are replaced by the slots after x.

        Returns:
            [B, T, D].
        """
        c = self.config
        Bsz, T, _ = x.shape
        H, S, Dh = c.wm_heads, c.wm_slots, c.wm_head_dim
        q, k, v, gate, imp, addr = self.in_proj(x).split(self.splits, dim=-1)
        w = torch.sigmoid(imp.float())[..., None] * torch.softmax(
            addr.float().view(Bsz, T, H, S), dim=-1)  # [B, T, H, S]
        slots = state.wm if state is not None and state.wm is not None else \
            self.initial_slots(Bsz)
        shape = (Bsz, T, H, Dh)
        r, final = gated_cache_write(
            q.reshape(shape), k.reshape(shape), v.reshape(shape), w,
            initial_state=(slots[0].contiguous(), slots[1].contiguous()),
            output_final_state=state is not None, validate=False, backend=c.backend,
        )
        if state is not None:
            state.wm = final
        r = r.reshape(Bsz, T, H * Dh) * torch.sigmoid(gate)
        return self.out_proj(r)

    def step(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        """One token per row through the decode kernel (`gated_cache_step`).

        Args:
            x: [B, D]; state: a LayerState whose `wm` slots (None: the learned initial
                slots) are replaced by the slots after x.

        Returns:
            [B, D]; equal to the last position of `forward` over the same tokens.
        """
        c = self.config
        Bsz = x.shape[0]
        H, S, Dh = c.wm_heads, c.wm_slots, c.wm_head_dim
        q, k, v, gate, imp, addr = self.in_proj(x).split(self.splits, dim=-1)
        w = torch.sigmoid(imp.float())[..., None] * torch.softmax(
            addr.float().view(Bsz, H, S), dim=-1)  # [B, H, S]
        slots = state.wm if state.wm is not None else self.initial_slots(Bsz)
        r, state.wm = gated_cache_step(
            q.reshape(Bsz, H, Dh), k.reshape(Bsz, H, Dh), v.reshape(Bsz, H, Dh), w,
            (slots[0].contiguous(), slots[1].contiguous()), validate=False,
            backend=c.backend)
        return self.out_proj(r.reshape(Bsz, H * Dh) * torch.sigmoid(gate))
