"""Streamed evaluation of a MemoryLM on a task at any length.

    from memmodel.evaluation import evaluate_stream
    from memmodel.tasks import build_task

    result = evaluate_stream(model, build_task("passkey"), seq_len=1 << 20, n=64)
    print(result.accuracy, result.ci_low, result.ci_high)

Each batch of sequences is generated once ([B, T] int64: 8 MB per row at T = 1M) and fed
to the model in segments of `segment` tokens with its MemoryState carried, under
`torch.no_grad()`. Of each segment's logits only those at the batch's answer positions
are kept, so what is held besides the token ids is [B, Q, A, V] logits and the carried
state: memory stays bounded in T. The kept logits are then scored by `query_metrics`, the
same as one forward pass over the whole sequence would be (up to float tolerance).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .metrics import Z_95, classification_metrics, wilson_interval  # noqa: F401 (re-exported)
from .model import MemoryLM
from .state import MemoryState
from .tasks import Task, query_metrics

log = logging.getLogger("memmodel.evaluation")

def depth_histogram(depth: torch.Tensor, correct: torch.Tensor, bins: int = 5
                    ) -> list[dict[str, float]]:
    """Accuracy by depth over `bins` equal bins of [0, 1].

    Args:
        depth: [N] (or any shape) float, each query's fact depth in [0, 1].
        correct: bool, the same shape: whether the query was answered.
        bins: number of bins; bin i is [i / bins, (i + 1) / bins), the last one closed.

    Returns:
        One dict per bin: lo, hi, n (queries in it), correct, accuracy (None when n = 0).
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"depth_histogram: expected a positive int of bins, got {bins!r}")
    if depth.shape != correct.shape:
        raise ValueError(f"depth_histogram: expected depth and correct of one shape, got "
                         f"{list(depth.shape)} and {list(correct.shape)}")
    idx = (depth.flatten().double() * bins).floor().long().clamp(0, bins - 1)
    n = torch.bincount(idx, minlength=bins)
    k = torch.bincount(idx, weights=correct.flatten().double(), minlength=bins)
    return [{"lo": i / bins, "hi": (i + 1) / bins, "n": int(n[i]), "correct": int(k[i]),
             "accuracy": float(k[i] / n[i]) if n[i] else None} for i in range(bins)]


def rss_peak_mb() -> float:
    """The process's peak resident set size so far, in MB (`ru_maxrss`: KB on Linux,
    bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1024


def _device(model: MemoryLM) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stream_answer_logits(model: MemoryLM, input_ids: torch.Tensor, answer_pos: torch.Tensor,
                         segment: int = 4096, state: Optional[MemoryState] = None,
                         progress=None) -> tuple[torch.Tensor, MemoryState, float]:
    """Feed `input_ids` to the model in segments and keep the logits at `answer_pos` only.

    The caller sets the model's mode (`evaluate_stream` puts it in eval mode).

    Args:
        model: a MemoryLM.
        input_ids: [B, T] int64 token ids (on any device; each segment is moved to the
            model's).
        answer_pos: [B, Q, A] int64 positions in [0, T) whose logits are kept.
        segment: tokens per forward call (the last call may be shorter).
        state: the state to continue (None: a fresh stream).
        progress: a tqdm bar advanced once per segment, or None.

    Returns:
        (logits [B, Q, A, V] float32 on the model's device, the state after the T tokens,
        seconds spent in the forward calls).
    """
    if not isinstance(segment, int) or isinstance(segment, bool) or segment < 1:
        raise ValueError(f"stream_answer_logits: expected a positive int segment, got "
                         f"{segment!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"stream_answer_logits: expected input_ids [B, T], got "
                         f"{list(input_ids.shape)}")
    B, T = input_ids.shape
    if answer_pos.dim() != 3 or answer_pos.shape[0] != B:
        raise ValueError(f"stream_answer_logits: expected answer_pos [B={B}, Q, A], got "
                         f"{list(answer_pos.shape)}")
    if answer_pos.numel() and (int(answer_pos.min()) < 0 or int(answer_pos.max()) >= T):
        raise ValueError(f"stream_answer_logits: expected answer positions in [0, {T}), got "
                         f"[{int(answer_pos.min())}, {int(answer_pos.max())}]")
    device = _device(model)
    V = model.config.vocab_size
    kept = torch.full((*answer_pos.shape, V), math.nan, device=device)
    pos = answer_pos.to(device)
    seconds = 0.0
    for s in range(0, T, segment):
        e = min(s + segment, T)
        ids = input_ids[:, s:e].to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        out = model(ids, state=state)
        _sync(device)
        seconds += time.perf_counter() - t0
        state = out.state
        here = (pos >= s) & (pos < e)
        if bool(here.any()):
            b, q, a = here.nonzero(as_tuple=True)
            kept[b, q, a] = out.logits[b, pos[b, q, a] - s].float()
        del out
        if progress is not None:
            progress.update(1)
    return kept, state, seconds


@dataclass
class StreamResult:
    """What `evaluate_stream` measured; `to_dict()` gives plain fields (JSON as is).

    Attributes:
        task: the task's name; seq_len: T; segment: tokens per forward call.
        sequences: streams evaluated; n: queries scored (sequences x Q).
        accuracy: fraction of queries with every answer byte right (argmax), with its 95%
            Wilson interval ci_low, ci_high.
        token_accuracy: fraction of answer bytes right; answer_loss: their mean
            cross-entropy (nats).
        chance: the task's per-query chance (`task.chance`).
        depth_bins: accuracy by fact depth (`depth_histogram`).
        entries: live long-term-memory entries per sequence at the end of the stream, the
            mean over the layers' banks (0 without long-term memory).
        state_bytes: bytes of the carried state per sequence at the end.
        tokens_per_s: tokens over the wall time of the forward calls; seconds: that time.
        peak_rss_mb: the process's peak RSS at the end (a process-wide peak: it includes
            whatever ran before); rss_increase_mb: how much that peak rose during the call.
        macro_precision, macro_recall, macro_f1, f1_low, f1_high, confusion, class_names:
            for a task scored as classes (`task.scoring == "classes"`: one answer byte
            naming a class), the prediction being the argmax byte at the answer position:
            `memmodel.metrics.classification_metrics` over the task's classes (f1_low,
            f1_high: the bootstrap 95% interval; confusion: rows true, columns predicted);
            None for other tasks.
    """

    task: str
    seq_len: int
    segment: int
    sequences: int
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    token_accuracy: float
    answer_loss: float
    chance: float
    depth_bins: list[dict[str, Any]] = field(default_factory=list)
    entries: float = 0.0
    state_bytes: float = 0.0
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    rss_increase_mb: float = 0.0
    macro_precision: Optional[float] = None
    macro_recall: Optional[float] = None
    macro_f1: Optional[float] = None
    f1_low: Optional[float] = None
    f1_high: Optional[float] = None
    confusion: Optional[list[list[int]]] = None
    class_names: Optional[list[str]] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def live_entries(state: MemoryState) -> torch.Tensor:
    """[B] float: live long-term-memory entries of each row, the mean over the layers
    that have a bank (zeros when none has)."""
    banks = [layer.ltm.live.sum(1).double() for layer in state.layers if layer.ltm is not None]
    if not banks:
        rows = (state.signature or {}).get("batch_size", 0)
        return torch.zeros(rows, dtype=torch.float64)
    return torch.stack(banks).mean(0)


def evaluate_stream(model: MemoryLM, task: Task, seq_len: Optional[int] = None, n: int = 64,
                    batch_size: int = 8, segment: int = 4096, split: str = "test",
                    start_index: int = 0, depth_bins: int = 5, progress: bool = True
                    ) -> StreamResult:
    """Evaluate `model` on `n` sequences of `task` at length `seq_len`, streamed.

    Batch i (i = 0, 1, ...) is `task.sample(b, split=split, index=start_index + i)` with
    b = batch_size (the last one: what is left of n), so a result is fixed by the task,
    the split, n, batch_size and start_index. The model runs in eval mode (the controllers
    greedy) without gradients, in segments of `segment` tokens with the state carried;
    its mode is restored afterwards.

    Args:
        model: a MemoryLM.
        task: any `memmodel.tasks` task.
        seq_len: T; None: task.seq_len (otherwise the task with seq_len replaced).
        n: sequences.
        batch_size: sequences per batch.
        segment: tokens per forward call; does not change the result beyond float
            tolerance.
        split: "train", "val" or "test".
        start_index: index of the first batch in the split.
        depth_bins: bins of accuracy by depth over [0, 1].
        progress: show a tqdm bar over the segments.

    Returns:
        A StreamResult.

    Example:
        >>> model = MemoryLM(MemoryConfig(d_model=32, n_layers=1, backend="torch"))
        >>> r = evaluate_stream(model, PasskeyTask(seq_len=256), n=4, progress=False)
        >>> r.n, r.seq_len
        (4, 256)
    """
    for name, value in (("n", n), ("batch_size", batch_size), ("segment", segment)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"evaluate_stream: expected a positive int {name}, got {value!r}")
    if getattr(task, "scoring", "answers") == "lm":
        raise ValueError(f"evaluate_stream: task {task.name!r} scores every byte (scoring "
                         f"'lm'); evaluate it with evaluate_lm_stream")
    if seq_len is not None and seq_len != task.seq_len:
        task = dataclasses.replace(task, seq_len=seq_len)
    T = task.seq_len
    classes = getattr(task, "scoring", "answers") == "classes"
    truth, guess = [], []
    rss0 = rss_peak_mb()
    was_training = model.training
    model.eval()
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    from tqdm.auto import tqdm  # here, so that importing the module needs no tqdm

    bar = tqdm(total=len(sizes) * math.ceil(T / segment), unit="seg", disable=not progress,
               desc=f"{task.name} T={T}")
    loss_sum = tok_sum = entries = state_bytes = seconds = 0.0
    correct, depth = [], []
    try:
        for i, b in enumerate(sizes):
            batch = task.sample(b, split=split, index=start_index + i)
            logits, state, secs = stream_answer_logits(model, batch.input_ids,
                                                       batch.answer_pos, segment,
                                                       progress=bar)
            scores = query_metrics(logits, batch.answers)
            if classes:
                truth.append(batch.answers[:, 0, 0].cpu())
                guess.append(logits[:, 0, 0].argmax(-1).cpu())
            loss_sum += scores.loss.sum().item()
            tok_sum += scores.token_accuracy.sum().item()
            correct.append(scores.query_correct.cpu())
            depth.append(batch.depth.cpu())
            entries += live_entries(state).sum().item()
            state_bytes += state.nbytes()
            seconds += secs
            del logits, state
    finally:
        bar.close()
        model.train(was_training)
    correct_all, depth_all = torch.cat(correct), torch.cat(depth)
    k, q = int(correct_all.sum()), correct_all.numel()
    lo, hi = wilson_interval(k, q)
    peak = rss_peak_mb()
    result = StreamResult(
        task=task.name, seq_len=T, segment=segment, sequences=n, n=q, accuracy=k / q,
        ci_low=lo, ci_high=hi, token_accuracy=tok_sum / n, answer_loss=loss_sum / n,
        chance=task.chance, depth_bins=depth_histogram(depth_all, correct_all, depth_bins),
        entries=entries / n, state_bytes=state_bytes / n,
        tokens_per_s=n * T / seconds if seconds > 0 else math.inf, seconds=seconds,
        peak_rss_mb=peak, rss_increase_mb=peak - rss0)
    if classes:
        report = classification_metrics(torch.cat(truth), torch.cat(guess),
                                        labels=[ord(c) for c in task.answer_alphabet],
                                        names=task.class_names)
        result = dataclasses.replace(
            result, macro_precision=report.precision, macro_recall=report.recall,
            macro_f1=report.f1, f1_low=report.f1_low, f1_high=report.f1_high,
            confusion=report.confusion, class_names=report.names)
    log.info("%s T=%d: accuracy %.3f [%.3f, %.3f] (n=%d), loss %.3f, %.0f tokens/s",
             task.name, T, result.accuracy, lo, hi, q, result.answer_loss,
             result.tokens_per_s)
    return result


@dataclass
class LMResult:
    """What `evaluate_lm_stream` measured; `to_dict()` gives plain fields.

    Attributes:
        task, seq_len, segment, sequences: as in StreamResult; tokens: bytes scored.
        loss: mean cross-entropy per byte (nats) over every position; bpb: in bits
            (loss / ln 2), with bpb_low, bpb_high: the normal 95% interval over the
            sequences' own bits per byte.
        byte_accuracy: the fraction of next bytes predicted (argmax) right.
        bins: bits per byte by position, one dict per [lo, hi) of `edges`: lo, hi, tokens,
            bpb, bpb_low, bpb_high (the interval over sequences, as above).
        entries, state_bytes, tokens_per_s, seconds, peak_rss_mb: as in StreamResult.
    """

    task: str
    seq_len: int
    segment: int
    sequences: int
    tokens: int
    loss: float
    bpb: float
    bpb_low: float
    bpb_high: float
    byte_accuracy: float
    bins: list[dict[str, Any]] = field(default_factory=list)
    entries: float = 0.0
    state_bytes: float = 0.0
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def evaluate_lm_stream(model: MemoryLM, task: Task, seq_len: Optional[int] = None,
                       n: int = 8, batch_size: int = 8, segment: int = 4096,
                       split: str = "test", start_index: int = 0,
                       edges: Optional[list[int]] = None, progress: bool = True) -> LMResult:
    """Bits per byte of `model` on `n` sequences of a language-modelling task (every next
    byte a label: `task.scoring == "lm"`, e.g. corpus_lm), streamed in segments with the
    state carried; each segment's loss is reduced at once, so nothing of full length but
    the token ids is held.

    Args:
        model, task, seq_len, n, batch_size, segment, split, start_index, progress: as in
            `evaluate_stream`.
        edges: position boundaries of the `bins` (None: 0, then powers of 4 from 1024 up
            to T, and T), e.g. [0, 1024, T] separates the training length from beyond.

    Returns:
        An LMResult.

    Example:
        >>> r = evaluate_lm_stream(model, CorpusLMTask(seq_len=2048), n=2, progress=False)
        >>> r.tokens
        4096
    """
    from .metrics import bits_per_byte, mean_interval

    for name, value in (("n", n), ("batch_size", batch_size), ("segment", segment)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"evaluate_lm_stream: expected a positive int {name}, got "
                             f"{value!r}")
    if getattr(task, "scoring", "answers") != "lm":
        raise ValueError(f"evaluate_lm_stream: expected a task with scoring 'lm', got "
                         f"{task.name!r} ({getattr(task, 'scoring', 'answers')!r})")
    if seq_len is not None and seq_len != task.seq_len:
        task = dataclasses.replace(task, seq_len=seq_len)
    T = task.seq_len
    if edges is None:
        edges, e = [0], 1024
        while e < T:
            edges.append(e)
            e *= 4
        edges.append(T)
    if sorted(set(edges)) != list(edges) or edges[0] != 0 or edges[-1] != T:
        raise ValueError(f"evaluate_lm_stream: expected increasing edges from 0 to T={T}, "
                         f"got {edges}")
    bounds = torch.tensor(edges[1:-1], dtype=torch.int64)
    nb = len(edges) - 1
    was_training = model.training
    model.eval()
    device = _device(model)
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sizes) * math.ceil(T / segment), unit="seg", disable=not progress,
               desc=f"{task.name} T={T}")
    per_seq = []  # [rows, bins] nats summed, one tensor per batch
    right = entries = state_bytes = seconds = 0.0
    try:
        for i, b in enumerate(sizes):
            batch = task.sample(b, split=split, index=start_index + i)
            nats = torch.zeros(b, nb, dtype=torch.float64)
            state = None
            for s in range(0, T, segment):
                e = min(s + segment, T)
                ids = batch.input_ids[:, s:e].to(device)
                _sync(device)
                t0 = time.perf_counter()
                out = model(ids, state=state)
                _sync(device)
                seconds += time.perf_counter() - t0
                state = out.state
                target = batch.labels[:, s:e].to(device)
                ce = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2),
                                                       target, reduction="none")
                right += (out.logits.argmax(-1) == target).sum().item()
                which = torch.bucketize(torch.arange(s, e), bounds, right=True)
                nats.index_add_(1, which, ce.double().cpu())
                del out
                bar.update(1)
            per_seq.append(nats)
            entries += live_entries(state).sum().item()
            state_bytes += state.nbytes()
    finally:
        bar.close()
        model.train(was_training)
    nats = torch.cat(per_seq)  # [n, bins]
    width = torch.tensor([hi - lo for lo, hi in zip(edges[:-1], edges[1:])],
                         dtype=torch.float64)
    seq_bpb = (nats.sum(1) / T / math.log(2)).tolist()
    bpb, lo, hi = mean_interval(seq_bpb)
    bins = []
    for j in range(nb):
        m, blo, bhi = mean_interval((nats[:, j] / width[j] / math.log(2)).tolist())
        bins.append({"lo": edges[j], "hi": edges[j + 1], "tokens": int(width[j]) * n,
                     "bpb": m, "bpb_low": blo, "bpb_high": bhi})
    loss = float(nats.sum() / (n * T))
    assert abs(bits_per_byte(loss) - bpb) < 1e-6
    result = LMResult(task=task.name, seq_len=T, segment=segment, sequences=n, tokens=n * T,
                      loss=loss, bpb=bpb, bpb_low=lo, bpb_high=hi,
                      byte_accuracy=right / (n * T), bins=bins, entries=entries / n,
                      state_bytes=state_bytes / n,
                      tokens_per_s=n * T / seconds if seconds > 0 else math.inf,
                      seconds=seconds, peak_rss_mb=rss_peak_mb())
    log.info("%s T=%d: %.3f bits per byte [%.3f, %.3f] (n=%d), %.0f tokens/s", task.name, T,
             bpb, lo, hi, n, result.tokens_per_s)
    return result
