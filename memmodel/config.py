"""MemoryConfig: every size and switch of the model, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Union


@dataclass
class MemoryConfig:
    """Sizes and switches of MemoryLM and its blocks.

    Args:
        vocab_size: number of token ids (256 for bytes).
        d_model: model width D.
        n_layers: number of residual blocks.
        d_state: SSM state size N.
        expand: inner width E = expand * d_model.
        d_conv: width of the causal depthwise convolution.
        n_groups: groups G of the SSM's B and C (G divides E).
        dt_rank: rank of the delta projection; "auto" is ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's init).
        scan_chunk_size: tokens per chunk in the chunked scan.
        norm_eps: RMSNorm epsilon.
        tie_embeddings: share the embedding and output head weights.
        backend: "auto", "triton" or "torch" for every kernel call.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    n_groups: int = 1
    dt_rank: Union[int, str] = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    scan_chunk_size: int = 32
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    backend: str = "auto"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "d_state", "expand", "d_conv",
                     "n_groups", "scan_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MemoryConfig.{name}: expected a positive int, got {value!r}")
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ValueError(
                f"MemoryConfig.dt_rank: expected 'auto' or a positive int, got {self.dt_rank!r}"
            )
        if self.d_inner % self.n_groups != 0:
            raise ValueError(
                f"MemoryConfig.n_groups: expected a divisor of d_inner={self.d_inner}, "
                f"got {self.n_groups}"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"MemoryConfig.dt_min, dt_max: expected 0 < dt_min <= dt_max, got "
                f"{self.dt_min}, {self.dt_max}"
            )
        if self.dt_init_floor <= 0 or self.norm_eps <= 0:
            raise ValueError(
                f"MemoryConfig.dt_init_floor, norm_eps: expected positive values, got "
                f"{self.dt_init_floor}, {self.norm_eps}"
            )
        if self.backend not in ("auto", "triton", "torch"):
            raise ValueError(
                f"MemoryConfig.backend: expected 'auto', 'triton' or 'torch', got {self.backend!r}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)
