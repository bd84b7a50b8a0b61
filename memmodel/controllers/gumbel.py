"""The `gumbel` controller: a learned keep gate trained by the task loss, not by reward.

The differentiable baseline beside Q-learning: if a gate that the language model's own
gradient trains keeps the right chunks, reinforcement learning has to beat it to earn its
place. Per new summary of a segment ([B, n, P] for its n complete chunks):

    logit = MLP(normalize(key))                      key: [B, n, P, H * Dh], detached
    training:  z = (logit + log(u) - log(1 - u)) / tau     u ~ U(0, 1), seeded (Gumbel-sigmoid)
    eval:      z = logit / tau
    keep = z > 0 (STORE; else DISCARD)               s = sigmoid(z)
    weight = keep + (s - s.detach())                 1 or 0 forward; ds/dlogit backward

`LongTermMemory` multiplies every kept summary's value by its weight before it enters the
bank (`MemoryController.differentiable`): the forward pass is exactly that of the hard
decisions (`s - s.detach()` is exactly 0), and the backward pass gives the gate
d loss / d weight * ds / dlogit, the straight-through estimator. A kept summary whose
value helped the answers is pushed towards a higher logit, one that hurt towards a lower
one; a discarded summary never reaches the loss, so it gets no gradient (the noise in
training is what lets the gate try keeping a summary it would discard).

The key is detached: the gate learns to read the keys as retrieval shapes them, and its
biased straight-through gradient never reaches the key projection or the pooling
queries, so the comparison with the heuristics and Q-learning changes the controller
alone, not the memory's representations.

Eviction (`select` at a full level, `ltm_gate_evict`): by default ("score") the live
entries of the level with the lowest pooling scores, as the importance controller; with
"logit" those with the lowest gate logits, recomputed from the bank's keys (no noise, no
gradient). "logit" is the purer design (one learned rule decides what enters and what
stays), but on the demo spec it answered at chance (passkey 0.00 [0.00, 0.19] at 128K,
multi-needle 0.06), where "score", from the same warm-up, answered the passkey at 1.00 at
every length (docs/results.md). The likely cause: the gate starts untrained, so its early
evictions are close to random, a bank of 4 over 16 chunks then seldom holds the chunk
asked about, and the model learns to do without the memory (its answer loss was at
chance by step 100) before the gate learns anything, after which the gradient it would
learn from is gone. The pooling score is shaped by the warm-up, so it is informative from
the first step; the gate then decides what enters. Every chunk is read.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MemoryConfig
from .base import (
    Action,
    ChunkDecision,
    ChunkFeatures,
    Gate,
    LevelFeatures,
    MemoryController,
    on_host,
    ranked,
)

# seeds of successive noise draws: seed + NOISE_STRIDE * draw
NOISE_STRIDE = 1_000_003


class GumbelController(MemoryController):
    """`gumbel`: a keep gate over each summary's key, trained by the language model's
    loss through a straight-through Gumbel-sigmoid (the module docstring).

    Args:
        config: a MemoryConfig: the key width is ltm_heads * ltm_head_dim; the gate's
            ltm_gate_hidden, ltm_gate_tau, ltm_gate_bias and ltm_gate_seed (None: the
            default MemoryConfig's).

    Its parameters (`net`) are the model's: the model's optimiser trains them, and
    `state_dict()` holds them and `draws`, the count of noise draws so far (a training
    run resumed from a checkpoint draws the same noise as one that never stopped).

    Example:
        >>> cfg = MemoryConfig(d_model=32, ltm_controller="gumbel", ltm_heads=2,
        ...                    ltm_chunk_size=8, ltm_summaries=1, ltm_levels=1, ltm_capacity=2)
        >>> gate = GumbelController(cfg).eval()
        >>> gate.logits(torch.randn(3, 5, 32)).shape        # [B, M, H * Dh] -> [B, M]
        torch.Size([3, 5])
    """

    name = "gumbel"
    differentiable = True

    def __init__(self, config: Optional[MemoryConfig] = None):
        if config is None:
            config = MemoryConfig(ltm_controller="gumbel")
        if not isinstance(config, MemoryConfig):
            raise TypeError(f"GumbelController.config: expected a MemoryConfig or None, got "
                            f"{type(config).__name__}")
        super().__init__(config)
        self.width = config.ltm_heads * config.ltm_head_dim
        self.tau, self.seed = float(config.ltm_gate_tau), config.ltm_gate_seed
        self.evict = config.ltm_gate_evict
        self.net = nn.Sequential(nn.Linear(self.width, config.ltm_gate_hidden), nn.GELU(),
                                 nn.Linear(config.ltm_gate_hidden, 1))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The layers' default initialisation from ltm_gate_seed (the global random state
        is left as it was, so the rest of the model's initialisation does not depend on
        the gate), the output bias at ltm_gate_bias; no noise drawn yet."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for layer in (self.net[0], self.net[2]):
                layer.reset_parameters()
        self.net[2].bias.fill_(self.config.ltm_gate_bias)
        self.draws.zero_()

    def logits(self, keys: torch.Tensor) -> torch.Tensor:
        """The gate's logit of each key: [..., H * Dh] -> [...] float32, differentiable in
        the gate's parameters (the keys are detached and L2-normalised)."""
        if keys.shape[-1] != self.width:
            raise ValueError(f"GumbelController.logits: keys: expected a last dimension of "
                             f"ltm_heads * ltm_head_dim = {self.width}, got {list(keys.shape)}")
        weight = self.net[0].weight
        x = F.normalize(keys.detach().float(), dim=-1).to(weight.dtype)
        return self.net(x)[..., 0].float()

    def noise(self, shape, device) -> torch.Tensor:
        """Standard logistic noise of `shape` (float32 on `device`): the difference of two
        Gumbel draws, from a generator seeded with (ltm_gate_seed, draws); counts a draw."""
        gen = torch.Generator().manual_seed(self.seed + NOISE_STRIDE * int(self.draws))
        self.draws += 1
        u = torch.rand(shape, generator=gen).clamp(1e-6, 1 - 1e-6)
        return (torch.log(u) - torch.log1p(-u)).to(device)

    def gate(self, keys: torch.Tensor) -> Gate:
        """Keep decisions and straight-through weights of one segment's new summaries.

        Args:
            keys: [B, n, P, H * Dh], the summaries' keys (detached here).

        Returns:
            Gate(keep [B, n, P] bool host, weight [B, n, P] float32 device): training:
            keep = (logit + logistic noise) / tau > 0; eval: logit > 0; weight = keep +
            s - s.detach(), s = sigmoid of the same z.
        """
        logit = self.logits(keys)
        z = logit + self.noise(logit.shape, logit.device) if self.training else logit
        z = z / self.tau
        keep = z > 0
        s = torch.sigmoid(z)
        return Gate(keep=keep.cpu(), weight=keep.float() + (s - s.detach()))

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        """STORE the summaries the gate keeps (`features.gate`; asked here when absent),
        DISCARD the others; read every chunk."""
        keep = features.gate
        if keep is None:
            keep = self.gate(features.keys[:, None]).keep[:, 0]
        action = torch.where(torch.as_tensor(keep, dtype=torch.bool), int(Action.STORE),
                             int(Action.DISCARD)).to(torch.int64)
        return ChunkDecision(action=action,
                             retrieve=torch.ones(action.shape[0], dtype=torch.bool))

    def select(self, features: LevelFeatures) -> torch.Tensor:
        """[B, count] int64: per row, the live entries of the level with the lowest gate
        pooling scores (ltm_gate_evict "score") or gate logits ("logit"); a NaN lowest,
        ties: the older first."""
        bank = features.bank
        candidate = bank.live & (bank.level == features.level)
        if self.evict == "score":
            rank = ranked(on_host(bank.score))
        else:
            with torch.no_grad():
                rank = ranked(on_host(self.logits(bank.keys)))
        key = torch.where(candidate, rank, float("inf"))
        return torch.sort(key, dim=1, stable=True).indices[:, : features.count]

    def policy_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(plain data, tensors) for `MemoryLM.save_pretrained`: the gate's state_dict."""
        return ({"draws": int(self.draws)},
                {k: t.detach().contiguous() for k, t in self.state_dict().items()})

    def load_policy_state(self, plain: dict[str, Any], tensors: dict[str, torch.Tensor]):
        """Restore what `policy_state` returned."""
        self.load_state_dict(tensors)

    def extra_repr(self) -> str:
        return f"width={self.width}, tau={self.tau}, seed={self.seed}, evict={self.evict!r}"
