"""SelectiveSSM: the Mamba-style mixer, a drop-in `(B, T, D) -> (B, T, D)` module.

    x -> in_proj -> (u, z)                           u, z: [B, T, E]
    u -> causal depthwise conv1d -> SiLU -> x_proj -> (dt_low, B, C)
    delta = dt_proj(dt_low)                          softplus(delta + dt_bias) inside the scan
    y = selective_scan(u, delta, A = -exp(A_log), B, C, D, z) -> out_proj

A_log, D and dt_bias drive the recurrence and are used in float32 even under autocast.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemoryConfig
from .kernels.selective_scan import selective_scan
from .state import LayerState


class SelectiveSSM(nn.Module):
    """Selective state-space mixer (Mamba-1).

    Args:
        config: MemoryConfig; uses d_model, d_inner, d_state, d_conv, n_groups, dt_rank,
            dt_min, dt_max, dt_init_floor, scan_chunk_size, backend.

    Example:
        >>> ssm = SelectiveSSM(MemoryConfig(d_model=32))
        >>> ssm(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, config: MemoryConfig):
        super().__init__()
        self.config = config
        D, E, N = config.d_model, config.d_inner, config.d_state
        G, R, K = config.n_groups, config.dt_rank, config.d_conv
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(E, 1, K))
        self.conv_bias = nn.Parameter(torch.empty(E))
        self.x_proj = nn.Linear(E, R + 2 * G * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(E))
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        c = self.config
        E, N, K = c.d_inner, c.d_state, c.d_conv
        self.in_proj.reset_parameters()
        self.x_proj.reset_parameters()
        self.out_proj.reset_parameters()
        bound = 1.0 / math.sqrt(K)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        # Mamba's init: dt_proj keeps the scale of its rank; the initial step sizes
        # softplus(dt_bias) are log-uniform in [dt_min, dt_max].
        nn.init.uniform_(self.dt_proj.weight, -(c.dt_rank**-0.5), c.dt_rank**-0.5)
        dt = torch.exp(torch.rand(E) * (math.log(c.dt_max) - math.log(c.dt_min))
                       + math.log(c.dt_min)).clamp_min(c.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        # S4D-real init: A = -(1, 2, ..., N) for every channel.
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, state: Optional[LayerState] = None) -> torch.Tensor:
        """Mix a sequence.

        Args:
            x: [B, T, D].
            state: optional LayerState; when given, its conv and SSM states are read as
                the context before x (zeros when None) and replaced by the states after x.

        Returns:
            [B, T, D] in x's dtype (or autocast's).
        """
        c = self.config
        Bsz, T, _ = x.shape
        E, N, G, K = c.d_inner, c.d_state, c.n_groups, c.d_conv
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u_t = u.transpose(1, 2)  # [B, E, T]
        if state is not None and state.conv is not None:
            u_t = torch.cat([state.conv.to(u_t.dtype), u_t], dim=-1)
        else:
            u_t = F.pad(u_t, (K - 1, 0))
        if state is not None:
            state.conv = u_t[..., u_t.shape[-1] - (K - 1):] if K > 1 else None
        u = F.silu(F.conv1d(u_t, self.conv_weight, self.conv_bias, groups=E)).transpose(1, 2)
        dt_low, Bm, Cm = self.x_proj(u).split([c.dt_rank, G * N, G * N], dim=-1)
        delta = self.dt_proj(dt_low)
        y, h = selective_scan(
            u.contiguous(), delta, -torch.exp(self.A_log.float()),
            Bm.reshape(Bsz, T, G, N), Cm.reshape(Bsz, T, G, N),
            D=self.D.float(), z=z.contiguous(), delta_bias=self.dt_bias.float(),
            delta_softplus=True,
            initial_state=None if state is None else state.ssm,
            output_final_state=state is not None,
            backend=c.backend, chunk_size=c.scan_chunk_size,
        )
        if state is not None:
            state.ssm = h
        return self.out_proj(y)
