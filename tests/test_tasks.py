"""The task generators: layout read back by exact oracles, labels, chance, seeds and splits,
pinned depth, specs and parameter checks."""

import dataclasses
import json
import math
import time

import pytest
import torch

from memmodel.tasks import (
    IGNORE,
    SPLITS,
    TASKS,
    InductionTask,
    MQARTask,
    MultiNeedleTask,
    PasskeyTask,
    SelectiveCopyTask,
    answer_metrics,
    answer_split,
    build_task,
    query_metrics,
    task_from_spec,
)
from memmodel.tasks.sampling import _corpus

CASES = {
    "passkey": PasskeyTask(seq_len=256, chunk_size=32, key_len=4),
    "passkey-shared": PasskeyTask(seq_len=255, chunk_size=16, key_len=3, min_gap=2,
                                  filler_kind="shared"),
    "passkey-text": PasskeyTask(seq_len=300, chunk_size=32, key_len=5, filler_kind="text"),
    "passkey-question": PasskeyTask(seq_len=160, chunk_size=16, key_len=2, filler_kind="shared",
                                    question=" What is the pass key. The pass key is"),
    "needles": MultiNeedleTask(seq_len=600, n_facts=8, n_decoys=8, n_queries=3),
    "needles-separator-first": MultiNeedleTask(seq_len=300, n_facts=4, n_decoys=4,
                                               n_queries=2, name_len=1, value_len=1,
                                               separator_first=True),
    "needles-shared": MultiNeedleTask(seq_len=333, n_facts=6, n_decoys=4, n_queries=6,
                                      name_len=2, filler_kind="shared"),
    "needles-text": MultiNeedleTask(seq_len=500, n_facts=5, n_decoys=5, n_queries=2,
                                    filler_kind="text"),
    "needles-repeats": MultiNeedleTask(seq_len=400, n_facts=4, n_decoys=3, n_queries=2,
                                       name_len=1, value_len=1, separator_first=True,
                                       repeats=3),
    "mqar": MQARTask(seq_len=257, n_pairs=16, n_queries=8),
    "mqar-packed": MQARTask(seq_len=(20 + 20) * 2 - 1, n_pairs=20, key_len=1, value_len=1),
    "mqar-split": MQARTask(seq_len=400, n_pairs=12, value_len=3),
    "selective_copy": SelectiveCopyTask(seq_len=200, n_data=8),
    "selective_copy-noise": SelectiveCopyTask(seq_len=65, n_data=5, noise=".,-_"),
    "induction": InductionTask(seq_len=129),
    "induction-3": InductionTask(seq_len=63, answer_len=3, alphabet="ABCDEFGHIJ"),
}
DEPTHS = (0.0, 0.37, 1.0)


# ---------------------------------------------------------------- oracles

def _passkey_oracle(task, x):
    m, L = x.index(task.marker.encode()), task.key_len
    assert x.count(task.marker.encode()) == 1 and x[-L] == ord(task.query)
    return [list(x[m + 1: m + 1 + L])]


def _needles_oracle(task, x):
    T, F, nl = task.seq_len, task.fact_len, task.name_len
    marker, sep = ord(task.marker), ord(task.separator)
    facts, names = {}, {}
    for i, b in enumerate(x[: T + 1 - task.n_queries * F]):
        if b in (marker, ord(task.decoy_marker)):
            name = x[i + 1: i + 1 + nl]
            assert x[i + 1 + nl] == sep
            names.setdefault(name, []).append((b, x[i + 2 + nl: i + F]))
            if b == marker:
                facts[name] = list(x[i + 2 + nl: i + F])
    assert len(facts) == task.n_facts and len(names) == task.n_facts + task.n_decoys
    # names distinct: each name is one fact (or decoy), stated `repeats` times
    assert all(said == [said[0]] * task.repeats for said in names.values())
    out = []
    for q in range(task.n_queries):
        start = T + 1 - (task.n_queries - q) * F
        assert x[start] == ord(task.query)
        if task.separator_first:  # query, separator, name
            assert x[start + 1] == sep
            out.append(facts[x[start + 2: start + 2 + nl]])
        else:
            assert x[start + 1 + nl] == sep
            out.append(facts[x[start + 1: start + 1 + nl]])
    return out


def _mqar_oracle(task, x):
    F, kl, keys = task.pair_len, task.key_len, task.key_alphabet.encode()
    region = task.seq_len + 1 - task.queries * F
    pairs, i = {}, 0
    while i < region:
        if x[i] in keys:
            assert x[i: i + kl] not in pairs, "keys distinct"
            pairs[x[i: i + kl]] = list(x[i + kl: i + F])
            i += F
        else:
            i += 1
    assert len(pairs) == task.n_pairs
    return [pairs[x[region + q * F: region + q * F + kl]] for q in range(task.queries)]


def _copy_oracle(task, x):
    m = x.index(task.marker.encode())
    assert m == task.seq_len - task.n_data
    return [[b for b in x[:m] if b in task.data_alphabet.encode()]]


def _induction_oracle(task, x):
    A, first = task.answer_len, x.index(task.trigger.encode())
    assert x.count(task.trigger.encode()) == 2 and x[-A] == ord(task.trigger)
    return [list(x[first + 1: first + 1 + A])]


ORACLES = {"passkey": _passkey_oracle, "multi_needle": _needles_oracle, "mqar": _mqar_oracle,
           "selective_copy": _copy_oracle, "induction": _induction_oracle}


def oracle(task, batch):
    """[B, Q, A]: the answers read from the bytes of input_ids alone."""
    rows = [ORACLES[task.name](task, bytes(row.tolist())) for row in batch.input_ids]
    return torch.tensor(rows, dtype=torch.int64)


def one_hot_logits(pred):
    return torch.nn.functional.one_hot(pred, 256).float() * 10


def check_layout(task, batch, B):
    T, Q, A = task.seq_len, task.queries, task.answer_length
    x, y = batch.input_ids, batch.labels
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    assert batch.answers.shape == batch.answer_pos.shape == (B, Q, A)
    assert batch.fact_pos.shape == batch.depth.shape == (B, Q)
    assert 0 <= x.min() and x.max() < 256
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask.scatter_(1, batch.answer_pos.view(B, -1), True)
    assert torch.equal(y != IGNORE, mask), "labels only at the answers"
    assert mask.sum(1).tolist() == [Q * A] * B
    assert torch.equal(y.gather(1, batch.answer_pos.view(B, -1)), batch.answers.view(B, -1))
    assert torch.equal(y[:, :-1][mask[:, :-1]], x[:, 1:][mask[:, :-1]]), "labels: next byte"
    assert all(chr(c) in task.answer_alphabet for c in batch.answers.unique().tolist())
    assert torch.allclose(batch.depth, batch.fact_pos.float() / T)
    assert (batch.fact_pos < batch.answer_pos.min(-1).values).all(), "facts before queries"


# ---------------------------------------------------------------- layout and oracles

@pytest.mark.parametrize("case", list(CASES))
def test_oracle_answers_every_query_and_labels_sit_on_the_answers(case):
    task = CASES[case]
    batch = task.sample(8, split="train", index=1)
    check_layout(task, batch, 8)
    pred = oracle(task, batch)
    assert torch.equal(pred, batch.answers)
    scores = query_metrics(one_hot_logits(pred), batch.answers)
    assert (scores.query_accuracy == 1).all() and (scores.token_accuracy == 1).all()


@pytest.mark.parametrize("case", ["passkey", "needles", "mqar", "selective_copy",
                                  "induction"])
def test_random_guesser_scores_near_chance(case):
    task = CASES[case]
    batch = task.sample(256, split="val")
    g = torch.Generator().manual_seed(0)
    alphabet = torch.tensor([ord(c) for c in task.answer_alphabet])
    guess = alphabet[torch.randint(0, len(alphabet), batch.answers.shape, generator=g)]
    scores = query_metrics(one_hot_logits(guess), batch.answers)
    for got, p, n in ((scores.token_accuracy.mean(), task.token_chance, batch.answers.numel()),
                      (scores.query_accuracy.mean(), task.chance, batch.answers[..., 0].numel())):
        assert abs(got.item() - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (got, p, n)


def test_chance_levels():
    assert PasskeyTask().chance == 1e-4 and PasskeyTask().token_chance == 0.1
    assert MultiNeedleTask().chance == 1e-4 and MQARTask().chance == 0.01
    assert SelectiveCopyTask().chance == 16.0 ** -16 and SelectiveCopyTask().token_chance == 1 / 16
    assert InductionTask().chance == 1 / 16 and InductionTask(answer_len=2).chance == 1 / 256


SYNTHETIC = ["passkey", "multi_needle", "mqar", "selective_copy", "induction"]


@pytest.mark.parametrize("name", SYNTHETIC)  # the domain tasks: tests/test_domains.py
def test_long_sequence_is_fast_and_still_exact(name):
    task = build_task(name, seq_len=1 << 16)
    t0 = time.perf_counter()
    batch = task.sample(2, split="test")
    assert time.perf_counter() - t0 < 3.0
    check_layout(task, batch, 2)
    assert torch.equal(oracle(task, batch), batch.answers)


def test_filler_kinds():
    def digits(task):
        x = task.sample(16, split="train").input_ids
        return ((x >= ord("0")) & (x <= ord("9"))).sum(1)

    letters, shared = CASES["passkey"], CASES["passkey-shared"]
    assert (digits(letters) == 2 * letters.key_len - 1).all(), "the key and its answer only"
    assert (digits(shared) > 4 * shared.key_len).all(), "digits in the filler too"
    x = shared.sample(16, split="train").input_ids
    assert ((x == ord("#")).sum(1) == 1).all() and ((x == ord("?")).sum(1) == 1).all()
    task = dataclasses.replace(CASES["passkey-text"], depth=1.0)  # the key late: text first
    for split in SPLITS:  # slices of the split's own part of the corpus, specials blanked
        head = bytes(task.sample(2, split=split).input_ids[0, :64].tolist())
        corpus = bytes(_corpus().splits[split].tolist())
        assert head in corpus.replace(b"#", b" ").replace(b"?", b" ")


# ---------------------------------------------------------------- seeds and splits

@pytest.mark.parametrize("case", ["passkey-text", "needles", "mqar", "selective_copy",
                                  "induction"])
def test_batches_are_fixed_by_split_and_index_and_splits_differ(case):
    task = CASES[case]
    a = task.sample(4, split="val", index=3)
    b = task.sample(4, split="val", index=3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    it = list(task.batches("val", 4, count=2, start=2))
    assert torch.equal(it[1].input_ids, a.input_ids) and len(it) == 2
    assert not torch.equal(task.sample(4, split="val", index=4).input_ids, a.input_ids)
    firsts = [task.sample(4, split=s).input_ids for s in SPLITS]
    assert not any(torch.equal(firsts[i], firsts[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(task.sample(2, g1).input_ids, task.sample(2, g2).input_ids)


def test_answer_split_is_a_hash_of_the_answer_with_the_stated_shares():
    digits = torch.arange(10_000)[:, None] // torch.tensor([1000, 100, 10, 1]) % 10 + ord("0")
    split = answer_split(digits)
    shares = torch.bincount(split, minlength=3).float() / 10_000
    assert torch.allclose(shares, torch.tensor([0.8, 0.1, 0.1]), atol=0.02)
    assert torch.equal(answer_split(digits[:100]), split[:100])


@pytest.mark.parametrize("case", ["passkey", "needles", "mqar-split", "selective_copy"])
def test_split_answers_are_disjoint(case):
    task = CASES[case]
    assert task.answers_split
    seen = {}
    for i, split in enumerate(SPLITS):
        batch = task.sample(64, split=split, index=i)
        assert (answer_split(batch.answers) == i).all()
        seen[split] = {tuple(a) for a in batch.answers.view(-1, task.answer_length).tolist()}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"])
    assert not (seen["val"] & seen["test"])
    if task.name == "multi_needle":  # unasked facts and decoys too: every value in the stream
        x = task.sample(16, split="test").input_ids
        at = torch.nonzero((x == ord("#")) | (x == ord("%")))
        at = at[at[:, 1] < task.seq_len - task.n_queries * task.fact_len]
        values = x[at[:, :1], at[:, 1:] + 2 + task.name_len + torch.arange(task.value_len)]
        assert len(values) == 16 * 16 and (answer_split(values) == 2).all()


def test_passkey_question_stands_before_the_query_and_after_the_key():
    q = " What is the pass key. The pass key is"
    task = PasskeyTask(seq_len=100, chunk_size=16, key_len=1, question=q)
    plain = PasskeyTask(seq_len=100, chunk_size=16, key_len=1)
    assert (task.query_chunk, plain.question_chunk) == (plain.query_chunk, plain.query_chunk)
    assert task.question_chunk == (100 - 1 - len(q)) // 16 == 3 and task.last_key_chunk == 2
    batch = task.sample(64, torch.Generator().manual_seed(0))
    for row in batch.input_ids:
        x = bytes(row.tolist())
        assert x[-1 - len(q): -1].decode() == q and x[-1:] == b"?"
    assert set(batch.key_chunk.tolist()) == {0, 1, 2}  # uniform over the chunks before it
    # the question takes no key's place: the key's chunk ends before the question starts
    assert ((batch.key_chunk + 1) * 16 <= 100 - 1 - len(q)).all()
    assert task_from_spec(task.spec()) == task


def test_repeated_needles_report_the_depth_of_the_last_copy():
    task = CASES["needles-repeats"]
    batch = task.sample(8, split="val", index=2)
    T, F = task.seq_len, task.fact_len
    for row, depth in zip(batch.input_ids, batch.depth):
        x = bytes(row.tolist())
        for q, d in enumerate(depth.tolist()):
            asked = x[T + 1 - (task.n_queries - q) * F:][2:3]  # query, separator, name
            last = x[: T + 1 - task.n_queries * F].rindex(b"#" + asked + b"=")
            assert d == pytest.approx(last / T)


def test_small_answer_spaces_are_not_split():
    assert not InductionTask().answers_split and not MQARTask().answers_split
    assert not PasskeyTask(key_len=2).answers_split
    keys = PasskeyTask(seq_len=64, chunk_size=16, key_len=1).sample(200, split="test").key
    assert keys.unique().numel() == 10


# ---------------------------------------------------------------- depth

def _pinned_start(task, d):
    if task.name == "passkey":
        C, L = task.chunk_size, task.key_len
        target = round(d * (task.last_key_chunk * C + C - L - 1))
        return [target // C * C + min(target % C, C - L - 1)]
    if task.name in ("multi_needle", "mqar"):
        F = task.fact_len if task.name == "multi_needle" else task.pair_len
        items = task.n_facts + task.n_decoys if task.name == "multi_needle" else task.n_pairs
        width = (task.seq_len + 1 - task.queries * F) // items
        first = round(d * (items - task.queries))
        return [(first + q) * width + round(d * (width - F)) for q in range(task.queries)]
    if task.name == "selective_copy":
        return [round(d * (task.seq_len - 2 * task.n_data))]
    return [round(d * (task.seq_len - 2 * task.answer_len - 1))]


@pytest.mark.parametrize("case", ["passkey", "passkey-text", "needles", "mqar",
                                  "selective_copy", "induction-3"])
def test_pinned_depth_places_the_asked_facts(case):
    base = CASES[case]
    free = base.sample(64, split="train").depth
    assert free.std() > 0.05, "depth None: spread"
    last = -1.0
    for d in DEPTHS:
        task = dataclasses.replace(base, depth=d)
        batch = task.sample(8, split="test")
        expect = torch.tensor(_pinned_start(task, d)).expand(8, -1)
        assert torch.equal(batch.fact_pos, expect), (d, batch.fact_pos[0], expect[0])
        assert batch.depth[0, 0] > last
        last = batch.depth[0, 0].item()
        low, high = batch.depth[0].min().item(), batch.depth[0].max().item()
        assert low - 0.2 <= d <= high + 0.2, "the asked facts' span reaches the depth"
        assert torch.equal(oracle(task, batch), batch.answers)


# ---------------------------------------------------------------- metrics

def test_query_metrics_on_full_logits_match_gathered_and_answer_metrics():
    task = CASES["needles"]
    batch = task.sample(4, split="train")
    logits = torch.randn(4, task.seq_len, 256, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(4)[:, None, None]
    logits[rows[:, :, 0], batch.answer_pos[:, 0]] = one_hot_logits(batch.answers[:, 0]) * 9
    full = query_metrics(logits, batch.answers, batch.answer_pos)
    gathered = query_metrics(logits[rows, batch.answer_pos], batch.answers)
    assert all(torch.allclose(a.float(), b.float()) for a, b in zip(full, gathered))
    assert full.query_correct[:, 0].all() and full.query_accuracy.max() < 1
    loss, acc = answer_metrics(logits, batch.labels)
    assert torch.allclose(loss, full.loss) and torch.allclose(acc, full.token_accuracy)
    with pytest.raises(ValueError, match=r"query_metrics: expected logits \[B, T, V\]"):
        query_metrics(logits, batch.answers, batch.answer_pos[:, :1])
    with pytest.raises(ValueError, match=r"query_metrics: expected logits \[B, Q, A, V\]"):
        query_metrics(logits, batch.answers)


# ---------------------------------------------------------------- specs and checks

@pytest.mark.parametrize("case", list(CASES))
def test_spec_round_trips_through_json(case):
    task = CASES[case]
    spec = json.loads(json.dumps(task.spec()))
    assert all(isinstance(v, (str, int, float, list)) or v is None for v in spec.values())
    assert spec["name"] == task.name and spec["vocab_size"] == 256
    assert spec["chance"] == task.chance and spec["answer_length"] == task.answer_length
    again = task_from_spec(spec)
    assert again == task and type(again) is type(task)
    assert torch.equal(again.sample(2, split="val").input_ids,
                       task.sample(2, split="val").input_ids)
    params = {f.name: spec[f.name] for f in dataclasses.fields(task)}
    assert build_task(task.name, **params) == task


def test_registry_and_spec_errors():
    assert sorted(TASKS) == sorted(SYNTHETIC + ["corpus_lm", "module_question",
                                                "digits_stream", "motif_pair"])
    with pytest.raises(ValueError, match=r"build_task: expected a task name in \['corpus_lm'"):
        build_task("copying")
    spec = PasskeyTask().spec()
    with pytest.raises(ValueError, match=r"task_from_spec: expected only PasskeyTask "
                                         r"parameters .*got \['n_facts'\]"):
        task_from_spec({**spec, "n_facts": 3})
    with pytest.raises(ValueError, match=r"spec\['chance'\] = 0.5, expected 0.0001"):
        task_from_spec({**spec, "chance": 0.5})
    with pytest.raises(ValueError, match=r"task_from_spec: expected a task name"):
        task_from_spec({**spec, "name": "nope"})
    assert task_from_spec({"name": "mqar", "n_pairs": 4}) == MQARTask(n_pairs=4)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: PasskeyTask(filler_kind="words"),
         r"PasskeyTask.filler_kind: expected one of \['letters', 'shared', 'text'\], got 'words'"),
        (lambda: PasskeyTask(depth=1.5), r"PasskeyTask.depth: expected None \(uniform\) or a "
                                         r"number in \[0, 1\], got 1.5"),
        (lambda: PasskeyTask(filler_kind="shared", filler="ab#"),
         r"PasskeyTask.filler: expected no byte shared between filler 'ab#', marker '#'"),
        (lambda: PasskeyTask(filler_kind="text", key_alphabet="01?"),
         r"PasskeyTask.marker: expected no byte shared .*'\?' is in both key_alphabet and query"),
        (lambda: PasskeyTask(key_alphabet="0012"),
         r"PasskeyTask.key_alphabet: expected distinct bytes, got '0012'"),
        (lambda: PasskeyTask(question="Is it #?"),
         r"PasskeyTask.question: expected none of the marker, query and key_alphabet bytes "
         r".*got 'Is it #\?', which holds '#\?'"),
        (lambda: PasskeyTask(question="key \u20ac"),
         r"PasskeyTask.question: expected a string of bytes \(code points < 256\)"),
        (lambda: PasskeyTask(seq_len=26, chunk_size=16, key_len=1, question="x" * 10),
         r"PasskeyTask.seq_len: expected room for a key chunk 1 chunk\(s\) before the question, "
         r"at least 27 tokens, got 26"),
        (lambda: MultiNeedleTask(seq_len=300),
         r"MultiNeedleTask.seq_len: expected at least 323 tokens \(32 facts and decoys with "
         r"their copies, then 4 queries, of 9 bytes each\), got 300"),
        (lambda: MultiNeedleTask(seq_len=600, repeats=2),
         r"MultiNeedleTask.seq_len: expected at least 611 tokens \(64 facts and decoys with "
         r"their copies"),
        (lambda: MultiNeedleTask(repeats=0),
         r"MultiNeedleTask.repeats: expected a positive int, got 0"),
        (lambda: MultiNeedleTask(seq_len=2000, repeats=2, depth=0.5),
         r"MultiNeedleTask.depth: a pinned depth places one copy of each asked fact; expected "
         r"None with repeats = 2, got 0.5"),
        (lambda: MultiNeedleTask(n_queries=17),
         r"MultiNeedleTask.n_queries: expected at most n_facts = 16"),
        (lambda: MultiNeedleTask(name_len=1),
         r"MultiNeedleTask.name_len: expected at least 32 distinct strings of 1 byte\(s\)"),
        (lambda: MultiNeedleTask(decoy_marker="#"),
         r"MultiNeedleTask.marker: expected no byte shared .*'#' is in both marker and "
         r"decoy_marker"),
        (lambda: MultiNeedleTask(filler="abc1"),
         r"MultiNeedleTask.filler: expected no byte shared .*'1' is in both filler and "
         r"name_alphabet \+ value_alphabet"),
        (lambda: MultiNeedleTask(n_decoys=-1),
         r"MultiNeedleTask.n_decoys: expected an int >= 0, got -1"),
        (lambda: MQARTask(seq_len=200),
         r"MQARTask.seq_len: expected at least 255 tokens \(32 pairs, then 32 queries"),
        (lambda: MQARTask(n_pairs=8, n_queries=9), r"MQARTask.n_queries: expected at most "
                                                  r"n_pairs = 8"),
        (lambda: MQARTask(value_alphabet="XYZ"),
         r"MQARTask.filler: expected no byte shared .*'X' is in both key_alphabet and "
         r"value_alphabet"),
        (lambda: MQARTask(key_len=40), r"MQARTask.key_len: expected at most 2\*\*62 possible"),
        (lambda: SelectiveCopyTask(seq_len=31),
         r"SelectiveCopyTask.seq_len: expected at least 2 \* n_data = 32 tokens"),
        (lambda: SelectiveCopyTask(marker="A"),
         r"SelectiveCopyTask.noise: expected no byte shared .*'A' is in both data_alphabet "
         r"and marker"),
        (lambda: SelectiveCopyTask(n_data=0), r"SelectiveCopyTask.n_data: expected a positive "
                                              r"int, got 0"),
        (lambda: InductionTask(trigger="A"), r"InductionTask.trigger: expected no byte shared"),
        (lambda: InductionTask(seq_len=6, answer_len=3),
         r"InductionTask.seq_len: expected at least 2 \* answer_len \+ 1 = 7 tokens"),
        (lambda: InductionTask(alphabet="AB\u0100"), r"InductionTask.alphabet: expected a "
                                                    r"non-empty string of bytes"),
        (lambda: InductionTask(depth=True), r"InductionTask.depth: expected None"),
        (lambda: InductionTask().sample(0), r"InductionTask.sample.batch_size: expected a "
                                            r"positive int, got 0"),
        (lambda: InductionTask().sample(2, split="dev"),
         r"InductionTask.sample: expected split in \('train', 'val', 'test'\) or None, got "
         r"'dev'"),
    ],
    ids=["kind", "depth", "shared-marker", "query-in-keys", "repeat", "question-bytes",
         "question-not-bytes", "question-room", "needles-len", "needles-repeats-len", "repeats",
         "repeats-depth", "needles-queries", "names",
         "decoy-marker", "needles-filler", "decoys", "mqar-len",
         "mqar-queries", "mqar-alphabets", "mqar-space", "copy-len", "copy-marker", "copy-n",
         "trigger", "induction-len", "not-bytes", "bool-depth", "batch", "split"],
)
def test_bad_parameters_raise_naming_them(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
