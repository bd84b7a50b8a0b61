"""Long-sequence throughput: every memory variant beside SSM only and an SDPA Transformer.

    python benchmarks/bench_throughput.py --out results/throughput          # CPU sizes
    python benchmarks/bench_throughput.py --variants ssm,full,transformer --lengths 1K,4K \
        --modes infer --repeats 1                                           # a quick look
    python benchmarks/bench_throughput.py --gpu --out results/throughput_gpu   # GPU sizes

Models. Each variant of `memmodel.training.ablation` (ssm, wm, fifo, importance,
store_all, qlearning, full), built by `AblationSpec.config` from one spec (its working-
and long-term-memory settings, the width and depth below), and `transformer`: a
pre-norm causal Transformer of the same width and depth (multi-head attention through
`F.scaled_dot_product_attention`, a 4x GELU MLP, the same tied byte embedding); the
parameter counts are printed and saved. CPU sizes by default (B=2, d_model 128, 2 layers,
segments of 4096); `--gpu`: d_model 1024 (E 2048, N 16), 8 heads (the memories' and the
Transformer's).

Modes, for T in --lengths (default 1K, 4K, 16K, 64K, 128K, 512K, 1M):
  infer  streamed inference: T tokens fed in segments of --segment tokens under no_grad,
         the state carried (the Transformer's state is its key/value cache, so a segment
         attends to every earlier token). Tokens are drawn per segment from a seeded
         generator, so nothing of length T is held but what the model carries.
  train  forward + backward over each segment (loss on the next byte), the state carried
         and detached between segments (truncated backpropagation; the Transformer's
         cache is detached likewise). No optimiser step. Controllers run greedy.
  loop   `memmodel.training.memory.train_memory` (passkey batches of --loop-batch x
         --loop-len) against a bare forward + backward step of the same model on batches
         of the same shape, for the variants asked (ssm and full by default).

Each (mode, variant, T) case is timed --repeats times (the median is reported; lengths of
--long-from and more are timed --long-repeats times) after a warm-up segment, and its
peak memory taken: the process's peak RSS during the case (reset before each case
through /proc/self/clear_refs) on a CPU, `torch.cuda.max_memory_allocated` on a GPU.
Lengths are skipped when the case's time projected from the previous lengths exceeds
--max-case-seconds (the Transformer grows as T squared; store_all's bank grows with T),
and the table says where and why. Ratios against ssm and transformer are taken within
this run.

Written to --out: throughput.json (every case, the ratios, the targets, the machine),
throughput.md (the tables) and throughput.png (time per token against T, log-log; needs
matplotlib, the `plot` extra).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import harness
import torch
import torch.nn as nn
import torch.nn.functional as F

from memmodel.model import MemoryLM, RMSNorm
from memmodel.plotting import pyplot
from memmodel.training.ablation import VARIANTS, AblationSpec

log = logging.getLogger("bench_throughput")

ALL_VARIANTS = (*VARIANTS, "transformer")
BOUNDED = ("ssm", "wm", "fifo", "importance", "qlearning", "full")  # constant carried state
DEFAULT_LENGTHS = "1K,4K,16K,64K,128K,512K,1M"
MODES = ("infer", "train", "loop")


# ----------------------------------------------------------------------------- models

class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a key/value cache carried across segments.

    Args:
        d_model: width D; heads: H (H divides D).
        query_block: queries per SDPA call when a cache is present (the mask of a call is
            [query_block, cache + segment] booleans).
    """

    def __init__(self, d_model: int, heads: int, query_block: int = 512):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"heads: expected a divisor of d_model={d_model}, got {heads}")
        self.heads, self.query_block = heads, query_block
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: Optional[list]) -> torch.Tensor:
        B, L, D = x.shape
        H = self.heads
        q, k, v = self.qkv(x).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)  # [B, H, L, Dh]
        if cache is not None and cache[0] is not None:
            k = torch.cat([cache[0], k], 2)
            v = torch.cat([cache[1], v], 2)
        if cache is not None:
            cache[0], cache[1] = k.detach(), v.detach()
        S = k.shape[2]
        past = S - L
        if past == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # lower-right causal: query i sees keys j <= past + i, a block of queries a call
            outs = []
            for a in range(0, L, self.query_block):
                b = min(L, a + self.query_block)
                keys = past + b
                i = torch.arange(past + a, past + b, device=x.device)[:, None]
                mask = torch.arange(keys, device=x.device)[None, :] <= i
                outs.append(F.scaled_dot_product_attention(
                    q[:, :, a:b], k[:, :, :keys], v[:, :, :keys], attn_mask=mask))
            o = torch.cat(outs, 2)
        return self.out(o.transpose(1, 2).reshape(B, L, D))


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(d_model), RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model, bias=False), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model, bias=False))

    def forward(self, x, cache):
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    """A byte-level causal Transformer: embedding, pre-norm blocks, final norm, tied head.

    `forward(ids, labels=None, state=None)` returns (logits, loss or None, state), the state
    being the per-layer [key, value] caches ([B, H, T_seen, Dh] each; None: a fresh stream).
    """

    def __init__(self, vocab_size: int = 256, d_model: int = 128, n_layers: int = 2,
                 heads: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList([TransformerBlock(d_model, heads) for _ in range(n_layers)])
        self.norm_f = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, input_ids, labels=None, state=None):
        if state is None:
            state = [[None, None] for _ in self.layers]
        h = self.embedding(input_ids)
        for layer, cache in zip(self.layers, state):
            h = layer(h, cache)
        logits = self.lm_head(self.norm_f(h))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return logits, loss, state


@dataclass
class Sizes:
    """The benchmark's sizes (CPU by default; `gpu()` for the GPU ones)."""

    batch: int = 2
    d_model: int = 128
    n_layers: int = 2
    d_state: int = 16
    expand: int = 2
    heads: Optional[int] = None  # of the memories and the Transformer; None: the spec's / 4
    segment: int = 4096
    ltm_chunk_size: Optional[int] = None  # tokens a long-term-memory entry; None: the spec's

    @classmethod
    def gpu(cls) -> Sizes:
        return cls(batch=2, d_model=1024, n_layers=2, d_state=16, expand=2, heads=8)


def spec_for(sizes: Sizes) -> AblationSpec:
    """The ablation spec every variant is built from, at these sizes."""
    spec = AblationSpec()
    model = dict(spec.model, d_model=sizes.d_model, n_layers=sizes.n_layers,
                 d_state=sizes.d_state, expand=sizes.expand)
    wm, ltm = dict(spec.wm), dict(spec.ltm)
    if sizes.heads is not None:
        wm["wm_heads"] = ltm["ltm_heads"] = sizes.heads
    tasks = spec.train_tasks
    if sizes.ltm_chunk_size is not None:
        ltm["ltm_chunk_size"] = sizes.ltm_chunk_size
        # the spec asks its training tasks to overflow the bank; none is trained here, so
        # they are only lengthened with the chunk to keep that check's meaning
        grow = max(1, -(-sizes.ltm_chunk_size // spec.ltm["ltm_chunk_size"]))
        tasks = [dict(t, seq_len=t["seq_len"] * grow) for t in tasks]
    return AblationSpec(model=model, wm=wm, ltm=ltm, train_tasks=tasks)


def build(variant: str, sizes: Sizes, device) -> nn.Module:
    """The model of `variant` (seed 0) on `device`, in eval mode."""
    torch.manual_seed(0)
    if variant == "transformer":
        heads = sizes.heads if sizes.heads is not None else max(1, sizes.d_model // 32)
        model = TransformerLM(d_model=sizes.d_model, n_layers=sizes.n_layers, heads=heads)
    else:
        model = MemoryLM(spec_for(sizes).config(variant))
    return model.to(device).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _call(model, ids, labels=None, state=None):
    """(logits, loss, state) of either model kind."""
    if isinstance(model, MemoryLM):
        out = model(ids, labels=labels, state=state)
        return out.logits, out.loss, out.state
    return model(ids, labels=labels, state=state)


def _detach(state):
    if state is None:
        return None
    if isinstance(state, list):  # the Transformer's caches are stored detached
        return state
    return state.detach()


def _controllers_greedy(model):
    """Learning controllers stop exploring and recording (their per-stream record would
    grow with T): every controller decides greedily in both modes."""
    for m in model.modules():
        if m is not model and hasattr(m, "epsilon") and isinstance(m, nn.Module):
            m.eval()


# ----------------------------------------------------------------------------- memory

class PeakMemory:
    """The peak memory of a stretch of code: RSS on a CPU (the kernel's high-water mark,
    reset by writing 5 to /proc/self/clear_refs), max_memory_allocated on a GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.can_reset = device.type == "cuda" or _can_reset_rss()

    def reset(self) -> float:
        """Reset the peak; returns the current value in MB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        if self.can_reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return _status_mb("VmRSS")

    def peak(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _status_mb("VmHWM")


def _status_mb(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _can_reset_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- cases

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _segment_ids(sizes: Sizes, index: int, length: int, device, vocab: int = 256):
    """The tokens of segment `index` (and its next-byte labels), drawn from a generator
    seeded by the index: the same stream for every model."""
    g = torch.Generator().manual_seed(1_000_003 * (index + 1))
    ids = torch.randint(0, vocab, (sizes.batch, length + 1), generator=g)
    return ids[:, :-1].to(device), ids[:, 1:].to(device)


def stream(model, sizes: Sizes, T: int, device, train: bool, progress=None) -> float:
    """Feed T tokens per row in segments; returns the seconds spent in the model."""
    state, seconds = None, 0.0
    for i, s in enumerate(range(0, T, sizes.segment)):
        L = min(sizes.segment, T - s)
        ids, labels = _segment_ids(sizes, i, L, device)
        _sync(device)
        t0 = time.perf_counter()
        if train:
            _, loss, state = _call(model, ids, labels=labels, state=state)
            loss.backward()
            state = _detach(state)
        else:
            with torch.no_grad():
                logits, _, state = _call(model, ids, state=state)
            del logits
        _sync(device)
        seconds += time.perf_counter() - t0
        if progress is not None:
            progress.update(L)
    if train:
        model.zero_grad(set_to_none=True)
    return seconds


@dataclass
class Case:
    mode: str
    variant: str
    T: int
    times: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    rise_mb: list[float] = field(default_factory=list)
    skipped: Optional[str] = None

    @property
    def seconds(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None

    def row(self, batch: int) -> dict[str, Any]:
        s = self.seconds
        return dict(mode=self.mode, variant=self.variant, T=self.T, batch=batch,
                    repeats=len(self.times), seconds=s, times=self.times,
                    tokens_per_s=batch * self.T / s if s else None,
                    us_per_token=1e6 * s / (batch * self.T) if s else None,
                    peak_mb=max(self.peak_mb) if self.peak_mb else None,
                    rise_mb=max(self.rise_mb) if self.rise_mb else None,
                    skipped=self.skipped)


def project(done: list[Case], T: int, exponent_floor: float = 1.0) -> Optional[float]:
    """Seconds projected for length T from the last two timed lengths (the measured growth
    exponent, at least exponent_floor), or from the last one at exponent_floor."""
    timed = [c for c in done if c.times]
    if not timed:
        return None
    last = timed[-1]
    p = exponent_floor
    if len(timed) >= 2:
        prev = timed[-2]
        if last.T > prev.T and prev.seconds > 0:
            p = max(p, math.log(last.seconds / prev.seconds) / math.log(last.T / prev.T))
    return last.seconds * (T / last.T) ** p


def run_mode(mode: str, variants: list[str], lengths: list[int], sizes: Sizes, device,
             args, cases: list[Case], params: dict[str, int], on_case=None):
    """Every (variant, T) case of `mode` ("infer" or "train"), appended to `cases`;
    on_case() is called after each (the results so far are written there)."""
    from tqdm.auto import tqdm

    meter = PeakMemory(device)
    train = mode == "train"
    for variant in variants:
        model = build(variant, sizes, device)
        params[variant] = n_params(model)
        model.train(train)
        _controllers_greedy(model)
        stream(model, sizes, min(lengths[0], sizes.segment), device, train)  # warm-up
        done: list[Case] = []
        for T in lengths:
            case = Case(mode, variant, T)
            cases.append(case)
            limit = args.max_length.get(variant)
            guess = project(done, T, 2.0 if variant == "transformer" else 1.0)
            if limit is not None and T > limit:
                case.skipped = f"above --max-length {variant}={limit}"
            elif train and T > args.train_max:
                case.skipped = f"above --train-max {args.train_max}"
            elif variant not in BOUNDED and T >= args.long_from and not args.long_unbounded:
                case.skipped = "unbounded state: long lengths run for bounded variants only"
            elif guess is not None and guess > args.max_case_seconds:
                case.skipped = (f"projected {guess:.0f} s a run > --max-case-seconds "
                                f"{args.max_case_seconds:.0f}")
            if case.skipped:
                log.info("%s %s T=%d skipped: %s", mode, variant, T, case.skipped)
                continue
            repeats = args.long_repeats if T >= args.long_from else args.repeats
            bar = tqdm(total=repeats * sizes.batch * T, unit="tok", unit_scale=True,
                       desc=f"{mode} {variant} T={T}", disable=not args.progress, leave=False)
            for _ in range(repeats):
                gc.collect()
                base = meter.reset()
                case.times.append(stream(model, sizes, T, device, train, progress=bar))
                case.peak_mb.append(meter.peak())
                case.rise_mb.append(case.peak_mb[-1] - base)
            bar.close()
            done.append(case)
            r = case.row(sizes.batch)
            log.info("%s %-11s T=%8d  %9.0f tok/s  peak %7.1f MB (+%.1f)", mode, variant, T,
                     r["tokens_per_s"], r["peak_mb"], r["rise_mb"])
            if on_case is not None:
                on_case()
        del model
        gc.collect()


def bare_step(model, ids, labels):
    """A bare training step's model work: forward with the loss, backward."""
    model.train()
    out = model(ids, labels=labels)
    out.loss.backward()
    model.zero_grad(set_to_none=True)


def run_loop(variants: list[str], sizes: Sizes, device, args, rows: list[dict[str, Any]],
             on_case=None):
    """train_memory against a bare forward + backward step of the same model, per variant
    (appended to `rows`)."""
    from memmodel.tasks import PasskeyTask
    from memmodel.training.memory import MemoryTrainConfig, train_memory

    B, T = args.loop_batch, args.loop_len
    for variant in variants:
        if variant == "transformer":
            continue
        model = build(variant, sizes, device)
        task = PasskeyTask(seq_len=T, chunk_size=model.config.ltm_chunk_size)
        tc = MemoryTrainConfig(steps=args.loop_steps, batch_size=B, lr=1e-3, eval_batches=1,
                               log_every=10**9, q_updates=4, seed=0, split="train")
        batch = task.sample(B, torch.Generator().manual_seed(0), split="train")
        ids, labels = batch.input_ids.to(device), batch.labels.to(device)

        bare_step(model, ids, labels)  # warm-up
        train_memory(model, task, MemoryTrainConfig(**{**tc.__dict__, "steps": 1}))
        loop_s, bare_s = [], []
        for _ in range(args.repeats):  # alternating, so both see the same load
            t0 = time.perf_counter()
            for _ in range(args.loop_steps):
                bare_step(model, ids, labels)
            _sync(device)
            bare_s.append(time.perf_counter() - t0)
            res = train_memory(model, task, tc)
            loop_s.append(res.seconds)
        tokens = args.loop_steps * B * T
        bare_tps = tokens / statistics.median(bare_s)
        loop_tps = tokens / statistics.median(loop_s)
        rows.append(dict(mode="loop", variant=variant, batch=B, T=T, steps=args.loop_steps,
                         bare_seconds=bare_s, loop_seconds=loop_s, bare_tokens_per_s=bare_tps,
                         loop_tokens_per_s=loop_tps, ratio=loop_tps / bare_tps))
        log.info("loop %-11s train_memory %8.0f tok/s, bare step %8.0f tok/s: %.2fx", variant,
                 loop_tps, bare_tps, loop_tps / bare_tps)
        if on_case is not None:
            on_case()
        del model


# ----------------------------------------------------------------------------- report

def parse_lengths(text: str) -> list[int]:
    """`harness.parse_lengths`, sorted and without repeats."""
    return sorted(set(harness.parse_lengths(text)))


def parse_names(text: str, allowed, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--{what}: expected names from {list(allowed)}, got "
                                         f"{bad or text!r}")
    return names


def parse_limits(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in ALL_VARIANTS or not value:
            raise argparse.ArgumentTypeError(f"--max-length: expected variant=length pairs "
                                             f"(variants {list(ALL_VARIANTS)}), got {part!r}")
        out[name] = harness.parse_length(value)
    return out


def fmt_len(T: int) -> str:
    if T % (1 << 20) == 0:
        return f"{T >> 20}M"
    return f"{T >> 10}K" if T % 1024 == 0 else str(T)


def ratios(rows: list[dict[str, Any]]) -> None:
    """Add vs_ssm and vs_transformer (tokens/s ratios at the same mode and T) to the rows."""
    index = {(r["mode"], r["variant"], r["T"]): r for r in rows}
    for r in rows:
        for ref in ("ssm", "transformer"):
            other = index.get((r["mode"], ref, r["T"]))
            ok = other and other["tokens_per_s"] and r["tokens_per_s"]
            r[f"vs_{ref}"] = r["tokens_per_s"] / other["tokens_per_s"] if ok else None


def targets(rows: list[dict[str, Any]], loop_rows: list[dict[str, Any]]) -> list[dict]:
    """The issue's targets, each met / missed / not measured with its figures."""
    index = {(r["mode"], r["variant"], r["T"]): r for r in rows}
    tps = lambda v, T, mode="infer": (index.get((mode, v, T)) or {}).get("tokens_per_s")
    peak = lambda v, T: (index.get(("infer", v, T)) or {}).get("peak_mb")
    out = []

    def add(name, value, goal, ok, detail):
        out.append(dict(target=name, value=value, goal=goal,
                        status="not measured" if ok is None else ("met" if ok else "missed"),
                        detail=detail))

    K = 1024
    for v in BOUNDED:
        a, b = tps(v, 128 * K), tps(v, 4 * K)
        add(f"{v}: tokens/s at 128K / at 4K", a / b if a and b else None, ">= 0.95",
            (a / b >= 0.95) if a and b else None,
            f"{a:.0f} / {b:.0f}" if a and b else "")
        m1, m64 = peak(v, 1 << 20), peak(v, 64 * K)
        add(f"{v}: peak memory at 1M / at 64K", m1 / m64 if m1 and m64 else None, "<= 1.05",
            (m1 / m64 <= 1.05) if m1 and m64 else None,
            f"{m1:.1f} / {m64:.1f} MB" if m1 and m64 else "")
    f, t, s = tps("full", 128 * K), tps("transformer", 128 * K), tps("ssm", 128 * K)
    add("full / transformer tokens/s at 128K", f / t if f and t else None, ">= 12",
        (f / t >= 12) if f and t else None, f"{f:.0f} / {t:.0f}" if f and t else "")
    add("full / ssm tokens/s at 128K", f / s if f and s else None, ">= 0.6",
        (f / s >= 0.6) if f and s else None, f"{f:.0f} / {s:.0f}" if f and s else "")
    for r in loop_rows:
        add(f"{r['variant']}: train_memory / bare forward+backward tokens/s", r["ratio"],
            ">= 0.8", r["ratio"] >= 0.8,
            f"{r['loop_tokens_per_s']:.0f} / {r['bare_tokens_per_s']:.0f}")
    return out


def machine() -> dict[str, Any]:
    info = dict(python=platform.python_version(), torch=torch.__version__,
                platform=platform.platform(), processor=platform.processor(),
                cpus=os.cpu_count(), threads=torch.get_num_threads(),
                compile=os.environ.get("MEMMODEL_COMPILE", "auto"),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else None
    except OSError:
        pass
    try:
        info["load"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True,
                                        cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        pass
    return info


def markdown(result: dict[str, Any]) -> str:
    rows, lines = result["rows"], []
    lengths = sorted({r["T"] for r in rows})
    m = result["machine"]
    lines += [f"Command: `{result['command']}`", "",
              f"Machine: {m.get('cpu') or m['processor']} ({m['cpus']} CPUs, "
              f"{m['threads']} threads){', ' + m['gpu'] if 'gpu' in m else ''}; Python "
              f"{m['python']}, torch {m['torch']}, MEMMODEL_COMPILE={m['compile']}; "
              f"load {', '.join(f'{x:.2f}' for x in result['load_before'])} before, "
              f"{', '.join(f'{x:.2f}' for x in m.get('load', ()))} after; {m['date']}", "",
              "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in result["params"].items()),
              ""]
    for mode in ("infer", "train"):
        mrows = [r for r in rows if r["mode"] == mode]
        if not mrows:
            continue
        variants = list(dict.fromkeys(r["variant"] for r in mrows))
        index = {(r["variant"], r["T"]): r for r in mrows}
        head = "| model | " + " | ".join(fmt_len(T) for T in lengths) + " |"
        sep = "| --- |" + " ---: |" * len(lengths)
        for title, key, fmt in (("tokens/s", "tokens_per_s", "{:,.0f}"),
                                ("x SSM only", "vs_ssm", "{:.2f}"),
                                ("x Transformer", "vs_transformer", "{:.1f}"),
                                ("peak memory, MB", "peak_mb", "{:,.0f}")):
            lines += [f"{mode}: {title} (B={result['sizes']['batch']}, segments of "
                      f"{result['sizes']['segment']}, median of the repeats)", "", head, sep]
            for v in variants:
                cells = []
                for T in lengths:
                    r = index.get((v, T))
                    value = None if r is None else r.get(key)
                    cells.append("-" if r is None or r["skipped"] or value is None
                                 else fmt.format(value))
                lines.append(f"| {v} | " + " | ".join(cells) + " |")
            lines.append("")
        skipped = [r for r in mrows if r["skipped"]]
        if skipped:
            lines += [f"{mode}: not run"] + [f"- {r['variant']} at {fmt_len(r['T'])}: "
                                             f"{r['skipped']}" for r in skipped] + [""]
    if result["loop"]:
        lines += ["loop: train_memory against a bare forward + backward step", "",
                  "| model | B x T | train_memory tok/s | bare step tok/s | ratio |",
                  "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['variant']} | {r['batch']} x {r['T']} | {r['loop_tokens_per_s']:,.0f} "
                  f"| {r['bare_tokens_per_s']:,.0f} | {r['ratio']:.2f} |" for r in result["loop"]]
        lines.append("")
    lines += ["Targets", "", "| target | value | goal | status | figures |",
              "| --- | ---: | --- | --- | --- |"]
    for t in result["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"| {t['target']} | {value} | {t['goal']} | {t['status']} | "
                     f"{t['detail']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = pyplot(path)
    if plt is None:
        return False
    modes = [m for m in ("infer", "train") if any(r["mode"] == m for r in result["rows"])]
    if not modes:  # a loop-only run has no curve against T
        return False
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in result["rows"] if r["mode"] == mode and r["us_per_token"]]
        for v in dict.fromkeys(r["variant"] for r in rows):
            pts = [(r["T"], r["us_per_token"]) for r in rows if r["variant"] == v]
            ax.plot(*zip(*pts), marker="o", label=v,
                    linestyle="--" if v == "transformer" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T, tokens per stream")
        ax.set_ylabel("microseconds per token")
        ax.set_title(f"{mode} (B={result['sizes']['batch']}, d_model "
                     f"{result['sizes']['d_model']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def profile_stream(variant: str, T: int, sizes: Sizes, device, last: int = 1,
                   rows: int = 25) -> str:
    """Where the time of `variant`'s streamed inference goes: T tokens streamed, the last
    `last` segments under torch.profiler, with every submodule of a block (and the
    embedding, final norm and head) labelled. Returns the per-module and per-op tables."""
    from torch.profiler import ProfilerActivity, profile, record_function

    model = build(variant, sizes, device)
    labels = {}
    for name, mod in model.named_modules():
        parts = name.split(".")
        if (len(parts) == 3 and parts[0] == "layers") or name in ("embedding", "norm_f",
                                                                  "lm_head"):
            labels[mod] = "module::" + (parts[-1] if len(parts) == 3 else name)

    def pre(mod, _):
        mod._bench_rf = record_function(labels[mod])
        mod._bench_rf.__enter__()

    def post(mod, _, __):
        mod._bench_rf.__exit__(None, None, None)

    for mod in labels:
        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    stream(model, sizes, sizes.segment, device, False)  # warm-up (compilation)
    n = -(-T // sizes.segment)
    state, seconds, profiled = None, 0.0, 0.0
    for i in range(n):
        L = min(sizes.segment, T - i * sizes.segment)
        ids, _ = _segment_ids(sizes, i, L, device)
        t0 = time.perf_counter()
        if i == n - last:
            prof = profile(activities=[ProfilerActivity.CPU]
                           + ([ProfilerActivity.CUDA] if device.type == "cuda" else []))
            prof.__enter__()
        with torch.no_grad():
            _, _, state = _call(model, ids, state=state)
        _sync(device)
        seconds += time.perf_counter() - t0
        if i >= n - last:
            profiled += time.perf_counter() - t0
    prof.__exit__(None, None, None)
    events = prof.key_averages()
    mods = sorted((e for e in events if e.key.startswith("module::")),
                  key=lambda e: -e.cpu_time_total)
    total = sum(e.cpu_time_total for e in mods if e.key in (
        "module::embedding", "module::norm_f", "module::lm_head", "module::norm",
        "module::mixer", "module::working_memory", "module::long_term_memory"))
    lines = [f"{variant}, T={T} (B={sizes.batch}, segments of {sizes.segment}): "
             f"{sizes.batch * T / seconds:,.0f} tokens/s unprofiled-and-profiled; the last "
             f"{last} segment(s) profiled ({profiled:.2f} s)", "",
             "| module (summed over layers) | CPU s | share | calls |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {e.key[8:]} | {e.cpu_time_total / 1e6:.3f} | "
              f"{e.cpu_time_total / max(total, 1):.0%} | {e.count} |" for e in mods]
    lines += ["", "ops by self CPU time:", "",
              events.table(sort_by="self_cpu_time_total", row_limit=rows)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true",
                   help="GPU sizes (d_model 1024, E 2048, N 16, 8 heads) on cuda")
    p.add_argument("--device", default=None, help="default: cuda with --gpu, else cpu")
    p.add_argument("--variants", type=lambda s: parse_names(s, ALL_VARIANTS, "variants"),
                   default=list(ALL_VARIANTS), help=f"comma-separated, of {ALL_VARIANTS}")
    p.add_argument("--lengths", type=parse_lengths, default=parse_lengths(DEFAULT_LENGTHS),
                   help=f"comma-separated T (K = 1024, M = 2^20); default {DEFAULT_LENGTHS}")
    p.add_argument("--modes", type=lambda s: parse_names(s, MODES, "modes"),
                   default=["infer", "train", "loop"], help=f"comma-separated, of {MODES}")
    p.add_argument("--batch", type=int, default=None, help="streams B (default 2)")
    p.add_argument("--segment", type=int, default=None, help="tokens a call (default 4096)")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--ltm-chunk-size", type=int, default=None,
                   help="tokens a long-term-memory entry (default: the ablation spec's, 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs a case (the median)")
    p.add_argument("--long-from", type=harness.parse_length, default=harness.parse_length("512K"),
                   help="lengths from here are timed --long-repeats times and run for the "
                        "bounded variants only (default 512K)")
    p.add_argument("--long-repeats", type=int, default=1)
    p.add_argument("--long-unbounded", action="store_true",
                   help="run store_all and the Transformer at the long lengths too")
    p.add_argument("--train-max", type=harness.parse_length, default=harness.parse_length("128K"),
                   help="the longest T of the train mode (default 128K)")
    p.add_argument("--max-case-seconds", type=float, default=300.0,
                   help="skip a length whose projected time a run exceeds this")
    p.add_argument("--max-length", type=parse_limits, default={},
                   help="per-variant caps, e.g. transformer=128K,store_all=64K")
    p.add_argument("--loop-variants", type=lambda s: parse_names(s, VARIANTS, "loop-variants"),
                   default=["ssm", "full"])
    p.add_argument("--loop-batch", type=int, default=8)
    p.add_argument("--loop-len", type=int, default=2048)
    p.add_argument("--loop-steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="results/throughput", help="folder of the outputs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--profile", default=None, metavar="VARIANT@T",
                   help="instead of the benchmark: profile VARIANT's streamed inference at T "
                        "(the last segment), e.g. full@64K; written to OUT/profile.txt")
    return p


def main(argv=None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("repeats", "long_repeats", "batch", "segment", "d_model", "layers",
                 "loop_batch", "loop_len", "loop_steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: expected a positive int, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
    sizes = Sizes.gpu() if args.gpu else Sizes()
    for name, attr in (("batch", "batch"), ("segment", "segment"), ("d_model", "d_model"),
                       ("layers", "n_layers"), ("ltm_chunk_size", "ltm_chunk_size")):
        if getattr(args, name) is not None:
            setattr(sizes, attr, getattr(args, name))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        variant, _, length = args.profile.partition("@")
        if variant not in ALL_VARIANTS or not length:
            raise SystemExit(f"--profile: expected VARIANT@T with a variant of "
                             f"{list(ALL_VARIANTS)}, got {args.profile!r}")
        text = profile_stream(variant, harness.parse_length(length), sizes, device)
        (out / "profile.txt").write_text(text + "\n")
        print(text)
        return {"profile": text}
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    cases, params, loop_rows = [], {}, []
    command = "python benchmarks/bench_throughput.py " + " ".join(
        argv if argv is not None else sys.argv[1:])

    def report(final: bool = False) -> dict[str, Any]:
        """The results so far, written to --out (the plot at the end only)."""
        rows = [c.row(sizes.batch) for c in cases]
        ratios(rows)
        result = dict(command=command, sizes=sizes.__dict__, device=str(device),
                      params=params, spec=spec_for(sizes).to_dict(), load_before=load_before,
                      machine=machine(), seconds=time.perf_counter() - t_start,
                      complete=final, rows=rows, loop=loop_rows)
        result["targets"] = targets(rows, loop_rows)
        (out / "throughput.json").write_text(json.dumps(result, indent=1))
        (out / "throughput.md").write_text(markdown(result))
        if final:
            plot(result, out / "throughput.png")
        return result

    for v in args.variants:
        params[v] = n_params(build(v, sizes, "cpu"))
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()), flush=True)
    for mode in ("infer", "train"):
        if mode in args.modes:
            run_mode(mode, args.variants, args.lengths, sizes, device, args, cases, params,
                     on_case=report)
    if "loop" in args.modes:
        run_loop(list(args.loop_variants), sizes, device, args, loop_rows, on_case=report)
    result = report(final=True)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
