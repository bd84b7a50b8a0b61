"""SelectiveSSM: the Mamba-style mixer, a drop-in `(B, T, D) -> (B, T, D)` module.

    x -> in_proj -> (u, z)                           u, z: [B, T, E]
    u -> causal depthwise conv1d -> SiLU -> x_proj -> (dt_low, B, C)
    delta = dt_proj(dt_low)                          softplus(delta + dt_bias) inside the scan
    y = selective_scan(u, delta, A = -exp(A_log), B, C, D, z) -> out_proj

A_log, D and dt_bias drive the recurrence and are used in float32 even under autocast.
`forward` runs the chunked scan over a segment; `step` runs one token through the decode
kernel, with the same result.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemoryConfig
from .kernels.selective_scan import selective_scan, selective_state_update
from .state import LayerState


class SelectiveSSM(nn.Module):
    """Selective state-space mixer (Mamba-1), a drop-in `(B, T, D) -> (B, T, D)` layer.

    Args:
        d_model: model width D.
        d_state: SSM state size N.
        d_conv: width of the causal depthwise convolution.
        expand: inner width E = expand * d_model.
        n_groups: groups G of B and C (G divides E).
        dt_rank: rank of the delta projection; "auto" is ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's init).
        chunk_size: tokens per chunk of the chunked scan.
        backend: "auto", "triton" or "torch" for the scan and the decode step.
        device, dtype: where and in which dtype the weights are made; A_log, D and
            dt_bias, which drive the recurrence, stay float32.

    Bad values raise ValueError naming the argument (they are checked as the matching
    MemoryConfig fields). `SelectiveSSM.from_config(config)` builds one from a model's
    config.

    Example:
        >>> ssm = SelectiveSSM(d_model=32, d_state=8)
        >>> ssm(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
        >>> state = LayerState()
        >>> y = ssm(torch.randn(2, 10, 32), state)          # prefill
        >>> ssm.step(torch.randn(2, 32), state).shape        # then one token at a time
        torch.Size([2, 32])
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 n_groups: int = 1, dt_rank: Union[int, str] = "auto", dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, chunk_size: int = 32,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.config = config = MemoryConfig(
            d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, n_groups=n_groups,
            dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
            scan_chunk_size=chunk_size, backend=backend)
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
        place(self, device, dtype, keep_float32=("A_log", "D", "dt_bias"))

    @classmethod
    def from_config(cls, config: MemoryConfig, device=None, dtype=None) -> SelectiveSSM:
        """The mixer of a model: d_model, d_state, d_conv, expand, n_groups, dt_rank,
        dt_min, dt_max, dt_init_floor, scan_chunk_size and backend from `config`."""
        c = config
        return cls(c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand,
                   n_groups=c.n_groups, dt_rank=c.dt_rank, dt_min=c.dt_min, dt_max=c.dt_max,
                   dt_init_floor=c.dt_init_floor, chunk_size=c.scan_chunk_size,
                   backend=c.backend, device=device, dtype=dtype)

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

    def step(self, x: torch.Tensor, state: LayerState, inplace: bool = False) -> torch.Tensor:
        """One token per row through the decode kernel (`selective_state_update`).

        Args:
            x: [B, D], the token after what `state` has seen.
            state: a LayerState (conv and SSM states None: the start of a stream); its
                conv and SSM states are replaced by those after x.
            inplace: update the SSM state tensor in place (no copy; the caller owns it,
                as an inference cache does) rather than a copy of it.

        Returns:
            [B, D]; equal to the last position of `forward` over the same tokens.
        """
        c = self.config
        Bsz = x.shape[0]
        E, N, G, K = c.d_inner, c.d_state, c.n_groups, c.d_conv
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, E] each
        conv = state.conv if state.conv is not None else u.new_zeros(Bsz, E, K - 1)
        window = torch.cat([conv.to(u.dtype), u[..., None]], -1)  # [B, E, K]
        state.conv = window[..., 1:] if K > 1 else None
        u = F.silu((window * self.conv_weight[:, 0].to(u.dtype)).sum(-1)
                   + self.conv_bias.to(u.dtype))
        dt_low, Bm, Cm = self.x_proj(u).split([c.dt_rank, G * N, G * N], dim=-1)
        delta = self.dt_proj(dt_low)
        h = state.ssm
        if h is None:
            h = torch.zeros(Bsz, E, N, device=x.device, dtype=torch.float32)
        elif not (inplace and h.dtype == torch.float32 and h.is_contiguous()):
            h = h.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        y = selective_state_update(
            h, u, delta, -torch.exp(self.A_log.float()), Bm.reshape(Bsz, G, N),
            Cm.reshape(Bsz, G, N), D=self.D.float(), z=z, delta_bias=self.dt_bias.float(),
            delta_softplus=True, backend=c.backend)
        state.ssm = h
        return self.out_proj(y)


def place(module: nn.Module, device=None, dtype=None, keep_float32=()):
    """Move a freshly made layer's weights to `device` and cast them to `dtype`, except
    the parameters named in keep_float32 (the recurrence parameters), which stay float32."""
    if device is not None:
        module.to(device)
    if dtype is not None:
        for name, p in module.named_parameters():
            if name.split(".")[-1] not in keep_float32:
                p.data = p.data.to(dtype)
