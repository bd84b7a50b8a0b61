"""Language: the embedded corpus (standard-library source, `memmodel.data`) as long
documents.

Both tasks split the corpus by whole module (`memmodel.data.module_split`: 42 train, 5 val,
5 test), so a val or test stream holds no text of a training module.

`corpus_lm`: windows of T bytes of the split's modules, whole and in a random order
(scoring "lm": every next byte, loss and bits per byte; `evaluate_lm_stream`).

`module_question`: a stream of n_docs documents, each a header naming it with a letter and
a slice of a module; at the end, the name a `def` or `class` line of one document defines is
asked, the answer is that document's letter:

    x:  ^C\\n...def quote(string, safe='/'...^A\\n...class Error(Exception)...  ]quote_ C
    y:  -100 everywhere ...                                                      letter

The name is defined in no other document of the stream. What is real: the text. What is
generated: the choice of slices, their order, the letters and the question.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..data import load_modules, module_split
from .base import (
    Task,
    TaskBatch,
    check_bytes,
    check_depth,
    check_disjoint,
    check_int,
    make_batch,
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DEFINITION = re.compile(rb"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_][A-Za-z0-9_]*)",
                         re.M)


@functools.lru_cache(maxsize=1)
def _modules() -> dict[str, bytes]:
    return load_modules()


@functools.lru_cache(maxsize=3)
def split_modules(split: str) -> tuple[tuple[str, bytes], ...]:
    """(name, source) of the corpus modules in `split`, in CORPUS_MODULES order."""
    return tuple((n, b) for n, b in _modules().items() if module_split(n) == split)


@functools.lru_cache(maxsize=3)
def definitions(split: str) -> tuple[list[tuple[int, int, int, bytes]], dict[bytes, list]]:
    """The `def` / `class` lines of the split's modules: a list of (module index, start of
    the line's keyword, end of the name, name), and for each name the entries defining it."""
    found, by_name = [], {}
    for m, (_, text) in enumerate(split_modules(split)):
        for hit in _DEFINITION.finditer(text):
            entry = (m, hit.start(0) + len(hit.group(0)) - len(hit.group(0).lstrip()),
                     hit.end(1), hit.group(1))
            found.append(entry)
            by_name.setdefault(hit.group(1), []).append(entry)
    return found, by_name


def _clean(text: bytes, special: str) -> bytes:
    return text.translate(bytes.maketrans(special.encode("latin-1"), b" " * len(special)))


@dataclass
class CorpusLMTask(Task):
    """Long documents for language modelling: T + 1 bytes of the split's modules.

    Args:
        seq_len: T (at most the smallest split's text, about 360 KB).
        seed: the base of the split seeds.

    Each row is a window at a uniform place in the split's modules joined (each whole,
    a newline between) in a random order. labels are every next byte; `answers` and
    `answer_pos` are empty (Q = 0). Chance per byte: 1/256.

    Example:
        >>> batch = CorpusLMTask(seq_len=4096).sample(2, split="test")
        >>> bool((batch.labels[:, :-1] == batch.input_ids[:, 1:]).all())
        True
    """

    seq_len: int = 4096
    seed: int = 0

    name: ClassVar[str] = "corpus_lm"
    format: ClassVar[str] = ("T + 1 bytes of the split's whole modules of the embedded corpus "
                             "in a random order; every next byte is scored")
    scoring: ClassVar[str] = "lm"

    def __post_init__(self):
        check_int("CorpusLMTask", "seq_len", self.seq_len)
        check_int("CorpusLMTask", "seed", self.seed, minimum=0)
        smallest = min(sum(len(b) + 1 for _, b in split_modules(s)) - 1
                       for s in ("train", "val", "test"))
        if self.seq_len + 1 > smallest:
            raise ValueError(f"CorpusLMTask.seq_len: expected at most {smallest - 1} (the "
                             f"smallest split's text), got {self.seq_len}")

    @property
    def queries(self) -> int:
        return 0

    @property
    def answer_length(self) -> int:
        return 1

    @property
    def answer_alphabet(self) -> str:
        return "".join(map(chr, range(256)))

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T = batch_size, self.seq_len
        docs = [b for _, b in split_modules(split or "train")]
        rows = []
        for _ in range(B):
            order = torch.randperm(len(docs), generator=generator).tolist()
            text = b"\n".join(docs[i] for i in order)
            s = int(torch.randint(0, len(text) - T, (1,), generator=generator))
            rows.append(torch.frombuffer(bytearray(text[s: s + T + 1]), dtype=torch.uint8))
        seq = torch.stack(rows).long()
        empty = torch.zeros(B, 0, 1, dtype=torch.int64)
        return TaskBatch(seq[:, :T].clone(), seq[:, 1:].clone(), empty, empty.clone(),
                         torch.zeros(B, 0, dtype=torch.int64), torch.zeros(B, 0))


@dataclass
class ModuleQuestionTask(Task):
    """Which document of a long stream defined a name, asked at the end.

    Args:
        seq_len: T.
        n_docs: K documents (2 to 26), labelled by a random permutation of the first K
            letters.
        max_name: the longest name asked (the question is padded to this length with
            spaces before it, so every stream has the same layout).
        doc_marker, query, separator: one byte each, used nowhere else (the text's own
            such bytes become spaces).
        depth: None: the asked document uniform among the K; a number in [0, 1]: document
            round(depth * (K - 1)).
        seed: the base of the split seeds.

    Layout: the first R = T + 1 - (max_name + 3) bytes hold the documents, each
    doc_marker + letter + newline + a slice of one module of the split, R // K bytes (the
    last one the rest); then spaces, query + name + separator and the answer letter. The
    asked document's slice holds a whole `def NAME` / `class NAME` line start; no other
    document's slice holds a definition of NAME. Classes: the K letters, balanced in
    expectation (the letters are a random permutation); chance 1 / K.

    Example:
        >>> task = ModuleQuestionTask(seq_len=4096, n_docs=8)
        >>> task.sample(2, split="val").answers.shape
        torch.Size([2, 1, 1])
    """

    seq_len: int = 1024
    n_docs: int = 8
    max_name: int = 16
    doc_marker: str = "\x1e"
    query: str = "\x1d"
    separator: str = "\x1f"
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "module_question"
    format: ClassVar[str] = (
        "n_docs documents, each doc_marker + letter + newline + a slice of a corpus module "
        "of the split; then query + a name one document's def/class line defines + "
        "separator: the answer is that document's letter")
    scoring: ClassVar[str] = "classes"

    def __post_init__(self):
        owner = "ModuleQuestionTask"
        for name in ("seq_len", "max_name"):
            check_int(owner, name, getattr(self, name))
        check_int(owner, "n_docs", self.n_docs, minimum=2)
        check_int(owner, "seed", self.seed, minimum=0)
        if self.n_docs > len(LETTERS):
            raise ValueError(f"{owner}.n_docs: expected at most {len(LETTERS)}, got "
                             f"{self.n_docs}")
        for name in ("doc_marker", "query", "separator"):
            check_bytes(owner, name, getattr(self, name), one=True)
        check_disjoint(owner, "doc_marker", {"doc_marker": self.doc_marker,
                                             "query": self.query, "separator": self.separator})
        check_depth(owner, self.depth)
        need = self.n_docs * (3 + self.min_text) + self.max_name + 2
        if self.seq_len < need:
            raise ValueError(f"{owner}.seq_len: expected at least {need} tokens ({self.n_docs} "
                             f"documents of at least {3 + self.min_text} bytes and the "
                             f"question), got {self.seq_len}")
        longest = max(len(b) for s in ("train", "val", "test") for _, b in split_modules(s))
        if self.doc_width - 3 > longest:
            raise ValueError(f"{owner}.seq_len: a document of {self.doc_width} bytes is "
                             f"longer than any module ({longest}); expected more n_docs or "
                             f"a shorter seq_len")

    min_text: ClassVar[int] = 8 + 16  # "def " / "class " with a name, and some context

    @property
    def region(self) -> int:
        return self.seq_len + 1 - (self.max_name + 3)

    @property
    def doc_width(self) -> int:
        return self.region // self.n_docs

    @property
    def queries(self) -> int:
        return 1

    @property
    def answer_length(self) -> int:
        return 1

    @property
    def answer_alphabet(self) -> str:
        return LETTERS[: self.n_docs]

    @property
    def class_names(self) -> list[str]:
        return [f"doc {c}" for c in self.answer_alphabet]

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, K = batch_size, self.seq_len, self.n_docs
        split = split or "train"
        mods = split_modules(split)
        widths = [self.doc_width] * (K - 1) + [self.region - self.doc_width * (K - 1)]
        special = self.doc_marker + self.query + self.separator
        seqs, fact = [], []
        for _ in range(B):
            letters = torch.randperm(K, generator=generator).tolist()
            asked = (_uniform(generator, 0, K - 1) if self.depth is None
                     else round(self.depth * (K - 1)))
            slices, name, fact_in = self._slices(generator, split, widths, asked)
            parts, pos, fact_at = [], 0, 0
            for d, (m, s) in enumerate(slices):
                head = (self.doc_marker + LETTERS[letters[d]] + "\n").encode("latin-1")
                if d == asked:
                    fact_at = pos + len(head) + fact_in
                parts += [head, _clean(mods[m][1][s: s + widths[d] - 3], special)]
                pos += widths[d]
            parts += [(" " * (self.max_name - len(name)) + self.query).encode("latin-1"), name,
                      (self.separator + LETTERS[letters[asked]]).encode("latin-1")]
            row = b"".join(parts)
            assert len(row) == T + 1, (len(row), T + 1)
            seqs.append(torch.frombuffer(bytearray(row), dtype=torch.uint8))
            fact.append(fact_at)
        answer_pos = torch.full((B, 1, 1), T - 1, dtype=torch.int64)
        return make_batch(torch.stack(seqs).long(), answer_pos,
                          torch.tensor(fact, dtype=torch.int64)[:, None])

    def _slices(self, generator, split, widths, asked):
        """([(module, start)] per document, the asked name, where its line starts in the
        asked document's text): the asked document holds the definition's line, no other
        holds a definition of the name. A name no set of slices avoids is drawn again."""
        mods = split_modules(split)
        found, by_name = definitions(split)
        sizes = [len(b) for _, b in mods]
        text = [w - 3 for w in widths]
        for _attempt in range(1000):
            m, kw, end, name = found[_uniform(generator, 0, len(found) - 1)]
            if len(name) > self.max_name or end - kw > text[asked] or sizes[m] < text[asked]:
                continue
            start = _uniform(generator, max(0, end - text[asked]),
                             min(kw, sizes[m] - text[asked]))
            slices = []
            for d, w in enumerate(text):
                if d == asked:
                    slices.append((m, start))
                    continue
                eligible = [i for i, n in enumerate(sizes) if n >= w]
                for _try in range(20):
                    md = eligible[_uniform(generator, 0, len(eligible) - 1)]
                    s = _uniform(generator, 0, sizes[md] - w)
                    if not any(e[0] == md and e[1] < s + w and e[2] > s for e in by_name[name]):
                        slices.append((md, s))
                        break
                else:
                    break
            if len(slices) == len(text):
                return slices, name, kw - start
        raise RuntimeError(f"ModuleQuestionTask: found no stream of {self.n_docs} documents "
                           f"of {widths[0]} bytes with a name defined in one only")


def _uniform(generator, lo: int, hi: int) -> int:
    """A uniform int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))
