"""Train MemoryLM on the embedded byte corpus: the `make demo` job.

    python -m memmodel.training.lm --seconds 90
    python -m memmodel.training.lm --max-steps 2000 --checkpoint lm.pt --checkpoint-every 200
    python -m memmodel.training.lm --max-steps 4000 --checkpoint lm.pt --resume lm.pt

Logs the validation loss before and after, the training loss as it falls, the steady
tokens/s, and the time spent compiling apart from it. With a checkpoint path, the run is
saved every `checkpoint_every` steps and at the end (`memmodel.checkpoint`); `resume`
goes on from such a file to the same losses as a run that was never interrupted. A
non-finite loss or gradient stops the run with `TrainingDivergedError`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

from ..checkpoint import (
    CheckpointError,
    expect_same,
    read_checkpoint,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from ..config import MemoryConfig
from ..data import ByteCorpus
from ..model import MemoryLM
from . import distributed

log = logging.getLogger("memmodel.training.lm")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        not math.isnan(value)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


# Field rules shared by the loops' configs: (test, what was expected).
POSITIVE_INT = (lambda v: _int(v) and v >= 1, "a positive int")
INT_AT_LEAST_0 = (lambda v: _int(v) and v >= 0, "an int >= 0")
FINITE_AT_LEAST_0 = (lambda v: _finite(v) and v >= 0, "a finite number >= 0")
FINITE_POSITIVE = (lambda v: _finite(v) and v > 0, "a finite positive number")
POSITIVE = (lambda v: _number(v) and v > 0, "a positive number")


def or_none(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    test, expected = rule
    return (lambda v: v is None or test(v), f"{expected} or None")


class TrainingDivergedError(RuntimeError):
    """A training step met a non-finite loss, gradient or parameter; the run stopped
    before the model's optimiser applied it (a parameter: before it was saved; the
    controller's Q loss: after its own Q step, which is not saved), and no checkpoint
    was written after it.

    Attributes:
        step: the step (1-based, counting the steps before a resume).
        tensor: what was not finite: "loss", "gradient of <parameter name>", "total
            gradient norm", "<parameter name>" or "controller Q loss".
    """

    def __init__(self, step: int, tensor: str, value, last_checkpoint: str,
                 before: str = "the update"):
        self.step, self.tensor = step, tensor
        super().__init__(f"step {step}: the {tensor} is {value}, not finite; training "
                         f"stopped before {before} ({last_checkpoint})")


class DivergenceGuard:
    """The finite checks of a training loop, and where its last checkpoint is.

    Args:
        checkpoint: the loop's checkpoint path (None: none written).
    """

    def __init__(self, checkpoint=None):
        self.checkpoint, self.saved_step = checkpoint, None

    def saved(self, step: int):
        self.saved_step = step

    def _where(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written by this run"
        return f"the last checkpoint, {self.checkpoint}, holds step {self.saved_step}"

    def loss(self, step: int, loss, name: str = "loss", before: str = "the update"):
        value = loss.item() if isinstance(loss, torch.Tensor) else loss
        if not math.isfinite(value):
            raise TrainingDivergedError(step, name, value, self._where(), before)

    def clip_gradients(self, step: int, model: torch.nn.Module, max_norm: float) -> float:
        """clip_grad_norm_ over the model's parameters; its total norm. A non-finite
        norm raises, naming the first parameter whose gradient is not finite (the
        gradients are left unscaled)."""
        try:
            return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm,
                                                        error_if_nonfinite=True))
        except RuntimeError as e:
            if "non-finite" not in str(e):
                raise
            for name, p in model.named_parameters():
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    raise TrainingDivergedError(step, f"gradient of {name}", _bad(p.grad),
                                                self._where()) from None
            raise TrainingDivergedError(step, "total gradient norm", "inf",
                                        self._where()) from e

    def parameters(self, step: int, model: torch.nn.Module):
        """Before a save: every parameter finite."""
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDivergedError(step, name, _bad(p), self._where(),
                                            "saving it")


def _bad(t: torch.Tensor) -> str:
    """'nan' or 'inf' (the first non-finite value of t), for a message."""
    return str(t.detach()[~torch.isfinite(t.detach())].flatten()[0].item())


PATH = (lambda v: v is None or isinstance(v, (str, os.PathLike)), "a path (str) or None")
DEVICE = (lambda v: v is None or isinstance(v, str), "a device name (str) or None")


def check_checkpointing(config):
    """The checkpoint / checkpoint_every pair of a loop's config."""
    check_fields(config, {"checkpoint": PATH, "checkpoint_every": or_none(POSITIVE_INT)})
    if config.checkpoint_every is not None and config.checkpoint is None:
        raise ValueError(f"{type(config).__name__}.checkpoint_every: expected None without a "
                         f"checkpoint path, got {config.checkpoint_every!r}")


def settings(config) -> dict[str, Any]:
    """A loop config as plain data, for a checkpoint (the path as a str)."""
    out = asdict(config)
    if out.get("checkpoint") is not None:
        out["checkpoint"] = os.fspath(out["checkpoint"])
    return out


def check_fields(config, rules: dict[str, tuple[Callable[[Any], bool], str]]):
    """Raise ValueError naming the first field of `config` that breaks its rule."""
    for name, (test, expected) in rules.items():
        value = getattr(config, name)
        if not test(value):
            raise ValueError(f"{type(config).__name__}.{name}: expected {expected}, got "
                             f"{value!r}")


@dataclass
class TrainConfig:
    """Optimisation settings.

    Args:
        seconds: wall-clock budget for the training steps (compilation not counted;
            math.inf: none).
        max_steps: stop once the run has made this many steps, counting those before a
            resume, even if time is left (None: no limit).
        batch_size, seq_len: tokens per step = batch_size * seq_len.
        lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up.
        eval_batches: batches averaged for a validation loss.
        log_every: steps between progress lines.
        checkpoint: a path; the run is saved there at the end (and every checkpoint_every
            steps). None: not saved.
        checkpoint_every: steps between saves (None: only at the end).
        seed: seeds the model init and the batch sampler.
        device: where the model trains (None: the process's device under torchrun with
            NCCL, cuda:LOCAL_RANK; else the CPU).

    batch_size is the global batch: under torchrun each of W ranks takes batch_size / W of
    its rows (`memmodel.training.distributed`). Validated on construction: a bad value
    raises ValueError naming the field, what was expected and what came.
    """

    seconds: float = 90.0
    max_steps: Optional[int] = None
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_batches: int = 8
    log_every: int = 25
    checkpoint: Optional[str] = None
    checkpoint_every: Optional[int] = None
    seed: int = 0
    device: Optional[str] = None

    def __post_init__(self):
        check_fields(self, {
            "device": DEVICE, "seconds": POSITIVE, "max_steps": or_none(POSITIVE_INT),
            "batch_size": POSITIVE_INT, "seq_len": POSITIVE_INT, "lr": FINITE_AT_LEAST_0,
            "weight_decay": FINITE_AT_LEAST_0, "warmup_steps": INT_AT_LEAST_0,
            "grad_clip": FINITE_POSITIVE, "eval_batches": POSITIVE_INT,
            "log_every": POSITIVE_INT, "seed": INT_AT_LEAST_0})
        check_checkpointing(self)


# The settings a resumed run must share with its checkpoint; the others (the budget,
# logging, where to save) may change.
RESUME_SETTINGS = ("batch_size", "seq_len", "lr", "weight_decay", "warmup_steps", "grad_clip",
                   "seed")


@dataclass
class TrainResult:
    """steps: the run's step count (a resumed run's includes the steps before it);
    train_losses: the loss of each step made in this call."""

    val_loss_start: float
    val_loss_end: float
    train_losses: list[float] = field(default_factory=list)
    steps: int = 0
    tokens_per_s: float = 0.0
    compile_s: float = 0.0


@torch.no_grad()
def evaluate(model: MemoryLM, corpus: ByteCorpus, tc: TrainConfig, split: str = "val") -> float:
    g = torch.Generator().manual_seed(1234)  # the same batches every time
    device = next(model.parameters()).device
    model.eval()
    losses = [model(*(t.to(device) for t in corpus.batch(split, tc.batch_size, tc.seq_len, g))
                    ).loss.item()
              for _ in range(tc.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


def _param_groups(model: MemoryLM, weight_decay: float):
    """No weight decay on norms, biases and the recurrence parameters (A_log, D, dt_bias)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() < 2 or name.endswith(("A_log", "conv_weight")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def train_device(device: Optional[str], ctx: distributed.DistContext) -> torch.device:
    """A loop's device: `device` when given, else the rank's (cuda:LOCAL_RANK under NCCL,
    the CPU otherwise)."""
    return torch.device(device if device is not None else ctx.device)


def train(config: MemoryConfig, tc: TrainConfig, corpus: Optional[ByteCorpus] = None,
          echo: Optional[Callable[[str], None]] = None,
          resume: Optional[str] = None, progress: bool = False) -> TrainResult:
    """Train a fresh MemoryLM, or go on from the checkpoint `resume`.

    Args:
        config: the model; a resumed run's must equal the checkpoint's.
        tc: TrainConfig; a resumed run's RESUME_SETTINGS must equal the checkpoint's.
        corpus: the data (default: ByteCorpus()).
        echo: receives the progress lines (default: logged at INFO).
        resume: a checkpoint written by this loop (tc.checkpoint); its model, optimiser,
            schedule, data position and random state are restored. A checkpoint written
            on any number of ranks resumes on any other.
        progress: show a tqdm bar over the steps (rank 0 only).

    Under torchrun (`memmodel.training.distributed`) each rank trains on its shard of
    every global batch through DistributedDataParallel; the losses are the means over
    the ranks, and rank 0 alone writes the checkpoint.

    Raises:
        CheckpointError: `resume` cannot be read or belongs to another run.
        ValueError: tc.batch_size is not divisible by the number of ranks.
    """
    echo = echo or log.info
    ctx = distributed.current()
    ctx.local_batch(tc.batch_size, "TrainConfig.batch_size")
    device = train_device(tc.device, ctx)
    torch.manual_seed(tc.seed)
    corpus = corpus or ByteCorpus()
    model = MemoryLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    echo(f"model: {n_params / 1e6:.2f}M parameters, d_model={config.d_model}, "
         f"n_layers={config.n_layers}, d_state={config.d_state}, d_inner={config.d_inner}")
    opt = torch.optim.AdamW(_param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / max(1, tc.warmup_steps)))
    gen = torch.Generator().manual_seed(tc.seed)
    start = 0
    if resume is not None:
        start = _restore(resume, config, tc, model, opt, sched, gen)
        echo(f"resumed from {resume} at step {start}")

    guard = DivergenceGuard(tc.checkpoint)
    net = distributed.wrap(model, ctx)

    def save(steps: int):
        guard.parameters(steps, model)
        if ctx.is_main:
            write_checkpoint(tc.checkpoint, "lm", {
                "config": config.to_dict(), "train": settings(tc), "step": steps,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "data": {"generator": gen.get_state()},
                "rng": rng_states()})
        ctx.barrier()
        guard.saved(steps)

    def step(n: int):
        # every rank draws the global batch (the same generator state) and keeps its rows
        x, y = (ctx.shard(t).to(device)
                for t in corpus.batch("train", tc.batch_size, tc.seq_len, gen))
        loss = net(x, labels=y).loss
        mean = ctx.mean(loss.detach())
        guard.loss(n, mean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.clip_gradients(n, model, tc.grad_clip)
        opt.step()
        sched.step()
        return mean.item()

    # The first evaluation and the first step compile the chunked scan's forward and
    # backward (where a compiler is present); they are timed apart from training.
    t0 = time.perf_counter()
    val_start = evaluate(model, corpus, tc)
    eval_s = time.perf_counter() - t0
    echo(f"val loss before training: {val_start:.3f} (uniform over bytes: {math.log(256):.3f})")
    result = TrainResult(val_loss_start=val_start, val_loss_end=float("nan"), steps=start)
    tokens, first_s = 0, 0.0
    t_start: Optional[float] = None  # the budget's clock starts after two steps
    from tqdm.auto import tqdm

    bar = tqdm(total=tc.max_steps, initial=start, unit="step", desc="train",
               disable=not (progress and ctx.is_main))
    while tc.max_steps is None or result.steps < tc.max_steps:
        if t_start is not None and ctx.any(time.perf_counter() - t_start >= tc.seconds):
            break
        t0 = time.perf_counter()
        result.train_losses.append(step(result.steps + 1))
        result.steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{result.train_losses[-1]:.3f}", refresh=False)
        ran, dt = len(result.train_losses), time.perf_counter() - t0
        if ran == 1:
            first_s = dt
        elif ran == 2:
            result.compile_s = max(0.0, first_s - dt)
            echo(f"warm-up: first evaluation {eval_s:.1f} s, first step {first_s:.1f} s "
                 f"(both include compilation), then {dt * 1e3:.0f} ms/step")
            t_start = time.perf_counter()
        else:
            tokens += tc.batch_size * tc.seq_len
        if tc.checkpoint_every and result.steps % tc.checkpoint_every == 0:
            save(result.steps)
        if ran > 2 and result.steps % tc.log_every == 0:
            recent = result.train_losses[-tc.log_every:]
            echo(f"step {result.steps:5d}  train loss {sum(recent) / len(recent):.3f}  "
                 f"{tokens / (time.perf_counter() - t_start):,.0f} tokens/s")
    bar.close()
    elapsed = time.perf_counter() - t_start if t_start is not None else 0.0
    if tc.checkpoint and guard.saved_step != result.steps:
        save(result.steps)
    result.tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
    result.val_loss_end = evaluate(model, corpus, tc)
    echo(f"val loss after {result.steps} steps ({elapsed:.0f} s): {result.val_loss_end:.3f} "
         f"(from {result.val_loss_start:.3f}); {result.tokens_per_s:,.0f} tokens/s")
    return result


def _restore(path, config: MemoryConfig, tc: TrainConfig, model, opt, sched, gen) -> int:
    """Load the checkpoint at `path` into this run's objects; its step count."""
    payload = read_checkpoint(path, "lm")
    try:
        expect_same(path, "model config", payload["config"], config.to_dict())
        expect_same(path, "train settings",
                    {k: payload["train"].get(k) for k in RESUME_SETTINGS},
                    {k: getattr(tc, k) for k in RESUME_SETTINGS})
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        gen.set_state(payload["data"]["generator"])
        set_rng_states(payload["rng"])
        return payload["step"]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"does not restore this run ({type(e).__name__}: {e})"
                              ) from e


def main(argv=None):
    p = argparse.ArgumentParser(description="Train MemoryLM on the embedded byte corpus.")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save the run here at the end (and every --checkpoint-every steps)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="go on from this checkpoint (same sizes and settings; --max-steps "
                        "counts the steps before it)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = MemoryConfig(d_model=args.d_model, n_layers=args.n_layers, d_state=args.d_state,
                          backend=args.backend)
    tc = TrainConfig(seconds=args.seconds, max_steps=args.max_steps, batch_size=args.batch_size,
                     seq_len=args.seq_len, lr=args.lr, checkpoint=args.checkpoint,
                     checkpoint_every=args.checkpoint_every, seed=args.seed)
    log.info("training MemoryLM on the embedded byte corpus for %.0f s, %dx%d tokens per "
             "step, torch %s, %d threads", tc.seconds, tc.batch_size, tc.seq_len,
             torch.__version__, torch.get_num_threads())
    train(config, tc, resume=args.resume)


if __name__ == "__main__":
    main()
