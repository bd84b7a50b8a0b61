"""Synthetic recall tasks: multi-query associative recall (after Zoology's MQAR), selective
copying and induction heads (after the Mamba paper). All generated.

    mqar:            f f AB37 f f f KQ05 f ... f ZT41 f f | KQ05 AB37 ZT41   (answers: values)
    selective_copy:  . . C . . . . A . . . . F . . . . . . | C A F           (answer: data)
    induction:       K P A G @ N D J B O ... F M H C L @ N                   (answer: N)
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .base import (
    Task,
    TaskBatch,
    check_bytes,
    check_depth,
    check_disjoint,
    check_int,
    check_space,
    make_batch,
)
from .sampling import (
    distinct_ints,
    distinct_strings,
    place,
    random_filler,
    random_strings,
    slot_places,
    write,
)


@dataclass
class MQARTask(Task):
    """Multi-query associative recall; validated on construction.

    n_pairs pairs `KEY VALUE` (no separator: keys, values and filler have disjoint bytes)
    sit one per slot over the stream, with random filler between; at the end n_queries of
    the keys are asked, each followed by its value (the answer), in random order. At the
    smallest seq_len, (n_pairs + n_queries) * (key_len + value_len) - 1, the slots leave no
    filler: the pairs are packed as in Zoology, then the queries.

    Args:
        seq_len: T.
        n_pairs: key-value pairs per sequence; keys distinct within a sequence.
        n_queries: pairs asked at the end (None: every pair, once).
        key_len, value_len: bytes of a key and of a value (the answer).
        key_alphabet, value_alphabet, filler: the bytes of keys, values and filler, disjoint.
        depth: None: pairs in random slots; a number in [0, 1]: the asked pairs in
            consecutive slots at that depth (see slot_places).
        seed: the base of the split seeds.

    Chance: 1 / len(value_alphabet) ** value_len per query.

    Example:
        >>> task = MQARTask(seq_len=1024, n_pairs=16)
        >>> task.sample(2, split="test").answers.shape
        torch.Size([2, 16, 2])
    """

    seq_len: int = 1024
    n_pairs: int = 32
    n_queries: Optional[int] = None
    key_len: int = 2
    value_len: int = 2
    key_alphabet: str = string.ascii_uppercase
    value_alphabet: str = string.digits
    filler: str = "abcdefghijklmnopqrstuvwxyz "
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "mqar"
    format: ClassVar[str] = (
        "n_pairs pairs key+value (key_alphabet, value_alphabet), one per slot of the stream, "
        "random filler between; keys distinct; at the end n_queries keys in random order, "
        "each followed by its value: the answer")

    def __post_init__(self):
        owner = "MQARTask"
        for name in ("seq_len", "n_pairs", "key_len", "value_len"):
            check_int(owner, name, getattr(self, name))
        check_int(owner, "seed", self.seed, minimum=0)
        if self.n_queries is not None:
            check_int(owner, "n_queries", self.n_queries)
            if self.n_queries > self.n_pairs:
                raise ValueError(f"{owner}.n_queries: expected at most n_pairs = "
                                 f"{self.n_pairs} (each query asks a different key), got "
                                 f"{self.n_queries}")
        for name in ("key_alphabet", "value_alphabet", "filler"):
            check_bytes(owner, name, getattr(self, name))
        check_disjoint(owner, "filler", {"key_alphabet": self.key_alphabet,
                                         "value_alphabet": self.value_alphabet,
                                         "filler": self.filler})
        check_depth(owner, self.depth)
        check_space(owner, "key_len", self.key_alphabet, self.key_len, self.n_pairs)
        check_space(owner, "value_len", self.value_alphabet, self.value_len, 1)
        need = (self.n_pairs + self.queries) * self.pair_len - 1
        if self.seq_len < need:
            raise ValueError(f"{owner}.seq_len: expected at least {need} tokens ({self.n_pairs} "
                             f"pairs, then {self.queries} queries, of {self.pair_len} bytes "
                             f"each), got {self.seq_len}")

    @property
    def pair_len(self) -> int:
        return self.key_len + self.value_len

    @property
    def queries(self) -> int:
        return self.n_pairs if self.n_queries is None else self.n_queries

    @property
    def answer_length(self) -> int:
        return self.value_len

    @property
    def answer_alphabet(self) -> str:
        return self.value_alphabet

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, F, P, Q = batch_size, self.seq_len, self.pair_len, self.n_pairs, self.queries
        region = T + 1 - Q * F
        seq = random_filler(generator, B, T + 1, self.filler)
        keys = distinct_strings(generator, B, P, self.key_alphabet, self.key_len)
        values = random_strings(generator, (B, P), self.value_alphabet, self.value_len,
                                split if self.answers_split else None)
        pairs = torch.cat([keys, values], 2)  # [B, P, F]
        start = slot_places(generator, B, P, F, region, Q, self.depth)
        write(seq, start, pairs)
        query_start = region + F * torch.arange(Q).expand(B, Q)
        write(seq, query_start, pairs[:, :Q])
        value_at = query_start[..., None] + self.key_len + torch.arange(self.value_len)
        return make_batch(seq, value_at - 1, start[:, :Q])


@dataclass
class SelectiveCopyTask(Task):
    """Selective copying; validated on construction.

    n_data data bytes sit at distinct random places (in stream order) among noise bytes;
    then the marker, after which the data bytes are the answer, in order.

    Args:
        seq_len: T (the marker sits at T - n_data).
        n_data: data bytes to copy (one query of n_data answer bytes).
        data_alphabet: the bytes data is drawn from (with repeats).
        noise: the noise bytes (one byte: a blank, as in the Mamba paper).
        marker: the byte before the answer.
        depth: None: the data places uniform; a number in [0, 1]: the first data byte at
            round(depth * (T - 2 n_data)), the others at random places after it.
        seed: the base of the split seeds.

    Chance: 1 / len(data_alphabet) ** n_data per query; 1 / len(data_alphabet) per byte.

    Example:
        >>> SelectiveCopyTask(seq_len=64, n_data=4).sample(1, split="val").answers.shape
        torch.Size([1, 1, 4])
    """

    seq_len: int = 1024
    n_data: int = 16
    data_alphabet: str = "ABCDEFGHIJKLMNOP"
    noise: str = "."
    marker: str = "|"
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "selective_copy"
    format: ClassVar[str] = (
        "n_data bytes of data_alphabet at distinct random places among noise bytes, then the "
        "marker; the answer: the data bytes in order")

    def __post_init__(self):
        owner = "SelectiveCopyTask"
        for name in ("seq_len", "n_data"):
            check_int(owner, name, getattr(self, name))
        check_int(owner, "seed", self.seed, minimum=0)
        for name in ("data_alphabet", "noise", "marker"):
            check_bytes(owner, name, getattr(self, name), one=name == "marker")
        check_disjoint(owner, "noise", {"data_alphabet": self.data_alphabet,
                                        "noise": self.noise, "marker": self.marker})
        check_depth(owner, self.depth)
        if self.seq_len < 2 * self.n_data:
            raise ValueError(f"{owner}.seq_len: expected at least 2 * n_data = "
                             f"{2 * self.n_data} tokens (the data, then the marker and its "
                             f"copy), got {self.seq_len}")

    @property
    def queries(self) -> int:
        return 1

    @property
    def answer_length(self) -> int:
        return self.n_data

    @property
    def answer_alphabet(self) -> str:
        return self.data_alphabet

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, n = batch_size, self.seq_len, self.n_data
        region = T - n  # data in [0, region), the marker at region
        seq = random_filler(generator, B, T + 1, self.noise)
        data = random_strings(generator, (B,), self.data_alphabet, n,
                              split if self.answers_split else None)
        if self.depth is None:
            where = distinct_ints(generator, B, n, region).sort(1).values
        else:
            first = round(self.depth * (region - n))
            rest = distinct_ints(generator, B, n - 1, region - first - 1).sort(1).values
            where = torch.cat([torch.full((B, 1), first), rest + first + 1], 1)
        seq[torch.arange(B)[:, None], where] = data
        seq[:, region] = ord(self.marker)
        seq[:, region + 1:] = data
        answer_pos = (region + torch.arange(n)).repeat(B, 1, 1)
        return make_batch(seq, answer_pos, where[:, :1])


@dataclass
class InductionTask(Task):
    """Induction heads; validated on construction.

    A stream of random bytes of `alphabet`; the trigger byte appears once, followed by
    answer_len random bytes, and again at the end: the answer is the bytes that followed it.

    Args:
        seq_len: T.
        alphabet: the bytes of the stream and of the answer.
        answer_len: bytes after the trigger (1 in the Mamba paper).
        trigger: the special byte, in no other place.
        depth: None: the first trigger uniform in [0, T - 2 answer_len - 1]; a number in
            [0, 1]: at round(depth * (T - 2 answer_len - 1)).
        seed: the base of the split seeds.

    Chance: 1 / len(alphabet) ** answer_len per query.

    Example:
        >>> InductionTask(seq_len=256).sample(2, split="train").answers.shape
        torch.Size([2, 1, 1])
    """

    seq_len: int = 1024
    alphabet: str = "ABCDEFGHIJKLMNOP"
    answer_len: int = 1
    trigger: str = "@"
    depth: Optional[float] = None
    seed: int = 0

    name: ClassVar[str] = "induction"
    format: ClassVar[str] = (
        "random bytes of alphabet; trigger + answer_len bytes once; at the end the trigger "
        "again; the answer: the bytes that followed its first occurrence")

    def __post_init__(self):
        owner = "InductionTask"
        for name in ("seq_len", "answer_len"):
            check_int(owner, name, getattr(self, name))
        check_int(owner, "seed", self.seed, minimum=0)
        check_bytes(owner, "alphabet", self.alphabet)
        check_bytes(owner, "trigger", self.trigger, one=True)
        check_disjoint(owner, "trigger", {"alphabet": self.alphabet, "trigger": self.trigger})
        check_depth(owner, self.depth)
        if self.seq_len < 2 * self.answer_len + 1:
            raise ValueError(f"{owner}.seq_len: expected at least 2 * answer_len + 1 = "
                             f"{2 * self.answer_len + 1} tokens (the trigger and its bytes, "
                             f"then the trigger and the answer), got {self.seq_len}")

    @property
    def queries(self) -> int:
        return 1

    @property
    def answer_length(self) -> int:
        return self.answer_len

    @property
    def answer_alphabet(self) -> str:
        return self.alphabet

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, A = batch_size, self.seq_len, self.answer_len
        seq = random_filler(generator, B, T + 1, self.alphabet)
        answer = random_strings(generator, (B,), self.alphabet, A,
                                split if self.answers_split else None)
        where = place(generator, B, 0, T - 2 * A - 1, self.depth)
        rows = torch.arange(B)[:, None]
        seq[rows, where[:, None]] = ord(self.trigger)
        seq[rows, where[:, None] + 1 + torch.arange(A)] = answer
        seq[:, T - A] = ord(self.trigger)
        seq[:, T - A + 1:] = answer
        answer_pos = (T - A + torch.arange(A)).repeat(B, 1, 1)
        return make_batch(seq, answer_pos, where[:, None])
