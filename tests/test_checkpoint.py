"""Checkpoints: loaded without running anything, written atomically, checked on load.

A crafted file's pickled payload is refused and never runs; a save that fails partway
leaves the previous checkpoint whole; an empty, truncated or bit-flipped file raises one
clear error naming the file and what is wrong.
"""

import os
import re

import pytest
import torch

from memmodel.checkpoint import read_checkpoint, write_checkpoint
from memmodel.config import MemoryConfig, QLearningConfig
from memmodel.controllers import QLearningController
from memmodel.model import MemoryLM
from memmodel.tasks import PasskeyTask
from memmodel.training.memory import (
    MemoryTrainConfig,
    attach_controller,
    load_checkpoint,
    save_checkpoint,
    train_memory,
)

TINY = dict(d_model=16, n_layers=1, d_state=4, ltm_controller="qlearning", ltm_heads=1,
            ltm_chunk_size=8, ltm_summaries=1, ltm_levels=1, ltm_capacity=2, backend="torch")
TASK = PasskeyTask(seq_len=31, chunk_size=8, key_len=1)


def _saved(path, seed=0):
    torch.manual_seed(seed)
    model = MemoryLM(MemoryConfig(**TINY))
    attach_controller(model, QLearningController(model.config, QLearningConfig(seed=seed)))
    save_checkpoint(str(path), model, TASK, MemoryTrainConfig(steps=1), step=1)
    return model


class WritesAFile:
    """Unpickling this object creates the file `target`: a stand-in for any payload."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickled_object_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "crafted.pt"
    torch.save({"config": MemoryConfig(**TINY).to_dict(), "model": WritesAFile(marker)}, path)
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(path))}: refused.*io.open"):
        load_checkpoint(str(path))
    assert not marker.exists(), "the payload ran"


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "memory.pt"
    model = _saved(path)
    before = path.read_bytes()

    def fails_midway(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):  # a path: torch.save would write straight into it
            f = open(f, "wb")
        f.write(before[: len(before) // 2])
        f.flush()
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", fails_midway)
    with pytest.raises(OSError, match="no space left"):
        _saved(path, seed=1)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["memory.pt"], "the temporary file was removed"
    loaded, _, _ = load_checkpoint(str(path))
    assert torch.equal(loaded.embedding.weight, model.embedding.weight)


def _flip_a_weight_bit(raw: bytes, weight: torch.Tensor) -> bytes:
    at = raw.find(weight.detach().numpy().tobytes())
    assert at > 0
    flipped = bytearray(raw)
    flipped[at + 5] ^= 0x08
    return bytes(flipped)


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (lambda raw, w: b"", r"the file is empty"),
        (lambda raw, w: raw[: len(raw) // 2], r"not a readable torch file, truncated or "
                                              r"corrupt"),
        (lambda raw, w: raw[:-200], r"not a readable torch file"),
        (_flip_a_weight_bit, r"checksum mismatch"),
    ],
    ids=["empty", "half", "tail-cut", "bit-flip"],
)
def test_a_damaged_file_raises_a_clear_error(tmp_path, damage, pattern):
    path = tmp_path / "memory.pt"
    model = _saved(path)
    path.write_bytes(damage(path.read_bytes(), model.embedding.weight))
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(path))}: {pattern}"):
        load_checkpoint(str(path))


def test_a_loaded_model_is_in_eval_mode_and_its_controller_greedy(tmp_path):
    path = tmp_path / "memory.pt"
    _saved(path)
    model, controller, _ = load_checkpoint(str(path))
    assert not model.training and not controller.training and controller.epsilon == 0.0
    # the file is plain data: torch's own safe loader reads it
    torch.load(path, weights_only=True)


def test_only_tensors_and_plain_data_are_written(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['config'\]: expected tensors and plain "
                                        r"data .*got MemoryConfig"):
        write_checkpoint(tmp_path / "x.pt", "lm", {"step": 1, "config": MemoryConfig()})
    assert os.listdir(tmp_path) == []
    write_checkpoint(tmp_path / "x.pt", "lm", {"step": 1, "w": torch.ones(3)})
    with pytest.raises(ValueError, match=r"x.pt: a 'lm' checkpoint .*expected a 'memory'"):
        read_checkpoint(tmp_path / "x.pt", "memory")
    assert read_checkpoint(tmp_path / "x.pt", "lm")["step"] == 1


def test_memmodel_load_returns_an_evaluating_model_and_its_task_spec(tmp_path):
    import memmodel
    from memmodel.tasks import task_from_spec

    task = PasskeyTask(seq_len=63, chunk_size=16, key_len=1)
    cfg = MemoryConfig(d_model=16, n_layers=1, d_state=4, ltm_controller="qlearning",
                       ltm_heads=1, ltm_chunk_size=16, ltm_summaries=1, ltm_levels=1,
                       ltm_capacity=2, backend="torch")
    model = MemoryLM(cfg)
    path = str(tmp_path / "m.pt")
    train_memory(model, task, MemoryTrainConfig(steps=2, batch_size=2, q_updates=1,
                                                eval_batches=1, checkpoint=path))
    loaded, spec = memmodel.load(path)
    assert not loaded.training
    ctrl = loaded.layers[0].long_term_memory.controller
    assert not ctrl.training and ctrl.epsilon == 0.0
    assert spec["name"] == "passkey" and spec["marker"] == "#" and spec["query"] == "?"
    assert spec["key_len"] == 1 and spec["key_alphabet"] == "0123456789"
    assert task_from_spec(spec) == task
    ids = task.sample(2, split="test").input_ids
    with torch.no_grad():
        out = loaded(ids)
        assert len(out.state.layers[0].ltm.controller.step) == 0, "records nothing"
        torch.testing.assert_close(out.logits, model.eval()(ids).logits, rtol=0, atol=0)
