"""Synthetic long-context tasks for the memory controller; generated, nothing downloaded.

Passkey retrieval: a byte stream of random filler with a key planted inside one chunk of
C tokens, asked for at the very end:

    x:  f f f f # 7 3 9 1 f f f | f f f ... f f f | ... | f f f f f f ? 7 3 9
    y:  -100 everywhere ...                                           7 3 9 1

The labels are the next bytes, -100 except at the answer (the key's bytes after the
question mark), so a model's loss on a batch is its loss on the answer tokens. The
filler carries no information, so the answer is only predictable from the key's chunk:
a long-term memory that still holds that chunk when the question comes can answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE = -100


class PasskeyBatch(NamedTuple):
    """input_ids, labels: [B, T] int64 (labels: IGNORE except the answer tokens);
    key: [B, key_len] int64, the key's bytes; key_chunk: [B] int64, the chunk (of C
    tokens) that holds the marker and the key."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    key: torch.Tensor
    key_chunk: torch.Tensor


@dataclass
class PasskeyTask:
    """Passkey sequences; validated on construction.

    Args:
        seq_len: T, tokens per sequence (the key's answer included).
        chunk_size: C, the long-term memory's chunk size; the marker and key sit inside one
            chunk.
        key_len: bytes in the key (and in the answer).
        min_gap: the key's chunk ends at least this many chunks before the chunk holding
            the question mark (1: it may be the chunk just before).
        filler: the bytes filler is drawn from, uniformly.
        key_alphabet: the bytes keys are drawn from, uniformly.
        marker, query: the bytes before the key and before the answer.

    Example:
        >>> task = PasskeyTask(seq_len=256, chunk_size=32, key_len=4)
        >>> batch = task.sample(2, torch.Generator().manual_seed(0))
        >>> batch.input_ids.shape, (batch.labels != -100).sum(1).tolist()
        (torch.Size([2, 256]), [4, 4])
    """

    seq_len: int = 1024
    chunk_size: int = 64
    key_len: int = 4
    min_gap: int = 1
    filler: str = "abcdefghijklmnopqrstuvwxyz "
    key_alphabet: str = "0123456789"
    marker: str = "#"
    query: str = "?"

    def __post_init__(self):
        for name in ("seq_len", "chunk_size", "key_len", "min_gap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PasskeyTask.{name}: expected a positive int, got {value!r}")
        if self.chunk_size < self.key_len + 1:
            raise ValueError(f"PasskeyTask.chunk_size: expected at least key_len + 1 = "
                             f"{self.key_len + 1} (the marker and key fit in one chunk), got "
                             f"{self.chunk_size}")
        if self.last_key_chunk < 0:
            need = (self.min_gap + 1) * self.chunk_size + self.key_len
            raise ValueError(
                f"PasskeyTask.seq_len: expected room for a key chunk {self.min_gap} chunk(s) "
                f"before the question, at least {need} tokens, got {self.seq_len}")
        for name in ("filler", "key_alphabet", "marker", "query"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or any(ord(ch) > 255 for ch in value):
                raise ValueError(f"PasskeyTask.{name}: expected a non-empty string of bytes "
                                 f"(code points < 256), got {value!r}")
        for name in ("marker", "query"):
            if len(getattr(self, name)) != 1:
                raise ValueError(f"PasskeyTask.{name}: expected one character, got "
                                 f"{getattr(self, name)!r}")
        special = set(self.key_alphabet + self.marker + self.query)
        if special & set(self.filler) or self.marker == self.query or \
                set(self.key_alphabet) & {self.marker, self.query}:
            raise ValueError(f"PasskeyTask.filler: expected no byte shared between filler "
                             f"{self.filler!r}, key_alphabet {self.key_alphabet!r}, marker and "
                             f"query")

    @property
    def query_chunk(self) -> int:
        """The chunk holding the question mark (the first answer prediction)."""
        return (self.seq_len - self.key_len) // self.chunk_size

    @property
    def last_key_chunk(self) -> int:
        """The key's chunk is drawn uniformly from 0 .. last_key_chunk."""
        return self.query_chunk - self.min_gap

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None
               ) -> PasskeyBatch:
        """A batch of independent sequences (the key, its chunk and place drawn per row)."""
        B, T, C, L = batch_size, self.seq_len, self.chunk_size, self.key_len
        filler = _bytes(self.filler)
        alphabet = _bytes(self.key_alphabet)
        seq = filler[torch.randint(0, len(filler), (B, T + 1), generator=generator)]
        key = alphabet[torch.randint(0, len(alphabet), (B, L), generator=generator)]
        key_chunk = torch.randint(0, self.last_key_chunk + 1, (B,), generator=generator)
        offset = torch.randint(0, C - L, (B,), generator=generator)  # marker + key fit
        rows = torch.arange(B)[:, None]
        start = (key_chunk * C + offset)[:, None]
        seq[rows, start] = ord(self.marker)
        seq[rows, start + 1 + torch.arange(L)] = key
        seq[:, T - L] = ord(self.query)
        seq[:, T + 1 - L:] = key
        labels = torch.full((B, T), IGNORE, dtype=torch.int64)
        labels[:, T - L:] = key
        return PasskeyBatch(seq[:, :T].clone(), labels, key, key_chunk)


def _bytes(text: str) -> torch.Tensor:
    return torch.tensor([ord(ch) for ch in text], dtype=torch.int64)


def answer_metrics(logits: torch.Tensor, labels: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and accuracy on the answer tokens (labels != IGNORE).

    Args:
        logits: [B, T, V]; labels: [B, T] int64, IGNORE outside the answers.

    Returns:
        loss: [B] float32, mean cross-entropy over the row's answer tokens;
        accuracy: [B] float32, the fraction of them predicted (argmax) right.
        A row without answer tokens gets 0 for both.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"answer_metrics: expected logits [B, T, V] and labels [B, T] alike, "
                         f"got {list(logits.shape)} and {list(labels.shape)}")
    answer = labels != IGNORE
    count = answer.sum(1).clamp_min(1).float()
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp_min(0), reduction="none")
    loss = torch.where(answer, ce, 0.0).sum(1) / count
    right = (logits.argmax(-1) == labels) & answer
    return loss, right.sum(1).float() / count


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
