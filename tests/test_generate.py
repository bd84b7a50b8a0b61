"""MemoryLM.generate and save_pretrained / from_pretrained."""

import json
import os

import pytest
import torch

from memmodel.config import MemoryConfig
from memmodel.controllers import QLearningController
from memmodel.model import MemoryLM

SMALL = dict(d_model=32, n_layers=2, d_state=4, backend="torch", ltm_heads=2,
             ltm_chunk_size=8, ltm_summaries=2, ltm_levels=2, ltm_capacity=[3, 2],
             ltm_merge=2)


def _model(**kwargs):
    torch.manual_seed(0)
    return MemoryLM(MemoryConfig(**{**SMALL, **kwargs})).eval()


@pytest.mark.parametrize("controller", ["none", "fifo", "importance", "store_all",
                                        "qlearning"])
def test_greedy_generation_equals_one_forward_over_its_tokens(controller):
    """Token by token through chunk boundaries (prompt 5, 30 new tokens, chunks of 8):
    the logits of each step equal a single forward over the whole sequence."""
    model = _model(ltm_controller=controller, wm_slots=4 if controller == "fifo" else 0)
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, 30, temperature=0, prefill_segment=3)
    assert out.sequences.shape == (2, 35) and torch.equal(out.sequences[:, :5], prompt)
    with torch.no_grad():
        full = model(out.sequences)
    assert torch.equal(full.logits[:, 4:-1].argmax(-1), out.sequences[:, 5:])
    torch.testing.assert_close(out.logits, full.logits[:, -1], rtol=1e-5, atol=1e-5)
    assert out.state.position == 35
    if controller not in ("none",):
        for a, b in zip(out.state.layers, full.state.layers):
            assert torch.equal(a.ltm.level, b.ltm.level) and torch.equal(a.ltm.start, b.ltm.start)
            torch.testing.assert_close(a.ltm.k, b.ltm.k, rtol=1e-5, atol=1e-5)
            assert a.ltm.pending_k.shape[1] == 35 % 8


def test_sampling_is_seeded_and_top_k_restricts_it():
    model = _model(ltm_controller="fifo")
    prompt = torch.randint(0, 256, (3, 4))
    a = model.generate(prompt, 12, temperature=1.0, top_k=1,
                       generator=torch.Generator().manual_seed(1)).sequences
    greedy = model.generate(prompt, 12, temperature=0).sequences
    assert torch.equal(a, greedy), "top_k=1 is greedy"
    b = model.generate(prompt, 12, temperature=2.0, generator=torch.Generator().manual_seed(5))
    c = model.generate(prompt, 12, temperature=2.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(b.sequences, c.sequences)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(max_new_tokens=-1), r"max_new_tokens: expected an int >= 0, got -1"),
    (dict(max_new_tokens=2, temperature=float("nan")), r"temperature: expected a finite"),
    (dict(max_new_tokens=2, top_k=0), r"top_k: expected None or an int in \[1, 256\], got 0"),
])
def test_generate_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _model().generate(torch.zeros(1, 3, dtype=torch.long), **kwargs)


@pytest.mark.parametrize("controller,tie", [("fifo", True), ("qlearning", False)])
def test_save_pretrained_round_trip_without_pickle(tmp_path, controller, tie):
    pytest.importorskip("safetensors")
    model = _model(ltm_controller=controller, wm_slots=4, tie_embeddings=tie)
    if controller == "qlearning":
        shared = QLearningController(model.config)
        shared.scores.update(torch.randn(50))
        shared.learner.updates = 7
        for layer in model.layers:
            layer.long_term_memory.controller = shared
    model.save_pretrained(tmp_path / "m")
    files = sorted(os.listdir(tmp_path / "m"))
    assert "config.json" in files and "model.safetensors" in files
    assert not [f for f in files if f.endswith(".tmp")]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["config"]["ltm_controller"] == controller
    loaded = MemoryLM.from_pretrained(tmp_path / "m")
    assert not loaded.training
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    ctrls = [layer.long_term_memory.controller for layer in loaded.layers]
    if controller == "qlearning":
        assert ctrls[0] is ctrls[1] and not ctrls[0].training
        assert ctrls[0].learner.updates == 7
        assert ctrls[0].scores.mean == pytest.approx(shared.scores.mean)
    if tie:
        assert loaded.lm_head.weight is loaded.embedding.weight


def test_from_pretrained_refuses_another_folder(tmp_path):
    pytest.importorskip("safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "other"}))
    with pytest.raises(ValueError, match=r"is not a memmodel model's config"):
        MemoryLM.from_pretrained(tmp_path)
