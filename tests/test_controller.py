"""Memory controllers: the baselines, the Q-learning machinery and whether it learns.

Hand-checked pieces (n-step returns with cuts, one Double DQN step, the rewards and
transitions an episode stores), the replay buffer's bound and uniform sampling, the
epsilon schedule, learning on a toy memory MDP and on the passkey task against fifo and
store_all, checkpoints of the controller state, and config validation.
"""

import copy
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from helpers import assert_close
from passkey_reader import passkey_reader

from memmodel.config import MemoryConfig, QLearningConfig
from memmodel.controllers import (
    Action,
    BankView,
    Choice,
    ChunkFeatures,
    Episode,
    FifoController,
    LevelFeatures,
    MemoryController,
    QLearner,
    QLearningController,
    ReplayBuffer,
    StoreAllController,
    Transitions,
    build_controller,
    double_dqn_targets,
    nstep_returns,
)
from memmodel.controllers.qlearning import FLAG, SUMMARY_CHOICES
from memmodel.kernels.chunk_compress import chunk_compress_ref
from memmodel.long_term_memory import LongTermMemory
from memmodel.model import MemoryLM
from memmodel.state import LayerState
from memmodel.tasks import PasskeyTask, answer_metrics, key_kept
from memmodel.training.memory import (
    MemoryTrainConfig,
    evaluate_memory,
    load_checkpoint,
    train_memory,
)

ONE_LEVEL = dict(d_model=16, ltm_heads=1, ltm_chunk_size=4, ltm_summaries=1, ltm_levels=1,
                 ltm_capacity=2, backend="torch")
THREE_LEVELS = dict(d_model=16, ltm_heads=2, ltm_chunk_size=4, ltm_summaries=2, ltm_levels=3,
                    ltm_capacity=[3, 2, 2], ltm_merge=2, backend="torch")


class Recorder(MemoryController):
    """Passes decisions through and keeps them: [(action [B, P], retrieve [B]), ...]."""

    def __init__(self, inner):
        super().__init__(inner.config)
        self.inner, self.needs_usage, self.bounded = inner, inner.needs_usage, inner.bounded
        self.log, self.selects = [], 0

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def decide(self, features):
        d = self.inner.decide(features)
        self.log.append((d.action.clone(), d.retrieve.clone()))
        return d

    def select(self, features):
        self.selects += 1
        return self.inner.select(features)


# ---------------------------------------------------------------- hand-checked pieces

def test_nstep_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 0.0, 1.0]])
    ret, discount, boot = nstep_returns(r, n=2, gamma=0.5)
    assert_close(ret, torch.tensor([[2.0, 4.0, 8.0, 8.0], [0.0, 0.0, 0.5, 1.0]]), "returns")
    assert_close(discount, torch.tensor([[0.25, 0.25, 0.0, 0.0]] * 2), "discounts")
    assert boot.tolist() == [[2, 3, 4, 4]] * 2
    # an exploratory decision at step 2 of row 0 cuts the returns that would run through it
    cut = torch.tensor([[False, False, True, False], [False] * 4])
    ret, discount, boot = nstep_returns(r, n=3, gamma=0.5, cut=cut)
    assert_close(ret, torch.tensor([[2.0, 2.0, 8.0, 8.0], [0.0, 0.25, 0.5, 1.0]]), "cut")
    assert_close(discount, torch.tensor([[0.25, 0.5, 0.0, 0.0], [0.125, 0.0, 0.0, 0.0]]),
                 "cut discounts")
    assert boot.tolist() == [[2, 2, 4, 4], [3, 4, 4, 4]]
    ret, discount, boot = nstep_returns(r, n=10, gamma=1.0)  # n >= K: Monte Carlo
    assert ret[:, 0].tolist() == [15.0, 1.0] and (discount == 0).all()


def _hand_learner(lr=0.1):
    """F = 2 choices + 2 features, hidden 2; identity trunk (features >= 0), so
    online Q(choice 0) = f0, Q(choice 1) = f1; target Q(choice 0) = f1, Q(choice 1) = f0."""
    cfg = QLearningConfig(hidden=2, lr=lr, huber_delta=0.5, grad_clip=None, batch_size=3,
                          target_update=1000)
    learner = QLearner(feature_dim=4, n_next=3, n_choices=2, config=cfg)
    with torch.no_grad():
        for net, heads in ((learner.online, [[1.0, 0.0], [0.0, 1.0]]),
                           (learner.target, [[0.0, 1.0], [1.0, 0.0]])):
            for layer in (net.trunk[0], net.trunk[2]):
                layer.weight.copy_(torch.eye(2))
                layer.bias.zero_()
            net.heads.weight.copy_(torch.tensor(heads))
            net.heads.bias.zero_()
    return learner


def test_double_dqn_update_equals_hand_computed_target():
    learner = _hand_learner()
    c0, c1 = [1.0, 0.0], [0.0, 1.0]
    batch = Transitions(
        x=torch.tensor([c0 + [1.0, 2.0], c1 + [0.0, 3.0], c1 + [2.0, 0.5]]),
        ret=torch.tensor([0.5, 2.0, -1.0]),
        discount=torch.tensor([0.25, 0.0, 0.5]),
        next_x=torch.tensor([[c0 + [3.0, 1.0], c1 + [4.0, 2.0], c0 + [9.0, 9.0]],
                             [c0 + [7.0, 7.0]] * 3,
                             [c1 + [1.0, 4.0], c0 + [2.0, 0.0], c0 + [0.0, 0.0]]]),
        next_mask=torch.tensor([[True, True, False], [False] * 3, [True, True, False]]),
    )
    # 1: online argmax is candidate 0 (Q 3 vs 2; the masked 9 is out), evaluated by the
    #    target: f1 = 1 (vanilla DQN would take the target's own max, 4); y = 0.5 + 0.25 * 1
    # 2: the stream ended: y = ret = 2
    # 3: online picks candidate 0 (f1 = 4 vs f0 = 2), target reads f0 = 1: y = -1 + 0.5 * 1
    y = double_dqn_targets(learner.online, learner.target, batch)
    assert_close(y, torch.tensor([0.75, 2.0, -0.5]), "Double DQN targets")

    # Q = [1, 3, 0.5]; errors [0.25, 1, 1]; Huber(delta 0.5): [0.03125, 0.375, 0.375]
    loss = learner.update(batch)
    assert loss == pytest.approx((0.03125 + 0.375 + 0.375) / 3, rel=1e-6)
    # Head gradients: row 0 gets 0.25/3 * [1, 2], row 1 gets 0.5/3 * ([0, 3] + [2, 0.5]),
    # all positive; Adam's first step moves every weight by -lr * sign(grad).
    assert_close(learner.online.heads.weight.detach(),
                 torch.tensor([[0.9, -0.1], [-0.1, 0.9]]), "heads after one step", rtol=1e-6)
    assert_close(learner.online.heads.bias.detach(), torch.tensor([-0.1, -0.1]), "bias",
                 rtol=1e-6)
    assert learner.target.heads.weight.tolist() == [[0.0, 1.0], [1.0, 0.0]], "target moved"
    assert learner.updates == 1


def test_target_network_is_copied_every_target_update_steps():
    cfg = QLearningConfig(hidden=4, batch_size=2, min_buffer=2, target_update=3)
    learner = QLearner(feature_dim=5, n_next=1, n_choices=2, config=cfg)
    learner.buffer.push(Transitions(torch.rand(4, 5), torch.rand(4), torch.full((4,), 0.5),
                                    torch.rand(4, 1, 5), torch.ones(4, 1, dtype=torch.bool)))
    start = [p.clone() for p in learner.target.parameters()]
    for step in range(1, 7):
        learner.update()
        same = all(torch.equal(a, b) for a, b in zip(learner.target.parameters(),
                                                      learner.online.parameters()))
        unchanged = all(torch.equal(a, b) for a, b in zip(learner.target.parameters(), start))
        assert same == (step % 3 == 0), step
        assert unchanged == (step < 3), step


def _episode_run(rl, B=3, segments=(9, 14), seed=0, config=ONE_LEVEL):
    cfg = MemoryConfig(ltm_controller="qlearning", **config)
    ctrl = QLearningController(cfg, rl)
    rec = Recorder(ctrl)
    ltm = LongTermMemory.from_config(cfg, controller=rec)
    state, banks = LayerState(), []
    g = torch.Generator().manual_seed(seed)
    for T in segments:
        with torch.no_grad():
            banks.append(ltm.remember(*(torch.randn(B, T, cfg.ltm_heads, cfg.ltm_head_dim,
                                                    generator=g) for _ in range(3)), state).bank)
    return cfg, ctrl, rec, state, banks


def test_finish_stores_the_hand_computed_n_step_transitions():
    """Rewards priced from the banks' intervals and the recorded decisions, summed by
    hand into 2-step returns, against what `finish` puts in the replay buffer."""
    rl = QLearningConfig(memory_cost=1.0, retrieve_cost=0.5, gamma=0.5, n_step=2,
                         epsilon_start=0.0, epsilon_end=0.0)
    cfg, ctrl, rec, state, banks = _episode_run(rl)  # 23 tokens in segments of 9 and 14
    C, B, T, task = 4, 3, 23, torch.tensor([10.0, 0.0, -1.0])
    positions = [4, 8, 12, 16, 20]  # the boundaries; 8 is decided in the first segment
    K = len(positions)
    assert len(rec.log) == K
    R = torch.zeros(B, K)
    for c, (p, end) in enumerate(zip(positions, positions[1:] + [T])):
        bank = banks[0] if p < 9 else banks[1]
        live = ((bank.start <= p) & (bank.end > p) & (bank.level >= 0)).sum(1)
        R[:, c] = -(1.0 * live + 0.5 * rec.log[c][1].float()) * (end - p) / C
    R[:, -1] += task
    G = R + 0.5 * torch.cat([R[:, 1:], torch.zeros(B, 1)], 1)

    stored = ctrl.finish(state.ltm, task)
    buf = ctrl.learner.buffer
    assert stored == len(buf) >= B * K * 2  # a summary and a retrieve decision per boundary
    data = Transitions(*(t[: len(buf)] for t in buf.data))
    nc = len(Choice)
    # transitions are stored row by row, decisions in order, and each boundary opens with
    # its one summary decision (P = 1): counting those gives each transition's row and
    # boundary
    first = data.x[:, : len(SUMMARY_CHOICES)].sum(1) == 1
    assert first[0] and int(first.sum()) == B * K
    n = first.long().cumsum(0) - 1
    row, boundary = n // K, n % K
    assert_close(data.ret, G[row, boundary], "n-step returns")
    assert_close(data.discount, torch.where(boundary + 2 < K, 0.25, 0.0), "discounts")
    boot = boundary + 2 < K
    opening = data.x[first].view(B, K, -1)  # the first decision of every boundary
    expected = opening[row[boot], boundary[boot] + 2, nc:]
    assert torch.equal(data.next_x[boot][:, :, nc:], expected[:, None].expand(-1, 3, -1)), \
        "bootstrap state: the first decision of boundary c + 2"
    assert data.next_x[boot][:, :, :nc].argmax(-1).tolist() == [[0, 1, 2]] * int(boot.sum())
    assert data.next_mask[boot].tolist() == [[True, False, True]] * int(boot.sum())
    assert not data.next_mask[~boot].any() and (data.next_x[~boot] == 0).all()
    assert not state.ltm.controller.step and ctrl.finish(state.ltm, task) == 0, \
        "finish clears the record"


def _recording(ctrl):
    """Every phi [..., K, F] the controller's Q-network is asked about, in order."""
    seen, q = [], ctrl.learner.q

    def recording(x):
        seen.append(x.clone())
        return q(x)

    ctrl.learner.q = recording
    return seen


def _shifted(st, shift):
    """A copy of LTMState `st` as if its stream had `shift` more tokens before it."""
    return dataclasses.replace(
        st, k=st.k.clone(), v=st.v.clone(), level=st.level.clone(),
        start=torch.where(st.live, st.start + shift, st.start), score=st.score.clone(),
        usage=st.usage.clone(), pending_k=st.pending_k.clone(),
        pending_v=st.pending_v.clone(), retrieve=st.retrieve.clone(),
        position=st.position + shift)


@pytest.mark.parametrize("content", [True, False], ids=["content", "scalars"])
def test_q_features_are_the_same_at_2k_and_1m_tokens(content):
    """The same bank and the same chunks at stream offsets 2K and 1M tokens: the
    Q-network is fed exactly the same features (summaries, retrieval, merges and
    evictions), so a policy trained on short streams sees the same states on long ones.
    Random exploration (the same draws in both streams) makes every kind of decision."""
    cfg = MemoryConfig(ltm_controller="qlearning", **{**THREE_LEVELS, "ltm_chunk_size": 64})
    rl = QLearningConfig(content=content, epsilon_start=1.0, epsilon_decay=10 ** 6)
    ctrl = QLearningController(cfg, rl)
    ltm = LongTermMemory.from_config(cfg, controller=ctrl)
    g = torch.Generator().manual_seed(0)
    ctrl.scores.update(torch.randn(100, generator=g))  # scores normalised as after training

    def qkv(T):
        return [torch.randn(2, T, cfg.ltm_heads, cfg.ltm_head_dim, generator=g)
                for _ in range(3)]

    prefix, chunks = LayerState(), qkv(64 * 6 + 7)
    with torch.no_grad():
        ltm.remember(*qkv(64 * 12 + 3), prefix)  # 12 chunks and 3 pending tokens
    assert (prefix.ltm.level == 1).any() and (prefix.ltm.usage > 0).any()
    seen = {}
    for offset in (2048, 2 ** 20):  # the same bank, 12 chunks and 3 tokens before offset + 3
        st = LayerState(ltm=_shifted(prefix.ltm, offset - 64 * 12))
        st.ltm.controller = Episode(2, torch.Generator().manual_seed(5))
        seen[offset] = _recording(ctrl)
        with torch.no_grad():
            ltm.remember(*chunks, st)
        assert st.ltm.position == offset + 3 + 64 * 6 + 7
        del ctrl.learner.q  # the class's method again
    near, far = seen[2048], seen[2 ** 20]
    choices = {int(c) for x in near for c in x[..., : len(Choice)].argmax(-1).unique()}
    assert {int(Choice.STORE), int(Choice.RETRIEVE), int(Choice.MERGE),
            int(Choice.EVICT)} <= choices
    assert len(near) == len(far) >= 14
    for i, (a, b) in enumerate(zip(near, far)):
        assert torch.equal(a, b), f"call {i}: the features differ at 1M tokens"


def _content_case(ctrl):
    """Q-values of two rows whose scalar features are equal and whose keys differ: the
    summary decisions of one chunk, and the eviction candidates of a full level."""
    e = torch.eye(16)
    fields = {"score": torch.zeros(2, 2), "usage": torch.ones(2, 2),
              "keys": torch.stack([torch.stack([e[2], e[0]]), torch.stack([e[2], e[1]])])}
    bank = BankView(position=80, capacity=[2], live=torch.ones(2, 2, dtype=torch.bool),
                    level=torch.zeros(2, 2, dtype=torch.int64),
                    start=torch.tensor([[8, 8], [8, 8]]), _device_fields=fields.__getitem__)
    seen = _recording(ctrl)
    ctrl.decide(ChunkFeatures(bank, 9, 80, torch.ones(2, 1), torch.stack([e[:1], e[1:2]])))
    ctrl.select(LevelFeatures(bank, 0, 1, torch.ones(2, dtype=torch.bool), top=True))
    del ctrl.learner.q
    summary = ctrl.learner.q(seen[0])  # [row, STORE / COMPRESS / DISCARD]
    entry = ctrl.learner.q(seen[2])[:, 1]  # [row]: the entry holding e0 or e1
    # |row 0 - row 1|; equal inputs may differ by round-off in a batched matmul
    return (summary[0] - summary[1]).abs(), (entry[0] - entry[1]).abs()


def test_content_tells_apart_summaries_with_equal_scores():
    """Two summaries with the same score, novelty and rank but different keys (and two
    entries alike but for their keys): different Q-values with the content features,
    equal ones without."""
    cfg = MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL)
    with_content = QLearningController(cfg, QLearningConfig(content=True)).eval()
    without = QLearningController(cfg, QLearningConfig(content=False)).eval()
    assert with_content.feature_dim == without.feature_dim + 16  # H * Dh = 1 * 16
    summary, entry = _content_case(with_content)
    assert (summary > 1e-4).all() and entry > 1e-4, (summary, entry)
    summary, entry = _content_case(without)
    assert (summary < 1e-6).all() and entry < 1e-6, (summary, entry)


def test_a_policy_saved_with_a_horizon_is_refused():
    """A saved config with `horizon` (the features scaled by a training length) names why
    it cannot be loaded, as a policy and as a training state."""
    cfg = MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL)
    ctrl = QLearningController(cfg)
    plain, tensors = ctrl.policy_state()
    old = {**plain, "rl": {**plain["rl"], "horizon": 4096}}
    with pytest.raises(ValueError, match=r"QLearningConfig.from_dict: expected a config "
                                         r"without 'horizon', got horizon=4096"):
        QLearningController(cfg).load_policy_state(old, tensors)
    with pytest.raises(ValueError, match=r"without 'horizon'"):
        ctrl.load_training_state({**ctrl.training_state(), "rl": old["rl"]})
    with pytest.raises(ValueError, match=r"unknown keys \['hoirzon'\]"):
        QLearningConfig.from_dict({"hoirzon": 1})
    assert QLearningConfig.from_dict(plain["rl"]) == ctrl.rl


def _numbered(ids, n_next=2, feature_dim=3):
    """Transitions whose ret holds an id."""
    n = len(ids)
    return Transitions(torch.zeros(n, feature_dim), torch.tensor(ids, dtype=torch.float32),
                       torch.zeros(n), torch.zeros(n, n_next, feature_dim),
                       torch.zeros(n, n_next, dtype=torch.bool))


def test_replay_buffer_is_bounded_and_samples_uniformly():
    buf = ReplayBuffer(capacity=50, feature_dim=3, n_next=2)
    start = 0
    for n in (7, 30, 60, 33):  # wraps around, and one push larger than the capacity
        buf.push(_numbered(list(range(start, start + n))))
        start += n
        assert len(buf) == min(start, 50)
    assert sorted(buf.data.ret.tolist()) == list(range(start - 50, start)), "the newest 50"
    draws = 100_000
    ids = buf.sample(draws, torch.Generator().manual_seed(0)).ret.long() - (start - 50)
    assert ids.min() >= 0 and ids.max() < 50
    counts = torch.bincount(ids, minlength=50).double()
    expected = draws / 50
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # 49 degrees of freedom: P(chi2 > 100) < 3e-5 for a uniform sampler, while leaving out
    # one slot, or favouring a tenth of them by 10 %, gives chi2 of about 2000 or 90 + 49
    assert chi2 < 100, chi2
    assert (counts > 0).all()


def test_acting_on_the_host_is_the_network_and_follows_its_updates():
    """The Q-values a controller acts on (QNetwork.act, float32 NumPy on the host) are the
    network's forward, and stay so after an optimiser step, a load_state_dict and a
    parameter replaced outright: its cached host weights follow every change."""
    ctrl = QLearningController(MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL),
                               QLearningConfig(min_buffer=1, batch_size=4))
    x = torch.rand(5, 3, ctrl.feature_dim, generator=torch.Generator().manual_seed(0))
    net = ctrl.learner.online

    def agrees():
        with torch.no_grad():
            assert_close(ctrl.learner.q(x), net(x))

    agrees()
    before = ctrl.learner.q(x)
    ctrl.learner.update(Transitions(x[:, 0], torch.ones(5), torch.zeros(5), x,
                                    torch.ones(5, 3, dtype=torch.bool)))
    assert not torch.equal(ctrl.learner.q(x), before), "the step reached the host weights"
    agrees()
    net.load_state_dict(QLearningController(
        MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL),
        QLearningConfig(seed=7)).learner.online.state_dict())
    agrees()
    net.heads.bias = torch.nn.Parameter(torch.full((len(Choice),), 3.0))
    agrees()


def test_epsilon_follows_its_linear_schedule():
    cfg = QLearningConfig(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay=100)
    assert [cfg.epsilon(t) for t in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert QLearningConfig(epsilon_decay=0, epsilon_end=0.2).epsilon(0) == 0.2
    ctrl = QLearningController(MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL), cfg)
    ctrl.learner.updates = 30
    assert ctrl.epsilon == pytest.approx(0.73)
    assert ctrl.eval().epsilon == 0.0 and ctrl.train().epsilon == pytest.approx(0.73)
    # the picks explore at that rate: two valid candidates of three, half of the random
    # picks differ from the greedy one
    x = torch.rand(20_000, 3, ctrl.feature_dim)
    mask = torch.tensor([True, False, True]).expand(20_000, 3)
    pick, explored = (torch.from_numpy(a) for a in ctrl._choose(x, mask))
    greedy = ctrl.learner.q(x).masked_fill(~mask, float("-inf")).argmax(-1)
    assert (pick != 1).all()
    assert torch.equal(explored, pick != greedy)
    assert explored.float().mean().item() == pytest.approx(0.73 / 2, abs=0.015)


def test_eval_mode_is_greedy_and_records_nothing():
    rl = QLearningConfig(epsilon_start=1.0, epsilon_decay=10 ** 6)
    cfg, ctrl, rec, state, _ = _episode_run(rl, config=THREE_LEVELS, segments=(21, 30))
    assert state.ltm.controller.step, "training records"
    ctrl.eval()
    logs = []
    # the module's mode reaches the controller
    ltm = LongTermMemory.from_config(cfg, controller=rec).eval()
    for _ in range(2):
        rec.log = []
        st = LayerState()
        with torch.no_grad():
            ltm(torch.ones(2, 40, 16), st)
        logs.append([(a.tolist(), r.tolist()) for a, r in rec.log])
        assert not st.ltm.controller.step and not st.ltm.controller.positions
    assert logs[0] == logs[1] and len(logs[0]) == 10


def test_three_levels_compress_merge_and_evict_within_capacity():
    """Random exploration over three levels drives every kind of decision; the bank stays
    within its capacity and every decision becomes one stored transition."""
    rl = QLearningConfig(epsilon_start=1.0, epsilon_decay=10 ** 6)
    cfg, ctrl, rec, state, banks = _episode_run(rl, B=4, config=THREE_LEVELS,
                                                segments=(30, 31, 19))
    actions = torch.cat([a for a, _ in rec.log])
    assert {int(a) for a in actions.unique()} == {0, 1, 2}, "STORE, COMPRESS and DISCARD"
    assert rec.selects > 0
    for level, cap in enumerate([3, 2, 2]):
        assert ((state.ltm.level == level).sum(1) <= cap).all()
    assert (banks[-1].level == 2).any(), "merges reached the top level"
    decisions = len(state.ltm.controller.step)
    assert decisions >= len(rec.log) * 3 + rec.selects  # P = 2 summaries + retrieve per chunk
    assert ctrl.finish(state.ltm, 0.0) == len(ctrl.learner.buffer) > 0


@pytest.mark.parametrize("config", [ONE_LEVEL, THREE_LEVELS], ids=["one-level", "three"])
def test_greedy_select_on_the_live_entries_equals_the_full_width(config, monkeypatch):
    """A greedy select reads the live entries only (a segment's bank has a column for each
    of its summaries): the same evictions, merges and outputs as over every column."""
    cfg = MemoryConfig(ltm_controller="qlearning", **config)
    g = torch.Generator().manual_seed(3)
    x = [torch.randn(3, 61, cfg.ltm_heads, cfg.ltm_head_dim, generator=g) for _ in range(3)]
    runs = []
    for compact in (True, False):
        monkeypatch.setattr(QLearningController, "_compact_select", compact)
        torch.manual_seed(0)
        # seed 2: its untrained greedy policy stores, so the bank overflows and selects
        rec = Recorder(QLearningController(cfg, QLearningConfig(seed=2)).eval())
        ltm = LongTermMemory.from_config(cfg, controller=rec).eval()
        state = LayerState()
        with torch.no_grad():
            out = [ltm.remember(*(t[:, a:b] for t in x), state).o
                   for a, b in ((0, 29), (29, 61))]
        runs.append((out, state.ltm, rec.selects))
    (out_c, ltm_c, sel_c), (out_f, ltm_f, sel_f) = runs
    assert sel_c == sel_f > 0
    for a, b in zip(out_c, out_f):
        assert torch.equal(a, b)
    for name in ("k", "v", "level", "start", "score"):
        assert torch.equal(getattr(ltm_c, name), getattr(ltm_f, name)), name


# ---------------------------------------------------------------- baselines

def test_importance_keeps_the_highest_scores():
    cfg = MemoryConfig(ltm_controller="importance", **{**ONE_LEVEL, "ltm_capacity": 3})
    ltm = LongTermMemory.from_config(cfg)
    q, k, v = (torch.randn(2, 41, 1, 16) for _ in range(3))
    state = LayerState()
    with torch.no_grad():
        ltm.remember(q, k, v, state)
        _, _, score = chunk_compress_ref(k[:, :40], v[:, :40], ltm.q_pool, 4)  # [2, 10, 1, 1]
    score = score[:, :, 0, 0]
    best = score.topk(3, dim=1).indices.sort(1).values
    kept = (state.ltm.start // 4 - 1).sort(1).values  # the chunk each entry came from
    assert torch.equal(kept, best)
    # several levels: every summary is stored and the lowest-scored entries are merged
    cfg3 = MemoryConfig(ltm_controller="importance", **THREE_LEVELS)
    rec = Recorder(build_controller(cfg3))
    LongTermMemory.from_config(cfg3, controller=rec)(torch.randn(2, 40, 16), LayerState())
    assert all((a == int(Action.STORE)).all() for a, _ in rec.log) and rec.selects > 0


@pytest.mark.parametrize("guided,guided_read", [(1.0, None), (0.0, None), (1.0, 0.0),
                                                (0.0, 1.0)])
def test_guided_exploration_takes_the_importance_heuristics_choices(guided, guided_read):
    """Exploring at every decision: guided = 1 keeps exactly importance's bank (the
    highest pooling scores) and, unless guided_read says otherwise, reads every chunk as
    importance does; uniform exploration does neither."""
    cfg = MemoryConfig(ltm_controller="qlearning", **{**ONE_LEVEL, "ltm_capacity": 3})
    rl = QLearningConfig(epsilon_start=1.0, epsilon_end=1.0, epsilon_decay=10 ** 6,
                         guided=guided, guided_read=guided_read)
    ctrl = QLearningController(cfg, rl).train()
    ltm = LongTermMemory.from_config(cfg, controller=ctrl)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 41, 1, 16) for _ in range(3))
    state = LayerState()
    with torch.no_grad():
        ltm.remember(q, k, v, state)
        _, _, score = chunk_compress_ref(k[:, :40], v[:, :40], ltm.q_pool, 4)
    best = score[:, :, 0, 0].topk(3, dim=1).indices.sort(1).values
    kept = (state.ltm.start[state.ltm.live].view(2, -1) // 4 - 1).sort(1).values
    assert torch.equal(kept, best) == (guided == 1.0)
    reads = torch.stack(state.ltm.controller.read)
    share = guided if guided_read is None else guided_read
    assert bool(reads.all()) == (share == 1.0)
    if share == 0.0:  # uniform: both answers come up
        assert 0 < int(reads.sum()) < reads.numel()


@pytest.mark.parametrize("guided_select", [None, 1.0, 0.0])
def test_guided_select_sets_how_often_an_exploring_select_gives_up_the_lowest(guided_select):
    """Exploring at every decision with guided = 1: each merge or eviction takes the
    lowest-scored entries of the full level (importance's) unless guided_select is below
    1; at 0 the picks are uniform, and some are not the lowest."""
    from memmodel.controllers.heuristics import lowest_scores

    cfg = MemoryConfig(ltm_controller="qlearning", **THREE_LEVELS)
    rl = QLearningConfig(epsilon_start=1.0, epsilon_end=1.0, epsilon_decay=10 ** 6,
                         guided=1.0, guided_select=guided_select)
    ctrl = QLearningController(cfg, rl).train()
    same = []
    select = ctrl.select

    def counted(features):
        idx = select(features)
        low = lowest_scores(features)
        same.extend((idx.sort(1).values == low.sort(1).values).all(1)[features.rows].tolist())
        return idx

    ctrl.select = counted
    torch.manual_seed(0)
    with torch.no_grad():
        LongTermMemory.from_config(cfg, controller=ctrl)(torch.randn(4, 80, 16), LayerState())
    assert len(same) > 10
    assert all(same) == (guided_select != 0.0)


@pytest.mark.parametrize("config", [ONE_LEVEL, THREE_LEVELS], ids=["one-level", "three-levels"])
def test_a_large_prior_makes_the_greedy_policy_importance(config):
    """Greedy with a prior far above any Q value: every decision is importance's (the
    same summaries stored, the same entries merged and evicted, every chunk read), so
    the bank and the output are importance's; without a prior the untrained network's
    own choices differ."""
    cfg = MemoryConfig(ltm_controller="qlearning", **{**config, "ltm_capacity": 3}
                       if config is ONE_LEVEL else config)
    torch.manual_seed(0)
    x = torch.randn(2, 61, 16)
    results = {}
    for name, rl in [("prior", QLearningConfig(prior=1e3)), ("none", QLearningConfig()),
                     ("importance", None)]:
        torch.manual_seed(1)  # the same module weights for all three
        ltm = LongTermMemory.from_config(dataclasses.replace(
            cfg, ltm_controller="importance" if rl is None else "qlearning"),
            controller=None if rl is None else QLearningController(cfg, rl)).eval()
        state = LayerState()
        with torch.no_grad():
            y = ltm(x, state)
        results[name] = (y, state.ltm)
    y, bank = results["prior"]
    y_imp, bank_imp = results["importance"]
    assert_close(y, y_imp)
    assert torch.equal(bank.live, bank_imp.live) and torch.equal(bank.start, bank_imp.start)
    y_none, bank_none = results["none"]
    assert not (torch.equal(bank_none.live, bank_imp.live)
                and torch.equal(bank_none.start, bank_imp.start))


def test_the_prior_moves_the_policys_argmax_not_the_value():
    """A transition whose bootstrap state has two candidates, the heuristic's valued 0.2
    below the other: without a prior the target takes the other's value, with a prior of
    0.5 the heuristic's (the policy's choice), and in both the value is Q_target's, no
    prior added; acting follows the same argmax."""
    cfg = MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL)
    ctrl = QLearningController(cfg, QLearningConfig(prior=0.5)).eval()  # greedy
    net = ctrl.learner.online
    F = ctrl.feature_dim
    x = torch.zeros(1, 2, F)
    x[0, :, int(Choice.STORE)] = 1.0
    x[0, 0, -1], x[0, 1, -1] = 1.0, -1.0  # two states the network tells apart
    x[0, 1, FLAG] = 1.0  # the heuristic's choice: candidate 1
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.trunk[0].weight[0, -1] = 1.0  # h0 = relu(x_last)
        net.trunk[0].weight[1, -1] = -1.0  # h1 = relu(-x_last)
        net.trunk[2].weight[0, 0] = net.trunk[2].weight[1, 1] = 1.0
        net.heads.weight[int(Choice.STORE), 0] = 0.3
        net.heads.weight[int(Choice.STORE), 1] = 0.1
    values = net(x)[0]
    assert_close(values, torch.tensor([0.3, 0.1]))
    assert_close(ctrl.learner.q(x)[0], values)  # acting reads the value, and adds the prior
    assert ctrl._choose(x[0].numpy()[None], np.ones((1, 2), bool), prior=0.5)[0][0] == 1
    assert ctrl._choose(x[0].numpy()[None], np.ones((1, 2), bool), prior=0.0)[0][0] == 0
    batch = Transitions(x[:, 0], torch.ones(1), torch.full((1,), 0.5), x,
                        torch.ones(1, 2, dtype=torch.bool))
    target = copy.deepcopy(net)
    assert_close(double_dqn_targets(net, target, batch), torch.tensor([1.0 + 0.5 * 0.3]))
    assert_close(double_dqn_targets(net, target, batch, prior=0.5),
                 torch.tensor([1.0 + 0.5 * 0.1]))


def test_a_policy_saved_before_the_heuristic_flag_loads():
    """A policy saved before phi had the heuristic flag (its config has no `prior`, its
    features one column fewer) read the same features: it loads, and acts as saved."""
    cfg = MemoryConfig(ltm_controller="qlearning", **ONE_LEVEL)
    saved = QLearningController(cfg, QLearningConfig(seed=3))
    plain, tensors = saved.policy_state()
    old = {**plain, "feature_dim": plain["feature_dim"] - 1,
           "rl": {k: v for k, v in plain["rl"].items() if k not in ("prior", "prior_read")}}
    fresh = QLearningController(cfg)
    fresh.load_policy_state(old, tensors)
    x = torch.rand(4, 3, fresh.feature_dim)
    assert_close(fresh.learner.q(x), saved.learner.q(x))
    with pytest.raises(ValueError, match="expected features of width"):
        fresh.load_policy_state({**plain, "feature_dim": plain["feature_dim"] - 1}, tensors)


def test_store_all_bypasses_the_capacity():
    cfg = MemoryConfig(ltm_controller="store_all", **ONE_LEVEL)  # capacity 2 is ignored
    ltm = LongTermMemory.from_config(cfg)
    assert isinstance(ltm.controller, StoreAllController) and not ltm.controller.bounded
    state = LayerState()
    ltm(torch.randn(2, 23, 16), state)
    ltm(torch.randn(2, 20, 16), state)
    assert state.ltm.live.all() and state.ltm.level.shape[1] == 43 // 4
    assert state.ltm.start[0].tolist() == [4 * (i + 1) for i in range(10)]
    with pytest.raises(RuntimeError, match="unbounded"):
        ltm.controller.select(None)


# ---------------------------------------------------------------- learning

TOY_C, TOY_CHUNKS = 4, 6
TOY_T = TOY_C * TOY_CHUNKS - 1  # the question is the last token; no boundary after it
FACT = torch.tensor([1.0, 0.0, 0.0, 0.0])


def _toy_memory():
    """One level holding one entry; summaries pooled towards the fact's direction."""
    cfg = MemoryConfig(d_model=4, ltm_controller="fifo", ltm_heads=1, ltm_chunk_size=TOY_C,
                       ltm_summaries=1, ltm_levels=1, ltm_capacity=1, backend="torch")
    ltm = LongTermMemory.from_config(cfg)
    with torch.no_grad():
        ltm.q_pool.copy_(4 * FACT.view(1, 1, 4))
    return cfg, ltm


def _toy_episodes(ltm, B, g):
    """The toy memory MDP: 6 chunks of 4 tokens; one of the first 5 holds a fact (a token
    10 * FACT, the other tokens are noise orthogonal to it); the last token asks for it,
    and the chunk before the question carries a cue (component 1 of its keys is 3, 0
    elsewhere), as a question marker would: the features know no position, so only what
    a chunk holds tells that the question comes next. Reward 1 when the question's
    retrieval returns the fact. Returns (fact chunk, reward, state)."""
    fact_chunk = torch.randint(0, TOY_CHUNKS - 1, (B,), generator=g)
    x = torch.randn(B, TOY_T, 1, 4, generator=g)
    x[..., :2] = 0.0
    x[torch.arange(B), fact_chunk * TOY_C + torch.randint(0, TOY_C, (B,), generator=g), 0] = \
        10 * FACT
    x[:, (TOY_CHUNKS - 2) * TOY_C: (TOY_CHUNKS - 1) * TOY_C, 0, 1] = 3.0
    state = LayerState()
    with torch.no_grad():
        rec = ltm.remember((8 * FACT).expand(B, TOY_T, 1, 4), x, x, state)
    return fact_chunk, (rec.o[:, -1, 0, 0] > 5).float(), state


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_q_learning_finds_the_optimal_policy_of_a_toy_memory_mdp(seed):
    """Optimal: STORE the fact's chunk and DISCARD every other (memory costs, and with
    capacity 1 a later STORE evicts the fact), RETRIEVE only for the question's chunk
    (retrieval costs): read when the cue's chunk ends. Reached, greedily, on fresh
    episodes after 200 rounds of 16 episodes and 8 Q updates (1600 updates); fifo keeps
    the last chunk, so it answers only when the fact is there. With the features that read
    the position (and no cue), of seeds 0-4 seed 2 alone stopped short (also after 400
    rounds), storing some chunks before the fact; with the length-free features and the
    cue, seeds 0, 1 and 3 reach the optimum (2 and 4 not rerun)."""
    cfg, ltm = _toy_memory()
    rl = QLearningConfig(memory_cost=0.05, retrieve_cost=0.1, n_step=4,
                         gamma=1.0, lr=3e-3, batch_size=64, min_buffer=64, target_update=50,
                         epsilon_decay=800, seed=seed)
    ctrl = QLearningController(cfg, rl)
    ltm.controller = ctrl
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        _, reward, state = _toy_episodes(ltm, 16, g)
        ctrl.finish(state.ltm, reward)
        ctrl.update(8)
    assert ctrl.learner.updates == 1600

    held_out = torch.Generator().manual_seed(1000 + seed)
    results = {}
    ltm.eval()  # greedy: the module's mode reaches the controller
    for name, controller in (("qlearning", ctrl.eval()), ("fifo", FifoController())):
        rec = Recorder(controller)
        ltm.controller = rec
        fact_chunk, reward, _ = _toy_episodes(ltm, 64, torch.Generator().set_state(
            held_out.get_state()))
        results[name] = (fact_chunk, reward, rec.log)
    fact_chunk, reward, log = results["qlearning"]
    action = torch.stack([a[:, 0] for a, _ in log], 1)  # [64, 5 boundaries]
    read = torch.stack([r for _, r in log], 1)
    boundary = torch.arange(TOY_CHUNKS - 1)
    optimal_action = torch.where(boundary == fact_chunk[:, None], int(Action.STORE),
                                 int(Action.DISCARD))
    assert torch.equal(action, optimal_action), (action != optimal_action).float().mean(0)
    assert torch.equal(read, (boundary == TOY_CHUNKS - 2).expand(64, -1)), \
        (read != (boundary == TOY_CHUNKS - 2)).float().mean(0)
    assert reward.mean() == 1.0
    fact_chunk, reward, _ = results["fifo"]
    assert torch.equal(reward.bool(), fact_chunk == TOY_CHUNKS - 2), \
        "fifo holds only the last chunk: it answers only when the fact is there"
    assert reward.mean() < 0.4


@pytest.mark.slow
def test_q_learning_on_passkey_keeps_the_key_more_than_fifo_with_less_memory_than_store_all():
    """The frozen hand-set reader answers only from memory. 11 complete chunks before the
    question, capacity 2: fifo holds the key only when it is in one of the last two
    chunks. The Q-learning controller, trained 60 steps on the task's loss reward through
    the joint loop (model frozen), holds it far more often, with at most 2 entries where
    store_all holds 11, storing selectively. (Whether it also learns to skip reads in 60
    steps depends on the seed: with the position features, seed 2 read 32% of the chunks,
    seeds 1 and 3 all; not remeasured with the length-free ones.)"""
    task = PasskeyTask(seq_len=12 * 16 - 1, chunk_size=16, key_len=1)
    results = {}
    for name in ("fifo", "store_all"):
        reader = passkey_reader(task, name, backend="torch")
        results[name] = evaluate_memory(reader, task, batches=2,
                                        batch_size=32)
    assert results["store_all"]["answer_accuracy"] == 1.0, "the oracle answers from memory"
    assert results["store_all"]["entries"] == 11

    model = passkey_reader(task, "qlearning", backend="torch")
    rl = QLearningConfig(memory_cost=0.02, retrieve_cost=0.02, n_step=4,
                         lr=3e-3, min_buffer=64, target_update=50, epsilon_decay=240, seed=1)
    ctrl = QLearningController(model.config, rl)
    train_memory(model, task, MemoryTrainConfig(steps=60, lr=0, batch_size=16, q_updates=8,
                                                eval_batches=1, seed=1), ctrl)
    q = evaluate_memory(model, task, batches=2, batch_size=32)
    fifo = results["fifo"]
    assert fifo["key_kept"] < 0.35 and q["key_kept"] >= 0.9, (fifo, q)
    assert q["answer_accuracy"] >= fifo["answer_accuracy"] + 0.5
    assert q["entries"] <= 2 < results["store_all"]["entries"]
    assert q["kept"] < 0.5, "it stores selectively"


# ---------------------------------------------------------------- checkpoints and config

def test_checkpoint_round_trip_restores_the_controller_state(tmp_path):
    task = PasskeyTask(seq_len=39, chunk_size=8, key_len=1)
    cfg = MemoryConfig(d_model=16, n_layers=2, d_state=4, ltm_controller="qlearning",
                       ltm_heads=1, ltm_chunk_size=8, ltm_summaries=1, ltm_levels=2,
                       ltm_capacity=[2, 2], ltm_merge=2, backend="torch")
    model = MemoryLM(cfg)
    ctrl = QLearningController(cfg, QLearningConfig(min_buffer=8, batch_size=8, seed=3,
                                                     memory_cost=0.1))
    path = str(tmp_path / "memory.pt")
    train_memory(model, task, MemoryTrainConfig(steps=3, batch_size=4, q_updates=2,
                                                eval_batches=1, checkpoint=path), ctrl)
    assert ctrl.learner.updates == 6 and len(ctrl.learner.buffer) > 0

    model2, ctrl2, payload = load_checkpoint(path)
    assert payload["step"] == 3 and payload["optimizer"] is not None
    assert all(layer.long_term_memory.controller is ctrl2 for layer in model2.layers)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name
    assert ctrl2.rl == ctrl.rl and ctrl2.learner.updates == 6
    assert not model2.training and not ctrl2.training and ctrl2.epsilon == 0.0
    ctrl2.train()  # explore again, as the saved one does
    assert ctrl2.epsilon == ctrl.epsilon
    for net in ("online", "target"):
        for a, b in zip(getattr(ctrl.learner, net).parameters(),
                        getattr(ctrl2.learner, net).parameters()):
            assert torch.equal(a, b), net
    buf, buf2 = ctrl.learner.buffer, ctrl2.learner.buffer
    assert (len(buf), buf.cursor) == (len(buf2), buf2.cursor)
    assert all(torch.equal(a[: len(buf)], b[: len(buf)]) for a, b in zip(buf.data, buf2.data))
    assert (ctrl.scores.count, ctrl.scores.mean) == (ctrl2.scores.count, ctrl2.scores.mean)
    # the random state and Adam's moments came along: both go on identically
    assert ctrl.update(3) == ctrl2.update(3)
    for a, b in zip(ctrl.learner.online.parameters(), ctrl2.learner.online.parameters()):
        assert torch.equal(a, b)
    x = torch.rand(6, 3, ctrl.feature_dim)
    mask = torch.ones(6, 3, dtype=torch.bool)
    assert (ctrl._choose(x, mask)[0] == ctrl2._choose(x, mask)[0]).all()

    buffer = io.BytesIO()  # the training state alone, through torch.save
    torch.save(ctrl.training_state(), buffer)
    fresh = QLearningController(cfg)
    fresh.load_training_state(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert fresh.rl.memory_cost == 0.1 and fresh.learner.updates == ctrl.learner.updates
    with pytest.raises(ValueError, match=r"expected features of width 37 \(ltm_levels=3, "
                                         r"content key width 16\), got 36"):
        QLearningController(MemoryConfig(ltm_controller="qlearning", **THREE_LEVELS)
                            ).load_training_state(ctrl.training_state())


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(gamma=1.5), r"QLearningConfig.gamma: expected a number in \[0, 1\], got 1.5"),
        (dict(n_step=0), r"QLearningConfig.n_step: expected a positive int, got 0"),
        (dict(buffer_size=10, batch_size=64), r"buffer_size: expected at least batch_size=64"),
        (dict(epsilon_start=-0.1), r"epsilon_start: expected a number in \[0, 1\]"),
        (dict(epsilon_decay=2.5), r"epsilon_decay: expected an int >= 0, got 2.5"),
        (dict(lr=0.0), r"QLearningConfig.lr: expected a positive number, got 0.0"),
        (dict(memory_cost=-1.0), r"memory_cost: expected a number >= 0, got -1.0"),
        (dict(retrieve_cost=float("nan")), r"retrieve_cost: expected a number >= 0"),
        (dict(grad_clip=0), r"grad_clip: expected a positive number or None"),
        (dict(content="yes"), r"QLearningConfig.content: expected a bool"),
        (dict(use_usage="yes"), r"use_usage: expected a bool"),
        (dict(guided_read=1.5), r"guided_read: expected None or a number in \[0, 1\], got 1.5"),
        (dict(guided_select=-1), r"guided_select: expected None or a number in \[0, 1\]"),
        (dict(prior=-0.1), r"QLearningConfig.prior: expected a number >= 0, got -0.1"),
        (dict(prior_read="1"), r"prior_read: expected None or a number >= 0, got '1'"),
    ],
    ids=["gamma", "n-step", "buffer", "eps-start", "eps-decay", "lr", "memory-cost",
         "retrieve-cost", "grad-clip", "content", "usage", "guided-read", "guided-select", "prior",
         "prior-read"],
)
def test_bad_q_learning_config_raises(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        QLearningConfig(**kwargs)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: MemoryTrainConfig(reward="f1"), r"MemoryTrainConfig.reward: expected 'loss' or"),
        (lambda: MemoryTrainConfig(steps=0), r"MemoryTrainConfig.steps: expected a positive int"),
        (lambda: MemoryTrainConfig(q_updates=-1), r"q_updates: expected an int >= 0"),
        (lambda: MemoryTrainConfig(lr=-1.0), r"MemoryTrainConfig.lr: expected a finite number"),
        (lambda: PasskeyTask(chunk_size=4, key_len=4), r"PasskeyTask.chunk_size: expected at "
                                                       r"least key_len \+ 1 = 5"),
        (lambda: PasskeyTask(seq_len=19, chunk_size=16), r"PasskeyTask.seq_len: expected room "
                                                          r"for a key chunk"),
        (lambda: PasskeyTask(filler="ab1"), r"PasskeyTask.filler: expected no byte shared"),
        (lambda: PasskeyTask(marker="##"), r"PasskeyTask.marker: expected one character"),
        (lambda: QLearningController(None), r"QLearningController: expected the MemoryConfig"),
        (lambda: passkey_reader(PasskeyTask(key_len=2), "fifo"),
         r"passkey_reader: expected key_len 1"),
        (lambda: MemoryConfig(ltm_controller="q-learning"),
         r"ltm_controller: expected one of \['fifo', 'gumbel', 'importance', 'none', 'qlearning', "
         r"'store_all'\]"),
    ],
    ids=["reward", "steps", "q-updates", "lr", "chunk", "seq-len", "filler", "marker",
         "no-config", "reader", "controller-name"],
)
def test_bad_settings_raise_naming_the_field(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_bad_calls_raise():
    cfg, ctrl, _, state, _ = _episode_run(QLearningConfig())
    with pytest.raises(ValueError, match=r"finish: expected task_reward \[B=3\], got \[2\]"):
        ctrl.finish(state.ltm, torch.zeros(2))
    with pytest.raises(TypeError, match=r"expected rl to be a QLearningConfig, got dict"):
        QLearningController(cfg, {"gamma": 0.5})
    model = MemoryLM(MemoryConfig(**{**ONE_LEVEL, "ltm_controller": "fifo"}))
    with pytest.raises(ValueError, match=r"expected task.chunk_size == config.ltm_chunk_size"):
        train_memory(model, PasskeyTask(seq_len=64, chunk_size=8), MemoryTrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"answer_metrics: expected logits \[B, T, V\]"):
        answer_metrics(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


def test_passkey_task_layout_and_metrics():
    task = PasskeyTask(seq_len=100, chunk_size=16, key_len=3, min_gap=2)
    batch = task.sample(64, torch.Generator().manual_seed(0))
    x, y = batch.input_ids, batch.labels
    answer = y != -100
    assert answer.sum(1).tolist() == [3] * 64 and answer[:, -3:].all()
    assert (x[:, -3] == ord("?")).all() and torch.equal(y[:, -3:], batch.key)
    assert torch.equal(x[:, -2:], batch.key[:, :2])
    marker = (x == ord("#")).float().argmax(1)
    assert torch.equal(marker // 16, batch.key_chunk), "the marker sits in the key's chunk"
    assert torch.equal(x[torch.arange(64)[:, None], marker[:, None] + 1 + torch.arange(3)],
                       batch.key)
    assert ((marker + 3) // 16 == batch.key_chunk).all(), "and so does the key"
    assert batch.key_chunk.max() <= task.query_chunk - 2 and set(batch.key_chunk.tolist()) == \
        set(range(task.last_key_chunk + 1))
    filler = x.clone()
    filler[torch.arange(64)[:, None], marker[:, None] + torch.arange(4)] = ord("a")
    filler[:, -3:] = ord("a")
    assert all(chr(c) in task.filler for c in filler.unique().tolist())
    logits = torch.zeros(64, 100, 256)
    logits[torch.arange(64)[:, None], torch.arange(97, 100), batch.key] = 100.0
    loss, acc = answer_metrics(logits, y)
    assert (loss < 1e-6).all() and (acc == 1).all()
    logits[:, 99] = 0.0  # the last answer byte at chance
    loss, acc = answer_metrics(logits, y)
    assert_close(loss, torch.full((64,), math.log(256) / 3), "loss") and \
        torch.allclose(acc, torch.full((64,), 2 / 3))
    st = LayerState()
    cfg = MemoryConfig(ltm_controller="store_all", **{**ONE_LEVEL, "ltm_chunk_size": 16})
    LongTermMemory.from_config(cfg)(torch.randn(64, 100, 16), st)
    assert key_kept(st.ltm, batch.key_chunk, 16).all()
