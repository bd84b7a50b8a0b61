"""Multi-key needles in a haystack with decoys (after RULER's multi-key NIAH).

n_facts facts `#NAME=VALUE` and n_decoys decoys `%NAME=VALUE` (same form, another marker,
never asked) are spread over filler; at the end n_queries of the facts are asked, each as
`?NAME=` followed by its value (the answer):

    x:  f f #QXD=4821 f f f %KLA=0937 f f ... f #BRT=5561 f f ?BRT=556
    y:  -100 everywhere ...                                         5561

Names are distinct within a sequence (facts and decoys together), so every query has one
answer. With `repeats` > 1 every fact and decoy is stated that many times, each copy in a
slot of its own (a text that mentions its facts more than once): a memory that keeps
entries by a per-chunk score alone can fill up with copies of one fact. Generated, except
the "text" filler (real text from the embedded corpus).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .base import (
    FILLER_KINDS,
    Task,
    TaskBatch,
    check_bytes,
    check_choice,
    check_depth,
    check_disjoint,
    check_int,
    check_space,
    make_batch,
)
from .sampling import distinct_strings, filler, random_strings, slot_places, write


@dataclass
class MultiNeedleTask(Task):
    """Multi-needle sequences; validated on construction.

    Args:
        seq_len: T.
        n_facts: K facts `marker name separator value` spread over the stream.
        n_decoys: decoys `decoy_marker name separator value`, never asked.
        n_queries: Q facts asked at the end (distinct facts, at most n_facts).
        name_len, value_len: bytes of a name and of a value (the answer).
        name_alphabet, value_alphabet: the bytes names and values are drawn from.
        filler_kind: "letters" (random bytes of `filler`, none shared with names or values),
            "shared" (filler, name and value bytes mixed) or "text" (corpus slices; the
            marker, decoy marker, separator and query bytes in it become spaces).
        filler: the bytes of "letters" and "shared" filler.
        marker, decoy_marker, separator, query: one byte each, used nowhere else.
        separator_first: the question is query+separator+name, its name right before the
            answer (a model reading one token back finds the name there), instead of
            query+name+separator as the facts.
        depth: None: facts and decoys in random slots; a number in [0, 1]: the asked facts
            in consecutive slots at that depth (see slot_places); only with repeats 1.
        repeats: copies of each fact and decoy, each in its own slot (the same name and
            value); the reported depth of an asked fact is that of its last copy.
        seed: the base of the split seeds.

    Chance: 1 / len(value_alphabet) ** value_len per query.

    Example:
        >>> task = MultiNeedleTask(seq_len=512, n_facts=8, n_decoys=8, n_queries=2)
        >>> batch = task.sample(4, split="train", index=0)
        >>> batch.answers.shape, batch.depth.shape
        (torch.Size([4, 2, 4]), torch.Size([4, 2]))
    """

    seq_len: int = 1024
    n_facts: int = 16
    n_decoys: int = 16
    n_queries: int = 4
    name_len: int = 3
    value_len: int = 4
    name_alphabet: str = string.ascii_uppercase
    value_alphabet: str = string.digits
    filler_kind: str = "letters"
    filler: str = "abcdefghijklmnopqrstuvwxyz "
    marker: str = "#"
    decoy_marker: str = "%"
    separator: str = "="
    query: str = "?"
    separator_first: bool = False
    depth: Optional[float] = None
    repeats: int = 1
    seed: int = 0

    name: ClassVar[str] = "multi_needle"
    format: ClassVar[str] = (
        "filler with n_facts facts marker+name+separator+value and n_decoys decoys "
        "decoy_marker+name+separator+value, one per slot of the stream; names distinct; at "
        "the end n_queries facts asked as query+name+separator (query+separator+name when "
        "separator_first), each followed by its value: the answer; each fact and decoy "
        "stated `repeats` times")

    def __post_init__(self):
        owner = "MultiNeedleTask"
        for name in ("seq_len", "n_facts", "n_queries", "name_len", "value_len", "repeats"):
            check_int(owner, name, getattr(self, name))
        check_int(owner, "n_decoys", self.n_decoys, minimum=0)
        check_int(owner, "seed", self.seed, minimum=0)
        if self.n_queries > self.n_facts:
            raise ValueError(f"{owner}.n_queries: expected at most n_facts = {self.n_facts} "
                             f"(each query asks a different fact), got {self.n_queries}")
        for name in ("name_alphabet", "value_alphabet", "filler"):
            check_bytes(owner, name, getattr(self, name))
        for name in ("marker", "decoy_marker", "separator", "query"):
            check_bytes(owner, name, getattr(self, name), one=True)
        check_choice(owner, "filler_kind", self.filler_kind, FILLER_KINDS)
        if not isinstance(self.separator_first, bool):
            raise ValueError(f"{owner}.separator_first: expected a bool, got "
                             f"{self.separator_first!r}")
        check_depth(owner, self.depth)
        if self.depth is not None and self.repeats > 1:
            raise ValueError(f"{owner}.depth: a pinned depth places one copy of each asked "
                             f"fact; expected None with repeats = {self.repeats}, got "
                             f"{self.depth}")
        check_space(owner, "name_len", self.name_alphabet, self.name_len,
                    self.n_facts + self.n_decoys)
        check_space(owner, "value_len", self.value_alphabet, self.value_len, 1)
        special = {"marker": self.marker, "decoy_marker": self.decoy_marker,
                   "separator": self.separator, "query": self.query}
        strings = {"name_alphabet + value_alphabet": self.name_alphabet + self.value_alphabet}
        check_disjoint(owner, "marker", {**strings, **special})
        if self.filler_kind == "letters":
            check_disjoint(owner, "filler", {"filler": self.filler, **strings, **special})
        elif self.filler_kind == "shared":
            check_disjoint(owner, "filler", {"filler": self.filler, **special})
        items = (self.n_facts + self.n_decoys) * self.repeats
        need = (items + self.n_queries) * self.fact_len - 1
        if self.seq_len < need:
            raise ValueError(f"{owner}.seq_len: expected at least {need} tokens ({items} facts "
                             f"and decoys with their copies, then {self.n_queries} queries, "
                             f"of {self.fact_len} bytes each), got {self.seq_len}")

    @property
    def fact_len(self) -> int:
        """Bytes of a fact, a decoy and a query with its answer."""
        return self.name_len + self.value_len + 2

    @property
    def queries(self) -> int:
        return self.n_queries

    @property
    def answer_length(self) -> int:
        return self.value_len

    @property
    def answer_alphabet(self) -> str:
        return self.value_alphabet

    @property
    def filler_alphabet(self) -> str:
        if self.filler_kind == "shared":
            extra = self.name_alphabet + self.value_alphabet
            return self.filler + "".join(dict.fromkeys(ch for ch in extra
                                                       if ch not in self.filler))
        return self.filler

    def _draw(self, batch_size, generator, split) -> TaskBatch:
        B, T, F, Q = batch_size, self.seq_len, self.fact_len, self.n_queries
        K, N, R = self.n_facts, self.n_facts + self.n_decoys, self.repeats
        region = T + 1 - Q * F
        special = self.marker + self.decoy_marker + self.separator + self.query
        seq = filler(generator, B, T + 1, self.filler_kind, self.filler_alphabet, split,
                     special)
        names = distinct_strings(generator, B, N, self.name_alphabet, self.name_len)
        values = random_strings(generator, (B, N), self.value_alphabet, self.value_len,
                                split if self.answers_split else None)
        lead = torch.full((B, N, 1), ord(self.marker), dtype=torch.int64)
        lead[:, K:] = ord(self.decoy_marker)
        sep = torch.full((B, N, 1), ord(self.separator), dtype=torch.int64)
        facts = torch.cat([lead, names, sep, values], 2)  # [B, N, F]
        # item i * N + n is copy i of fact (or decoy) n
        start = slot_places(generator, B, N * R, F, region, Q, self.depth)
        write(seq, start, facts.repeat(1, R, 1))
        asked = facts[:, :Q].clone()
        asked[:, :, 0] = ord(self.query)
        if self.separator_first:
            asked[:, :, 1] = ord(self.separator)
            asked[:, :, 2: 2 + self.name_len] = names[:, :Q]
        query_start = region + F * torch.arange(Q).expand(B, Q)
        write(seq, query_start, asked)
        value_at = query_start[..., None] + self.name_len + 2 + torch.arange(self.value_len)
        last = start.view(B, R, N)[:, :, :Q].amax(1)  # the asked facts' last copies
        return make_batch(seq, value_at - 1, last)
