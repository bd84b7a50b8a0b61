"""The layers built from keyword arguments, and `step` on each against `forward`."""

import pytest
import torch
from helpers import assert_close

from memmodel.config import MemoryConfig
from memmodel.long_term_memory import LongTermMemory
from memmodel.model import Block, MemoryLM
from memmodel.ssm import SelectiveSSM
from memmodel.state import LayerState
from memmodel.working_memory import WorkingMemory


def _stepped(layer, x, **kw):
    state = LayerState()
    return torch.stack([layer.step(x[:, t], state, **kw) for t in range(x.shape[1])], 1), state


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ssm_step_equals_forward(backend):
    ssm = SelectiveSSM(24, d_state=6, expand=2, d_conv=3, n_groups=2, backend=backend)
    x = torch.randn(2, 9, 24)
    full_state = LayerState()
    with torch.no_grad():
        full = ssm(x, full_state)
        stepped, state = _stepped(ssm, x)
    assert_close(stepped, full, "steps")
    assert_close(state.ssm, full_state.ssm, "ssm state")
    assert_close(state.conv, full_state.conv, "conv state")


def test_ssm_step_in_place_updates_the_callers_state():
    ssm = SelectiveSSM(16, d_state=4, backend="torch")
    x = torch.randn(1, 6, 16)
    state = LayerState()
    with torch.no_grad():
        ssm(x[:, :3], state)
        h = state.ssm
        ssm.step(x[:, 3], state, inplace=True)
        assert state.ssm is h
        before = state.ssm.clone()
        ssm.step(x[:, 4], state)  # a copy: the old tensor is left alone
        assert state.ssm is not h and torch.equal(h, before)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_working_memory_step_equals_forward(backend):
    wm = WorkingMemory(16, slots=5, heads=2, backend=backend)
    x = torch.randn(2, 7, 16)
    full_state = LayerState()
    with torch.no_grad():
        full = wm(x, full_state)
        stepped, state = _stepped(wm, x)
    assert_close(stepped, full, "steps")
    assert_close(state.wm[0], full_state.wm[0], "slot keys")


def test_long_term_memory_step_stores_at_chunk_boundaries():
    ltm = LongTermMemory(16, controller="fifo", heads=2, chunk_size=4, summaries=2,
                         capacity=[3, 2], merge=2, backend="torch")
    x = torch.randn(2, 19, 16)
    full_state = LayerState()
    with torch.no_grad():
        full = ltm(x, full_state)
        stepped, state = _stepped(ltm, x)
    assert_close(stepped, full, "steps")
    assert torch.equal(state.ltm.level, full_state.ltm.level)
    assert state.ltm.pending_k.shape[1] == 19 % 4 and state.ltm.live.sum() > 0


def test_block_and_model_step():
    block = Block(16, d_state=4, wm_slots=3, wm_heads=2, ltm_controller="importance",
                  ltm_heads=2, ltm_chunk_size=4, ltm_summaries=1, ltm_levels=1,
                  ltm_capacity=2, backend="torch")
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        full = block(x, LayerState())
        stepped, _ = _stepped(block, x)
    assert_close(stepped, full, "block steps")

    torch.manual_seed(0)
    model = MemoryLM(MemoryConfig(d_model=16, n_layers=2, d_state=4, backend="torch",
                                  wm_slots=3, wm_heads=2)).eval()
    ids = torch.randint(0, 256, (3, 10))
    with torch.no_grad():
        full = model(ids).logits
        state = model.allocate_inference_cache(3)
        cache = [layer.ssm for layer in state.layers]
        logits = torch.stack([model.step(ids[:, t], state, inplace=True).logits
                              for t in range(10)], 1)
    assert_close(logits, full, "model steps")
    assert all(a is b.ssm for a, b in zip(cache, state.layers)), "the cache is reused"
    assert state.position == 10
    with pytest.raises(ValueError, match=r"input_ids: expected one token per row"):
        model.step(ids[:, :2], state)


def test_layers_from_keywords_with_device_and_dtype():
    ssm = SelectiveSSM(32, d_state=8, dtype=torch.bfloat16, device="cpu")
    assert ssm.in_proj.weight.dtype == torch.bfloat16
    assert {ssm.A_log.dtype, ssm.D.dtype, ssm.dt_bias.dtype} == {torch.float32}
    wm = WorkingMemory(32, slots=4, heads=2, dtype=torch.float64)
    assert wm.slot_keys.dtype == torch.float64
    ltm = LongTermMemory(32, controller="store_all", heads=2, chunk_size=8)
    assert ltm.controller.name == "store_all" and ltm.config.ltm_chunk_size == 8
    cfg = MemoryConfig(d_model=32, d_state=8, wm_slots=4, wm_heads=2)
    for made, built in ((SelectiveSSM.from_config(cfg), SelectiveSSM(32, d_state=8)),
                        (WorkingMemory.from_config(cfg), WorkingMemory(32, slots=4, heads=2))):
        assert {k: v.shape for k, v in made.state_dict().items()} == \
            {k: v.shape for k, v in built.state_dict().items()}


@pytest.mark.parametrize("make,pattern", [
    (lambda: SelectiveSSM(32, d_state=0), r"MemoryConfig.d_state: expected a positive int"),
    (lambda: WorkingMemory(32, slots=0), r"WorkingMemory.slots: expected a positive int"),
    (lambda: LongTermMemory(32, controller="none"), r"controller is 'none'"),
    (lambda: LongTermMemory(32, heads=3), r"ltm_heads: expected a divisor of d_model=32"),
    (lambda: Block(32, wm_slots=-1), r"MemoryConfig.wm_slots: expected an int >= 0"),
], ids=["ssm", "wm", "ltm-none", "ltm-heads", "block"])
def test_layer_arguments_are_checked(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def _hybrid(**kw):
    return MemoryConfig(d_model=16, n_layers=3, d_state=4, backend="torch", wm_slots=2,
                        wm_heads=2, ltm_controller="fifo", ltm_heads=2, ltm_chunk_size=8,
                        ltm_summaries=1, ltm_levels=1, ltm_capacity=2, **kw)


def test_memory_layers_put_the_memories_in_the_blocks_named_only(tmp_path):
    torch.manual_seed(0)
    model = MemoryLM(_hybrid(memory_layers=[2, 0]))
    assert model.config.memory_layers == [0, 2]
    has = [(b.working_memory is not None, b.long_term_memory is not None) for b in model.layers]
    assert has == [(True, True), (False, False), (True, True)]
    ids = torch.randint(0, 256, (2, 40))
    out = model(ids)
    assert out.state.layers[1].wm is None and out.state.layers[1].ltm is None
    assert out.state.layers[0].ltm is not None and out.state.layers[2].wm is not None
    model.save_pretrained(tmp_path / "m")
    again = MemoryLM.from_pretrained(tmp_path / "m")
    assert again.config.memory_layers == [0, 2]
    assert torch.equal(again(ids).logits, model.eval()(ids).logits)
    everywhere = MemoryLM(_hybrid())
    assert all(b.long_term_memory is not None for b in everywhere.layers)
    with pytest.raises(ValueError, match=r"memory_layers=\[0, 2\] \(this model: None\)"):
        everywhere(ids, state=out.state)


@pytest.mark.parametrize("bad", [[], [3], [-1], [1, 1], "1", [1.0]])
def test_memory_layers_are_checked(bad):
    with pytest.raises(ValueError, match=r"MemoryConfig.memory_layers: expected None or a "
                                         r"non-empty list of distinct block indices in "
                                         r"\[0, n_layers=3\)"):
        _hybrid(memory_layers=bad)
