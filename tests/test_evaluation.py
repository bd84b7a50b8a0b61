"""Streamed evaluation: equal to one call, independent of the segment, its statistics."""

import json
import math

import pytest
import torch
from passkey_reader import passkey_reader

from memmodel.config import MemoryConfig
from memmodel.evaluation import (
    depth_histogram,
    evaluate_stream,
    stream_answer_logits,
    wilson_interval,
)
from memmodel.model import MemoryLM
from memmodel.tasks import MultiNeedleTask, PasskeyTask, query_metrics

PASSKEY = PasskeyTask(seq_len=127, chunk_size=16, key_len=1)
NEEDLES = MultiNeedleTask(seq_len=160, n_facts=4, n_decoys=2, n_queries=2)


def _ssm_model():
    torch.manual_seed(0)
    return MemoryLM(MemoryConfig(d_model=16, n_layers=1, d_state=4, backend="torch"))


def _wm_model():
    torch.manual_seed(0)
    return MemoryLM(MemoryConfig(d_model=16, n_layers=1, d_state=4, wm_slots=4, wm_heads=2,
                                 backend="torch"))


def _ltm_model():
    torch.manual_seed(0)
    return MemoryLM(MemoryConfig(d_model=16, n_layers=2, d_state=4, ltm_controller="fifo",
                                 ltm_heads=1, ltm_chunk_size=8, ltm_summaries=1,
                                 ltm_levels=1, ltm_capacity=2, backend="torch"))


def _one_call(model, task, n, batch_size):
    """The reference: whole sequences in one forward call, scored on full logits."""
    loss = tok = 0.0
    correct = []
    with torch.no_grad():
        for i, start in enumerate(range(0, n, batch_size)):
            batch = task.sample(min(batch_size, n - start), split="test", index=i)
            s = query_metrics(model(batch.input_ids).logits, batch.answers, batch.answer_pos)
            loss += s.loss.sum().item()
            tok += s.token_accuracy.sum().item()
            correct.append(s.query_correct)
    correct = torch.cat(correct)
    return correct.float().mean().item(), tok / n, loss / n


@pytest.mark.parametrize("make", [_ssm_model, _wm_model, _ltm_model],
                         ids=["ssm", "wm", "ltm-fifo"])
def test_streamed_equals_one_call(make):
    model = make().train()
    ref = _one_call(model.eval(), NEEDLES, n=3, batch_size=2)
    model.train()
    r = evaluate_stream(model, NEEDLES, n=3, batch_size=2, segment=37, progress=False)
    assert model.training  # mode restored
    assert (r.sequences, r.n) == (3, 6)
    assert r.accuracy == pytest.approx(ref[0])
    assert r.token_accuracy == pytest.approx(ref[1])
    assert r.answer_loss == pytest.approx(ref[2], rel=1e-5)
    assert r.chance == NEEDLES.chance
    expect_entries = 2.0 if make is _ltm_model else 0.0  # capacity 2, overflowing
    assert r.entries == expect_entries
    json.dumps(r.to_dict())


def test_kept_logits_equal_the_full_logits_at_the_answers():
    model = _ltm_model().eval()
    batch = NEEDLES.sample(2, split="test")
    with torch.no_grad():
        full = model(batch.input_ids)
    rows = torch.arange(2)[:, None, None]
    want = full.logits[rows, batch.answer_pos]
    for segment in (160, 7):
        kept, state, seconds = stream_answer_logits(model, batch.input_ids, batch.answer_pos,
                                                    segment)
        torch.testing.assert_close(kept, want, rtol=1e-5, atol=1e-5)
        assert state.position == 160 and seconds > 0
        assert state.nbytes() == full.state.nbytes()


@pytest.mark.parametrize("controller", ["store_all", "fifo"])
def test_segment_size_does_not_change_the_answer(controller):
    """A hand-set reader answers exactly when its bank kept the key: accuracy 1 with
    store_all, only the keys of the last chunks with a bank of two."""
    model = passkey_reader(PASSKEY, controller, capacity=2, backend="torch")
    calls = []
    model.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[1]))
    results = [evaluate_stream(model, PASSKEY, n=5, batch_size=3, segment=s, progress=False)
               for s in (127, 40)]
    assert max(calls[2:]) == 40  # the second run fed segments of at most 40 tokens
    a, b = (r.to_dict() for r in results)
    for key in ("accuracy", "token_accuracy", "n", "entries", "state_bytes", "depth_bins"):
        assert a[key] == b[key], key
    assert a["answer_loss"] == pytest.approx(b["answer_loss"], rel=1e-5)
    if controller == "store_all":
        assert a["accuracy"] == 1.0 and a["entries"] == 127 // 16
    else:
        assert 0 < a["accuracy"] < 1 and a["entries"] == 2


def test_report_fields_and_progress_bar(capsys):
    model = _ssm_model()
    r = evaluate_stream(model, PASSKEY, seq_len=96, n=2, batch_size=2, segment=32,
                        progress=False)
    assert capsys.readouterr().err == ""
    assert r.seq_len == 96 and r.segment == 32
    batch = PASSKEY.__class__(seq_len=96, chunk_size=16, key_len=1).sample(2, split="test")
    with torch.no_grad():
        state = model(batch.input_ids).state
    assert r.state_bytes == state.nbytes() / 2
    assert r.tokens_per_s > 0 and r.seconds > 0
    assert r.peak_rss_mb > 0 and 0 <= r.rss_increase_mb <= r.peak_rss_mb
    assert sum(b["n"] for b in r.depth_bins) == r.n
    evaluate_stream(model, PASSKEY, seq_len=96, n=2, segment=32, progress=True)
    assert "seg" in capsys.readouterr().err


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(11, 10)


def test_depth_bins_count_each_query_once():
    depth = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.99, 1.0])
    correct = torch.tensor([True, False, True, True, False, True])
    bins = depth_histogram(depth, correct, bins=5)
    assert [b["n"] for b in bins] == [2, 1, 1, 0, 2]
    assert [b["correct"] for b in bins] == [1, 1, 1, 0, 1]
    assert [b["accuracy"] for b in bins] == [0.5, 1.0, 1.0, None, 0.5]
    assert bins[0]["lo"] == 0.0 and math.isclose(bins[-1]["hi"], 1.0)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(segment=0), dict(batch_size=-1)],
                         ids=["n", "segment", "batch_size"])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="expected a positive int"):
        evaluate_stream(_ssm_model(), PASSKEY, progress=False, **kwargs)
