"""SelectiveSSM, MemoryLM, the config, the corpus and the training loop."""

import math

import pytest
import torch
from helpers import assert_close

from memmodel.config import MemoryConfig
from memmodel.data import ByteCorpus
from memmodel.model import MemoryLM
from memmodel.ssm import SelectiveSSM
from memmodel.state import LayerState
from memmodel.training.lm import TrainConfig, train

SMALL = dict(d_model=32, n_layers=2, d_state=8, backend="torch")


def test_ssm_is_a_drop_in_module():
    ssm = SelectiveSSM.from_config(MemoryConfig(**SMALL))
    x = torch.randn(3, 17, 32, requires_grad=True)
    y = ssm(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    for name, p in ssm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_ssm_init_matches_mamba():
    c = MemoryConfig(**SMALL)
    ssm = SelectiveSSM.from_config(c)
    dt = torch.nn.functional.softplus(ssm.dt_bias)
    assert dt.min() >= c.dt_init_floor * 0.999 and dt.max() <= c.dt_max * 1.001
    assert torch.allclose(-torch.exp(ssm.A_log[0]), -torch.arange(1.0, c.d_state + 1))
    assert torch.equal(ssm.D, torch.ones(c.d_inner))


@pytest.mark.parametrize("split", [[40], [1, 39], [13, 1, 26], [32, 8]],
                         ids=["one", "1+39", "13+1+26", "32+8"])
def test_streaming_equals_one_call(split):
    model = MemoryLM(MemoryConfig(**SMALL))
    ids = torch.randint(0, 256, (2, sum(split)))
    full = model(ids)
    state, logits, start = None, [], 0
    for n in split:
        out = model(ids[:, start:start + n], state=state)
        state, start = out.state, start + n
        logits.append(out.logits)
    assert state.position == sum(split)
    assert_close(torch.cat(logits, 1), full.logits, "streamed logits")
    for a, b in zip(state.layers, full.state.layers):
        assert_close(a.ssm, b.ssm, "ssm state")
        assert_close(a.conv, b.conv, "conv state")


def test_streaming_state_carries_gradients_until_detached():
    model = MemoryLM(MemoryConfig(**SMALL))
    ids = torch.randint(0, 256, (1, 20))
    out = model(ids[:, :10])
    assert out.state.layers[0].ssm.requires_grad
    out.state.detach()
    assert not out.state.layers[0].ssm.requires_grad
    out2 = model(ids[:, 10:], labels=ids[:, 10:], state=out.state)
    out2.loss.backward()


def test_recurrence_parameters_stay_float32_under_autocast():
    model = MemoryLM(MemoryConfig(**SMALL))
    seen = {}

    def spy(module, args, kwargs):
        seen["dtypes"] = {n: p.dtype for n, p in module.named_parameters()
                          if n in ("A_log", "D", "dt_bias")}

    model.layers[0].mixer.register_forward_pre_hook(spy, with_kwargs=True)
    ids = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert set(seen["dtypes"].values()) == {torch.float32}
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert out.state.layers[0].ssm.dtype == torch.float32


def test_labels_ignore_index_and_loss_value():
    model = MemoryLM(MemoryConfig(**SMALL))
    ids = torch.randint(0, 256, (2, 8))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[:, 4:].flatten(0, 1).float(),
                                            ids[:, 4:].flatten())
    assert torch.allclose(out.loss, ref)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(d_model=0), r"MemoryConfig.d_model: expected a positive int, got 0"),
        (dict(n_groups=3), r"MemoryConfig.n_groups: expected a divisor of d_inner=256"),
        (dict(dt_min=0.2, dt_max=0.1), r"dt_min <= dt_max"),
        (dict(backend="cuda"), r"MemoryConfig.backend"),
        (dict(dt_rank=0), r"MemoryConfig.dt_rank"),
    ],
    ids=["d_model", "groups", "dt-range", "backend", "dt_rank"],
)
def test_config_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MemoryConfig(**kwargs)


def test_model_rejects_bad_input():
    model = MemoryLM(MemoryConfig(**SMALL))
    with pytest.raises(ValueError, match=r"input_ids: expected a \[B, T\] tensor"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"input_ids: expected int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"T=0"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels: expected shape \(1, 4\)"):
        model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 3, dtype=torch.long))


def test_corpus_splits_and_batches():
    corpus = ByteCorpus()
    sizes = {k: v.numel() for k, v in corpus.splits.items()}
    assert sizes["train"] > 1_000_000 and sizes["val"] > 50_000 and sizes["test"] > 50_000
    x, y = corpus.batch("val", 4, 64, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 64) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = corpus.batch("val", 4, 64, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="split"):
        corpus.batch("dev", 1, 8)


def test_training_lowers_the_validation_loss():
    lines = []
    result = train(MemoryConfig(**SMALL),
                   TrainConfig(seconds=120, max_steps=40, batch_size=4, seq_len=64, lr=5e-3,
                               eval_batches=2, log_every=20),
                   echo=lines.append)
    assert result.steps == 40
    assert abs(result.val_loss_start - math.log(256)) < 0.3
    assert result.val_loss_end < result.val_loss_start - 1.0, lines
    assert any("tokens/s" in line for line in lines)


def test_layer_state_round_trip():
    ssm = SelectiveSSM.from_config(MemoryConfig(**SMALL))
    state = LayerState()
    ssm(torch.randn(1, 5, 32), state)
    assert state.conv.shape == (1, 64, 3) and state.ssm.shape == (1, 64, 8)
