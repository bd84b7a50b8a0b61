"""What every task shares: the batch, the split seeding, the metrics, the spec and the checks.

A task is a `@dataclass` of plain parameters that also inherits `Task`. It writes a byte
stream of T + 1 tokens, `input_ids` is its first T and `labels[t]` is token t + 1 at the
answer positions, IGNORE elsewhere, so a model's loss on a batch is its loss on the answers.
Each sequence asks Q queries, each answered by A bytes.

Seeding: `task.sample(batch_size, split="test", index=i)` draws from a generator whose seed
is a hash of (task name, task.seed, split, i), so a batch is fixed by the task's parameters,
the split, the index and the batch size, and the three splits never share a stream. When a
task's answers have at least SPLIT_MIN_ANSWERS possible values, each answer also belongs to
exactly one split (`answer_split`, a hash of its bytes alone), and a split's streams hold
only its own answers: a test answer never occurs in a training stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F

IGNORE = -100
VOCAB_SIZE = 256
SPLITS = ("train", "val", "test")
# answer_split's buckets: of 10, 8 are train, 1 val, 1 test.
SPLIT_SHARES = (0.8, 0.1, 0.1)
SPLIT_MIN_ANSWERS = 1000
FILLER_KINDS = ("letters", "shared", "text")


class TaskBatch(NamedTuple):
    """One batch of a task, B rows of T tokens, Q queries of A answer bytes each.

    input_ids: [B, T] int64 bytes.
    labels: [B, T] int64: the next byte at the answer positions, IGNORE elsewhere.
    answers: [B, Q, A] int64: the answer bytes of each query.
    answer_pos: [B, Q, A] int64: the positions t with labels[b, t] == answers[b, q, a].
    fact_pos: [B, Q] int64: where the fact each query asks for starts in the stream.
    depth: [B, Q] float32: fact_pos / T.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    answers: torch.Tensor
    answer_pos: torch.Tensor
    fact_pos: torch.Tensor
    depth: torch.Tensor


class QueryScores(NamedTuple):
    """Scores per row of a batch (B rows, Q queries).

    loss: [B] float32, mean cross-entropy over the row's answer tokens.
    token_accuracy: [B] float32, the fraction of answer tokens predicted (argmax) right.
    query_correct: [B, Q] bool, every answer token of the query right.
    query_accuracy: [B] float32, the fraction of the row's queries answered right.
    """

    loss: torch.Tensor
    token_accuracy: torch.Tensor
    query_correct: torch.Tensor
    query_accuracy: torch.Tensor


def answer_metrics(logits: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
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


def query_metrics(logits: torch.Tensor, answers: torch.Tensor,
                  answer_pos: Optional[torch.Tensor] = None) -> QueryScores:
    """Loss, per-token accuracy and per-query accuracy (all of a query's bytes right).

    Args:
        logits: [B, T, V] with answer_pos, or [B, Q, A, V] already taken at the answer
            positions (as a streamed evaluation collects them, segment by segment).
        answers: [B, Q, A] int64, the batch's answers.
        answer_pos: [B, Q, A] int64, the batch's answer positions, or None.

    Returns:
        QueryScores(loss [B], token_accuracy [B], query_correct [B, Q], query_accuracy [B]).

    Example:
        >>> from memmodel.tasks import PasskeyTask, query_metrics
        >>> task = PasskeyTask(seq_len=64, chunk_size=16, key_len=2)
        >>> batch = task.sample(3, split="val")
        >>> scores = query_metrics(torch.zeros(3, 64, 256), batch.answers, batch.answer_pos)
        >>> scores.query_correct.shape
        torch.Size([3, 1])
    """
    if answers.dim() != 3:
        raise ValueError(f"query_metrics: expected answers [B, Q, A], got {list(answers.shape)}")
    if answer_pos is not None:
        if logits.dim() != 3 or answer_pos.shape != answers.shape or \
                logits.shape[0] != answers.shape[0]:
            raise ValueError(f"query_metrics: expected logits [B, T, V] and answers, answer_pos "
                             f"[B, Q, A] alike, got {list(logits.shape)}, "
                             f"{list(answers.shape)} and {list(answer_pos.shape)}")
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None, None]
        logits = logits[rows, answer_pos.to(logits.device)]
    elif logits.shape[:3] != answers.shape or logits.dim() != 4:
        raise ValueError(f"query_metrics: expected logits [B, Q, A, V] matching answers "
                         f"[B, Q, A], got {list(logits.shape)} and {list(answers.shape)}")
    answers = answers.to(logits.device)
    ce = F.cross_entropy(logits.float().flatten(0, 2), answers.flatten(), reduction="none")
    right = logits.argmax(-1) == answers
    correct = right.all(-1)
    return QueryScores(ce.view(answers.shape).mean((1, 2)), right.float().mean((1, 2)),
                       correct, correct.float().mean(1))


def split_seed(name: str, seed: int, split: str, index: int) -> int:
    """A 63-bit generator seed for batch `index` of `split`: a hash, stable across runs."""
    digest = hashlib.blake2b(f"{name}|{seed}|{split}|{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _mix32(h: torch.Tensor) -> torch.Tensor:
    # A 32-bit integer mixer kept in int64: every product stays below 2**63.
    h = h & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return h ^ (h >> 16)


def answer_split(strings: torch.Tensor) -> torch.Tensor:
    """The split (0 train, 1 val, 2 test) each answer belongs to: a hash of its bytes alone,
    the same in every task, seed and run.

    Args:
        strings: [..., L] int64 bytes.

    Returns:
        [...] int64; the buckets' shares are SPLIT_SHARES.
    """
    h = torch.full(strings.shape[:-1], 0x9E3779B9 ^ strings.shape[-1], dtype=torch.int64,
                   device=strings.device)
    for i in range(strings.shape[-1]):
        h = _mix32(h * 31 + strings[..., i] + 1)
    bucket = h % 10
    return (bucket >= 8).long() + (bucket >= 9).long()


class Task:
    """The interface every task dataclass inherits.

    A subclass sets `name` and `format`, defines `seq_len`, `depth` and `seed` fields, the
    properties `queries` (Q), `answer_length` (A), `answer_alphabet`, and `_draw(batch_size,
    generator, split)` returning a TaskBatch-like named tuple.
    """

    name: ClassVar[str] = ""
    format: ClassVar[str] = ""
    # How a task is scored: "answers" (every query's answer bytes; accuracy), "classes"
    # (one query of one byte that names a class: accuracy, macro precision / recall / F1,
    # the confusion matrix over `class_names`) or "lm" (every next byte: loss and bits per
    # byte; `evaluate_lm_stream`).
    scoring: ClassVar[str] = "answers"

    @property
    def class_names(self) -> Optional[list[str]]:
        """A name per class (per byte of answer_alphabet) for scoring "classes"; None
        otherwise."""
        return None

    @property
    def answer_space(self) -> int:
        """The number of possible answers of one query."""
        return len(self.answer_alphabet) ** self.answer_length

    @property
    def chance(self) -> float:
        """Per-query accuracy of guessing uniformly among the possible answers."""
        return 1.0 / self.answer_space

    @property
    def token_chance(self) -> float:
        """Per-token accuracy of guessing each answer byte uniformly."""
        return 1.0 / len(self.answer_alphabet)

    @property
    def answers_split(self) -> bool:
        """Whether each answer belongs to one split (the answer space is large enough)."""
        return self.answer_space >= SPLIT_MIN_ANSWERS

    def generator(self, split: str, index: int = 0) -> torch.Generator:
        """The generator of batch `index` of `split`."""
        return torch.Generator().manual_seed(split_seed(self.name, self.seed, split, index))

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None,
               split: Optional[str] = None, index: int = 0):
        """A batch of independent sequences.

        Args:
            batch_size: B.
            generator: draw from it; None: from the split's generator for `index` when a
                split is given, else from torch's global generator.
            split: "train", "val" or "test": the batch's answers (when `answers_split`) and
                its text filler come from that split only. None: any answer, the train text.
            index: the batch's number within the split (used without a generator).

        Returns:
            A TaskBatch (PasskeyTask: a PasskeyBatch, which has the same fields and more).
        """
        owner = type(self).__name__
        check_int(f"{owner}.sample", "batch_size", batch_size)
        if split is not None and split not in SPLITS:
            raise ValueError(f"{owner}.sample: expected split in {SPLITS} or None, got "
                             f"{split!r}")
        check_int(f"{owner}.sample", "index", index, minimum=0)
        if generator is None and split is not None:
            generator = self.generator(split, index)
        return self._draw(batch_size, generator, split)

    def batches(self, split: str, batch_size: int, count: Optional[int] = None,
                start: int = 0) -> Iterator:
        """Batches `start`, `start + 1`, ... of `split` (`count` of them; None: no end)."""
        index = start
        while count is None or index < start + count:
            yield self.sample(batch_size, split=split, index=index)
            index += 1

    def spec(self) -> dict[str, Any]:
        """The task as plain data: every parameter, plus what it implies (descriptive keys
        SPEC_KEYS, which `task_from_spec` checks but does not need)."""
        out = {"name": self.name, "format": self.format, "vocab_size": VOCAB_SIZE,
               "queries": self.queries, "answer_length": self.answer_length,
               "answer_alphabet": self.answer_alphabet, "chance": self.chance,
               "token_chance": self.token_chance, "answers_split": self.answers_split}
        out.update(dataclasses.asdict(self))
        return out

    def _draw(self, batch_size: int, generator: Optional[torch.Generator],
              split: Optional[str]):
        raise NotImplementedError


SPEC_KEYS = ("name", "format", "vocab_size", "queries", "answer_length", "answer_alphabet",
             "chance", "token_chance", "answers_split")


def make_batch(seq: torch.Tensor, answer_pos: torch.Tensor, fact_pos: torch.Tensor
               ) -> TaskBatch:
    """A TaskBatch from a stream of T + 1 tokens (seq [B, T + 1]) whose answers sit at
    seq[:, answer_pos + 1] (answer_pos [B, Q, A]); fact_pos [B, Q]."""
    B, T = seq.shape[0], seq.shape[1] - 1
    flat = answer_pos.reshape(B, -1)
    answers = seq.gather(1, flat + 1).view(answer_pos.shape)
    labels = torch.full((B, T), IGNORE, dtype=torch.int64)
    labels.scatter_(1, flat, answers.view(B, -1))
    return TaskBatch(seq[:, :T].clone(), labels, answers, answer_pos, fact_pos,
                     fact_pos.float() / T)


# ---------------------------------------------------------------- parameter checks

def check_int(owner: str, name: str, value, minimum: int = 1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        want = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}.{name}: expected {want}, got {value!r}")


def check_bytes(owner: str, name: str, value, one: bool = False):
    """A non-empty str of distinct bytes (code points < 256); one: a single byte."""
    if not isinstance(value, str) or not value or any(ord(ch) > 255 for ch in value):
        raise ValueError(f"{owner}.{name}: expected a non-empty string of bytes "
                         f"(code points < 256), got {value!r}")
    if one and len(value) != 1:
        raise ValueError(f"{owner}.{name}: expected one character, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{owner}.{name}: expected distinct bytes, got {value!r}")


def check_disjoint(owner: str, name: str, groups: dict[str, str]):
    """No byte in two of the groups (name: the parameter the message names)."""
    seen: dict[str, str] = {}
    for group, chars in groups.items():
        for ch in chars:
            if ch in seen and seen[ch] != group:
                listed = ", ".join(f"{g} {c!r}" for g, c in groups.items())
                raise ValueError(f"{owner}.{name}: expected no byte shared between {listed}; "
                                 f"{ch!r} is in both {seen[ch]} and {group}")
            seen[ch] = group


def check_choice(owner: str, name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{owner}.{name}: expected one of {list(choices)}, got {value!r}")


def check_depth(owner: str, value):
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                           and math.isfinite(value) and 0.0 <= value <= 1.0)
    if not ok:
        raise ValueError(f"{owner}.depth: expected None (uniform) or a number in [0, 1], got "
                         f"{value!r}")


def check_space(owner: str, name: str, alphabet: str, length: int, need: int):
    """alphabet ** length strings: at least `need`, and few enough to number in int64."""
    space = len(alphabet) ** length
    if space > 2 ** 62:
        raise ValueError(f"{owner}.{name}: expected at most 2**62 possible strings, got "
                         f"{len(alphabet)}**{length}")
    if space < need:
        raise ValueError(f"{owner}.{name}: expected at least {need} distinct strings of "
                         f"{length} byte(s) from {alphabet!r}, got {space}")
