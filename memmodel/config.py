"""Configs validated on construction: MemoryConfig (every size and switch of the model)
and QLearningConfig (the hyperparameters of the Q-learning memory controller).

A leaf: it imports nothing of the package. The controller names it accepts are kept here,
in `CONTROLLER_NAMES`; `memmodel.controllers.register_controller` adds to them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional, Union

# The valid `ltm_controller` names: the built-in controllers of memmodel.controllers, and
# every name given to its `register_controller`.
CONTROLLER_NAMES: set[str] = {"none", "fifo", "importance", "store_all", "qlearning", "gumbel"}


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
        wm_slots: working-memory slots S per head; 0 turns the working memory off.
        wm_heads: working-memory heads H.
        wm_head_dim: width Dh of a working-memory head; None is d_model // wm_heads.
        ltm_controller: who runs the long-term memory: "none" (off), "fifo", or any
            name registered with `memmodel.controllers.register_controller`.
        ltm_heads: long-term-memory heads H.
        ltm_head_dim: width Dh of a long-term-memory head; None is d_model // ltm_heads.
        ltm_chunk_size: C, tokens compressed together.
        ltm_summaries: P, summaries (entries) made from each chunk.
        ltm_levels: levels of the bank; level l + 1 holds merges of level-l entries.
        ltm_capacity: entries per level, one int for every level or a list of ltm_levels
            ints. Level 0 needs room for a chunk's summaries plus a merge's worth
            (>= P + r - 1), other levels below the top >= r, the top level >= 1 (>= P
            with a single level).
        ltm_merge: r, entries of a full level merged into one entry of the next.
        ltm_gate_hidden: hidden width of the "gumbel" controller's keep gate (an MLP over
            a summary's L2-normalised key).
        ltm_gate_tau: temperature of the gate's Gumbel-sigmoid in training, > 0.
        ltm_gate_bias: the gate's initial output bias: the logit every summary starts
            from (2.0: about 88% of the summaries kept at first, near the store_all
            warm-up's "keep everything").
        ltm_gate_seed: seeds the gate's initialisation and its logistic noise in
            training.
        ltm_gate_evict: what a full level gives up under the gate: "score" (the live
            entries with the lowest pooling scores, as the importance controller) or
            "logit" (the lowest gate logits); see memmodel.controllers.gumbel for why
            "score" is the default.
        memory_layers: the indices of the blocks that carry the working and long-term
            memory (as hybrid models place attention in some layers only); None: every
            block. The other blocks are the SSM alone.
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
    wm_slots: int = 0
    wm_heads: int = 4
    wm_head_dim: Optional[int] = None
    ltm_controller: str = "none"
    ltm_heads: int = 4
    ltm_head_dim: Optional[int] = None
    ltm_chunk_size: int = 256
    ltm_summaries: int = 4
    ltm_levels: int = 2
    ltm_capacity: Union[int, list[int]] = 256
    ltm_merge: int = 4
    ltm_gate_hidden: int = 32
    ltm_gate_tau: float = 1.0
    ltm_gate_bias: float = 2.0
    ltm_gate_seed: int = 0
    ltm_gate_evict: str = "score"
    memory_layers: Optional[list[int]] = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "d_state", "expand", "d_conv",
                     "n_groups", "scan_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MemoryConfig.{name}: expected a positive int, got {value!r}")
        if not _is_int(self.wm_slots) or self.wm_slots < 0:
            raise ValueError(
                f"MemoryConfig.wm_slots: expected an int >= 0 (0: off), got {self.wm_slots!r}")
        if self.wm_slots:
            self._check_heads("wm")
        self._check_long_term_memory()
        self._check_memory_layers()
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if not _is_int(self.dt_rank) or self.dt_rank < 1:
            raise ValueError(
                f"MemoryConfig.dt_rank: expected 'auto' or a positive int, got {self.dt_rank!r}"
            )
        if self.d_inner % self.n_groups != 0:
            raise ValueError(
                f"MemoryConfig.n_groups: expected a divisor of d_inner={self.d_inner}, "
                f"got {self.n_groups}"
            )
        for name in ("dt_min", "dt_max", "dt_init_floor", "norm_eps"):
            value = getattr(self, name)
            if not _is_real(value) or not value > 0:
                raise ValueError(
                    f"MemoryConfig.{name}: expected a finite positive number, got {value!r}")
        if not self.dt_min <= self.dt_max:
            raise ValueError(
                f"MemoryConfig.dt_min, dt_max: expected dt_min <= dt_max, got "
                f"{self.dt_min}, {self.dt_max}"
            )
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(
                f"MemoryConfig.tie_embeddings: expected a bool, got {self.tie_embeddings!r}")
        if self.backend not in ("auto", "triton", "torch"):
            raise ValueError(
                f"MemoryConfig.backend: expected 'auto', 'triton' or 'torch', got {self.backend!r}"
            )

    def _check_heads(self, prefix: str):
        """Check {prefix}_heads and resolve {prefix}_head_dim (None: d_model // heads)."""
        heads, head_dim = getattr(self, f"{prefix}_heads"), getattr(self, f"{prefix}_head_dim")
        if not _is_int(heads) or heads < 1:
            raise ValueError(f"MemoryConfig.{prefix}_heads: expected a positive int, got {heads!r}")
        if head_dim is None:
            if self.d_model % heads:
                raise ValueError(
                    f"MemoryConfig.{prefix}_heads: expected a divisor of d_model={self.d_model} "
                    f"when {prefix}_head_dim is None, got {heads}")
            head_dim = self.d_model // heads
            setattr(self, f"{prefix}_head_dim", head_dim)
        if not _is_int(head_dim) or head_dim < 1:
            raise ValueError(
                f"MemoryConfig.{prefix}_head_dim: expected a positive int or None, got "
                f"{head_dim!r}")

    def _check_long_term_memory(self):
        if self.ltm_controller not in CONTROLLER_NAMES:
            raise ValueError(
                f"MemoryConfig.ltm_controller: expected one of {sorted(CONTROLLER_NAMES)}, got "
                f"{self.ltm_controller!r}")
        # the gate's fields are checked whatever the controller: a "gumbel" controller may
        # be attached to a model of another ltm_controller
        if not _is_int(self.ltm_gate_hidden) or self.ltm_gate_hidden < 1:
            raise ValueError(f"MemoryConfig.ltm_gate_hidden: expected a positive int, got "
                             f"{self.ltm_gate_hidden!r}")
        if not _is_real(self.ltm_gate_tau) or not self.ltm_gate_tau > 0:
            raise ValueError(f"MemoryConfig.ltm_gate_tau: expected a finite positive number, "
                             f"got {self.ltm_gate_tau!r}")
        if not _is_real(self.ltm_gate_bias):
            raise ValueError(f"MemoryConfig.ltm_gate_bias: expected a finite number, got "
                             f"{self.ltm_gate_bias!r}")
        if not _is_int(self.ltm_gate_seed) or self.ltm_gate_seed < 0:
            raise ValueError(f"MemoryConfig.ltm_gate_seed: expected an int >= 0, got "
                             f"{self.ltm_gate_seed!r}")
        if self.ltm_gate_evict not in ("logit", "score"):
            raise ValueError(f"MemoryConfig.ltm_gate_evict: expected 'score' or 'logit', got "
                             f"{self.ltm_gate_evict!r}")
        if self.ltm_controller == "none":
            return
        for name in ("ltm_chunk_size", "ltm_summaries", "ltm_levels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"MemoryConfig.{name}: expected a positive int, got {value!r}")
        if not _is_int(self.ltm_merge) or self.ltm_merge < 2:
            raise ValueError(
                f"MemoryConfig.ltm_merge: expected an int >= 2 (entries merged into one), got "
                f"{self.ltm_merge!r}")
        self._check_heads("ltm")
        L, P, r = self.ltm_levels, self.ltm_summaries, self.ltm_merge
        cap = self.ltm_capacity
        if _is_int(cap):
            cap = [cap] * L
        if (not isinstance(cap, (list, tuple)) or len(cap) != L
                or not all(_is_int(c) and c >= 1 for c in cap)):
            raise ValueError(
                f"MemoryConfig.ltm_capacity: expected a positive int or a list of "
                f"ltm_levels={L} positive ints, got {self.ltm_capacity!r}")
        self.ltm_capacity = list(cap)
        for level, c in enumerate(cap):
            incoming = P if level == 0 else 1  # a chunk's summaries, or one merged entry
            need = incoming + r - 1 if level < L - 1 else incoming
            if c < need:
                why = (f"it takes {incoming} new entr{'ies' if incoming > 1 else 'y'} at once"
                       + (f" and merges r={r} at a time" if level < L - 1 else ""))
                raise ValueError(
                    f"MemoryConfig.ltm_capacity: level {level} needs at least {need} entries "
                    f"({why}), got {c}")

    def _check_memory_layers(self):
        layers = self.memory_layers
        if layers is None:
            return
        if (not isinstance(layers, (list, tuple)) or not layers
                or not all(_is_int(i) and 0 <= i < self.n_layers for i in layers)
                or len(set(layers)) != len(layers)):
            raise ValueError(
                f"MemoryConfig.memory_layers: expected None or a non-empty list of distinct "
                f"block indices in [0, n_layers={self.n_layers}), got {layers!r}")
        self.memory_layers = sorted(layers)

    def has_memory(self, layer: int) -> bool:
        """Whether block `layer` carries the memories (see memory_layers)."""
        return self.memory_layers is None or layer in self.memory_layers

    def layer_config(self, layer: int) -> MemoryConfig:
        """The config of block `layer` alone: this one, with the working and long-term
        memory switched off where the block carries none, and memory_layers None."""
        if self.has_memory(layer):
            return replace(self, memory_layers=None)
        return replace(self, memory_layers=None, wm_slots=0, ltm_controller="none")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QLearningConfig:
    """Hyperparameters of the Q-learning controller; validated on construction.

    Args:
        hidden: width of the Q-network's two hidden layers.
        lr: Adam learning rate of the Q-network.
        gamma: discount per chunk boundary, in [0, 1].
        n_step: boundaries summed in a return before bootstrapping (n).
        batch_size: transitions per Q update.
        buffer_size: replay capacity in transitions; the oldest are overwritten.
        min_buffer: transitions stored before the first update.
        target_update: Q updates between copies of the online network into the target.
        epsilon_start, epsilon_end, epsilon_decay: exploration; epsilon falls linearly from
            start to end over the first epsilon_decay Q updates, then stays at end.
        huber_delta: where the Huber loss turns from quadratic to linear.
        grad_clip: largest gradient norm of a Q update (None: no clipping).
        memory_cost: reward lost per live entry per chunk of tokens.
        retrieve_cost: reward lost per chunk of tokens that reads the bank.
        use_usage: give the network the entries' usage (makes the module compute it).
        content: give the network the keys of what it decides about (a summary's, an
            entry's; L2-normalised), so it can tell chunks apart by what they hold; False:
            the scalar features only. It sets the features' width.
        guided: the fraction of exploring decisions that take the importance heuristic's
            choice (keep the summaries with the highest pooling scores, evict or merge
            the lowest, read every chunk) instead of a uniform random one, in [0, 1]. A
            uniform explorer rarely keeps one useful chunk through many chunks of random
            stores and evictions, so the task reward it sees is sparse; guided draws
            show it decisions that keep what the pooling scores rank high, which the
            network may then improve on. 0: uniform exploration only.
        guided_read: the same fraction for the read decisions alone; None: `guided`. The
            heuristic reads every chunk, so with guided_read = 1 an exploring read is never
            a SKIP and the value of skipping is never learnt: with retrieve_cost > 0, set
            it below 1 (0: reads explored uniformly).
        guided_select: the same fraction for what a full level gives up (the heuristic:
            its lowest-scored entry); None: `guided`. With guided_select = 1 an exploring
            select never evicts or merges another entry, so the value of doing so is
            never learnt, only extrapolated by the network.
        prior: a margin for the importance heuristic's choice (the same choices `guided`
            follows), in the units of the reward: the policy picks the candidate with the
            highest Q + prior * [it is the heuristic's choice], and the targets' argmax does
            the same, so Q values the policy that acts. The network's regression never sees
            the prior: it learns what each choice earns, and the policy departs from the
            heuristic only where Q says another choice earns more than `prior`. 0: plain
            greedy Q. A Q-network that has not yet learnt a choice's value (one the
            explorer seldom tries) then cannot make the policy worse than the heuristic by
            extrapolation.
        prior_read: the same margin for the read decisions alone (the heuristic reads every
            chunk); None: `prior`. With retrieve_cost > 0 keep it below the cost, or a
            SKIP can never win.
        seed: seeds the network's init, exploration and replay sampling.
    """

    hidden: int = 64
    lr: float = 1e-3
    gamma: float = 0.98
    n_step: int = 4
    batch_size: int = 64
    buffer_size: int = 50_000
    min_buffer: int = 256
    target_update: int = 100
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay: int = 2000
    huber_delta: float = 1.0
    grad_clip: Optional[float] = 10.0
    memory_cost: float = 0.0
    retrieve_cost: float = 0.0
    use_usage: bool = True
    content: bool = True
    guided: float = 0.0
    guided_read: Optional[float] = None
    guided_select: Optional[float] = None
    prior: float = 0.0
    prior_read: Optional[float] = None
    seed: int = 0

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"QLearningConfig.{name}: expected {expected}, got "
                             f"{getattr(self, name)!r}")

        for name in ("hidden", "n_step", "batch_size", "buffer_size", "target_update"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "a positive int")
        for name in ("min_buffer", "epsilon_decay", "seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an int >= 0")
        if self.buffer_size < self.batch_size:
            fail("buffer_size", f"at least batch_size={self.batch_size}")
        for name in ("gamma", "epsilon_start", "epsilon_end", "guided"):
            if not _is_real(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                fail(name, "a number in [0, 1]")
        for name in ("lr", "huber_delta"):
            if not _is_real(getattr(self, name)) or not getattr(self, name) > 0:
                fail(name, "a positive number")
        for name in ("memory_cost", "retrieve_cost", "prior"):
            if not _is_real(getattr(self, name)) or not getattr(self, name) >= 0:
                fail(name, "a number >= 0")
        if self.prior_read is not None and (not _is_real(self.prior_read)
                                            or not self.prior_read >= 0):
            fail("prior_read", "None or a number >= 0")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or self.grad_clip <= 0):
            fail("grad_clip", "a positive number or None")
        for name in ("guided_read", "guided_select"):
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not 0 <= value <= 1):
                fail(name, "None or a number in [0, 1]")
        for name in ("use_usage", "content"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "a bool")

    @classmethod
    def from_dict(cls, data: dict) -> QLearningConfig:
        """The config saved as `asdict(config)` (in a checkpoint or a saved policy).

        Raises:
            ValueError: `data` is not a dict; it has a `horizon` key (a policy saved before
                the features became length-free: its network read the position, which
                today's features do not hold, so it cannot be loaded; train it again); or
                it has a key that is not a field.
        """
        if not isinstance(data, dict):
            raise ValueError(f"QLearningConfig.from_dict: expected a dict of fields, got "
                             f"{type(data).__name__}")
        if "horizon" in data:
            raise ValueError(
                "QLearningConfig.from_dict: expected a config without 'horizon', got "
                f"horizon={data['horizon']!r}: it was saved with features scaled by a "
                "horizon (position, age), which the Q-network no longer reads; a policy "
                "learnt on them does not fit the length-free features and must be trained "
                "again")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"QLearningConfig.from_dict: expected fields of QLearningConfig, "
                             f"got unknown keys {unknown}")
        return cls(**data)

    def epsilon(self, updates: int) -> float:
        """The exploration rate after `updates` Q updates (the linear schedule)."""
        if self.epsilon_decay == 0:
            return self.epsilon_end
        frac = min(updates / self.epsilon_decay, 1.0)
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
