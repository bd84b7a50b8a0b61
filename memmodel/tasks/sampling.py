"""Vectorised draws the tasks build their streams from: filler, strings, places.

All take a torch.Generator (or None: torch's global one) and return int64 CPU tensors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional

import torch

from ..data import ByteCorpus
from .base import SPLIT_SHARES, SPLITS, answer_split

# Text filler is made of contiguous corpus slices this long (or the whole split if shorter).
TEXT_SLICE = 4096


def as_bytes(text: str) -> torch.Tensor:
    """[len(text)] int64, the code points of a str of bytes."""
    return torch.tensor([ord(ch) for ch in text], dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def _corpus() -> ByteCorpus:
    return ByteCorpus()


def text_filler(generator: Optional[torch.Generator], rows: int, length: int,
                split: Optional[str], special: str) -> torch.Tensor:
    """[rows, length] bytes of the embedded corpus's `split` (None: train), as slices of
    TEXT_SLICE contiguous bytes from random places; the bytes in `special` become spaces."""
    data = _corpus().splits[split or "train"]
    width = min(TEXT_SLICE, data.numel())
    slices = -(-length // width)
    starts = torch.randint(0, data.numel() - width + 1, (rows, slices), generator=generator)
    idx = (starts[:, :, None] + torch.arange(width)).view(rows, -1)[:, :length]
    table = torch.arange(256)
    table[as_bytes(special)] = ord(" ")
    return table[data[idx].long()]


def random_filler(generator: Optional[torch.Generator], rows: int, length: int,
                  alphabet: str) -> torch.Tensor:
    """[rows, length] bytes drawn uniformly from `alphabet`."""
    table = as_bytes(alphabet)
    return table[torch.randint(0, len(table), (rows, length), generator=generator)]


def filler(generator: Optional[torch.Generator], rows: int, length: int, kind: str,
           alphabet: str, split: Optional[str], special: str) -> torch.Tensor:
    """[rows, length] filler: "text" from the corpus (see text_filler), else random bytes of
    `alphabet` (the caller passes the letters, or letters and answer bytes for "shared")."""
    if kind == "text":
        return text_filler(generator, rows, length, split, special)
    return random_filler(generator, rows, length, alphabet)


def random_strings(generator: Optional[torch.Generator], shape: Sequence[int], alphabet: str,
                   length: int, split: Optional[str] = None) -> torch.Tensor:
    """[*shape, length] strings of bytes drawn uniformly from `alphabet`; with a split, only
    strings whose answer_split is that split (drawn by rejection)."""
    table = as_bytes(alphabet)
    if split is None:
        return table[torch.randint(0, len(table), (*shape, length), generator=generator)]
    want = SPLITS.index(split)
    total = math.prod(shape)
    out = torch.empty(total, length, dtype=torch.int64)
    filled = 0
    while filled < total:
        need = total - filled
        draw = table[torch.randint(0, len(table), (int(need * 1.25 / SPLIT_SHARES[want]) + 16,
                                                  length), generator=generator)]
        keep = draw[answer_split(draw) == want][:need]
        out[filled: filled + len(keep)] = keep
        filled += len(keep)
    return out.view(*shape, length)


def distinct_ints(generator: Optional[torch.Generator], rows: int, count: int, space: int
                  ) -> torch.Tensor:
    """[rows, count] ints in [0, space), distinct within a row, in random order."""
    if space <= 4 * count:
        return torch.rand(rows, space, generator=generator).argsort(1)[:, :count]
    codes = torch.randint(0, space, (rows, count), generator=generator)
    while True:
        ordered, order = codes.sort(1)
        repeat = ordered[:, 1:] == ordered[:, :-1]
        if not repeat.any():
            return codes
        redraw = torch.zeros_like(codes, dtype=torch.bool)
        redraw.scatter_(1, order[:, 1:], repeat)
        codes[redraw] = torch.randint(0, space, (int(redraw.sum()),), generator=generator)


def distinct_strings(generator: Optional[torch.Generator], rows: int, count: int,
                     alphabet: str, length: int) -> torch.Tensor:
    """[rows, count, length] strings of `alphabet`, distinct within a row."""
    n = len(alphabet)
    codes = distinct_ints(generator, rows, count, n ** length)
    powers = n ** torch.arange(length - 1, -1, -1, dtype=torch.int64)
    return as_bytes(alphabet)[codes[..., None] // powers % n]


def place(generator: Optional[torch.Generator], rows: int, lo: int, hi: int,
          depth: Optional[float]) -> torch.Tensor:
    """[rows] positions in [lo, hi]: uniform (depth None) or lo + round(depth * (hi - lo))."""
    if depth is None:
        return torch.randint(lo, hi + 1, (rows,), generator=generator)
    return torch.full((rows,), lo + round(depth * (hi - lo)), dtype=torch.int64)


def slot_places(generator: Optional[torch.Generator], rows: int, items: int, item_len: int,
                region: int, pinned: int, depth: Optional[float]) -> torch.Tensor:
    """[rows, items] start positions of `items` non-overlapping items of item_len bytes in
    [0, region): the region is cut into `items` slots of width W = region // items, each item
    gets its own slot (a random permutation) at a uniform offset in [0, W - item_len].

    With a depth, items 0 .. pinned - 1 take the consecutive slots s0 .. s0 + pinned - 1,
    s0 = round(depth * (items - pinned)), at offset round(depth * (W - item_len)).
    """
    width = region // items
    assert width >= item_len, (region, items, item_len)
    key = torch.rand(rows, items, generator=generator)
    offset = torch.randint(0, width - item_len + 1, (rows, items), generator=generator)
    if depth is not None:
        first = round(depth * (items - pinned))
        key[:, first: first + pinned] = torch.arange(pinned, dtype=key.dtype) - pinned
        offset[:, :pinned] = round(depth * (width - item_len))
    return key.argsort(1) * width + offset


def write(seq: torch.Tensor, start: torch.Tensor, strings: torch.Tensor):
    """In place: seq[b, start[b, k] + j] = strings[b, k, j] (start [B, K], strings [B, K, L])."""
    rows = torch.arange(seq.shape[0])[:, None, None]
    seq[rows, start[..., None] + torch.arange(strings.shape[-1])] = strings
