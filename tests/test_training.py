"""The two training loops: config validation, the divergence guard, checkpoints written
while training and resuming from them.

Tiny models, a few steps each, budgets in steps (never seconds), so every check is exact
and fast on a 2-core CPU.
"""

import math
import re

import pytest
import torch

import memmodel.training.lm as train_module
from memmodel.checkpoint import CheckpointError, read_checkpoint
from memmodel.config import MemoryConfig, QLearningConfig
from memmodel.controllers import QLearningController
from memmodel.data import ByteCorpus
from memmodel.model import MemoryLM
from memmodel.tasks import PasskeyTask
from memmodel.training.lm import TrainConfig, train
from memmodel.training.lm import main as lm_main
from memmodel.training.memory import MemoryTrainConfig, train_memory
from memmodel.training.memory import main as memory_main

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(batch_size=0), r"TrainConfig.batch_size: expected a positive int, got 0"),
        (dict(seq_len=-5), r"TrainConfig.seq_len: expected a positive int, got -5"),
        (dict(max_steps=2.5), r"TrainConfig.max_steps: expected a positive int or None, got 2.5"),
        (dict(lr=NAN), r"TrainConfig.lr: expected a finite number >= 0, got nan"),
        (dict(weight_decay=INF), r"TrainConfig.weight_decay: expected a finite number >= 0, "
                                 r"got inf"),
        (dict(grad_clip=INF), r"TrainConfig.grad_clip: expected a finite positive number, "
                              r"got inf"),
        (dict(warmup_steps=-1), r"TrainConfig.warmup_steps: expected an int >= 0, got -1"),
        (dict(seconds=0), r"TrainConfig.seconds: expected a positive number, got 0"),
        (dict(log_every=True), r"TrainConfig.log_every: expected a positive int, got True"),
    ],
    ids=["batch_size", "seq_len", "max_steps", "lr-nan", "wd-inf", "clip-inf", "warmup",
         "seconds", "log_every-bool"],
)
def test_train_config_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(lr=NAN), r"MemoryTrainConfig.lr: expected a finite number >= 0, got nan"),
        (dict(lr=INF), r"MemoryTrainConfig.lr: expected a finite number >= 0, got inf"),
        (dict(weight_decay=NAN), r"MemoryTrainConfig.weight_decay: expected a finite number "
                                 r">= 0, got nan"),
        (dict(grad_clip=INF), r"MemoryTrainConfig.grad_clip: expected a finite positive "
                              r"number, got inf"),
        (dict(seconds=NAN), r"MemoryTrainConfig.seconds: expected a finite positive number "
                            r"or None, got nan"),
        (dict(q_updates=True), r"MemoryTrainConfig.q_updates: expected an int >= 0, got True"),
    ],
    ids=["lr-nan", "lr-inf", "wd-nan", "clip-inf", "seconds-nan", "q_updates-bool"],
)
def test_memory_train_config_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MemoryTrainConfig(**kwargs)


def test_configs_accept_their_defaults_and_an_unbounded_time():
    assert TrainConfig(seconds=math.inf, max_steps=3).max_steps == 3
    assert MemoryTrainConfig(lr=0, seconds=None).lr == 0


# ---------------------------------------------------------------- checkpoints and resume

LM = dict(d_model=16, n_layers=1, d_state=4, backend="torch")
MEM = dict(d_model=16, n_layers=1, d_state=4, ltm_controller="qlearning", ltm_heads=1,
           ltm_chunk_size=8, ltm_summaries=1, ltm_levels=1, ltm_capacity=2, backend="torch")
TASK = PasskeyTask(seq_len=31, chunk_size=8, key_len=1)


@pytest.fixture(scope="module")
def corpus():
    g = torch.Generator().manual_seed(0)
    return ByteCorpus(bytes(torch.randint(0, 256, (20_000,), generator=g).tolist()))


def _lm_settings(**kwargs):
    return TrainConfig(**{**dict(seconds=math.inf, batch_size=2, seq_len=16, lr=1e-2,
                                 warmup_steps=3, eval_batches=1, log_every=100), **kwargs})


def test_lm_resume_continues_to_the_same_losses(tmp_path, corpus):
    path = tmp_path / "lm.pt"
    straight = train(MemoryConfig(**LM), _lm_settings(max_steps=5), corpus, echo=_quiet)
    first = train(MemoryConfig(**LM), _lm_settings(max_steps=3, checkpoint=str(path)), corpus,
                  echo=_quiet)
    assert first.train_losses == straight.train_losses[:3]
    resumed = train(MemoryConfig(**LM), _lm_settings(max_steps=5), corpus, echo=_quiet,
                    resume=str(path))
    assert resumed.steps == 5 and resumed.train_losses == straight.train_losses[3:]
    assert resumed.val_loss_end == straight.val_loss_end


def test_lm_checkpoints_every_n_steps_and_at_the_end(tmp_path, corpus, monkeypatch):
    saved = []
    monkeypatch.setattr(train_module, "write_checkpoint",
                        lambda path, kind, payload: saved.append((kind, payload["step"])))
    train(MemoryConfig(**LM), _lm_settings(max_steps=5, checkpoint=str(tmp_path / "lm.pt"),
                                           checkpoint_every=2), corpus, echo=_quiet)
    assert saved == [("lm", 2), ("lm", 4), ("lm", 5)]


def test_lm_resume_refuses_another_run(tmp_path, corpus):
    path = tmp_path / "lm.pt"
    train(MemoryConfig(**LM), _lm_settings(max_steps=1, checkpoint=str(path)), corpus,
          echo=_quiet)
    import memmodel

    model, task = memmodel.load(path)  # a language model: no task
    assert task is None and not model.training and model.config.d_model == LM["d_model"]
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: saved with another "
                                              rf"model config \(d_model: saved 16, given 32"):
        train(MemoryConfig(**{**LM, "d_model": 32}), _lm_settings(max_steps=2), corpus,
              echo=_quiet, resume=str(path))
    with pytest.raises(CheckpointError, match=r"another train settings \(lr: saved 0.01, "
                                              r"given 0.02\)"):
        train(MemoryConfig(**LM), _lm_settings(max_steps=2, lr=2e-2), corpus, echo=_quiet,
              resume=str(path))


def _memory_run(steps, resume=None, controller_seed=3, **kwargs):
    torch.manual_seed(0)
    model = MemoryLM(MemoryConfig(**MEM))
    ctrl = QLearningController(model.config, QLearningConfig(min_buffer=4, batch_size=4,
                                                              seed=controller_seed))
    tc = MemoryTrainConfig(steps=steps, batch_size=2, q_updates=2, eval_batches=1,
                           log_every=1, **kwargs)
    return model, train_memory(model, TASK, tc, ctrl, resume=resume)


def test_memory_resume_continues_to_the_same_losses(tmp_path):
    path = str(tmp_path / "memory.pt")
    model, straight = _memory_run(5)
    _, first = _memory_run(3, checkpoint=path)
    assert first.history == straight.history[:3]
    resumed_model, resumed = _memory_run(5, resume=path)
    assert resumed.steps == 5 and resumed.history == straight.history[3:]
    assert resumed.final == straight.final
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_freeze_steps_leave_the_model_while_the_controller_learns():
    """The first freeze_steps steps take Q steps and no model step; then the model learns."""
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in MemoryLM(MemoryConfig(**MEM)).state_dict().items()
              if ".controller." not in k}
    model, result = _memory_run(3, freeze_steps=3)
    ours = {k: v for k, v in model.state_dict().items() if ".controller." not in k}
    assert all(torch.equal(before[k], ours[k]) for k in before), "the model did not move"
    assert any(math.isfinite(h["q_loss"]) for h in result.history), "the controller learnt"
    model, _ = _memory_run(4, freeze_steps=3)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()
               if k in before), "step 4 moves the model"


def test_memory_resume_refuses_another_run(tmp_path):
    path = str(tmp_path / "memory.pt")
    _memory_run(1, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"saved with another controller config "
                                              r"\(seed: saved 3, given 4\)"):
        _memory_run(2, resume=path, controller_seed=4)
    model = MemoryLM(MemoryConfig(**{**MEM, "ltm_controller": "fifo"}))
    with pytest.raises(CheckpointError, match=r"saved with another model config "
                                              r"\(ltm_controller: saved 'qlearning', given "
                                              r"'fifo'\)"):
        train_memory(model, TASK, MemoryTrainConfig(steps=2, batch_size=2), resume=path)
    train(MemoryConfig(**LM), _lm_settings(max_steps=1, checkpoint=str(tmp_path / "lm.pt")),
          ByteCorpus(bytes(range(256)) * 4), echo=_quiet)
    with pytest.raises(CheckpointError, match=r"lm.pt: a 'lm' checkpoint"):
        _memory_run(2, resume=str(tmp_path / "lm.pt"))


def test_resume_flags_on_both_command_lines(tmp_path):
    path = str(tmp_path / "lm.pt")
    args = ["--batch-size", "2", "--seq-len", "16", "--d-model", "16", "--n-layers", "1",
            "--d-state", "4", "--backend", "torch", "--checkpoint", path]
    lm_main(args + ["--max-steps", "1", "--checkpoint-every", "1"])
    assert read_checkpoint(path, "lm")["step"] == 1
    lm_main(args + ["--max-steps", "2", "--resume", path])
    assert read_checkpoint(path, "lm")["step"] == 2
    path = str(tmp_path / "memory.pt")
    args = ["--controller", "qlearning", "--batch-size", "2", "--seq-len", "31",
            "--chunk-size", "8", "--d-model", "16", "--n-layers", "1", "--d-state", "4",
            "--heads", "1", "--eval-batches", "1", "--backend", "torch", "--checkpoint", path]
    memory_main(args + ["--steps", "1", "--checkpoint-every", "1"])
    assert read_checkpoint(path, "memory")["step"] == 1
    memory_main(args + ["--steps", "2", "--resume", path])
    assert read_checkpoint(path, "memory")["step"] == 2


def _quiet(line):
    pass


# ---------------------------------------------------------------- divergence

def _all_finite(state):
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_lm_divergence_stops_at_the_step_and_keeps_the_last_checkpoint(tmp_path, corpus):
    path = tmp_path / "lm.pt"
    with pytest.raises(RuntimeError, match=r"step (\d+): the loss is (nan|inf)") as err:
        train(MemoryConfig(**LM), _lm_settings(max_steps=30, lr=1e6, checkpoint=str(path),
                                               checkpoint_every=1), corpus, echo=_quiet)
    assert isinstance(err.value, train_module.TrainingDivergedError)
    assert err.value.step > 1 and err.value.tensor == "loss"
    kept = read_checkpoint(path, "lm")
    assert kept["step"] == err.value.step - 1 and _all_finite(kept["model"])
    assert f"the last checkpoint, {path}, holds step {kept['step']}" in str(err.value)


def test_memory_divergence_stops_at_the_step_and_keeps_the_last_checkpoint(tmp_path):
    path = str(tmp_path / "memory.pt")
    with pytest.raises(RuntimeError, match=r"step (\d+): the loss is (nan|inf)") as err:
        _memory_run(30, lr=1e6, checkpoint=path, checkpoint_every=1)
    kept = read_checkpoint(path, "memory")
    assert kept["step"] == err.value.step - 1 and _all_finite(kept["model"])


def test_a_non_finite_gradient_names_the_parameter():
    torch.manual_seed(0)
    model = MemoryLM(MemoryConfig(**{**MEM, "ltm_controller": "fifo"}))
    model.norm_f.weight.register_hook(lambda g: torch.full_like(g, math.nan))
    before = model.norm_f.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"step 1: the gradient of norm_f.weight is nan, "
                                           r"not finite") as err:
        train_memory(model, TASK, MemoryTrainConfig(steps=3, batch_size=2, eval_batches=1))
    assert err.value.tensor == "gradient of norm_f.weight"
    assert torch.equal(model.norm_f.weight, before), "no update was made"
