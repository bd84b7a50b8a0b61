"""MemoryLM's contracts under misuse and failure: evaluation mode reaches the controllers,
causality holds with NaN and with a shared learning controller, a failed call changes no
state, and bad ids, labels, states and configs raise errors that name them."""

import copy
import math

import pytest
import torch

from memmodel.config import MemoryConfig
from memmodel.controllers import Episode, FifoController, MemoryController, QLearningController
from memmodel.model import MemoryLM

LTM = dict(d_model=32, n_layers=2, d_state=4, backend="torch", ltm_heads=2, ltm_chunk_size=8,
           ltm_summaries=2, ltm_levels=2, ltm_capacity=[3, 2], ltm_merge=2)


def _model(**kwargs):
    torch.manual_seed(0)
    return MemoryLM(MemoryConfig(**{**LTM, **kwargs}))


def _controllers(model):
    return [layer.long_term_memory.controller for layer in model.layers]


def _episodes(state):
    return [layer.ltm.controller for layer in state.layers]


# ---------------------------------------------------------------- train / eval


def test_eval_reaches_the_q_learning_controller_and_records_nothing():
    model = _model(ltm_controller="qlearning")
    assert all(c.training and c.epsilon == 1.0 for c in _controllers(model))
    model.eval()
    assert all(not c.training and c.epsilon == 0.0 for c in _controllers(model))
    ids = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        logits, state = _stream(model, ids)  # 4 segments, 8 chunk boundaries per layer
        assert all(len(e.step) == 0 and len(e.positions) == 0 for e in _episodes(state))
        again, _ = _stream(model, ids)
    assert torch.equal(logits, again), "greedy: the same decisions every time"
    model.train()
    assert all(c.training for c in _controllers(model))


def _stream(model, ids, segment=16):
    state, logits = None, []
    for t0 in range(0, ids.shape[1], segment):
        out = model(ids[:, t0:t0 + segment], state=state)
        state = out.state
        logits.append(out.logits)
    return torch.cat(logits, 1), state


def test_a_controller_attached_to_a_model_in_eval_mode_takes_that_mode():
    model = _model(ltm_controller="fifo").eval()
    ctrl = QLearningController(model.config)
    assert ctrl.training
    model.layers[0].long_term_memory.controller = ctrl
    assert not ctrl.training and ctrl.epsilon == 0.0


# ---------------------------------------------------------------- causality

NAN_BYTE, NAN_AT = 255, 40


@pytest.mark.parametrize("controller", ["fifo", "importance", "store_all", "qlearning"])
@pytest.mark.parametrize("wm_slots", [0, 4], ids=["ltm", "ltm+wm"])
def test_a_nan_token_does_not_reach_the_tokens_before_it(controller, wm_slots):
    model = _model(ltm_controller=controller, wm_slots=wm_slots, wm_heads=2,
                   tie_embeddings=False).eval()
    ids = torch.randint(0, 200, (2, 64))
    with torch.no_grad():
        clean = model(ids).logits
        model.embedding.weight[NAN_BYTE] = float("nan")
        ids[:, NAN_AT] = NAN_BYTE
        out = model(ids)  # must not raise (importance used to fail in `select`)
    before = out.logits[:, :NAN_AT]
    assert torch.isfinite(before).all(), "a NaN reached an earlier token"
    # equal up to float rounding: later decisions may change how many entries a segment
    # lists, and so the order of a retrieval's sums, but never what an earlier token sees
    torch.testing.assert_close(before, clean[:, :NAN_AT], rtol=1e-5, atol=1e-6)


def test_a_shared_q_learning_controller_is_causal_in_training_mode():
    """Layer 1's decisions at a boundary must not depend on what layer 0 saw later in the
    segment (running score statistics, exploration draws)."""
    model = _model(ltm_controller="qlearning", ltm_capacity=[3, 1])
    shared = _controllers(model)[0]
    for layer in model.layers:
        layer.long_term_memory.controller = shared
    ids = torch.randint(0, 256, (2, 64))
    other = ids.clone()
    t = 20
    other[:, t + 1:] = torch.randint(0, 256, (2, 64 - t - 1))
    with torch.no_grad():
        a = copy.deepcopy(model)(ids).logits
        b = copy.deepcopy(model)(other).logits
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=0)
    assert not torch.equal(a[:, t + 1:], b[:, t + 1:])


# ---------------------------------------------------------------- a failed call


class _Fails(MemoryController):
    def decide(self, features):
        raise RuntimeError("controller failed")


def test_a_failed_forward_leaves_the_state_as_it_was():
    model = _model(ltm_controller="qlearning", wm_slots=4, wm_heads=2)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        state = model(ids[:, :20]).state
    fields = [copy.copy(layer.__dict__) for layer in state.layers]
    ltm = [copy.copy(layer.ltm.__dict__) for layer in state.layers]
    episode = state.layers[0].ltm.controller
    record, rng = episode.mark()
    model.layers[1].long_term_memory.controller = _Fails()
    with pytest.raises(RuntimeError, match="controller failed"), torch.no_grad():
        model(ids[:, 20:], state=state)
    assert state.position == 20
    for layer, before, bank in zip(state.layers, fields, ltm):
        assert layer.__dict__ == before and layer.ltm.__dict__ == bank
    assert episode.mark()[0] == record and torch.equal(episode.generator.get_state(), rng)
    # and the stream goes on as if the failed call never happened
    model.layers[1].long_term_memory.controller = model.layers[0].long_term_memory.controller
    with torch.no_grad():
        model(ids[:, 20:], state=state)
    assert state.position == 40 and isinstance(episode, Episode)


# ---------------------------------------------------------------- ids and labels


def test_token_ids_out_of_range_raise_naming_input_ids():
    model = _model(ltm_controller="fifo")
    for bad, got in ((-1, "-1"), (256, "256")):
        ids = torch.zeros(1, 8, dtype=torch.long)
        ids[0, 3] = bad
        with pytest.raises(ValueError, match=rf"input_ids: expected values in \[0, 256\) "
                                             rf"\(vocab_size=256\), got {got}"):
            model(ids)


def test_labels_are_checked_and_all_ignored_gives_zero_loss():
    model = _model(ltm_controller="fifo")
    ids = torch.randint(0, 256, (2, 16))
    bad = ids.clone()
    bad[1, 2] = 300
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 256\) or -100"):
        model(ids, labels=bad)
    bad[1, 2] = -5
    with pytest.raises(ValueError, match=r"labels: .* got -5"):
        model(ids, labels=bad)
    with pytest.raises(TypeError, match=r"labels: expected int64 .* got torch.float32"):
        model(ids, labels=ids.float())
    with pytest.raises(TypeError, match=r"labels: expected a \[B, T\] integer tensor"):
        model(ids, labels=ids.tolist())
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    some = torch.full_like(ids, -100)
    some[:, -3:] = ids[:, -3:]
    loss = model(ids, labels=some).loss
    ref = torch.nn.functional.cross_entropy(model(ids).logits[:, -3:].flatten(0, 1).float(),
                                            ids[:, -3:].flatten())
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-6)


# ---------------------------------------------------------------- states


def _state(model, batch=2, tokens=20):
    with torch.no_grad():
        return model(torch.randint(0, 256, (batch, tokens))).state


def test_a_state_of_another_batch_size_raises():
    model = _model(ltm_controller="fifo")
    state = _state(model, batch=2)
    with pytest.raises(ValueError, match=r"state: expected a state of batch size 3 like "
                                         r"input_ids, got one of batch size 2"):
        model(torch.zeros(3, 4, dtype=torch.long), state=state)


@pytest.mark.parametrize("change,pattern", [
    (dict(expand=1), r"d_inner=64 \(this model: 32\)"),
    (dict(d_conv=2), r"d_conv=4 \(this model: 2\)"),
    (dict(ltm_heads=4), r"ltm_head_dim=16 \(this model: 8\).*ltm_heads=2 \(this model: 4\)"),
    (dict(ltm_levels=1, ltm_capacity=4), r"ltm_levels=2 \(this model: 1\)"),
    (dict(ltm_chunk_size=16), r"ltm_chunk_size=8 \(this model: 16\)"),
    (dict(ltm_capacity=[4, 2]), r"ltm_capacity=\[3, 2\] \(this model: \[4, 2\]\)"),
    (dict(wm_slots=4, wm_heads=2), r"wm_slots=0 \(this model: 4\)"),
    (dict(ltm_controller="none"), r"long_term_memory=True \(this model: False\)"),
], ids=["expand", "d_conv", "ltm_heads", "levels", "chunk", "capacity", "wm", "no-ltm"])
def test_a_state_of_another_config_raises(change, pattern):
    state = _state(_model(ltm_controller="fifo"))
    other = _model(**{**dict(ltm_controller="fifo"), **change})
    with pytest.raises(ValueError, match=r"state: made by a model of another config: .*"
                                         + pattern):
        other(torch.zeros(2, 4, dtype=torch.long), state=state)


@pytest.mark.parametrize("change,pattern", [
    (dict(ltm_chunk_size=6), r"4 pending tokens at stream position 20 do not fit "
                             r"ltm_chunk_size=6"),
    (dict(ltm_heads=4), r"state.layers\[0\].ltm.k: expected shape \[2, 3, 4, 8\]"),
    (dict(expand=1), r"state.layers\[0\].conv: expected a state of shape \[2, 32, 3\]"),
    (dict(ltm_levels=1, ltm_capacity=4), r"ltm.level: expected levels below ltm_levels=1"),
    (dict(ltm_controller="none"), r"this model has no long-term memory"),
    (dict(wm_slots=4, wm_heads=2), None),
], ids=["chunk", "heads", "expand", "levels", "no-ltm", "wm-fresh"])
def test_a_state_without_signature_is_checked_by_its_tensors(change, pattern):
    """A state built by hand carries no signature: its tensors are checked instead."""
    state = _state(_model(ltm_controller="fifo"))
    state.signature = None
    other = _model(**{**dict(ltm_controller="fifo"), **change})
    ids = torch.zeros(2, 4, dtype=torch.long)
    if pattern is None:  # no slots yet: the working memory starts from its learned slots
        other(ids, state=state)
        return
    with pytest.raises(ValueError, match=pattern):
        other(ids, state=state)


def test_a_state_with_slots_into_a_model_without_working_memory_raises():
    state = _state(_model(ltm_controller="fifo", wm_slots=4, wm_heads=2))
    state.signature = None
    with pytest.raises(ValueError, match=r"this model has no working memory"):
        _model(ltm_controller="fifo")(torch.zeros(2, 4, dtype=torch.long), state=state)


def test_the_state_records_its_maker_and_its_size():
    model = _model(ltm_controller="fifo", wm_slots=4, wm_heads=2)
    state = _state(model, batch=2)
    assert state.signature == dict(model.state_signature(), batch_size=2)
    assert state.nbytes() == sum(t.numel() * t.element_size() for t in state.tensors()) > 0


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["norm_eps", "dt_max", "dt_min", "dt_init_floor"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-3])
def test_config_rejects_non_finite_or_negative_floats(name, value):
    with pytest.raises(ValueError, match=rf"MemoryConfig.{name}: expected a finite positive "
                                         rf"number, got {value!r}"):
        MemoryConfig(**{name: value})


def test_fifo_is_a_controller_that_keeps_no_mode_of_its_own():
    ctrl = FifoController()
    assert ctrl.training and not ctrl.eval().training and ctrl.train().training


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(dt_rank=True), r"MemoryConfig.dt_rank: expected 'auto' or a positive int, got True"),
    (dict(tie_embeddings=1), r"MemoryConfig.tie_embeddings: expected a bool, got 1"),
    (dict(d_state=True), r"MemoryConfig.d_state: expected a positive int, got True"),
], ids=["dt_rank", "tie", "d_state"])
def test_config_rejects_bools_for_ints_and_ints_for_bools(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MemoryConfig(**kwargs)
