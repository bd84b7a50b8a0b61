"""The two training loops: config validation, the divergence guard, checkpoints written
while training and resuming from them.

Tiny models, a few steps each, budgets in steps (never seconds), so every check is exact
and fast on a 2-core CPU.
"""

import math

import pytest

from memmodel.train import TrainConfig
from memmodel.train_memory import MemoryTrainConfig

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
