"""Q-learning for the memory controller: the learner, and the `qlearning` controller.

The MDP. One episode is one stream (a batch row) of one layer's long-term memory. A step
is a chunk boundary c; its decisions are made one after another, and each is a transition:

    one per new summary        STORE / COMPRESS / DISCARD     (COMPRESS only with >= 2 levels)
    one per boundary           RETRIEVE or SKIP for the tokens up to the next boundary
    one per entry given up     MERGE (below the top) or EVICT (top), chosen among the
                               level's live entries, when a level must make room

The reward of step c is paid for the tokens from boundary c to the next (the "span"):

    R_c = -(memory_cost * live_c + retrieve_cost * read_c) * span_c / C  [+ task reward at the end]

live_c: entries live during the span, read_c: the RETRIEVE decision, span_c / C: the span in
chunks (1 except for the tail of a stream); the task reward (the change in the task's loss
or accuracy on the answer tokens, computed by the training loop) is added to the last step.
Every decision of step c learns from the n-step return to the first decision of step m:

    G_c = sum_{c <= i < m} gamma^(i-c) R_i
    y   = G_c + gamma^(m-c) Q_target(s_m, argmax_a Q_online(s_m, a))   (Double DQN; 0 if m = K)
    loss = Huber(Q_online(s, a) - y)

m = min(c + n, the first later step at which a decision explored, K = the end), so a reward
at the end of K chunks reaches the first decisions after about K / n rounds, not K.

The Q-function takes the action as input, Q(s, a) = head_choice(trunk(phi(s, a))), so one
small network scores any candidate: a choice of three for a summary, two for retrieval, one
per live entry for eviction. phi = [one-hot choice, flag, context, item, content]
(docs/architecture.md). Every feature means the same at any stream length: none reads the
absolute position or a training length, so a policy trained on 2K-token streams sees the
same kind of state at 1M tokens.

    choice    STORE, COMPRESS, DISCARD, SKIP, RETRIEVE, MERGE, EVICT
    flag      1 on the importance heuristic's choice (where QLearningConfig.prior or
              guided exploration asks for it), else 0; the trunk never reads it: the
              policy adds `prior` to the Q value it marks (a margin the learned values
              must beat to depart from the heuristic), the value regression does not
    context   occupancy / capacity per level, live entries / total capacity, highest,
              lowest and mean normalised score among live entries (0 for an empty bank)
    item      normalised pooling score, similarity (a summary: its novelty, the largest
              cosine similarity to a live entry; an entry: to another live entry), score
              rank, age on a log scale (log1p(age / C) / log1p(AGE_CHUNKS): 0 for a new
              summary, 1 at AGE_CHUNKS = 1024 chunks, growing without a bound), usage per
              token of age, level / (levels - 1); zeros for retrieval
    content   (QLearningConfig.content) the L2-normalised key of what is decided: the
              summary's; the entry's; for retrieval, the mean of the just completed
              chunk's normalised summary keys (what tells that a question is coming).
              The network's first layer is its learned projection.

Scores are normalised by running statistics of the summaries of ended training episodes
(updated by `finish`, so no decision depends on a summary made after it).

Saved policies and training states carry the config and the features' width. One saved
before the features became length-free (its config has a `horizon` field) is refused by
`QLearningConfig.from_dict` with a ValueError that says so: its network read features
that no longer exist.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import asdict
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..config import QLearningConfig
from .base import (
    Action,
    BankView,
    ChunkDecision,
    ChunkFeatures,
    LevelFeatures,
    MemoryController,
    on_host,
    ranked,
    unit_rows,
)
from .heuristics import highest_scores


class Transitions(NamedTuple):
    """A batch of N transitions. x: [N, F], phi of the decision taken; ret: [N], its n-step
    return G; discount: [N], gamma^(m - c) (0: the stream ended first); next_x: [N, K, F]
    and next_mask: [N, K] bool, the candidates of the bootstrap state (all False: none)."""

    x: torch.Tensor
    ret: torch.Tensor
    discount: torch.Tensor
    next_x: torch.Tensor
    next_mask: torch.Tensor


class ReplayBuffer:
    """A ring of at most `capacity` transitions, sampled uniformly with replacement.

    Storage is allocated on the first push. Example:
        >>> buf = ReplayBuffer(capacity=1000, feature_dim=4, n_next=3)
        >>> buf.push(Transitions(torch.zeros(5, 4), torch.zeros(5), torch.zeros(5),
        ...                      torch.zeros(5, 3, 4), torch.zeros(5, 3, dtype=torch.bool)))
        >>> len(buf), buf.sample(8).x.shape
        (5, torch.Size([8, 4]))
    """

    def __init__(self, capacity: int, feature_dim: int, n_next: int):
        self.capacity, self.feature_dim, self.n_next = capacity, feature_dim, n_next
        self.data: Optional[Transitions] = None
        self.size = 0  # transitions held
        self.cursor = 0  # where the next one goes

    def __len__(self) -> int:
        return self.size

    def push(self, batch: Transitions):
        """Append N transitions, overwriting the oldest when full."""
        n = batch.x.shape[0]
        if batch.x.shape[1:] != (self.feature_dim,) or batch.next_x.shape[1:] != (
                self.n_next, self.feature_dim):
            raise ValueError(f"ReplayBuffer.push: expected x [N, {self.feature_dim}] and next_x "
                             f"[N, {self.n_next}, {self.feature_dim}], got "
                             f"{list(batch.x.shape)} and {list(batch.next_x.shape)}")
        if self.data is None:
            self.data = Transitions(*(torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype)
                                      for t in batch))
        if n > self.capacity:  # only the newest `capacity` would survive
            batch = Transitions(*(t[n - self.capacity:] for t in batch))
            n = self.capacity
        idx = (self.cursor + torch.arange(n)) % self.capacity
        for store, new in zip(self.data, batch):
            store[idx] = new.to(store.dtype)
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Transitions:
        """n transitions drawn uniformly, with replacement, from those held."""
        if self.size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        idx = torch.randint(0, self.size, (n,), generator=generator)
        return Transitions(*(t[idx] for t in self.data))

    def state_dict(self) -> dict[str, Any]:
        data = None if self.data is None else {k: t[: self.size].clone()
                                               for k, t in self.data._asdict().items()}
        return {"capacity": self.capacity, "size": self.size, "cursor": self.cursor,
                "data": data}

    def load_state_dict(self, state: dict[str, Any]):
        if state["capacity"] != self.capacity:
            raise ValueError(f"ReplayBuffer.load_state_dict: expected capacity {self.capacity}, "
                             f"got {state['capacity']}")
        self.data, self.size, self.cursor = None, 0, 0
        if state["data"] is not None:
            held = Transitions(**state["data"])
            self.data = Transitions(*(torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype)
                                      for t in held))
            for store, t in zip(self.data, held):
                store[: state["size"]] = t
            self.size, self.cursor = state["size"], state["cursor"]


class QNetwork(nn.Module):
    """Q(s, a) from phi(s, a) = [one-hot choice (n_choices), features]: [..., F] -> [...].

    A trunk of two ReLU layers of width `hidden` reads the features; one linear head per
    choice reads the trunk, and the one-hot picks the head: Q = head_choice(trunk(features)).
    Each choice thus has its own readout of shared features, so a decision whose value
    flips with the position (RETRIEVE near the question, SKIP elsewhere) is easy to fit.
    """

    def __init__(self, feature_dim: int, hidden: int, n_choices: int, flag: bool = False):
        super().__init__()
        self.n_choices = n_choices
        # flag: column n_choices marks the heuristic's choice (QLearningConfig.prior); the
        # policy adds the prior there, and the value read here never sees it
        self.flag_column = n_choices if flag else None
        self.skip = n_choices + int(flag)
        self.trunk = nn.Sequential(nn.Linear(feature_dim - self.skip, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.Linear(hidden, n_choices)
        self._host_cache = (None, None)  # (the parameters' identity and versions, arrays)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice, features = x[..., : self.n_choices], x[..., self.skip:]
        return (self.heads(self.trunk(features)) * choice).sum(-1)

    def preference(self, x: torch.Tensor, prior: float) -> torch.Tensor:
        """What the policy maximises: the value plus `prior` on the heuristic's choice
        (the flag column; the value alone without one)."""
        q = self(x)
        if prior and self.flag_column is not None:
            q = q + prior * x[..., self.flag_column]
        return q

    def act(self, x: np.ndarray) -> np.ndarray:
        """`forward` on host features, in float32 NumPy, without autograd: x [..., F] ->
        [...]. Acting asks the network about a few rows at every chunk boundary, where a
        torch call's overhead is most of the cost; the weights are copied to the host once
        and again only after a parameter changes (its version counter moves, as an
        optimiser step or `load_state_dict` makes it, or it is replaced, as `to()` does)."""
        layers = self._host_weights()
        h = x[..., self.skip:]
        for w, b in layers[:-1]:
            h = np.maximum(h @ w + b, 0.0)
        w, b = layers[-1]
        return ((h @ w + b) * x[..., : self.n_choices]).sum(-1)

    def _host_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        params = [m._parameters[name] for m in (self.trunk[0], self.trunk[2], self.heads)
                  for name in ("weight", "bias")]
        key = [(id(t), t.data_ptr(), t._version) for t in params]
        if self._host_cache[0] != key:
            arrays = [t.detach().float().cpu().numpy() for t in params]
            self._host_cache = (key, [(w.T.copy(), b.copy())
                                      for w, b in zip(arrays[::2], arrays[1::2])])
        return self._host_cache[1]


def nstep_returns(rewards: torch.Tensor, n: int, gamma: float,
                  cut: Optional[torch.Tensor] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n-step returns of whole episodes, cut short where exploration took over.

    The return of step c sums the rewards of steps c, c + 1, ... up to (not including)
    its bootstrap step m = the first of: c + n; the first later step that made an
    exploratory decision (`cut`: a return that ran through it would judge the greedy
    policy by a random action, as in Watkins's Q(lambda)); the end K (no bootstrap).

    Args:
        rewards: [B, K] float, the reward of each step.
        n, gamma: at most n steps summed, discount per step.
        cut: [B, K] bool or None (no cuts).

    Returns:
        ret: [B, K], sum_{c <= i < m} gamma^(i - c) rewards[:, i];
        discount: [B, K], gamma^(m - c), or 0 where m = K;
        boot: [B, K] int64, m (K: none).

    Example:
        >>> ret, discount, boot = nstep_returns(torch.tensor([[1.0, 2.0, 4.0]]), 2, 0.5)
        >>> ret, discount, boot
        (tensor([[2., 4., 4.]]), tensor([[0.2500, 0.0000, 0.0000]]), tensor([[2, 3, 3]]))
    """
    B, K = rewards.shape
    cut = torch.zeros(B, K, dtype=torch.bool) if cut is None else cut.bool()
    c = torch.arange(K)
    ret = torch.zeros(B, K)
    boot = torch.full((B, K), K, dtype=torch.int64)
    open_ = torch.ones(B, K, dtype=torch.bool)  # still summing
    for i in range(min(n, K)):
        now = c + i  # the step added in this round
        r = rewards[:, now.clamp(max=K - 1)].float()
        ret += torch.where(open_ & (now < K), gamma ** i * r, 0.0)
        nxt = now + 1
        stop = open_ & ((nxt >= K) | cut[:, nxt.clamp(max=K - 1)] | (i + 1 == n))
        boot = torch.where(stop, nxt.clamp(max=K), boot)
        open_ &= ~stop
    discount = torch.where(boot < K, gamma ** (boot - c).float(), 0.0)
    return ret, discount, boot


@torch.no_grad()
def double_dqn_targets(online: nn.Module, target: nn.Module, batch: Transitions,
                       prior: float = 0.0) -> torch.Tensor:
    """[N]: y = ret + discount * Q_target(s', argmax_a Q_online(s', a)), over the valid
    candidates of s'; a transition without any (the stream ended) gets y = ret. With a
    `prior` (QNetwork.preference) the argmax is the policy's, the value plus the prior on
    the heuristic's choice, so the target values the policy that acts; Q_target is the
    value alone."""
    q_online = (online.preference(batch.next_x, prior) if prior else online(batch.next_x))
    q_online = q_online.masked_fill(~batch.next_mask, float("-inf"))
    best = q_online.argmax(-1, keepdim=True)
    q_next = target(batch.next_x).gather(-1, best)[..., 0]
    q_next = torch.where(batch.next_mask.any(-1), q_next, 0.0)
    return batch.ret + batch.discount * q_next


class QLearner:
    """The online and target Q-networks, their optimiser and the replay buffer.

    Args:
        feature_dim: F, the width of phi (the one-hot choice first).
        n_next: K, candidates stored for the bootstrap state.
        n_choices: the width of the one-hot choice.
        config: QLearningConfig.
        flag: phi's column n_choices marks the heuristic's choice (QNetwork), which the
            targets' argmax adds config.prior to.
    """

    def __init__(self, feature_dim: int, n_next: int, n_choices: int, config: QLearningConfig,
                 flag: bool = False):
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.online = QNetwork(feature_dim, config.hidden, n_choices, flag)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=config.lr)
        self.buffer = ReplayBuffer(config.buffer_size, feature_dim, n_next)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.updates = 0
        self.synchronised = False

    @property
    def epsilon(self) -> float:
        return self.config.epsilon(self.updates)

    def _collective_device(self) -> torch.device:
        """Where a collective's tensors live: the networks' device (NCCL needs CUDA
        tensors), the CPU under gloo."""
        if dist.get_backend() == "nccl":
            return next(self.online.parameters()).device
        return torch.device("cpu")

    def _all_ready(self, ready: bool) -> bool:
        """Whether every rank's buffer is ready (an all-reduce MIN): the ranks update in
        lockstep, or none does."""
        flag = torch.tensor([int(ready)], device=self._collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _average_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """Average the online network's gradients and the loss over the ranks (one
        all-reduce of one flat vector); the mean loss."""
        params = list(self.online.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
        device = flat.device
        flat = flat.to(self._collective_device())
        dist.all_reduce(flat)
        flat = (flat / dist.get_world_size()).to(device)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        return flat[-1]

    def synchronise(self, enabled: bool = True):
        """Learn as one learner across the ranks of torch.distributed's process group:
        rank 0's networks are broadcast to the others, then every update averages the
        online network's gradients over the ranks before its step, and waits until every
        rank's buffer is ready; each rank keeps its own replay buffer (the transitions of
        its own shard of the batch). The networks then stay equal on every rank. Every
        rank must call `update` the same number of times."""
        if enabled and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("QLearner.synchronise: expected an initialised torch.distributed "
                             "process group, got none")
        self.synchronised = bool(enabled)
        if self.synchronised:
            device = self._collective_device()
            with torch.no_grad():
                for net in (self.online, self.target):
                    for t in net.state_dict().values():
                        moved = t.detach().to(device)
                        dist.broadcast(moved, src=0)
                        t.copy_(moved)

    def _to_networks(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor moved to the networks' device (float ones to their dtype)."""
        p = next(self.online.parameters())
        return t.to(p.device, p.dtype) if t.is_floating_point() else t.to(p.device)

    def q(self, x) -> torch.Tensor:
        """[...] float32 on the host: the online Q-values of phi rows x [..., F] (host
        features, a tensor or an array), computed on the host in float32 (`QNetwork.act`)
        whatever the networks' device and dtype."""
        a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return torch.from_numpy(self.online.act(np.asarray(a, dtype=np.float32)))

    def update(self, batch: Optional[Transitions] = None) -> Optional[float]:
        """One Double DQN step on `batch` (default: a uniform sample of the buffer, once it
        holds min_buffer and batch_size transitions; None before). Returns the loss
        (synchronised: the mean over the ranks, None until every rank's buffer is ready)."""
        c = self.config
        if batch is None:
            ready = len(self.buffer) >= max(c.min_buffer, c.batch_size)
            if self.synchronised:
                ready = self._all_ready(ready)
            if not ready:
                return None
            batch = self.buffer.sample(c.batch_size, self.generator)
        batch = Transitions(*(self._to_networks(t) for t in batch))
        with torch.enable_grad():
            y = double_dqn_targets(self.online, self.target, batch, c.prior)
            loss = F.huber_loss(self.online(batch.x), y, delta=c.huber_delta)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.synchronised:
            loss = self._average_gradients(loss)
        if c.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.online.parameters(), c.grad_clip)
        self.optimizer.step()
        # no gradient is left behind: an optimiser holding the model's parameters (the
        # language model's) then skips these
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.updates % c.target_update == 0:
            self.target.load_state_dict(self.online.state_dict())
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {"online": self.online.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
                "generator": self.generator.get_state(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]):
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.updates = state["updates"]


class Choice(enum.IntEnum):
    """The one-hot choice in phi: what is done with a summary, a chunk or an entry."""

    STORE = 0
    COMPRESS = 1
    DISCARD = 2
    SKIP = 3
    RETRIEVE = 4
    MERGE = 5
    EVICT = 6


FLAG = len(Choice)  # phi's column after the one-hot: 1 on the heuristic's choice
CONTEXT_FEATURES = ("live_fraction", "high_score", "low_score", "mean_score")  # + occupancy
ITEM_FEATURES = ("score", "similarity", "rank", "log_age", "usage_rate", "level")
AGE_CHUNKS = 1024  # the age feature reads 1 for an entry this many chunks old
SUMMARY_CHOICES = (Choice.STORE, Choice.COMPRESS, Choice.DISCARD)
SUMMARY_ACTIONS = np.array([int(Action.STORE), int(Action.COMPRESS), int(Action.DISCARD)])


class RunningStats:
    """Running mean and variance (Welford) of the summaries' pooling scores."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor):
        x = x.double().flatten()
        x = x[torch.isfinite(x)]  # a NaN summary must not poison the statistics for good
        n = x.numel()
        if n == 0:
            return
        self.merge(n, x.mean().item(), ((x - x.mean()) ** 2).sum().item())

    def merge(self, count: int, mean: float, m2: float):
        """Add the statistics (count, mean, m2) of other scores (Chan's parallel update)."""
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta ** 2 * self.count * count / total
        self.count = total

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std, clipped to [-5, 5] (std 1 until two scores were seen); x a
        float32 array."""
        std = math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0
        z = (x - np.float32(self.mean)) / np.float32(max(std, 1e-6))
        return np.minimum(np.maximum(z, -5.0), 5.0)


class Episode:
    """One stream's record of a layer's decisions, for all B rows at once; a
    QLearningController's `init_state`, kept in `LTMState.controller`.

    Per boundary: its position, the entries live before its decisions [B], the retrieve
    decision [B], whether any decision explored [B] and the candidates of its first
    decision [B, 3, F] (the bootstrap state), and (`scores`) the new summaries' scores
    [B, P], which the score statistics learn from when the episode ends.
    Per decision: its boundary, phi of the choice made [B, F] and the rows that made it [B].
    """

    def __init__(self, batch_size: int, generator: Optional[torch.Generator] = None):
        self.batch_size = batch_size
        # the stream's own exploration draws: a layer's decisions never depend on how many
        # draws another layer sharing the controller made for later tokens
        self.generator = generator if generator is not None else torch.Generator()
        self.clear()

    # the record: every list is cleared, marked and rolled back together
    LISTS = ("positions", "live", "read", "explored", "first_x", "first_mask", "scores",
             "step", "x", "rows")

    def mark(self):
        """A point to roll back to: the lengths of the record and the generator's state."""
        return [len(getattr(self, name)) for name in self.LISTS], self.generator.get_state()

    def rollback(self, mark):
        """Forget what was recorded after `mark` (a forward that failed midway)."""
        lengths, rng = mark
        for name, n in zip(self.LISTS, lengths):
            del getattr(self, name)[n:]
        self.generator.set_state(rng)

    def clear(self):
        for name in self.LISTS:
            setattr(self, name, [])

    def add(self, x: torch.Tensor, rows: torch.Tensor):
        self.step.append(len(self.positions) - 1)
        self.x.append(x)
        self.rows.append(rows)


class QLearningController(MemoryController):
    """`qlearning`: every decision epsilon-greedy (greedy after `eval()`) on a small
    Q-network, learnt by Double DQN with n-step returns from a replay buffer.

    Args:
        config: the MemoryConfig of the long-term memory it drives (levels, capacity, C).
        rl: QLearningConfig (default: its defaults).

    An `nn.Module` whose submodules are the learner's online and target networks (so
    they are in the model's `state_dict()` and follow `model.to()`; features are built on
    the host and moved to them). `training_state()` holds everything needed to go on
    learning: the networks with the optimiser, buffer, score statistics and random state;
    `policy_state()` what acting greedily needs. While
    training (the default), every decision is recorded in the stream's `Episode`;
    `finish(ltm_state, task_reward)` turns an ended stream into transitions and
    `update()` takes a Q step. See `memmodel.training.memory` for the loop.

    Example:
        >>> cfg = MemoryConfig(d_model=16, ltm_controller="qlearning", ltm_heads=1,
        ...                    ltm_chunk_size=4, ltm_summaries=1, ltm_levels=1, ltm_capacity=2)
        >>> ctrl = QLearningController(cfg, QLearningConfig(min_buffer=1, batch_size=4))
        >>> ltm, state = LongTermMemory.from_config(cfg, controller=ctrl), LayerState()
        >>> y = ltm(torch.randn(3, 20, 16), state)
        >>> n = ctrl.finish(state.ltm, task_reward=torch.ones(3))   # transitions stored
        >>> loss = ctrl.update()
    """

    name = "qlearning"

    def __init__(self, config: Optional[Any] = None, rl: Optional[QLearningConfig] = None):
        super().__init__(config)
        if config is None or not hasattr(config, "ltm_levels"):
            raise ValueError("QLearningController: expected the MemoryConfig of the long-term "
                             f"memory (its levels size the features), got {config!r}")
        self.rl = rl if rl is not None else QLearningConfig()
        if not isinstance(self.rl, QLearningConfig):
            raise TypeError(f"QLearningController: expected rl to be a QLearningConfig, got "
                            f"{type(self.rl).__name__}")
        self.levels, self.chunk_size = config.ltm_levels, config.ltm_chunk_size
        self.needs_usage = self.rl.use_usage
        self.key_dim = config.ltm_heads * config.ltm_head_dim if self.rl.content else 0
        self.feature_dim = (len(Choice) + 1 + self.levels + len(CONTEXT_FEATURES)
                            + len(ITEM_FEATURES) + self.key_dim)
        self.learner = QLearner(self.feature_dim, len(SUMMARY_CHOICES), len(Choice), self.rl,
                                flag=True)
        # the learner's networks, as submodules: model.to() and state_dict() reach them
        self.online, self.target = self.learner.online, self.learner.target
        self.scores = RunningStats()
        self.generator = torch.Generator().manual_seed(self.rl.seed + 2)

    @property
    def epsilon(self) -> float:
        return self.learner.epsilon if self.training else 0.0

    def init_state(self, batch_size: int) -> Episode:
        # a stream that explores gets its own generator, seeded from the controller's; an
        # evaluating one never draws, and leaves the controller's random state alone
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator)) \
            if self.training else 0
        return Episode(batch_size, torch.Generator().manual_seed(seed))

    def decide(self, features: ChunkFeatures) -> ChunkDecision:
        bank, (B, P) = features.bank, features.score.shape
        score = _host(features.score)
        episode = features.controller_state
        generator = episode.generator if isinstance(episode, Episode) else self.generator
        live, level = bank.live.numpy(), bank.level.numpy()
        bank_score = _host(bank.score)
        ctx = self._context(bank, live, level, bank_score)
        live0 = live & (level == 0)
        lower = ((bank_score[:, None, :] < score[:, :, None]) & live0[:, None, :]).sum(-1)
        # rows 0 .. P - 1: the summaries; row P: the retrieval (zeros but for its content)
        item = np.zeros((B, P + 1, len(ITEM_FEATURES) + self.key_dim), np.float32)
        item[:, :P, 0] = self.scores.normalise(score)
        item[:, :P, 1] = features.max_similarity.numpy()
        item[:, :P, 2] = lower / np.maximum(live0.sum(1, keepdims=True), 1)
        if self.key_dim:
            keys = unit_rows(_host(features.keys))  # [B, P, key_dim]
            item[:, :P, len(ITEM_FEATURES):] = keys
            item[:, P, len(ITEM_FEATURES):] = keys.mean(1)
        x = self._phi(ctx, SUMMARY_CHOICES, item[:, :P])  # [B, P, 3, F]
        xr = self._phi(ctx, (Choice.SKIP, Choice.RETRIEVE), item[:, P:])[:, 0]  # [B, 2, F]
        mask = np.broadcast_to(np.array([True, self.levels > 1, True]), (B, P, 3))
        guide = guide_read = None
        guided_read = self.rl.guided if self.rl.guided_read is None else self.rl.guided_read
        prior_read = self.rl.prior if self.rl.prior_read is None else self.rl.prior_read
        guides = (self.rl.guided > 0 or guided_read > 0) and self.epsilon > 0
        if guides or self.rl.prior > 0 or prior_read > 0:
            heuristic = highest_scores(features)
            store = np.where(heuristic.action.numpy() == int(Action.STORE), 0, 2)  # [B, P]
            reads = heuristic.retrieve.numpy().astype(np.int64)  # SKIP 0, RETRIEVE 1
            x[..., FLAG] = store[..., None] == np.arange(3)
            xr[..., FLAG] = reads[:, None] == np.arange(2)
            if guides:
                guide, guide_read = store.reshape(-1), reads
        pick, explored = self._choose(x.reshape(B * P, 3, -1), mask.reshape(B * P, 3),
                                      generator, guide, prior=self.rl.prior)
        pick, explored = pick.reshape(B, P), explored.reshape(B, P).any(1)
        read, explored_read = self._choose(xr, np.ones((B, 2), bool), generator, guide_read,
                                           guided=guided_read, prior=prior_read)
        read = torch.from_numpy(read == 1)
        if self.training and isinstance(episode, Episode):
            rows, every = np.arange(B), torch.ones(B, dtype=torch.bool)
            episode.scores.append(torch.from_numpy(score))
            episode.positions.append(features.position)
            episode.live.append(torch.from_numpy(live.sum(1)))
            episode.read.append(read)
            episode.explored.append(torch.from_numpy(explored | explored_read))
            episode.first_x.append(torch.from_numpy(x[:, 0].copy()))
            episode.first_mask.append(torch.from_numpy(mask[:, 0].copy()))
            for p in range(P):
                episode.add(torch.from_numpy(x[rows, p, pick[:, p]]), every)
            episode.add(torch.from_numpy(xr[rows, read.numpy().astype(np.int64)]), every)
        return ChunkDecision(action=torch.from_numpy(SUMMARY_ACTIONS[pick]), retrieve=read)

    # A greedy select reads only the live entries: the segment's bank has a column for
    # every summary it made (hundreds), live or not, and the features' pairwise terms are
    # quadratic in the columns. Exploring picks keep the full width (their random draws
    # are over it); the greedy picks are the same either way.
    _compact_select = True

    def select(self, features: LevelFeatures) -> torch.Tensor:
        bank, level = features.bank, features.level
        live = bank.live.numpy()
        B, M = live.shape
        cols = None
        if self._compact_select and self.epsilon == 0 and M > 1:
            width = max(int(live.sum(1).max()), 1)
            if width < M:  # each row's live columns first, in column order
                cols = np.argsort(~live, axis=1, kind="stable")[:, :width]

        rows = np.arange(B)

        def take(a: np.ndarray) -> np.ndarray:
            return a if cols is None else a[rows[:, None], cols]

        full_score, full_level = _host(bank.score), bank.level.numpy()
        live_c, score, level_c = take(live), take(full_score), take(full_level)
        M = live_c.shape[1]
        rows_need = features.rows.numpy()
        candidate = live_c & (level_c == level) & rows_need[:, None]
        keys = unit_rows(take(_host(bank.keys)))
        apart = ~np.eye(M, dtype=bool)
        lower = ((score[:, None, :] < score[:, :, None]) & candidate[:, None, :] & apart).sum(-1)
        age = take(bank.age.numpy()).astype(np.float32)
        item = np.zeros((B, M, len(ITEM_FEATURES) + self.key_dim), np.float32)
        item[..., 0] = self.scores.normalise(score)
        if M > 1:
            sim = keys @ keys.transpose(0, 2, 1)
            item[..., 1] = np.where(live_c[:, None, :] & apart, sim, -1.0).max(-1)
        else:
            item[..., 1] = -1.0
        item[..., 2] = lower / np.maximum(candidate.sum(1, keepdims=True) - 1, 1)
        item[..., 3] = np.log1p(np.maximum(age, 0) / self.chunk_size) / math.log1p(AGE_CHUNKS)
        if self.rl.use_usage:
            item[..., 4] = take(_host(bank.usage)) / np.maximum(age, 1)
        item[..., 5] = level_c / max(self.levels - 1, 1)
        if self.key_dim:
            item[..., len(ITEM_FEATURES):] = keys
        # a slot that holds no entry is never a candidate; zeros, not an age read from
        # its padding
        item[~live_c] = 0.0
        choice = Choice.EVICT if features.top else Choice.MERGE
        x = self._phi(self._context(bank, live, full_level, full_score), (choice,),
                      item)[:, :, 0]  # [B, M, F]
        episode = features.controller_state
        generator = episode.generator if isinstance(episode, Episode) else self.generator
        q = self.learner.q(torch.from_numpy(x)).numpy()  # the same for every pick
        guided = self.rl.guided if self.rl.guided_select is None else self.rl.guided_select
        guides = guided > 0 and self.epsilon > 0
        order = ranked(torch.from_numpy(score)).numpy() if guides or self.rl.prior > 0 \
            else None
        picks = []
        for _ in range(features.count):
            guide = None
            if order is not None:  # the heuristic's: the lowest-scored candidate
                lowest = np.where(candidate, order, np.inf).argmin(1)
                x = x.copy()  # an earlier pick's transition keeps its own flags
                x[..., FLAG] = (np.arange(M) == lowest[:, None]) & candidate
                guide = lowest if guides else None
            idx, explored = self._choose(x, candidate, generator, guide, q, guided=guided,
                                         prior=self.rl.prior)
            # 0 where no candidate is valid, as over every column
            picks.append(idx if cols is None else
                         np.where(candidate.any(1), cols[rows, idx], 0))
            if self.training and isinstance(episode, Episode):
                episode.add(torch.from_numpy(x[rows, idx]), features.rows.clone())
                episode.explored[-1] = episode.explored[-1] | (
                    torch.from_numpy(explored) & features.rows)
            candidate = candidate.copy()
            candidate[rows, idx] = False
        return torch.from_numpy(np.stack(picks, 1))

    def finish(self, state, task_reward) -> int:
        """End the episodes of a finished stream: price its spans, add the task reward to
        its last step, store the n-step transitions in the replay buffer and clear the
        record (a stream that goes on starts a new episode).

        Args:
            state: the layer's LTMState after the stream's last segment.
            task_reward: [B] (or a number), the task reward of each row.

        Returns:
            The number of transitions stored.
        """
        episode = state.controller
        if not isinstance(episode, Episode):
            raise ValueError(f"QLearningController.finish: expected an LTMState whose "
                             f"controller state is an Episode, got {type(episode).__name__}")
        B, K = episode.batch_size, len(episode.positions)
        task_reward = torch.as_tensor(task_reward, dtype=torch.float32).detach().cpu()
        task_reward = task_reward.expand(B) if task_reward.dim() == 0 else task_reward
        if task_reward.shape != (B,):
            raise ValueError(f"QLearningController.finish: expected task_reward [B={B}], got "
                             f"{list(task_reward.shape)}")
        # The score statistics learn from ended episodes only, so that no decision of a
        # forward pass depends on summaries made after it (another layer's, or later ones).
        if self.learner.synchronised:
            self._merge_scores(episode.scores)
        else:
            for score in episode.scores:
                self.scores.update(score)
        if K == 0 or not episode.step:
            episode.clear()
            return 0
        c = self.rl
        live_after = torch.stack(episode.live[1:] + [state.live.sum(1)], 1).float()  # [B, K]
        ends = torch.tensor(episode.positions[1:] + [state.position], dtype=torch.float32)
        span = (ends - torch.tensor(episode.positions, dtype=torch.float32)) / self.chunk_size
        read = torch.stack(episode.read, 1).float()
        rewards = -(c.memory_cost * live_after + c.retrieve_cost * read) * span
        rewards[:, -1] += task_reward
        ret, discount, boot = nstep_returns(rewards, c.n_step, c.gamma,
                                            torch.stack(episode.explored, 1))

        rows, j = torch.stack(episode.rows, 1).nonzero(as_tuple=True)
        step = torch.tensor(episode.step)[j]
        at = boot[rows, step]
        has_next = at < K
        at = at.clamp(max=K - 1)
        first_x = torch.stack(episode.first_x, 1)  # [B, K, 3, F]
        first_mask = torch.stack(episode.first_mask, 1)
        next_x = torch.where(has_next[:, None, None], first_x[rows, at], 0.0)
        next_mask = first_mask[rows, at] & has_next[:, None]
        self.learner.buffer.push(Transitions(
            torch.stack(episode.x, 1)[rows, j], ret[rows, step], discount[rows, step], next_x,
            next_mask))
        episode.clear()
        return int(rows.numel())

    def synchronise(self, enabled: bool = True):
        """Learn as one controller across the ranks of torch.distributed's process group
        (training with DistributedDataParallel; docs/cli.md). Each rank records the
        decisions of its own rows and keeps its own replay buffer; its Q updates average
        the online network's gradients over the ranks (`QLearner.synchronise`: the
        networks start from rank 0's and stay equal), and the score statistics that
        normalise the features learn from every rank's ended episodes, so every rank
        decides with the same network and the same normalisation. Rank r > 0 draws its
        exploration from a stream of its own (the seed and the rank), not rank 0's.
        Every rank must call `finish` and `update` the same number of times, in the same
        order (as `memmodel.training.memory.train_memory` does)."""
        self.learner.synchronise(enabled)
        if enabled:
            rank = dist.get_rank()
            if rank:
                draw = int(torch.randint(0, 2**62, (1,), generator=self.generator))
                self.generator.manual_seed((draw + 1_000_003 * rank) % 2**63)

    def _merge_scores(self, scores: list[torch.Tensor]):
        """Update the score statistics with every rank's scores, in rank order: each rank
        sends (count, mean, m2) of its own and all merge the same list."""
        local = RunningStats()
        for score in scores:
            local.update(score)
        mine = torch.tensor([local.count, local.mean, local.m2], dtype=torch.float64,
                            device=self.learner._collective_device())
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        for count, mean, m2 in (t.tolist() for t in every):
            self.scores.merge(int(count), mean, m2)

    def update(self, steps: int = 1) -> Optional[float]:
        """`steps` Q updates; the mean loss, or None while the buffer is still filling."""
        losses = [loss for loss in (self.learner.update() for _ in range(steps))
                  if loss is not None]
        return sum(losses) / len(losses) if losses else None

    def training_state(self) -> dict[str, Any]:
        """Everything needed to go on learning: networks, optimiser, buffer, statistics,
        random state, the exploration step (epsilon follows from it) and the configs;
        tensors and plain data only (`torch.load(weights_only=True)` reads it). Not the
        train / eval mode, which its owner sets."""
        return {"rl": asdict(self.rl), "feature_dim": self.feature_dim,
                "learner": self.learner.state_dict(),
                "scores": (self.scores.count, self.scores.mean, self.scores.m2),
                "generator": self.generator.get_state()}

    def load_training_state(self, state: dict[str, Any]):
        """Restore `training_state()`. A state saved with the features of an older
        version (its config has `horizon`) raises a ValueError (`QLearningConfig.from_dict`)."""
        rl = QLearningConfig.from_dict(state["rl"])
        if state["feature_dim"] != self.feature_dim:
            raise ValueError(f"QLearningController.load_training_state: expected features of "
                             f"width {self._width()}, got {state['feature_dim']}")
        self.rl = rl
        self.learner.config = self.rl
        self.learner.load_state_dict(state["learner"])
        self.scores.count, self.scores.mean, self.scores.m2 = state["scores"]
        self.generator.set_state(state["generator"])

    def policy_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What acting greedily needs, as (plain data, tensors): the configs, the score
        statistics, the number of Q updates, and the online and target networks' weights.
        Not the optimiser, the replay buffer or the random state (`training_state` has
        those)."""
        plain = {"rl": asdict(self.rl), "feature_dim": self.feature_dim,
                 "scores": [self.scores.count, self.scores.mean, self.scores.m2],
                 "updates": self.learner.updates}
        tensors = {f"{net}.{name}": t.detach().contiguous()
                   for net in ("online", "target")
                   for name, t in getattr(self.learner, net).state_dict().items()}
        return plain, tensors

    def load_policy_state(self, plain: dict[str, Any], tensors: dict[str, torch.Tensor]):
        """Restore `policy_state()`; the learner's optimiser and buffer start afresh. A
        policy saved with the features of an older version (its config has `horizon`)
        raises a ValueError (`QLearningConfig.from_dict`)."""
        QLearningConfig.from_dict(plain["rl"])
        # a policy saved before the heuristic flag (its config has no `prior`) read the
        # same features, one column narrower: the flag is a column its network skips
        legacy = "prior" not in plain["rl"] and plain["feature_dim"] + 1 == self.feature_dim
        if plain["feature_dim"] != self.feature_dim and not legacy:
            raise ValueError(f"QLearningController.load_policy_state: expected features of "
                             f"width {self._width()}, got {plain['feature_dim']}")
        for net in ("online", "target"):
            prefix = f"{net}."
            getattr(self.learner, net).load_state_dict(
                {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)})
        self.scores.count, self.scores.mean, self.scores.m2 = plain["scores"]
        self.learner.updates = int(plain["updates"])

    def __repr__(self) -> str:
        return (f"QLearningController(levels={self.levels}, epsilon={self.epsilon:.3f}, "
                f"updates={self.learner.updates}, buffer={len(self.learner.buffer)})")

    def _width(self) -> str:
        """The features' width and what sets it, for error messages."""
        return (f"{self.feature_dim} (ltm_levels={self.levels}, content key width "
                f"{self.key_dim})")

    def _context(self, bank: BankView, live: np.ndarray, level: np.ndarray,
                 bank_score: np.ndarray) -> np.ndarray:
        """[B, levels + 4] float32: occupancy / capacity per level, live entries / total
        capacity, highest, lowest and mean normalised live score (0 for an empty bank).
        Nothing in it depends on the boundary's position. live, level, bank_score: the
        bank's [B, M] fields as host arrays."""
        z = self.scores.normalise(bank_score)
        n_live = live.sum(1)
        some = n_live > 0
        count = np.maximum(n_live, 1).astype(np.float32)
        mean = np.where(live, z, 0.0).sum(1, dtype=np.float32) / count
        hi = np.where(some, np.where(live, z, -np.inf).max(1, initial=-np.inf), 0.0)
        lo = np.where(some, np.where(live, z, np.inf).min(1, initial=np.inf), 0.0)
        capacity = np.asarray(bank.capacity, dtype=np.float32)
        levels = np.arange(len(bank.capacity))
        occupancy = ((level[..., None] == levels) & live[..., None]).sum(1) / capacity
        fill = n_live / capacity.sum()
        return np.concatenate([occupancy, fill[:, None], hi[:, None], lo[:, None],
                               mean[:, None]], 1, dtype=np.float32)

    def _phi(self, ctx: np.ndarray, choices, item: np.ndarray) -> np.ndarray:
        """[B, N, len(choices), F] float32 = [one-hot choice, heuristic flag (0), ctx, item]
        from ctx [B, Fc] and item [B, N, Fi] (the same ctx and item for every choice)."""
        B, N = item.shape[:2]
        n = len(Choice)
        x = np.empty((B, N, len(choices), self.feature_dim), np.float32)
        x[..., :n] = _ONE_HOT[[int(c) for c in choices]]
        x[..., FLAG] = 0.0  # set by the caller where the heuristic's choice is known
        x[..., n + 1: n + 1 + ctx.shape[1]] = ctx[:, None, None]
        x[..., n + 1 + ctx.shape[1]:] = item[:, :, None]
        return x

    def _choose(self, x, mask, generator: Optional[torch.Generator] = None, guide=None,
                q: Optional[np.ndarray] = None, guided: Optional[float] = None,
                prior: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Epsilon-greedy over the masked candidates x [N, K, F] (mask [N, K] bool; arrays
        or host tensors): the picks [N] int64 (0 where none is valid) and [N] bool, whether
        a pick is an exploring one other than the greedy. Random draws come from
        `generator` (the stream's; default the controller's). guide: [N], the heuristic's
        valid pick, which an exploring draw takes with probability `rl.guided` (see
        QLearningConfig.guided; `guided` overrides it). q: the Q-values of x [N, K] when
        known (several picks among the same candidates), else asked of the network. prior:
        added to the value of the candidate x's FLAG column marks (QLearningConfig.prior)
        before the greedy argmax."""
        generator = self.generator if generator is None else generator
        mask = np.asarray(mask, dtype=bool)
        valid = mask.any(-1)
        if q is None:
            q = self.learner.q(torch.as_tensor(x)).numpy()
        if prior:
            q = q + np.float32(prior) * np.asarray(x)[..., FLAG]
        pick = np.where(mask, q, -np.inf).argmax(-1)
        explored = np.zeros(pick.shape, dtype=bool)
        eps = self.epsilon
        if eps > 0:
            shape = tuple(pick.shape)
            explore = (torch.rand(shape, generator=generator) < eps).numpy()
            weights = torch.from_numpy(np.where(valid[:, None], mask, True).astype(np.float32))
            random = torch.multinomial(weights, 1, generator=generator)[:, 0].numpy()
            if guide is not None:
                share = self.rl.guided if guided is None else guided
                follow = (torch.rand(shape, generator=generator) < share).numpy()
                random = np.where(follow, np.asarray(guide), random)
            explored = explore & (random != pick) & valid
            pick = np.where(explore, random, pick)
        return np.where(valid, pick, 0), explored


def _host(t: torch.Tensor) -> np.ndarray:
    """A device field (score, usage, keys) as the controller's features read it: a
    float32 host array (`on_host`)."""
    return on_host(t).numpy()


_ONE_HOT = np.eye(len(Choice), dtype=np.float32)
