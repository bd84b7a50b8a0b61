"""Train a MemoryLM and its memory controller together on the passkey task.

    python -m memmodel.training.memory --controller qlearning --steps 300
    python -m memmodel.training.memory --warmup-steps 300 --steps 300 \
        --ablation fifo,importance,store_all,qlearning,none

One loop alternates the two learners. Each step samples a batch of passkey sequences and:
  1. (a learning controller only) runs the model with the long-term memory switched off,
     without gradients: the reference the task reward is measured against;
  2. runs the model with its memory (the controller exploring and recording its
     decisions) and takes a gradient step on the answer tokens' loss (unless lr = 0);
  3. (a learning controller only) gives every layer's episode its task reward, the change
     the memory made on the answer tokens (`reward="loss"`: loss without - loss with;
     `"accuracy"`: accuracy with - without), which `finish` adds to the memory and
     retrieval costs, and takes `q_updates` Q steps.
One controller is shared by every layer (each layer's banks are separate episodes).
Checkpoints (`memmodel.checkpoint`, every `checkpoint_every` steps and at the end) hold
the model, its optimiser, the controller's state (networks, target, optimiser, buffer,
statistics, exploration step, random state), the data position and the random states;
`resume` goes on from one to the same losses as a run that was never interrupted. A
non-finite loss or gradient stops the run with `TrainingDivergedError`.

    python -m memmodel.training.memory --steps 600 --checkpoint run.pt --checkpoint-every 100
    python -m memmodel.training.memory --steps 900 --checkpoint run.pt --resume run.pt
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch

from ..checkpoint import (
    CheckpointError,
    build_saved_model,
    expect_same,
    read_checkpoint,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from ..config import MemoryConfig, QLearningConfig
from ..controllers import (
    Action,
    MemoryController,
    NoMemoryController,
    QLearningController,
    build_controller,
)
from ..model import MemoryLM
from ..tasks import SPLITS, PasskeyTask, Task, answer_metrics, key_kept
from . import distributed
from .lm import (
    DEVICE,
    FINITE_AT_LEAST_0,
    FINITE_POSITIVE,
    INT_AT_LEAST_0,
    POSITIVE_INT,
    DivergenceGuard,
    check_checkpointing,
    check_fields,
    or_none,
    settings,
    train_device,
)

log = logging.getLogger("memmodel.training.memory")


@dataclass
class MemoryTrainConfig:
    """Settings of the joint loop; validated on construction.

    Args:
        steps: training steps (each: one model step and q_updates controller steps).
        seconds: stop earlier once this much time has passed (None: no limit).
        batch_size: sequences per step.
        lr: AdamW learning rate of the model (0 freezes the model: controller only).
        freeze_steps: with a learning controller, its first freeze_steps steps leave the
            model as it is (no gradient step; the controller learns on the frozen model),
            then both learn. A controller that explores from the start on a model that
            learns at once teaches the model to do without the memory (its reward then
            vanishes): this schedule lets the controller first find what the model uses.
            It needs a model that already uses the memory as the controller will run it:
            a model trained with store_all cannot use a bounded bank while frozen, so
            good decisions earn nothing on it (docs/architecture.md). No effect without a
            learning controller.
        weight_decay, grad_clip: of the model's optimiser.
        q_updates: controller Q updates per step.
        reward: "loss" (the memory's reduction of the answer loss) or "accuracy" (its gain
            in answer accuracy).
        eval_batches: batches in an evaluation (a fixed generator: the same every time).
        log_every: steps between progress lines.
        checkpoint: a path; the run is saved there at the end (and every
            checkpoint_every steps). None: not saved.
        checkpoint_every: steps between saves (None: only at the end).
        seed: seeds the batches (the model and controller take their own seeds).
        split: the split training batches come from ("train", "val", "test"; the task's
            answers and text of that split only); None: unrestricted answers, the train
            text (as `task.sample(B, generator)`).
        device: where the model trains (None: cuda:LOCAL_RANK under torchrun with NCCL;
            else where the model is).

    batch_size is the global batch: under torchrun each of W ranks takes batch_size / W of
    its rows (`memmodel.training.distributed`). `steps` counts the whole run: a resumed
    run goes on from the checkpoint's step to it.
    """

    steps: int = 300
    seconds: Optional[float] = None
    batch_size: int = 16
    lr: float = 3e-3
    freeze_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    q_updates: int = 4
    reward: str = "loss"
    eval_batches: int = 4
    log_every: int = 25
    checkpoint: Optional[str] = None
    checkpoint_every: Optional[int] = None
    seed: int = 0
    split: Optional[str] = None
    device: Optional[str] = None

    def __post_init__(self):
        check_fields(self, {
            "device": DEVICE,
            "steps": POSITIVE_INT, "seconds": or_none(FINITE_POSITIVE),
            "batch_size": POSITIVE_INT, "lr": FINITE_AT_LEAST_0,
            "weight_decay": FINITE_AT_LEAST_0, "grad_clip": FINITE_POSITIVE,
            "q_updates": INT_AT_LEAST_0, "freeze_steps": INT_AT_LEAST_0,
            "eval_batches": POSITIVE_INT,
            "log_every": POSITIVE_INT, "seed": INT_AT_LEAST_0})
        if self.reward not in ("loss", "accuracy"):
            raise ValueError(f"MemoryTrainConfig.reward: expected 'loss' or 'accuracy', got "
                             f"{self.reward!r}")
        if self.split not in (None,) + SPLITS:
            raise ValueError(f"MemoryTrainConfig.split: expected None or one of {SPLITS}, got "
                             f"{self.split!r}")
        check_checkpointing(self)


# The settings a resumed run must share with its checkpoint; the others (the budget,
# logging, where to save) may change.
RESUME_SETTINGS = ("batch_size", "lr", "freeze_steps", "weight_decay", "grad_clip",
                   "q_updates", "reward", "seed", "split")


@dataclass
class MemoryTrainResult:
    """history: one dict per log line (step, answer loss, reward, epsilon, Q loss);
    losses: the answer loss of each step made in this call (the mean over the ranks);
    final: `evaluate_memory` after training."""

    steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def memory_modules(model: MemoryLM) -> list:
    return [layer.long_term_memory for layer in model.layers
            if layer.long_term_memory is not None]


def attach_controller(model: MemoryLM, controller: MemoryController):
    """Make every layer's long-term memory use `controller` (one object, shared)."""
    modules = memory_modules(model)
    if not modules:
        raise ValueError("attach_controller: the model has no long-term memory "
                         "(config.ltm_controller is 'none')")
    for ltm in modules:
        ltm.controller = controller


@contextmanager
def swap_controllers(model: MemoryLM, make):
    """Temporarily give each layer's long-term memory `make(its controller)`."""
    modules = memory_modules(model)
    saved = [ltm.controller for ltm in modules]
    try:
        for ltm, ctrl in zip(modules, saved):
            ltm.controller = make(ctrl)
        yield
    finally:
        for ltm, ctrl in zip(modules, saved):
            ltm.controller = ctrl


class Tally(MemoryController):
    """Wraps a controller and counts its decisions: summaries kept (stored or compressed)
    and chunks read, out of those decided."""

    def __init__(self, inner: MemoryController):
        super().__init__(inner.config)
        self.inner, self.name = inner, inner.name
        self.enabled, self.needs_usage = inner.enabled, inner.needs_usage
        self.bounded, self.differentiable = inner.bounded, inner.differentiable
        self.summaries = self.kept = self.chunks = self.reads = 0

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def decide(self, features):
        decision = self.inner.decide(features)
        action = torch.as_tensor(decision.action)
        self.summaries += action.numel()
        self.kept += int((action != int(Action.DISCARD)).sum())
        self.chunks += action.shape[0]
        self.reads += int(torch.as_tensor(decision.retrieve).sum())
        return decision

    def select(self, features):
        return self.inner.select(features)

    def gate(self, keys):
        return self.inner.gate(keys)


@contextmanager
def tallying(model: MemoryLM):
    """Within the block, each layer's long-term memory runs its controller wrapped in a
    `Tally`; yields the list of those Tallies (their counts, summed, are the model's)."""
    tallies: list[Tally] = []

    def wrap(ctrl):
        tallies.append(Tally(ctrl))
        return tallies[-1]

    with swap_controllers(model, wrap):
        yield tallies


def _learning(controller) -> bool:
    return isinstance(controller, QLearningController)


def learning_controllers(model: MemoryLM) -> list:
    """The distinct learning controllers of the model's layers (one, when shared)."""
    return list({id(m.controller): m.controller for m in memory_modules(model)
                 if _learning(m.controller)}.values())


@torch.no_grad()
def evaluate_memory(model: MemoryLM, task: Task, batches: int = 4, batch_size: int = 16,
                    seed: int = 1234) -> dict[str, float]:
    """Greedy controllers on fixed batches (the same for every call with this seed).

    Returns:
        answer_loss, answer_accuracy: on the answer tokens; key_kept (passkey batches
        only; 0 otherwise): the fraction of (row, layer) banks still holding the key
        chunk's summary at the end; entries: live
        entries per bank at the end; kept: the fraction of summaries stored or compressed;
        reads: the fraction of chunks that read the bank.
    """
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    learners = learning_controllers(model)
    modes = [c.training for c in learners]
    for c in learners:
        c.eval()
    sums = dict(answer_loss=0.0, answer_accuracy=0.0, key_kept=0.0, entries=0.0)
    banks = 0
    try:
        with tallying(model) as tallies:
            for _ in range(batches):
                batch = _to(task.sample(batch_size, g), device)
                out = model(batch.input_ids)
                loss, acc = answer_metrics(out.logits, batch.labels)
                sums["answer_loss"] += loss.mean().item() / batches
                sums["answer_accuracy"] += acc.mean().item() / batches
                for layer in out.state.layers:
                    if layer.ltm is not None:
                        if hasattr(batch, "key_chunk"):
                            sums["key_kept"] += key_kept(layer.ltm, batch.key_chunk,
                                                         task.chunk_size).float().sum().item()
                        sums["entries"] += layer.ltm.live.sum().item()
                        banks += batch_size
    finally:
        for c, mode in zip(learners, modes):
            c.train(mode)
        model.train(was_training)
    sums["key_kept"] /= max(banks, 1)
    sums["entries"] /= max(banks, 1)
    summaries, chunks = sum(t.summaries for t in tallies), sum(t.chunks for t in tallies)
    sums["kept"] = sum(t.kept for t in tallies) / summaries if summaries else 0.0
    sums["reads"] = sum(t.reads for t in tallies) / chunks if chunks else 0.0
    return sums


def _to(batch, device: torch.device):
    """A task batch (a NamedTuple of tensors, some maybe None) moved to `device`."""
    if device.type == "cpu":
        return batch
    return type(batch)(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch))


def train_memory(model: MemoryLM, task: Task, tc: MemoryTrainConfig,
                 controller: Optional[MemoryController] = None,
                 resume: Optional[str] = None, progress: bool = False) -> MemoryTrainResult:
    """Train `model` (unless tc.lr == 0) and, when it learns, `controller` on `task`.

    Args:
        model: a MemoryLM; its long-term memory's chunk size must be task.chunk_size when
            the task has one (passkey).
        task: a task (`memmodel.tasks`, or any dataclass with the same `sample(B,
            generator, split=...)`), e.g. the passkey task.
        tc: MemoryTrainConfig.
        controller: attached to every layer first (None: keep the model's controllers).
        resume: a checkpoint written by this loop: the model, optimiser, controller state,
            data position and random state are restored from it, and the run goes on to
            tc.steps. The model's config, the task, the controller (name and config) and
            RESUME_SETTINGS must equal the checkpoint's. A checkpoint written on any
            number of ranks resumes on any other.
        progress: show a tqdm bar over the steps (rank 0 only).

    Under torchrun (`memmodel.training.distributed`) each rank trains on its shard of
    every global batch through DistributedDataParallel, the logged losses are the means
    over the ranks, and rank 0 alone writes the checkpoint. A learning controller is
    synchronised (`QLearningController.synchronise`): each rank fills its own replay
    buffer from its rows, the Q updates average their gradients over the ranks, so the
    Q-networks stay equal. The checkpoint holds rank 0's controller state (its buffer and
    random state), which every rank starts from on a resume.

    Raises:
        CheckpointError: `resume` cannot be read or belongs to another run.
        ValueError: tc.batch_size is not divisible by the number of ranks.
    """
    ctx = distributed.current()
    ctx.local_batch(tc.batch_size, "MemoryTrainConfig.batch_size")
    if tc.device is None and not ctx.distributed:
        device = next(model.parameters()).device
    else:
        device = train_device(tc.device, ctx)
    if controller is not None:
        attach_controller(model, controller)
    if (model.config.ltm_controller != "none" and hasattr(task, "chunk_size")
            and model.config.ltm_chunk_size != task.chunk_size):
        raise ValueError(f"train_memory: expected task.chunk_size == config.ltm_chunk_size = "
                         f"{model.config.ltm_chunk_size}, got {task.chunk_size}")
    learners = learning_controllers(model)
    if (tc.checkpoint or resume) and len(learners) > 1:
        raise ValueError(f"train_memory: a checkpoint holds one controller shared by every "
                         f"layer (attach_controller), got {len(learners)} learning controllers")
    for ctrl in learners:
        ctrl.train()  # explore and record
    model.to(device)
    opt = None
    if tc.lr > 0:
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(tc.seed)
    result, recent, start = MemoryTrainResult(), [], 0
    if resume is not None:
        start, recent = _restore(resume, model, task, tc, opt, gen)
        log.info("resumed from %s at step %d", resume, start)
    if ctx.distributed:
        for ctrl in learners:
            ctrl.synchronise()
    guard = DivergenceGuard(tc.checkpoint)
    net = distributed.wrap(model, ctx)

    def save(steps: int):
        guard.parameters(steps, model)
        if ctx.is_main:
            save_checkpoint(tc.checkpoint, model, task, tc, steps, opt, gen, recent)
        ctx.barrier()
        guard.saved(steps)

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=start, unit="step", desc="train",
               disable=not (progress and ctx.is_main))
    t0 = time.perf_counter()
    model.train()
    result.steps = start
    for step in range(start + 1, tc.steps + 1):
        # every rank draws the global batch (the same generator state) and keeps its rows
        batch = _to(ctx.shard(task.sample(tc.batch_size, gen, split=tc.split)), device)
        if learners:
            with torch.no_grad(), swap_controllers(model, lambda c: NoMemoryController()):
                base = answer_metrics(model(batch.input_ids).logits, batch.labels)
        learns = opt is not None and not (learners and step <= tc.freeze_steps)
        with torch.set_grad_enabled(learns):
            # DDP's wrapper only where a backward follows: it expects one after a forward
            out = (net if learns else model)(batch.input_ids, labels=batch.labels)
        loss_mean = ctx.mean(out.loss.detach())
        guard.loss(step, loss_mean)
        if learns:
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            guard.clip_gradients(step, model, tc.grad_clip)
            opt.step()
        record = {"answer_loss": loss_mean.item()}
        result.losses.append(record["answer_loss"])
        if learners:
            loss, acc = answer_metrics(out.logits.detach(), batch.labels)
            reward = base[0] - loss if tc.reward == "loss" else acc - base[1]
            for layer, state in zip(model.layers, out.state.layers):
                ltm = layer.long_term_memory
                if ltm is not None and _learning(ltm.controller) and state.ltm is not None:
                    ltm.controller.finish(state.ltm, reward)
            q_losses = [q for q in (c.update(tc.q_updates) for c in learners if tc.q_updates)
                        if q is not None]
            for q in q_losses:
                guard.loss(step, q, "controller Q loss", before="saving its Q step")
            record.update(reward=ctx.mean(reward.mean()).item(), epsilon=learners[0].epsilon,
                          q_loss=sum(q_losses) / len(q_losses) if q_losses else math.nan)
        recent.append(record)
        result.steps = step
        bar.update(1)
        bar.set_postfix(loss=f"{record['answer_loss']:.3f}", refresh=False)
        if step % tc.log_every == 0 or step == tc.steps:
            mean = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]}
            result.history.append({"step": step, **mean})
            log.info("step %5d  " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items()), step)
            recent = []
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            save(step)
        if tc.seconds is not None and ctx.any(time.perf_counter() - t0 > tc.seconds):
            break
    bar.close()
    result.seconds = time.perf_counter() - t0
    if tc.checkpoint and guard.saved_step != result.steps:
        save(result.steps)
    result.final = evaluate_memory(model, task, tc.eval_batches, tc.batch_size)
    log.info("final: " + "  ".join(f"{k} {v:.3f}" for k, v in result.final.items()))
    return result


def _restore(path, model: MemoryLM, task: Task, tc: MemoryTrainConfig,
             opt: Optional[torch.optim.Optimizer], gen: torch.Generator):
    """Load the checkpoint at `path` into this run's objects: (its step, its log window)."""
    payload = read_checkpoint(path, "memory")
    try:
        expect_same(path, "model config", payload["config"], model.config.to_dict())
        expect_same(path, "task", payload["task"], task_data(task))
        expect_same(path, "train settings",
                    {k: payload["train"].get(k) for k in RESUME_SETTINGS},
                    {k: getattr(tc, k) for k in RESUME_SETTINGS})
        modules = memory_modules(model)
        controller = modules[0].controller if modules else None
        saved = payload["controller"]
        expect_same(path, "controller", {"name": saved["name"] if saved else None},
                    {"name": controller.name if controller is not None else None})
        state = saved["state"] if saved else None
        if state is not None:
            if "rl" in state and hasattr(controller, "rl"):
                expect_same(path, "controller config", state["rl"], asdict(controller.rl))
            controller.load_training_state(state)
        model.load_state_dict(payload["model"])
        if opt is not None:
            opt.load_state_dict(payload["optimizer"])
        gen.set_state(payload["data"]["generator"])
        set_rng_states(payload["rng"])
        return payload["step"], list(payload["data"]["log_window"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"does not restore this run ({type(e).__name__}: {e})"
                              ) from e


def save_checkpoint(path, model: MemoryLM, task: Task, tc: MemoryTrainConfig,
                    step: int, optimizer: Optional[torch.optim.Optimizer] = None,
                    generator: Optional[torch.Generator] = None,
                    log_window: Optional[list[dict[str, float]]] = None):
    """Save the model, its config and optimiser, the controller with its state, the task,
    the train settings, the data position (step, batch generator, the steps not yet
    logged) and the random states as a "memory" checkpoint (`memmodel.checkpoint`: plain
    data, atomic, checksummed)."""
    modules = memory_modules(model)
    controller = modules[0].controller if modules else None
    write_checkpoint(path, "memory", {
        "config": model.config.to_dict(), "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": None,
        "controller": None if controller is None else {
            "name": controller.name,
            "state": controller.training_state() if hasattr(controller, "training_state")
            else None},
        "task": task_data(task), "train": settings(tc), "step": step,
        "data": {"generator": None if generator is None else generator.get_state(),
                 "log_window": [dict(r) for r in log_window or []]},
        "rng": rng_states(),
    })


def task_data(task) -> dict:
    """The task as plain data: its `spec()` (name, format, every parameter; rebuilt by
    `memmodel.tasks.task_from_spec`), or its fields for a task without one."""
    return task.spec() if hasattr(task, "spec") else asdict(task)


def load_checkpoint(path):
    """(model, controller, payload) from `save_checkpoint`: the model with its weights, in
    eval mode, and the controller (attached to every layer, greedy like the model) with
    its state; payload is the saved dict (optimizer state, task, train settings, step).

    Raises CheckpointError (a ValueError) naming the file when it cannot be used (see
    `memmodel.checkpoint.read_checkpoint`) or does not build a model.
    """
    payload = read_checkpoint(path, "memory")
    model, controller = build_saved_model(path, payload)
    return model, controller, payload


def build_model(args, controller: str) -> MemoryLM:
    """A fresh model of the CLI's sizes whose config names `controller`."""
    torch.manual_seed(args.seed)
    return MemoryLM(MemoryConfig(
        d_model=args.d_model, n_layers=args.n_layers, d_state=args.d_state,
        wm_slots=args.wm_slots, wm_heads=args.wm_heads, ltm_controller=controller,
        ltm_heads=args.heads, ltm_chunk_size=args.chunk_size,
        ltm_summaries=args.summaries, ltm_levels=len(args.capacity),
        ltm_capacity=args.capacity, ltm_merge=args.merge, backend=args.backend))


def make_controller(args, name: str, config: MemoryConfig) -> MemoryController:
    """The controller `name` with the CLI's costs and schedule (Q-learning)."""
    if name != "qlearning":
        return build_controller(config, name)
    rl = QLearningConfig(memory_cost=args.memory_cost, retrieve_cost=args.retrieve_cost,
                         n_step=args.n_step, epsilon_decay=args.epsilon_decay, seed=args.seed)
    return QLearningController(config, rl)


def main(argv=None):
    p = argparse.ArgumentParser(description="Train MemoryLM and its memory controller on the "
                                            "passkey task.")
    p.add_argument("--controller", default="qlearning",
                   help="fifo, importance, store_all, qlearning, gumbel or none")
    p.add_argument("--ablation", default=None,
                   help="comma-separated controllers, each trained from the same seed; "
                        "prints a markdown table")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="first train the model this many steps with store_all; every "
                        "controller then starts from that model")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--q-updates", type=int, default=4)
    p.add_argument("--reward", default="loss", choices=["loss", "accuracy"])
    p.add_argument("--seq-len", type=int, default=255,
                   help="tokens per sequence; n * chunk - 1 ends with an unfinished chunk, "
                        "so the bank at the end is the bank the question reads")
    p.add_argument("--key-len", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--summaries", type=int, default=1)
    p.add_argument("--capacity", type=int, nargs="+", default=[2],
                   help="entries per level (one int per level)")
    p.add_argument("--merge", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--wm-slots", type=int, default=0,
                   help="working-memory slots per head (0: no working memory)")
    p.add_argument("--wm-heads", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--memory-cost", type=float, default=0.01)
    p.add_argument("--retrieve-cost", type=float, default=0.01)
    p.add_argument("--n-step", type=int, default=4)
    p.add_argument("--epsilon-decay", type=int, default=600)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save the run here at the end (and every --checkpoint-every steps); "
                        "with --ablation, PATH.<controller> for each")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="go on from this checkpoint of one controller's run (the same "
                        "arguments; --steps counts the steps before it; a warm-up is not "
                        "run again)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = args.ablation.split(",") if args.ablation else [args.controller]
    if args.resume and len(names) > 1:
        p.error(f"--resume: expected one controller, got the ablation {args.ablation!r}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    tc = MemoryTrainConfig(steps=args.steps, seconds=args.seconds, batch_size=args.batch_size,
                           lr=args.lr, q_updates=args.q_updates, reward=args.reward,
                           eval_batches=args.eval_batches, log_every=args.log_every,
                           checkpoint=args.checkpoint,
                           checkpoint_every=args.checkpoint_every, seed=args.seed)
    task = PasskeyTask(seq_len=args.seq_len, chunk_size=args.chunk_size, key_len=args.key_len)
    warm = None
    if args.warmup_steps and args.resume:
        log.info("== warm-up skipped: the checkpoint holds the model after it")
    elif args.warmup_steps:
        # The memory pathway is learnt with everything in memory; each controller then
        # starts from the same model and goes on training it.
        log.info("== warm-up: %d steps with store_all", args.warmup_steps)
        model = build_model(args, "store_all")
        train_memory(model, task, replace(tc, steps=args.warmup_steps, checkpoint=None,
                                          checkpoint_every=None))
        warm = model.state_dict()
    rows = []
    for name in names:
        if not args.warmup_steps:
            model = build_model(args, name)
            controller = make_controller(args, name, model.config) if name == "qlearning" \
                else None
        else:
            model = build_model(args, "store_all")
            if warm is not None:
                model.load_state_dict(warm)
            controller = make_controller(args, name, model.config)
        log.info("== %s: %d chunks of %d tokens, capacity %s, %d steps", name,
                 task.seq_len // task.chunk_size, task.chunk_size, args.capacity, tc.steps)
        run_tc = replace(tc, checkpoint=f"{args.checkpoint}.{name}" if args.checkpoint and
                         len(names) > 1 else tc.checkpoint)
        rows.append((name, train_memory(model, task, run_tc, controller, resume=args.resume)))
    cols = ["answer_accuracy", "answer_loss", "key_kept", "entries", "kept", "reads"]
    lines = ["| controller | " + " | ".join(cols) + " | train s |",
             "| --- |" + " --- |" * (len(cols) + 1)]
    for name, res in rows:
        lines.append(f"| {name} | " + " | ".join(f"{res.final.get(c, 0.0):.3f}" for c in cols)
                     + f" | {res.seconds:.0f} |")
    log.info("\n".join(lines))


if __name__ == "__main__":
    main()
