"""WorkingMemory and its place in the block: shapes, streaming, gradients, the switch."""

import pytest
import torch
from helpers import assert_close

from memmodel.config import MemoryConfig
from memmodel.model import MemoryLM
from memmodel.state import LayerState
from memmodel.working_memory import WorkingMemory

WM = dict(d_model=32, n_layers=2, d_state=8, wm_slots=6, wm_heads=2, backend="torch")


def test_working_memory_is_a_drop_in_module():
    wm = WorkingMemory.from_config(MemoryConfig(**WM))
    x = torch.randn(2, 13, 32, requires_grad=True)
    y = wm(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    for name, p in wm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert wm.slot_keys.grad.abs().sum() > 0, "the learned initial slots get gradients"


def test_slots_are_carried_in_the_layer_state():
    wm = WorkingMemory.from_config(MemoryConfig(**WM))
    x = torch.randn(1, 20, 32)
    full = wm(x)
    state = LayerState()
    a = wm(x[:, :7], state)
    assert state.wm[0].shape == (1, 2, 6, 16) and state.wm[1].dtype == torch.float32
    b = wm(x[:, 7:], state)
    assert_close(torch.cat([a, b], 1), full, "streamed output")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_model_with_working_memory_streams(backend):
    model = MemoryLM(MemoryConfig(**{**WM, "backend": backend, "scan_chunk_size": 16}))
    assert all(layer.working_memory is not None for layer in model.layers)
    ids = torch.randint(0, 256, (2, 24))
    full = model(ids, labels=ids)
    full.loss.backward()
    out = model(ids[:, :9])
    out = model(ids[:, 9:], state=out.state)
    assert_close(out.logits, full.logits[:, 9:], "streamed logits")
    out.state.detach()
    assert not out.state.layers[0].wm[0].requires_grad


def test_switch_off_means_no_working_memory():
    model = MemoryLM(MemoryConfig(d_model=32, n_layers=1, d_state=8))
    assert model.layers[0].working_memory is None


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(wm_slots=-1), r"MemoryConfig.wm_slots: expected an int >= 0"),
        (dict(wm_slots=4, wm_heads=3), r"MemoryConfig.wm_heads: expected a divisor of d_model"),
        (dict(wm_slots=4, wm_heads=0), r"MemoryConfig.wm_heads: expected a positive int"),
        (dict(wm_slots=4, wm_head_dim=0), r"MemoryConfig.wm_head_dim"),
    ],
    ids=["slots", "heads-divisor", "heads", "head-dim"],
)
def test_config_rejects_bad_working_memory_sizes(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MemoryConfig(d_model=32, **kwargs)
