"""MemoryClassifier: shapes, streaming equals one call, gradients, save and load."""

import pytest
import torch

from memmodel.config import MemoryConfig
from memmodel.model import MemoryClassifier
from memmodel.state import MemoryState

CFG = dict(d_model=16, n_layers=2, d_state=4, backend="torch", wm_slots=4, wm_heads=2,
           ltm_controller="fifo", ltm_heads=2, ltm_chunk_size=8, ltm_summaries=1,
           ltm_levels=1, ltm_capacity=2)


def _model(pooling="last", **kw):
    torch.manual_seed(0)
    return MemoryClassifier(MemoryConfig(**{**CFG, **kw}), n_classes=5, pooling=pooling)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_streaming_equals_one_call(pooling):
    model = _model(pooling).eval()
    x = torch.randint(0, 256, (3, 45), generator=torch.Generator().manual_seed(1))
    whole = model(x)
    assert whole.logits.shape == (3, 5) and whole.loss is None
    state = None
    cuts = (0, 13, 29, 45)  # uneven segments that cut chunks
    for s, e in zip(cuts[:-1], cuts[1:]):
        out = model(x[:, s:e], state=state)
        state = out.state
    torch.testing.assert_close(out.logits, whole.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.predict(x, segment=7), whole.logits, rtol=1e-4,
                               atol=1e-5)
    assert state.position == 45 and (state.pool is not None) == (pooling == "mean")


def test_gradients_reach_every_used_weight():
    model = _model("mean")
    x = torch.randint(0, 256, (4, 24))
    out = model(x, labels=torch.tensor([0, 1, 2, 4]))
    assert out.loss.ndim == 0 and out.loss.item() > 0
    out.loss.backward()
    # (merge_q merges levels: one level here, so unused)
    missing = [n for n, p in model.named_parameters() if p.grad is None
               and ".controller." not in n and not n.endswith(".merge_q")]
    assert missing == []
    assert model.head.weight.grad.abs().sum() > 0
    assert model.backbone.embedding.weight.grad.abs().sum() > 0


def test_it_learns_a_toy_rule():
    torch.manual_seed(0)
    model = MemoryClassifier(MemoryConfig(d_model=16, n_layers=1, d_state=4,
                                          backend="torch"), n_classes=2)
    x = torch.randint(0, 256, (64, 12))
    y = (x[:, -1] >= 128).long()  # the class is the last byte's top bit
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = model(x, labels=y).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_save_and_load(tmp_path):
    model = _model("mean").eval()
    x = torch.randint(0, 256, (2, 20))
    model.save_pretrained(tmp_path / "clf")
    back = MemoryClassifier.from_pretrained(tmp_path / "clf")
    assert back.pooling == "mean" and back.n_classes == 5 and not back.training
    torch.testing.assert_close(back(x).logits, model(x).logits)


def test_bad_arguments():
    model = _model()
    x = torch.randint(0, 256, (2, 8))
    with pytest.raises(ValueError, match="labels: expected shape"):
        model(x, labels=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"classes in \[0, 5\)"):
        model(x, labels=torch.tensor([1, 5]))
    with pytest.raises(TypeError, match="labels"):
        model(x, labels=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="n_classes"):
        MemoryClassifier(MemoryConfig(**CFG), n_classes=1)
    with pytest.raises(ValueError, match="pooling"):
        MemoryClassifier(MemoryConfig(**CFG), n_classes=3, pooling="max")
    mean = _model("mean")
    state = model(x).state
    with pytest.raises(ValueError, match="mean-pooling"):
        mean(x, state=state)
    assert isinstance(state, MemoryState)
