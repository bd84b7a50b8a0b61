"""Passkey retrieval: a byte stream of filler with a key planted inside one chunk of C
tokens, asked for at the very end:

    x:  f f f f # 7 3 9 1 f f f | f f f ... f f f | ... | f f f f f f ? 7 3 9
    y:  -100 everywhere ...                                           7 3 9 1

With a `question` (fixed text, as RULER's "What is the pass key? The pass key is"), that
text stands right before the query byte; it may span chunks, so the chunks before the
answer's tell that a question is coming (what a controller that skips reads needs).

The labels are the next bytes, -100 except at the answer (the key's bytes after the
question mark), so a model's loss on a batch is its loss on the answer tokens. The
filler carries no information, so the answer is only predictable from the key's chunk:
a long-term memory that still holds that chunk when the question comes can answer.

Filler kinds: "letters" (random bytes of `filler`, none shared with the keys), "shared"
(random bytes of `filler` and `key_alphabet` together, so the key is found by its marker
only) and "text" (slices of the embedded corpus, real text; marker and query bytes in it
become spaces). Generated, nothing downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch

from .base import (
    FILLER_KINDS,
    IGNORE,
    Task,
    check_bytes,
    check_choice,
    check_depth,
    check_disjoint,
    check_int,
)
from .sampling import as_bytes, random_strings
from .sampling import filler as make_filler


class PasskeyBatch(NamedTuple):
    """input_ids, labels: [B, T] int64 (labels: IGNORE except the answer tokens);
    key: [B, key_len] int64, the key's bytes; key_chunk: [B] int64, the chunk (of C
    tokens) that holds the marker and the key; answer_pos: [B, 1, key_len] int64, the
    answer positions; fact_pos: [B, 1] int64, the marker's position; depth: [B, 1] float32,
    fact_pos / T. `answers` ([B, 1, key_len]) is the key, as in a TaskBatch."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    key: torch.Tensor
    key_chunk: torch.Tensor
    answer_pos: Optional[torch.Tensor] = None
    fact_pos: Optional[torch.Tensor] = None
    depth: Optional[torch.Tensor] = None

    @property
    def answers(self) -> torch.Tensor:
        return self.key[:, None]


@dataclass
class PasskeyTask(Task):
    """Passkey sequences; validated on construction.

    Args:
        seq_len: T, tokens per sequence (the key's answer included).
        chunk_size: C, the long-term memory's chunk size; the marker and key sit inside one
            chunk.
        key_len: bytes in the key (and in the answer).
        min_gap: the key's chunk ends at least this many chunks before the chunk holding
            the question mark (1: it may be the chunk just before).
        filler: the bytes "letters" and "shared" filler is drawn from, uniformly.
        key_alphabet: the bytes keys are drawn from, uniformly.
        marker, query: the bytes before the key and before the answer.
        question: text written right before the query byte ("": none); any bytes but the
            marker, the query and the key alphabet's, repeats allowed. The key's chunk ends
            at least min_gap chunks before the chunk of the question's first byte.
        filler_kind: "letters", "shared" (filler and key_alphabet mixed) or "text".
        depth: None: the key's chunk and place in it uniform; a number in [0, 1]: the
            marker at the allowed place nearest depth * (the last allowed start).
        seed: the base of the split seeds.

    Chance: 1 / len(key_alphabet) ** key_len per query (one query).

    Example:
        >>> task = PasskeyTask(seq_len=256, chunk_size=32, key_len=4)
        >>> batch = task.sample(2, torch.Generator().manual_seed(0))
        >>> batch.input_ids.shape, (batch.labels != -100).sum(1).tolist()
        (torch.Size([2, 256]), [4, 4])
        >>> test = task.sample(2, split="test", index=0)   # the same for every call
    """

    seq_len: int = 1024
    chunk_size: int = 64
    key_len: int = 4
    min_gap: int = 1
    filler: str = "abcdefghijklmnopqrstuvwxyz "
    key_alphabet: str = "0123456789"
    marker: str = "#"
    query: str = "?"
    question: str = ""
    filler_kind: str = "letters"
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "passkey"
    format: ClassVar[str] = (
        "filler; marker + key (key_len bytes of key_alphabet) inside one chunk of chunk_size, "
        "at least min_gap chunks before the question; at the end question + query + key: the "
        "answer is the key")

    def __post_init__(self):
        for name in ("seq_len", "chunk_size", "key_len", "min_gap"):
            check_int("PasskeyTask", name, getattr(self, name))
        check_int("PasskeyTask", "seed", self.seed, minimum=0)
        if self.chunk_size < self.key_len + 1:
            raise ValueError(f"PasskeyTask.chunk_size: expected at least key_len + 1 = "
                             f"{self.key_len + 1} (the marker and key fit in one chunk), got "
                             f"{self.chunk_size}")
        if not isinstance(self.question, str) or any(ord(ch) > 255 for ch in self.question):
            raise ValueError(f"PasskeyTask.question: expected a string of bytes (code points "
                             f"< 256), got {self.question!r}")
        if self.last_key_chunk < 0:
            need = self.min_gap * self.chunk_size + self.key_len + len(self.question)
            raise ValueError(
                f"PasskeyTask.seq_len: expected room for a key chunk {self.min_gap} chunk(s) "
                f"before the question, at least {need} tokens, got {self.seq_len}")
        for name in ("filler", "key_alphabet", "marker", "query"):
            check_bytes("PasskeyTask", name, getattr(self, name),
                        one=name in ("marker", "query"))
        check_choice("PasskeyTask", "filler_kind", self.filler_kind, FILLER_KINDS)
        check_depth("PasskeyTask", self.depth)
        special = set(self.key_alphabet + self.marker + self.query)
        if self.filler_kind == "letters" and (special & set(self.filler) or
                                              self.marker == self.query or
                                              set(self.key_alphabet) & {self.marker,
                                                                        self.query}):
            raise ValueError(f"PasskeyTask.filler: expected no byte shared between filler "
                             f"{self.filler!r}, key_alphabet {self.key_alphabet!r}, marker and "
                             f"query")
        check_disjoint("PasskeyTask", "marker", {"key_alphabet": self.key_alphabet,
                                                 "marker": self.marker, "query": self.query})
        clash = sorted(set(self.question) & special)
        if clash:
            raise ValueError(f"PasskeyTask.question: expected none of the marker, query and "
                             f"key_alphabet bytes (the key is found by its marker only), got "
                             f"{self.question!r}, which holds {''.join(clash)!r}")
        if self.filler_kind == "shared":
            check_disjoint("PasskeyTask", "filler", {"filler": self.filler,
                                                     "marker": self.marker,
                                                     "query": self.query})

    @property
    def query_chunk(self) -> int:
        """The chunk holding the question mark (the first answer prediction)."""
        return (self.seq_len - self.key_len) // self.chunk_size

    @property
    def question_chunk(self) -> int:
        """The chunk holding the question's first byte (the query chunk without one)."""
        return (self.seq_len - self.key_len - len(self.question)) // self.chunk_size

    @property
    def last_key_chunk(self) -> int:
        """The key's chunk is drawn uniformly from 0 .. last_key_chunk."""
        return self.question_chunk - self.min_gap

    @property
    def queries(self) -> int:
        return 1

    @property
    def answer_length(self) -> int:
        return self.key_len

    @property
    def answer_alphabet(self) -> str:
        return self.key_alphabet

    @property
    def filler_alphabet(self) -> str:
        """The bytes random filler is drawn from ("letters", "shared")."""
        if self.filler_kind == "shared":
            return self.filler + "".join(ch for ch in self.key_alphabet if ch not in self.filler)
        return self.filler

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None,
               split: Optional[str] = None, index: int = 0) -> PasskeyBatch:
        """A batch of independent sequences (the key, its chunk and place drawn per row);
        see Task.sample for generator, split and index."""
        return super().sample(batch_size, generator, split, index)

    def _draw(self, batch_size, generator, split) -> PasskeyBatch:
        B, T, C, L = batch_size, self.seq_len, self.chunk_size, self.key_len
        seq = make_filler(generator, B, T + 1, self.filler_kind, self.filler_alphabet, split,
                          self.marker + self.query)
        key = random_strings(generator, (B,), self.key_alphabet, L,
                             split if self.answers_split else None)
        if self.depth is None:
            key_chunk = torch.randint(0, self.last_key_chunk + 1, (B,), generator=generator)
            offset = torch.randint(0, C - L, (B,), generator=generator)  # marker + key fit
        else:
            target = round(self.depth * (self.last_key_chunk * C + C - L - 1))
            key_chunk = torch.full((B,), target // C, dtype=torch.int64)
            offset = torch.full((B,), min(target % C, C - L - 1), dtype=torch.int64)
        rows = torch.arange(B)[:, None]
        start = (key_chunk * C + offset)[:, None]
        seq[rows, start] = ord(self.marker)
        seq[rows, start + 1 + torch.arange(L)] = key
        if self.question:
            seq[:, T - L - len(self.question): T - L] = as_bytes(self.question)
        seq[:, T - L] = ord(self.query)
        seq[:, T + 1 - L:] = key
        labels = torch.full((B, T), IGNORE, dtype=torch.int64)
        labels[:, T - L:] = key
        answer_pos = torch.arange(T - L, T).repeat(B, 1, 1)
        return PasskeyBatch(seq[:, :T].clone(), labels, key, key_chunk, answer_pos, start,
                            start.float() / T)


def key_kept(ltm_state, key_chunk: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B] bool: the key chunk's own summary (a level-0 entry made at the chunk's end,
    position (key_chunk + 1) * C) is still live in a layer's bank.

    Args:
        ltm_state: the layer's LTMState at the end of the sequence.
        key_chunk: [B] int, the chunk holding the key.
        chunk_size: C.
    """
    made = (key_chunk.cpu()[:, None] + 1) * chunk_size
    return ((ltm_state.level == 0) & (ltm_state.start == made)).any(1)
