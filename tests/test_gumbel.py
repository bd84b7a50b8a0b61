"""The gumbel controller: its keep and eviction rules, the straight-through gate (values
unchanged forward, a gradient to the gate backward), streaming, saving and its config."""

import dataclasses
import math

import pytest
import torch
from helpers import assert_close

from memmodel.config import MemoryConfig
from memmodel.controllers import (
    Action,
    BankView,
    ChunkFeatures,
    Gate,
    GumbelController,
    LevelFeatures,
    build_controller,
)
from memmodel.long_term_memory import LongTermMemory
from memmodel.model import MemoryLM
from memmodel.state import LayerState
from memmodel.tasks import PasskeyTask
from memmodel.training.memory import MemoryTrainConfig, load_checkpoint, save_checkpoint

# C=4, P=2, r=2, three levels: short inputs already store, discard, merge and evict; bias 0
# so that the untrained gate keeps some summaries and discards others
LTM = dict(d_model=16, n_layers=1, d_state=8, ltm_controller="gumbel", ltm_heads=2,
           ltm_chunk_size=4, ltm_summaries=2, ltm_levels=3, ltm_capacity=[5, 3, 2],
           ltm_merge=2, ltm_gate_bias=0.0, backend="torch")
WIDTH = 16  # ltm_heads * ltm_head_dim


def _ltm(**kw):
    torch.manual_seed(0)
    return LongTermMemory.from_config(MemoryConfig(**{**LTM, **kw}))


def _view(keys, live, level, position=40, capacity=(5, 3, 2), score=None):
    B, M = live.shape
    fields = {"keys": keys, "score": torch.zeros(B, M) if score is None else score,
              "usage": torch.zeros(B, M)}
    return BankView(position, capacity, live, level, torch.zeros(B, M, dtype=torch.int64),
                    lambda name: fields[name])


def test_eval_stores_a_summary_exactly_when_its_logit_is_positive():
    ctrl = GumbelController(MemoryConfig(**LTM)).eval()
    keys = torch.randn(3, 4, 2, WIDTH)
    logit = ctrl.logits(keys)
    assert (logit > 0).any() and (logit <= 0).any(), "the case needs both signs"
    gate = ctrl.gate(keys)
    assert torch.equal(gate.keep, logit > 0)
    assert torch.equal(gate.weight.detach(), (logit > 0).float())
    empty = torch.zeros(3, 0, dtype=torch.int64)
    features = ChunkFeatures(_view(torch.zeros(3, 0, WIDTH), empty.bool(), empty - 1),
                             chunk_index=2, position=12, score=torch.zeros(3, 2),
                             keys=keys[:, 1])
    asked = ctrl.decide(features)  # no gate given: the controller computes the same rule
    expect = torch.where(logit[:, 1] > 0, int(Action.STORE), int(Action.DISCARD))
    assert torch.equal(asked.action, expect) and asked.retrieve.all()
    handed = ctrl.decide(dataclasses.replace(features, gate=~gate.keep[:, 1]))
    assert torch.equal(handed.action == int(Action.STORE), ~gate.keep[:, 1]), \
        "the module's gate is what decide follows"


def test_training_keeps_where_the_noisy_logit_over_tau_is_positive():
    ctrl = GumbelController(MemoryConfig(**{**LTM, "ltm_gate_tau": 0.5})).train()
    keys = torch.randn(2, 3, 2, WIDTH)
    gate = ctrl.gate(keys)
    assert int(ctrl.draws) == 1
    ctrl.draws.zero_()
    z = (ctrl.logits(keys) + ctrl.noise((2, 3, 2), "cpu")) / 0.5
    assert torch.equal(gate.keep, z > 0)
    ctrl.gate(keys)
    assert int(ctrl.draws) == 2, "each call draws once"
    # forward: exactly the hard decision; backward: the sigmoid's slope
    assert torch.equal(gate.weight.detach(), gate.keep.float())
    ctrl.zero_grad()
    gate.weight.sum().backward()
    slope = torch.sigmoid(z) * (1 - torch.sigmoid(z)) / 0.5
    grad = ctrl.net[2].bias.grad
    assert torch.isfinite(grad).all()
    assert math.isclose(float(grad), float(slope.sum().detach()), rel_tol=1e-5)


@pytest.mark.parametrize("evict", ["logit", "score"])
def test_a_full_level_gives_up_its_lowest_logits_or_scores(evict):
    ctrl = GumbelController(MemoryConfig(**LTM, ltm_gate_evict=evict)).eval()
    B, M = 2, 7
    keys, score = torch.randn(B, M, WIDTH), torch.randn(B, M)
    live = torch.tensor([[1, 1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)
    level = torch.tensor([[0, 0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0]])
    picked = ctrl.select(LevelFeatures(_view(keys, live, level, score=score), level=0,
                                       count=2, rows=torch.ones(B, dtype=torch.bool),
                                       top=False))
    logit = ctrl.logits(keys).detach() if evict == "logit" else score
    for b in range(B):
        candidates = [m for m in range(M) if live[b, m] and level[b, m] == 0]
        expect = sorted(candidates, key=lambda m: float(logit[b, m]))[:2]
        assert picked[b].tolist() == expect


def test_straight_through_leaves_the_forward_pass_unchanged():
    ltm = _ltm().train()
    ctrl = ltm.controller
    x = torch.randn(2, 37, 16)
    out = ltm(x, LayerState())

    hard = ctrl.gate
    ctrl.gate = lambda keys: (lambda g: Gate(g.keep, g.keep.float()))(hard(keys))
    ctrl.draws.zero_()  # the same noise again
    plain = ltm(x, LayerState())
    assert torch.equal(out, plain)


def test_the_gate_gets_a_gradient_from_the_memory_output_and_the_optimiser_moves_it():
    ltm = _ltm(ltm_gate_bias=2.0).train()
    ctrl = ltm.controller
    x = torch.randn(2, 37, 16)
    ltm(x).square().sum().backward()
    for name, p in ctrl.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"
    before = [p.detach().clone() for p in ctrl.parameters()]
    torch.optim.AdamW(ltm.parameters(), lr=1e-2).step()
    assert all(not torch.equal(a, p) for a, p in zip(before, ctrl.parameters()))


@pytest.mark.parametrize("lengths", [[5, 13, 1, 20, 22], [8, 4, 49]],
                         ids=["ragged", "multiples-of-C"])
def test_streaming_in_segments_equals_one_call_in_eval(lengths):
    ltm = _ltm().eval()
    x = torch.randn(2, 61, 16)
    ref = LayerState()
    with torch.no_grad():
        full = ltm(x, ref)
        state, outs, p = LayerState(), [], 0
        for n in lengths:
            outs.append(ltm(x[:, p: p + n], state))
            p += n
    assert_close(torch.cat(outs, 1), full, "streamed output")
    assert torch.equal(state.ltm.level, ref.ltm.level)
    assert torch.equal(state.ltm.start, ref.ltm.start)
    assert (ref.ltm.level == 2).any() and (ref.ltm.level < 0).any(), \
        "the case merges to the top and leaves slots of discarded summaries"


def _trained_model():
    torch.manual_seed(1)
    model = MemoryLM(MemoryConfig(**{**LTM, "n_layers": 2, "ltm_gate_tau": 0.7,
                                     "ltm_gate_hidden": 8}))
    with torch.no_grad():  # each layer's gate its own weights, not the initial ones
        for layer in model.layers:
            for p in layer.long_term_memory.controller.parameters():
                p.add_(torch.randn_like(p))
            layer.long_term_memory.controller.draws.fill_(3)
    return model


def _gates(model):
    return [layer.long_term_memory.controller for layer in model.layers]


def test_checkpoint_and_pretrained_round_trip(tmp_path):
    model = _trained_model()
    task = PasskeyTask(seq_len=31, chunk_size=4, key_len=1)
    save_checkpoint(str(tmp_path / "m.pt"), model, task, MemoryTrainConfig(steps=1), step=1)
    model.save_pretrained(tmp_path / "pre")
    ids = task.sample(2, split="test").input_ids
    with torch.no_grad():
        expect = model.eval()(ids).logits
    for loaded in (load_checkpoint(str(tmp_path / "m.pt"))[0],
                   MemoryLM.from_pretrained(tmp_path / "pre")):
        gates = _gates(loaded)
        assert gates[0] is not gates[1] and all(isinstance(g, GumbelController) for g in gates)
        for mine, theirs in zip(gates, _gates(model)):
            assert mine.tau == 0.7 and not mine.training
            for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
                assert torch.equal(a, b), k
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, expect)


def test_state_dict_round_trip_into_a_fresh_controller():
    a = GumbelController(MemoryConfig(**LTM)).train()
    a.gate(torch.randn(1, 2, 2, WIDTH))
    b = build_controller(MemoryConfig(**{**LTM, "ltm_gate_seed": 5}), "gumbel")
    b.load_state_dict(a.state_dict())
    assert int(b.draws) == 1
    keys = torch.randn(2, 3, WIDTH)
    assert torch.equal(a.logits(keys), b.logits(keys))


@pytest.mark.parametrize("field, value", [
    ("ltm_gate_tau", 0.0), ("ltm_gate_tau", float("nan")), ("ltm_gate_hidden", 0),
    ("ltm_gate_bias", float("inf")), ("ltm_gate_seed", -1), ("ltm_gate_evict", "oldest"),
], ids=["tau-zero", "tau-nan", "hidden-zero", "bias-inf", "seed-negative", "evict-unknown"])
def test_a_bad_gate_config_value_is_named(field, value):
    with pytest.raises(ValueError, match=rf"MemoryConfig\.{field}: expected"):
        MemoryConfig(**{**LTM, field: value})


def test_keys_of_another_width_are_refused():
    ctrl = GumbelController(MemoryConfig(**LTM))
    with pytest.raises(ValueError, match=r"keys: expected a last dimension of .* = 16"):
        ctrl.logits(torch.randn(2, 3, 8))
    with pytest.raises(TypeError, match=r"config: expected a MemoryConfig"):
        GumbelController({"ltm_heads": 2})
