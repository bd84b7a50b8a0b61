"""The language / vision / biology tasks: splits disjoint, labels balanced, determinism,
spec round trips, nothing downloaded; the ablation runner's rows for them."""

import json
import re
import socket

import pytest
import torch

from memmodel.data import CORPUS_MODULES, load_modules, module_split
from memmodel.tasks import SPLITS, answer_split, build_task, task_from_spec
from memmodel.tasks.language import definitions, split_modules


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a task tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _balanced(task, rows=600, tol=0.35):
    """Every class occurs, each within tol (relative) of rows / K."""
    batch = task.sample(rows, split="train", index=7)
    counts = torch.bincount(batch.answers[:, 0, 0], minlength=256)
    counts = counts[[ord(c) for c in task.answer_alphabet]].double()
    expect = rows / len(task.answer_alphabet)
    assert counts.sum() == rows
    assert ((counts - expect).abs() <= tol * expect).all(), counts.tolist()


def _common(task, no_answer_split=True):
    """Deterministic per (split, index); splits differ; the answer byte at the label."""
    a = task.sample(3, split="val", index=2)
    b = task.sample(3, split="val", index=2)
    assert _same(a, b)
    assert not torch.equal(task.sample(3, split="train", index=2).input_ids, a.input_ids)
    assert not torch.equal(task.sample(3, split="test", index=2).input_ids, a.input_ids)
    T = task.seq_len
    assert a.input_ids.shape == (3, T)
    assert (a.labels[:, T - 1] == a.answers[:, 0, 0]).all()
    assert ((a.labels != -100).sum(1) == 1).all()
    assert all(chr(v) in task.answer_alphabet for v in a.answers.flatten().tolist())
    assert task.chance == pytest.approx(1 / len(task.answer_alphabet))
    assert task.scoring == "classes" and len(task.class_names) == len(task.answer_alphabet)
    spec = json.loads(json.dumps(task.spec()))
    assert task_from_spec(spec) == task


# ---------------------------------------------------------------- vision

def test_digits_split_disjoint_stratified_and_real(no_network):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from memmodel.tasks import digit_pixels, digit_split_indices

    parts = digit_split_indices()
    sets = [set(parts[s].tolist()) for s in SPLITS]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert sum(map(len, sets)) == 1797
    data = load_digits()
    for s in SPLITS:
        x, y = digit_pixels(s)
        assert torch.equal(x - ord("a"), torch.as_tensor(data.data[parts[s].numpy()]).long())
        share = torch.bincount(y, minlength=10).double() / len(y)
        assert (share - 0.1).abs().max() < 0.02  # every class in every split, stratified
    assert digit_pixels("train")[0].shape == (1258, 64)


def test_digits_stream_layout_balance_and_disjoint_images(no_network):
    pytest.importorskip("sklearn")
    from memmodel.tasks import digit_pixels

    task = build_task("digits_stream", seq_len=66 + 65 * 4)
    _common(task)
    _balanced(task)
    batch = task.sample(64, split="test", index=0)
    test_x, test_y = digit_pixels("test")
    train = {tuple(r) for r in digit_pixels("train")[0].tolist()}
    T, n = task.seq_len, task.n_images
    assert n == 5
    images = batch.input_ids[:, T - 1 - 65 * n: T - 1].view(64, n, 65)
    marked = images[:, :, 0] == ord("#")
    assert (marked.sum(1) == 1).all() and ((images[:, :, 0] == ord("|")) | marked).all()
    test_images = {tuple(r): int(c) for r, c in zip(test_x.tolist(), test_y.tolist())}
    for b in range(64):
        pixels = images[b, marked[b]][0, 1:].tolist()
        assert test_images[tuple(pixels)] == batch.answers[b, 0, 0] - ord("0")
        for i in range(n):  # every image of a test stream is a test image
            assert tuple(images[b, i, 1:].tolist()) in test_images
    train_batch = task.sample(64, split="train", index=0)
    train_images = train_batch.input_ids[:, T - 1 - 65 * n: T - 1].view(64, n, 65)[:, :, 1:]
    assert all(tuple(r) in train for r in train_images.reshape(-1, 64).tolist())
    assert (batch.input_ids[:, batch.fact_pos[:, 0]].diagonal() == ord("#")).all()
    pinned = build_task("digits_stream", seq_len=66 + 65 * 4, depth=0.0).sample(4, split="val")
    assert (pinned.fact_pos[:, 0] == 0).all()
    with pytest.raises(ValueError, match="seq_len"):
        build_task("digits_stream", seq_len=65)
    with pytest.raises(ValueError, match="marker"):
        build_task("digits_stream", marker="a")


def test_digits_stream_reaches_128k():
    pytest.importorskip("sklearn")
    task = build_task("digits_stream", seq_len=1 << 17)
    batch = task.sample(1, split="test")
    assert batch.input_ids.shape == (1, 1 << 17) and task.n_images == 2016


# ---------------------------------------------------------------- biology

def test_motif_pair_planted_sites_classes_and_splits(no_network):
    pytest.importorskip("pyjaspar")
    from memmodel.tasks.biology import load_motif

    name, counts = load_motif("MA0139.2")
    assert name == "CTCF" and len(counts) == 15 and len(counts[0]) == 4
    task = build_task("motif_pair", seq_len=512, near=48)
    _common(task)
    _balanced(task)
    assert task.class_names == ["CTCF>CTCF", "CTCF>TP53", "TP53>CTCF", "TP53>TP53"]
    batch = task.sample(32, split="test", index=1)
    T, lengths = task.seq_len, [15, 18]
    assert set(batch.input_ids[:, : T - 1].unique().tolist()) <= {ord(c) for c in "ACGT"}
    cls = batch.answers[:, 0, 0] - ord("0")
    first = cls // 2
    for b in range(32):
        start = int(batch.fact_pos[b, 0])
        L = lengths[int(first[b])]
        assert start + L <= T - 1 - task.near  # the far site ends before the near window
        site = batch.input_ids[b, start: start + L]
        assert answer_split(site[None])[0] == 2  # a test site string
    with pytest.raises(ValueError, match="motifs"):
        build_task("motif_pair", motifs="MA0139.2")
    with pytest.raises(ValueError, match="near"):
        build_task("motif_pair", near=4)


def test_motif_sites_follow_their_matrix():
    pytest.importorskip("pyjaspar")
    from memmodel.tasks.biology import draw_sites, load_motif, site_probabilities

    probs = site_probabilities(load_motif("MA0139.2")[1], 0.0)
    sites = draw_sites(torch.Generator().manual_seed(0), probs, 4000, None, both_strands=False)
    freq = torch.stack([(sites == ord(c)).double().mean(0) for c in "ACGT"], 1)
    assert (freq - probs).abs().max() < 0.03
    split = draw_sites(torch.Generator().manual_seed(0), probs, 50, "val", both_strands=True)
    assert (answer_split(split) == 1).all()


# ---------------------------------------------------------------- language

def test_modules_split_whole_and_disjoint():
    parts = {s: {n for n, _ in split_modules(s)} for s in SPLITS}
    assert sum(map(len, parts.values())) == len(load_modules()) <= len(CORPUS_MODULES)
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"] and len(parts["test"]) == 5
    assert all(module_split(n) == s for s, names in parts.items() for n in names)


def test_module_question_defines_the_name_once(no_network):
    task = build_task("module_question", seq_len=2048, n_docs=6)
    _common(task)
    _balanced(task, rows=300)
    batch = task.sample(16, split="test", index=3)
    test_text = b"".join(b for _, b in split_modules("test"))
    train_text = b"".join(b for _, b in split_modules("train"))
    _, by_name = definitions("test")
    W = task.doc_width
    for b in range(16):
        row = bytes(batch.input_ids[b].tolist())
        name = row[row.rindex(b"\x1d") + 1: -1]
        assert name in by_name
        answer = chr(int(batch.answers[b, 0, 0]))
        cut = [d * W for d in range(task.n_docs)] + [task.region]
        docs = [row[lo:hi] for lo, hi in zip(cut[:-1], cut[1:])]
        assert all(d[:1] == b"\x1e" and d[2:3] == b"\n" for d in docs)
        assert sorted(d[1:2].decode() for d in docs) == list(task.answer_alphabet)
        defines = re.compile(rb"(?m)^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+" +
                             re.escape(name) + rb"\b")
        owners = [d[1:2].decode() for d in docs if defines.search(d[3:])]
        assert owners == [answer], (name, owners)
        text = docs[0][3:200]
        assert text in test_text and text not in train_text  # test modules only
        assert row[int(batch.fact_pos[b, 0]):].lstrip().startswith((b"def", b"class", b"async"))


def test_corpus_lm_windows_of_the_split():
    task = build_task("corpus_lm", seq_len=5000)
    assert task.scoring == "lm" and task.queries == 0
    batch = task.sample(2, split="val", index=0)
    assert torch.equal(batch.labels[:, :-1], batch.input_ids[:, 1:])
    piece = bytes(batch.input_ids[0, 100:150].tolist())
    assert any(piece in b for _, b in split_modules("val"))
    assert not any(piece in b for _, b in split_modules("train"))
    assert _same(batch, task.sample(2, split="val", index=0))
    assert task_from_spec(task.spec()) == task
    with pytest.raises(ValueError, match="seq_len"):
        build_task("corpus_lm", seq_len=10 ** 7)


# ---------------------------------------------------------------- the runner

def test_the_runner_scores_classes_and_bits_per_byte(tmp_path):
    pytest.importorskip("sklearn")
    from memmodel.training.ablation import AblationSpec, markdown_table, run_ablation

    spec = AblationSpec(
        variants=["ssm"], model=dict(d_model=16, n_layers=1, d_state=4, backend="torch"),
        train_tasks=[dict(name="digits_stream", seq_len=131), dict(name="corpus_lm",
                                                                   seq_len=128)],
        train=dict(steps=2, batch_size=2, eval_batches=1, log_every=1),
        eval_tasks=[dict(name="digits_stream"), dict(name="corpus_lm")],
        eval_lengths=[131, 262], eval_n=4, eval_batch_size=4, segment=128, warmup_steps=0)
    rows = run_ablation(spec, tmp_path)
    digits = [r for r in rows if r["task"] == "digits_stream"]
    lm = [r for r in rows if r["task"] == "corpus_lm"]
    assert len(digits) == 2 and len(lm) == 2
    for r in digits:
        assert 0 <= r["macro_f1"] <= 1 and r["f1_low"] <= r["macro_f1"] <= r["f1_high"]
        assert len(r["confusion"]) == 10
    assert lm[0]["bpb_beyond"] is None and lm[1]["bpb_beyond"] is not None
    assert lm[1]["train_len"] == 131 and lm[1]["bpb_low"] <= lm[1]["bpb"] <= lm[1]["bpb_high"]
    table = markdown_table(rows, spec)
    assert "macro F1" in table and "bits/byte" in table
