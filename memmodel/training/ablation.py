"""The memory ablation: train each variant with one budget, evaluate each at every length.

    python -m memmodel.training.ablation --out results/                 # the default spec
    python -m memmodel.training.ablation --spec spec.json --out results/ --variants ssm,full
    python -m memmodel.training.ablation --print-spec > spec.json       # to edit
    python -m memmodel.training.ablation --spec spec.json --out results/ --seeds 0,1,2

Variants (`VARIANTS`), all from one `AblationSpec`:

    ssm         the SSM alone
    wm          + working memory
    fifo, importance, store_all, qlearning
                + long-term memory run by that controller
    gumbel      + long-term memory under the gumbel gate (a keep gate trained by the
                task loss through a straight-through Gumbel-sigmoid: the differentiable
                baseline of qlearning)
    full        working memory + long-term memory + qlearning

Each is built from the same seed and trained by `memmodel.training.memory.train_memory` for
the same budget on the same batches (the training split of the spec's task mix); a
Q-learning controller learns alongside, the gumbel gate with the model (by its
optimiser). Training has two phases when the spec's `warmup_steps` W > 0 (S = the spec's
train.steps):

  1. warm-up: one model of the store_all variant's config (the same capacity settings;
     store_all keeps every summary, so the memory pathway gets gradient from the first
     step) trains W steps on the batches of seed `seed` (of the spec's `warmup_tasks`
     when given, a curriculum: an easier form of the tasks first; else its train_tasks);
  2. every long-term-memory variant (fifo, importance, store_all, qlearning, gumbel, full)
     starts from those warm weights, the same for all, and trains S steps under its own
     controller on the batches of seed `seed + 1`, with a fresh optimiser. What the
     warm-up model lacks starts from the variant's seeded initialisation, with one
     change (`load_warm`): a residual branch it lacks (full's working memory) is grafted
     on with its output projection zeroed, as a new residual branch is added to a
     pretrained network, so at the start of phase 2 full computes exactly what
     qlearning computes from the same weights and decisions, and the branch grows by
     gradient from there (its projection gets gradient at once, its inner weights once
     the projection is non-zero). A Q-learning controller's networks and the gumbel
     gate are not residual branches and keep their initialisation.

`ssm` and `wm` have no long-term memory to warm: they run the same two phases on their own
model (W steps on the warm-up's batches of seed `seed`, then S steps with a fresh optimiser on
those of `seed + 1`). So every variant takes W + S model steps on the same W + S
batches, with the optimiser restarted after W; the warm-up is trained once and shared.
`train.seconds`, when set, limits each phase 2 only (the warm-up runs its W steps).
W = 0: one phase of S steps on the batches of seed `seed`, every variant from its
initialisation. The long-term memory's
capacity binds at training length: the spec refuses sizes where a training sequence makes
no more summaries than the bank holds, so evictions and merges happen in training as at
evaluation (the same capacity). Each trained variant is then evaluated by
`memmodel.evaluation.evaluate_stream` on every (task, length) of the spec.

Written to --out:
    spec.json      the resolved spec (every default filled in; loadable with --spec)
    results.json   one row per (variant, task, T): plain fields (`ROW_FIELDS` and more)
    depth.json     accuracy by depth, one row per (variant, task, T, bin)
    results.md     the rows as markdown tables, with the command, machine and versions
    results.png    accuracy against T (log axis), a line per variant, a panel per task
                   (needs matplotlib: the `plot` extra; skipped with a warning without it)
    models/<variant>.pt   the trained variant (a `memmodel.checkpoint` "memory" file; load
                   it with `memmodel.training.memory.load_checkpoint`; its step counts
                   phase 2)
    models/warmup.pt      the warm-up model (W > 0 and a long-term-memory variant)

With --seeds (`run_seeds`) the whole ablation runs once per training seed, each into
seed-<s>/ with the files above, and --out gets the rows pooled over the seeds.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import MemoryConfig, QLearningConfig
from ..controllers import QLearningController
from ..evaluation import evaluate_lm_stream, evaluate_stream, wilson_interval
from ..model import MemoryLM
from ..plotting import pyplot
from ..tasks import Task, task_from_spec
from .memory import MemoryTrainConfig, train_memory

log = logging.getLogger("memmodel.training.ablation")

VARIANTS = ("ssm", "wm", "fifo", "importance", "store_all", "qlearning", "gumbel", "full")
ROW_FIELDS = ("variant", "task", "T", "n", "accuracy", "ci_low", "ci_high", "chance",
              "entries", "state_bytes", "tokens_per_s", "peak_rss_mb")
# and, for a task scored as classes (`task.scoring == "classes"`), these too (None otherwise)
CLASS_FIELDS = ("macro_precision", "macro_recall", "macro_f1", "f1_low", "f1_high")
# the rows of a language-modelling task (scoring "lm") have these instead of accuracy: bits
# per byte over all positions, within the training length and beyond it, with intervals
LM_FIELDS = ("variant", "task", "T", "n", "bpb", "bpb_low", "bpb_high", "bpb_within",
             "bpb_within_low", "bpb_within_high", "bpb_beyond", "bpb_beyond_low",
             "bpb_beyond_high", "train_len", "byte_accuracy", "entries", "state_bytes",
             "tokens_per_s", "peak_rss_mb")


def _default_model():
    return dict(d_model=64, n_layers=2, d_state=16, backend="auto")


def _default_wm():
    return dict(wm_slots=8, wm_heads=2)


def _default_ltm():
    # 1024-token training sequences make 32 summaries; the bank holds 4 + 2.
    return dict(ltm_heads=2, ltm_chunk_size=32, ltm_summaries=1, ltm_levels=2,
                ltm_capacity=[4, 2], ltm_merge=2)


def _default_train_tasks():
    return [dict(name="passkey", seq_len=1024, chunk_size=32),
            dict(name="multi_needle", seq_len=1024, n_facts=8, n_decoys=8, n_queries=2)]


def _default_train():
    return dict(steps=300, seconds=None, batch_size=8, lr=3e-3, q_updates=4, reward="loss",
                eval_batches=1, log_every=25)


def _default_qlearning():
    return dict(memory_cost=0.01, retrieve_cost=0.01, n_step=4, epsilon_decay=600)


def _default_eval_tasks():
    return [dict(name="passkey", chunk_size=32),
            dict(name="multi_needle", n_facts=8, n_decoys=8, n_queries=2)]


# Fields the runner sets itself.
_TRAIN_OWN = ("seed", "split", "checkpoint", "checkpoint_every")
_MODEL_OWN = ("wm_slots", "ltm_controller")


@dataclass
class AblationSpec:
    """What an ablation trains and evaluates; every field has a default.

    Args:
        variants: names from VARIANTS, in the order they run.
        model: MemoryConfig fields shared by every variant (not wm_slots / ltm_controller).
        wm: MemoryConfig working-memory fields of the variants that have one (wm, full).
        ltm: MemoryConfig long-term-memory fields of the variants that have one.
        train_tasks: task specs (`task_from_spec`: a name and parameters) of the training
            mix; each step's batch is one of them, drawn with the batch generator.
        warmup_tasks: task specs of the warm-up's mix (phase 1 of every variant), for a
            curriculum (an easier form of the tasks first); None: train_tasks.
        train: MemoryTrainConfig fields (the budget: steps, seconds; batch_size, lr, ...),
            the same for every variant; not seed, split or checkpoint.
        qlearning: QLearningConfig fields of the Q-learning controller (seed: the spec's
            unless given).
        eval_tasks: task specs evaluated; their seq_len is replaced by each of eval_lengths.
        eval_lengths: T of the evaluations.
        eval_n, eval_batch_size, segment, eval_split: `evaluate_stream`'s n, batch_size,
            segment and split.
        eval_max: {variant: T}, the longest length a variant is evaluated at (an unbounded
            bank's retrieval work grows as T squared: store_all at 1M tokens would take
            hours on a CPU); the lengths above it get no row, and the table says so.
        seed: of the models' init and of the training batches (phase 2 of a warm-up run:
            seed + 1).
        controller_seeds: seeds of the Q-learning controller (its network's init, its
            exploration and replay sampling) for the variants that learn one (qlearning,
            full): each seed trains its own copy of the variant (the same model init and
            batches), and its rows pool them (`pool_seeds`: the queries of every seed, the
            accuracy of each, their mean and spread). None: one run, with
            qlearning["seed"] (the spec's seed when not given).
        warmup_steps: W, the store_all warm-up's steps (see the module docstring); 0: none.

    Raises ValueError on construction when a field is unknown or invalid, when a variant's
    config or a task cannot be built, or when the long-term memory's capacity does not bind
    at training length.
    """

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    model: dict[str, Any] = field(default_factory=_default_model)
    wm: dict[str, Any] = field(default_factory=_default_wm)
    ltm: dict[str, Any] = field(default_factory=_default_ltm)
    train_tasks: list[dict[str, Any]] = field(default_factory=_default_train_tasks)
    warmup_tasks: Optional[list[dict[str, Any]]] = None
    train: dict[str, Any] = field(default_factory=_default_train)
    qlearning: dict[str, Any] = field(default_factory=_default_qlearning)
    eval_tasks: list[dict[str, Any]] = field(default_factory=_default_eval_tasks)
    eval_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 65536])
    eval_n: int = 32
    eval_batch_size: int = 8
    segment: int = 4096
    eval_split: str = "test"
    eval_max: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    controller_seeds: Optional[list[int]] = None
    warmup_steps: int = 300

    def __post_init__(self):
        self.variants = list(self.variants)
        bad = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or bad or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"AblationSpec.variants: expected distinct names from {VARIANTS}, "
                             f"got {self.variants!r}")
        w = self.warmup_steps
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise ValueError(f"AblationSpec.warmup_steps: expected an int >= 0, got {w!r}")
        for name in ("eval_n", "eval_batch_size", "segment"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AblationSpec.{name}: expected a positive int, got {value!r}")
        lengths = self.eval_lengths
        if (not isinstance(lengths, (list, tuple)) or not lengths or not all(
                isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in lengths)):
            raise ValueError(f"AblationSpec.eval_lengths: expected a list of positive ints, "
                             f"got {lengths!r}")
        self.eval_lengths = list(lengths)
        if not isinstance(self.eval_max, dict) or any(
                v not in VARIANTS or not isinstance(t, int) or isinstance(t, bool) or t < 1
                for v, t in self.eval_max.items()):
            raise ValueError(f"AblationSpec.eval_max: expected {{variant: positive int}} with "
                             f"variants from {VARIANTS}, got {self.eval_max!r}")
        seeds = self.controller_seeds
        if seeds is not None:
            if not _distinct_seeds(seeds):
                raise ValueError(f"AblationSpec.controller_seeds: expected None or a list of "
                                 f"distinct ints >= 0, got {seeds!r}")
            if "seed" in self.qlearning:
                raise ValueError("AblationSpec.controller_seeds: given, and qlearning['seed'] "
                                 "too; expected one of them")
            self.controller_seeds = list(seeds)
        for name, own in (("model", _MODEL_OWN), ("train", _TRAIN_OWN)):
            taken = sorted(set(getattr(self, name)) & set(own))
            if taken:
                raise ValueError(f"AblationSpec.{name}: the runner sets {taken} itself")
        if not self.train_tasks or not self.eval_tasks:
            raise ValueError("AblationSpec: expected at least one training and one "
                             "evaluation task")
        if self.warmup_tasks is not None:
            if not isinstance(self.warmup_tasks, list) or not self.warmup_tasks:
                raise ValueError(f"AblationSpec.warmup_tasks: expected None or a non-empty "
                                 f"list of task specs, got {self.warmup_tasks!r}")
            if not self.warmup_steps:
                raise ValueError("AblationSpec.warmup_tasks: given, but warmup_steps is 0 "
                                 "(there is no warm-up to run them)")
            self.warming_tasks()
        for v in self.variants:
            self.config(v)
        self.train_config()
        self.qlearning_config()
        train = self.training_tasks()
        for t in self.evaluation_tasks():
            for T in self.eval_lengths:
                _with_length(t, T)
        if any(self.config(v).ltm_controller != "none" for v in self.variants):
            c = self.config(next(v for v in self.variants
                                 if self.config(v).ltm_controller != "none"))
            room = sum(c.ltm_capacity)
            for t in train:
                made = t.seq_len // c.ltm_chunk_size * c.ltm_summaries
                if made <= room:
                    raise ValueError(
                        f"AblationSpec: the long-term memory must overflow at training "
                        f"length: {t.name} (seq_len {t.seq_len}) makes {made} summaries of "
                        f"chunks of {c.ltm_chunk_size}, the bank holds {room} "
                        f"(ltm_capacity {c.ltm_capacity}); expected more summaries than that")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AblationSpec:
        """A spec from plain data; missing fields and missing keys of the dict fields
        (model, wm, ltm, train, qlearning) take the defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"AblationSpec: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"AblationSpec: unknown fields {unknown}; expected some of {names}")
        defaults = cls()
        merged = {}
        for name in names:
            value = data.get(name, getattr(defaults, name))
            if isinstance(getattr(defaults, name), dict) and name in data:
                if not isinstance(value, dict):
                    raise ValueError(f"AblationSpec.{name}: expected an object, got {value!r}")
                value = {**getattr(defaults, name), **value}
            merged[name] = value
        return cls(**merged)

    @classmethod
    def from_json(cls, path) -> AblationSpec:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in: full task specs, the Q-learning config,
        the training config; `from_dict` reads it back to the same runs."""
        out = self.to_dict()
        out["train_tasks"] = [t.spec() for t in self.training_tasks()]
        if self.warmup_tasks is not None:
            out["warmup_tasks"] = [t.spec() for t in self.warming_tasks()]
        out["eval_tasks"] = [t.spec() for t in self.evaluation_tasks()]
        out["qlearning"] = dataclasses.asdict(self.qlearning_config())
        if self.controller_seeds is not None:  # each run's seed is one of them
            del out["qlearning"]["seed"]
        train = dataclasses.asdict(self.train_config())
        out["train"] = {k: v for k, v in train.items() if k not in _TRAIN_OWN}
        return out

    def config(self, variant: str) -> MemoryConfig:
        """The MemoryConfig of `variant`."""
        kw = dict(self.model, wm_slots=0, ltm_controller="none")
        if variant in ("wm", "full"):
            kw.update(self.wm)
        controller = {"ssm": "none", "wm": "none", "full": "qlearning"}.get(variant, variant)
        if controller != "none":
            kw.update(self.ltm, ltm_controller=controller)
        try:
            return MemoryConfig(**kw)
        except TypeError as e:
            raise ValueError(f"AblationSpec: variant {variant!r}: {e}") from e

    def train_config(self, checkpoint: Optional[str] = None) -> MemoryTrainConfig:
        """Phase 2's settings (the only phase without a warm-up)."""
        try:
            return MemoryTrainConfig(**self.train, seed=self.seed + (self.warmup_steps > 0),
                                     split="train", checkpoint=checkpoint)
        except TypeError as e:
            raise ValueError(f"AblationSpec.train: {e}") from e

    def warmup_config(self, checkpoint: Optional[str] = None) -> MemoryTrainConfig:
        """The warm-up's settings: phase 2's with warmup_steps steps, no time limit and
        the batches of `seed`."""
        if not self.warmup_steps:
            raise ValueError("AblationSpec.warmup_config: warmup_steps is 0")
        return replace(self.train_config(checkpoint), steps=self.warmup_steps, seconds=None,
                       seed=self.seed)

    def lengths_of(self, variant: str) -> list[int]:
        """The evaluation lengths of `variant`: eval_lengths up to its eval_max."""
        top = self.eval_max.get(variant)
        return [T for T in self.eval_lengths if top is None or T <= top]

    def has_ltm(self, variant: str) -> bool:
        return self.config(variant).ltm_controller != "none"

    def learns_controller(self, variant: str) -> bool:
        return self.config(variant).ltm_controller == "qlearning"

    def seeds_of(self, variant: str) -> list[Optional[int]]:
        """The controller seeds `variant` is trained with ([None]: one run, no seed of its
        own: no learning controller, or no controller_seeds)."""
        if self.controller_seeds is None or not self.learns_controller(variant):
            return [None]
        return list(self.controller_seeds)

    def qlearning_config(self, seed: Optional[int] = None) -> QLearningConfig:
        """The Q-learning controller's config; seed: its seed (None: qlearning['seed'],
        else the spec's seed)."""
        kw = dict(seed=self.seed if seed is None else seed)
        try:
            return QLearningConfig(**{**kw, **self.qlearning})
        except TypeError as e:
            raise ValueError(f"AblationSpec.qlearning: {e}") from e

    def training_tasks(self) -> list[Task]:
        return [task_from_spec(s) for s in self.train_tasks]

    def warming_tasks(self) -> list[Task]:
        """The warm-up's tasks: warmup_tasks, or train_tasks when None."""
        specs = self.train_tasks if self.warmup_tasks is None else self.warmup_tasks
        return [task_from_spec(s) for s in specs]

    def evaluation_tasks(self) -> list[Task]:
        return [task_from_spec(s) for s in self.eval_tasks]


def _with_length(task: Task, T: int) -> Task:
    return task if task.seq_len == T else dataclasses.replace(task, seq_len=T)


@dataclass
class TaskMix:
    """Training batches from several tasks: each batch is wholly one task's, the task drawn
    uniformly with the batch's generator (so the mix is fixed by the training seed).

    Args:
        tasks: the tasks, each with `sample(batch_size, generator, split=...)`.
    """

    tasks: list[Task]
    name = "mix"

    @property
    def seq_len(self) -> int:
        return max(t.seq_len for t in self.tasks)

    def spec(self) -> dict:
        """The mix as plain data: each task's spec."""
        return {"name": self.name, "tasks": [t.spec() for t in self.tasks]}

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None,
               split: Optional[str] = None, index: int = 0):
        i = int(torch.randint(len(self.tasks), (1,), generator=generator))
        return self.tasks[i].sample(batch_size, generator, split=split, index=index)


def _training_task(spec: AblationSpec, warmup: bool = False):
    tasks = spec.warming_tasks() if warmup else spec.training_tasks()
    return tasks[0] if len(tasks) == 1 else TaskMix(tasks)


def warm_up(spec: AblationSpec, checkpoint: Optional[str] = None, progress: bool = False):
    """Phase 1 of the long-term-memory variants: the store_all variant's model, from the
    spec's seed, trained spec.warmup_steps steps: (model, MemoryTrainResult)."""
    torch.manual_seed(spec.seed)
    model = MemoryLM(spec.config("store_all"))
    result = train_memory(model, _training_task(spec, warmup=True),
                          spec.warmup_config(checkpoint), progress=progress)
    return model, result


def load_warm(model: MemoryLM, warm: dict[str, torch.Tensor]) -> list[str]:
    """Copy the warm-up's weights into `model` and graft on what the warm model lacks.

    The warm model may lack only the working memory and a learning controller's networks;
    anything else missing, extra or of another shape is an error. A residual branch of
    `model` (`Block.branches`: a part whose output is added to the residual stream) with
    no weight in `warm` is grafted on: its output projection is zeroed, so the model first
    computes what the warm model computes with the same controller decisions, and the
    branch grows from there by gradient (the projection gets gradient at once; the
    branch's inner weights, which keep their initialisation, once it is non-zero). Today
    that is full's working memory. A controller's networks are not a residual branch:
    they keep their initialisation.

    Args:
        model: the phase-2 model, built from the variant's config.
        warm: the warm-up model's `state_dict()`.

    Returns:
        the names (state_dict prefixes, e.g. "layers.0.working_memory") of the grafted
        branches.

    Example:
        >>> spec = AblationSpec()
        >>> warm = MemoryLM(spec.config("store_all")).state_dict()
        >>> load_warm(MemoryLM(spec.config("full")), warm)
        ['layers.0.working_memory', 'layers.1.working_memory']
    """
    missing, unexpected = model.load_state_dict(warm, strict=False)
    own = [k for k in missing if ".working_memory." not in k and ".controller." not in k]
    if own or unexpected:
        raise ValueError(f"load_warm: the warm-up's weights do not fit this model: missing "
                         f"{own}, unexpected {list(unexpected)}")
    grafted = []
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for name, branch in layer.branches().items():
                prefix = f"layers.{i}.{name}."
                if any(k.startswith(prefix) for k in warm):
                    continue
                branch.out_proj.weight.zero_()
                if branch.out_proj.bias is not None:
                    branch.out_proj.bias.zero_()
                grafted.append(prefix[:-1])
    if grafted:
        log.info("grafted onto the warm model with a zero output projection: %s",
                 ", ".join(grafted))
    return grafted


def train_variant(spec: AblationSpec, variant: str, checkpoint: Optional[str] = None,
                  warm: Optional[dict[str, torch.Tensor]] = None,
                  controller_seed: Optional[int] = None, progress: bool = False):
    """Build `variant` from the spec's seed and train it (both phases when
    spec.warmup_steps > 0; the module docstring): (model, MemoryTrainResult of phase 2,
    MemoryTrainResult of phase 1 or None).

    Args:
        warm: the warm-up model's state_dict (`warm_up`), for a long-term-memory variant
            of a spec with warmup_steps > 0 (None there: it is trained here).
        controller_seed: the Q-learning controller's seed (`spec.qlearning_config`).
        progress: tqdm bars over the training steps.
    """
    config = spec.config(variant)
    task = _training_task(spec)
    torch.manual_seed(spec.seed)
    model = MemoryLM(config)
    before = None
    if spec.warmup_steps and not spec.has_ltm(variant):
        before = train_memory(model, _training_task(spec, warmup=True), spec.warmup_config(),
                              progress=progress)
    elif spec.warmup_steps:
        if warm is None:
            warm_model, before = warm_up(spec, progress=progress)
            warm = warm_model.state_dict()
        load_warm(model, warm)
    elif warm is not None:
        raise ValueError("train_variant: warm weights given, but spec.warmup_steps is 0")
    controller = None
    if config.ltm_controller == "qlearning":
        controller = QLearningController(config, spec.qlearning_config(controller_seed))
    result = train_memory(model, task, spec.train_config(checkpoint), controller,
                          progress=progress)
    return model, result, before


def worker_count(asked: Optional[int], jobs: int) -> int:
    """Worker processes for `jobs` independent jobs: `asked` when given (a ValueError
    names --workers unless it is a positive int), else one per CPU core, at most one per
    job."""
    if asked is None:
        return max(1, min(os.cpu_count() or 1, jobs))
    if asked < 1:
        raise ValueError(f"--workers: expected a positive int, got {asked}")
    return asked


def run_ablation(spec: AblationSpec, out, progress: bool = False, name: str = "results",
                 command: Optional[str] = None, workers: int = 1) -> list[dict[str, Any]]:
    """Train and evaluate every variant of `spec`, writing the files listed in the module
    docstring under `out` (the JSON files, the table and the figure rewritten after each
    variant).

    Args:
        name: the stem of the rows, the table and the figure: <name>.json, <name>.md and
            <name>.png (spec.json, depth.json and models/ keep their names).
        command: the command line written in the table's provenance (None: this
            process's, as `python -m memmodel.training.ablation ...`).
        workers: processes that train and evaluate variants side by side (1: all in this
            process). With more, each worker runs torch on max(1, threads // workers) of
            this process's threads; the warm-up runs in a worker while ssm and wm train in
            the others, and the long-term-memory variants start once it is written. On a
            small model one thread per process does more work than two threads in one (the
            ops are too small to share), so a 2-core machine runs the demo with 2 workers.
            A variant's figures do not depend on the number of workers beyond float
            tolerance (the same seeds and batches); the rows keep the spec's order.

    Returns:
        The rows of <name>.json.
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"run_ablation: expected a plain file stem as name, got {name!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"run_ablation: expected a positive int workers, got {workers!r}")
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    _write_json(out / "spec.json", spec.resolved())
    done: dict[str, tuple[list, list]] = {}
    runs: dict[str, dict] = {v: {} for v in spec.variants}

    def finished(variant: str, seed: Optional[int], result: tuple[list, list]):
        runs[variant][seed] = result
        if len(runs[variant]) < len(spec.seeds_of(variant)):
            return
        per_seed = [runs[variant][x] for x in spec.seeds_of(variant)]
        done[variant] = (pool_seeds([r for r, _ in per_seed]),
                         [d for _, ds in per_seed for d in ds])
        order = [v for v in spec.variants if v in done]
        rows = [r for v in order for r in done[v][0]]
        _write_json(out / f"{name}.json", rows)
        _write_json(out / "depth.json", [r for v in order for r in done[v][1]])
        (out / f"{name}.md").write_text(markdown_table(rows, spec, command, workers),
                                        encoding="utf-8")
        plot_results(rows, out / f"{name}.png")

    needs_warm = bool(spec.warmup_steps) and any(spec.has_ltm(v) for v in spec.variants)
    warm_path = str(out / "models" / "warmup.pt")
    if workers == 1 or len(spec.variants) == 1:
        warm = warmed = None
        if needs_warm:
            log.info("== warm-up: %d steps with store_all", spec.warmup_steps)
            warm_model, result = warm_up(spec, warm_path, progress)
            warm, warmed = warm_model.state_dict(), (result.steps, result.seconds)
            del warm_model
        for variant in spec.variants:
            for seed in spec.seeds_of(variant):
                finished(variant, seed, _variant_rows(spec, variant, str(out), warm, warmed,
                                                      progress, seed))
    else:
        _run_parallel(spec, out, workers, needs_warm, warm_path, progress, finished)
    return [r for v in spec.variants for r in done[v][0]]


def _distinct_seeds(seeds) -> bool:
    """A non-empty list (or tuple) of distinct ints >= 0: what controller_seeds and
    run_seeds' seeds must be."""
    return (isinstance(seeds, (list, tuple)) and bool(seeds) and len(set(seeds)) == len(seeds)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds))


def check_seeds(spec: AblationSpec, seeds) -> None:
    """The checks of `run_seeds` (a ValueError that names what is wrong), without running."""
    if not _distinct_seeds(seeds):
        raise ValueError(f"run_seeds: expected seeds as a list of distinct ints >= 0, got "
                         f"{seeds!r}")
    if spec.controller_seeds is not None:
        raise ValueError(f"run_seeds: the spec has controller_seeds "
                         f"{spec.controller_seeds}; expected training seeds or controller "
                         f"seeds, not both")
    if "seed" in spec.qlearning:
        raise ValueError(f"run_seeds: the spec fixes qlearning['seed'] = "
                         f"{spec.qlearning['seed']}; expected it unset, so each training "
                         f"seed seeds its controllers too")


def run_seeds(spec: AblationSpec, seeds: list[int], out, progress: bool = False,
              name: str = "results", command: Optional[str] = None,
              workers: int = 1) -> list[dict[str, Any]]:
    """The whole ablation once per training seed, the rows pooled: what spread a figure
    has when everything random is drawn again (the models' initialisation, the warm-up's
    and every variant's training batches, the controllers' seeds: a spec's `seed`).

    Seed s runs `run_ablation` on the spec with seed = s (its controllers take the same
    seed, as in one run) into out/seed-<s>/ (its own rows, table, figure and models). Then
    out/<name>.json holds one row per (variant, task, T), its seeds' rows pooled by
    `pool_seeds` (n, the accuracy over every seed's queries with its interval,
    seed_accuracy: each seed's, seed_std: their spread) with `train_seeds`, the seeds in
    order; out/<name>.md and out/<name>.png show them, out/spec.json is the spec with
    `train_seeds` added. The seeds' evaluation batches are the same (the test split's),
    so the spread is the training's alone.

    Raises ValueError, before anything runs, unless seeds are distinct ints >= 0, or when
    the spec has controller_seeds (one kind of seed per run) or qlearning["seed"] (it
    would hold the controllers' seed fixed while the rest varies).
    """
    check_seeds(spec, seeds)
    out = Path(out)
    runs = []
    for s in seeds:
        one = AblationSpec.from_dict({**spec.to_dict(), "seed": s})
        log.info("== training seed %d of %s", s, list(seeds))
        runs.append(run_ablation(one, out / f"seed-{s}", progress=progress, name=name,
                                 command=command, workers=workers))
    rows = []
    for variant in spec.variants:
        pooled = pool_seeds([[r for r in run if r["variant"] == variant] for run in runs])
        rows += [dict(r, train_seeds=list(seeds)) for r in pooled]
    _write_json(out / "spec.json", {**spec.resolved(), "train_seeds": list(seeds)})
    _write_json(out / f"{name}.json", rows)
    note = (f"Pooled over training seeds {', '.join(map(str, seeds))} (each seed's run in "
            f"seed-<s>/): n counts every seed's queries; the spread is over the seeds.\n")
    (out / f"{name}.md").write_text(markdown_table(rows, spec, command, workers, note),
                                    encoding="utf-8")
    plot_results(rows, out / f"{name}.png")
    return rows


# The variants' rough evaluation cost, longest first: a parallel run starts those first.
_COST_ORDER = ("store_all", "full", "wm", "qlearning", "gumbel", "importance", "fifo", "ssm")


def _run_parallel(spec: AblationSpec, out: Path, workers: int, needs_warm: bool,
                  warm_path: str, progress: bool, finished):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, torch.get_num_threads() // workers)
    data = spec.to_dict()
    ltm = sorted((v for v in spec.variants if spec.has_ltm(v)), key=_COST_ORDER.index)
    own = sorted((v for v in spec.variants if not spec.has_ltm(v)), key=_COST_ORDER.index)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(len(spec.seeds_of(v)) for v in spec.variants), desc="variants",
                   unit="run")
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        jobs = {}
        if needs_warm:
            log.info("== warm-up: %d steps with store_all (in a worker)", spec.warmup_steps)
            jobs[pool.submit(_warm_job, data, warm_path)] = None, None
        else:
            ltm, own = [], own + ltm
        for v in own:
            for seed in spec.seeds_of(v):
                jobs[pool.submit(_variant_job, data, v, str(out), None, None, seed)] = v, seed
        while jobs:
            ready, _ = wait(jobs, return_when=FIRST_COMPLETED)
            for job in ready:
                variant, seed = jobs.pop(job)
                result = job.result()  # a worker's error stops the run here
                if variant is None:  # the warm-up: its weights are on disk now
                    for v in ltm:
                        for x in spec.seeds_of(v):
                            jobs[pool.submit(_variant_job, data, v, str(out), warm_path,
                                             result, x)] = v, x
                    continue
                log.info("== %s%s: done", variant, "" if seed is None else f" (seed {seed})")
                finished(variant, seed, result)
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()


def _init_worker(threads: int):
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def _warm_job(data: dict, path: str) -> tuple[int, float]:
    _, result = warm_up(AblationSpec.from_dict(data), path)
    return result.steps, result.seconds


def _variant_job(data: dict, variant: str, out: str, warm_path: Optional[str],
                 warmed: Optional[tuple[int, float]], seed: Optional[int]):
    warm = None
    if warm_path is not None:
        from .memory import load_checkpoint
        warm = load_checkpoint(warm_path)[0].state_dict()
    return _variant_rows(AblationSpec.from_dict(data), variant, out, warm, warmed,
                         progress=False, seed=seed)


def _variant_rows(spec: AblationSpec, variant: str, out: str,
                  warm: Optional[dict[str, torch.Tensor]],
                  warmed: Optional[tuple[int, float]], progress: bool,
                  seed: Optional[int] = None):
    """Train `variant` (with controller seed `seed`; saved to out/models/<variant>.pt, or
    <variant>-seed<seed>.pt for the spec's controller seeds after the first) and evaluate
    it on every (task, T): (rows, depth rows). warmed: the shared warm-up's (steps,
    seconds)."""
    log.info("== %s%s: training", variant, "" if seed is None else f" (seed {seed})")
    stem = variant if seed is None or seed == spec.seeds_of(variant)[0] else \
        f"{variant}-seed{seed}"
    model, trained, before = train_variant(
        spec, variant, str(Path(out) / "models" / f"{stem}.pt"),
        warm if spec.has_ltm(variant) else None, controller_seed=seed, progress=progress)
    shared = spec.has_ltm(variant) and warmed is not None
    if shared:
        w_steps, w_seconds = warmed
    elif before is not None:
        w_steps, w_seconds = before.steps, before.seconds
    else:
        w_steps, w_seconds = 0, 0.0
    training = dict(train_steps=trained.steps, train_seconds=trained.seconds,
                    warmup_steps=w_steps, warmup_seconds=w_seconds, warmup_shared=shared,
                    threads=torch.get_num_threads(), seeds=[seed])
    rows, depth_rows = [], []
    for task in spec.evaluation_tasks():
        for T in spec.lengths_of(variant):
            if getattr(task, "scoring", "answers") == "lm":
                rows.append({**lm_row(spec, model, variant, _with_length(task, T), progress),
                             **training})
                continue
            r = evaluate_stream(model, _with_length(task, T), n=spec.eval_n,
                                batch_size=spec.eval_batch_size, segment=spec.segment,
                                split=spec.eval_split, progress=progress)
            d = r.to_dict()
            rows.append(dict(
                variant=variant, task=d["task"], T=T, n=d["n"], accuracy=d["accuracy"],
                ci_low=d["ci_low"], ci_high=d["ci_high"], chance=d["chance"],
                entries=d["entries"], state_bytes=d["state_bytes"],
                tokens_per_s=d["tokens_per_s"], peak_rss_mb=d["peak_rss_mb"],
                **{k: d[k] for k in CLASS_FIELDS}, confusion=d["confusion"],
                sequences=d["sequences"], token_accuracy=d["token_accuracy"],
                answer_loss=d["answer_loss"], rss_increase_mb=d["rss_increase_mb"],
                **training))
            depth_rows += [dict(variant=variant, task=d["task"], T=T, seed=seed, **b)
                           for b in d["depth_bins"]]
    return rows, depth_rows


def pool_seeds(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One variant's rows from several seeds, of its controller (`controller_seeds`) or of
    the whole training (`run_seeds`), runs[i] being seed i's rows (the same (task, T) in
    the same order), as one row per (task, T): n and the accuracy over the
    queries of every seed, with its Wilson interval; seed_accuracy (each seed's) and
    seed_std (their sample standard deviation, 0 for one seed); the means of entries,
    state_bytes, tokens_per_s and the other measures; the largest peak_rss_mb. A class
    task's macro precision, recall and F1 are the seeds' means, its F1 interval the
    envelope of theirs (the lowest low, the highest high), its confusion matrix their sum.
    A language-modelling row (no accuracy) gets the means of its measures."""
    if len(runs) == 1:
        return [dict(r, seed_accuracy=[r["accuracy"]], seed_std=0.0) if "accuracy" in r
                else dict(r) for r in runs[0]]
    pooled = []
    for group in zip(*runs):
        first = group[0]
        if any((r["task"], r["T"]) != (first["task"], first["T"]) for r in group):
            raise ValueError("pool_seeds: expected the same (task, T) in every seed's rows")
        if "accuracy" not in first:
            row = dict(first, n=sum(r["n"] for r in group),
                       seeds=[s for r in group for s in r["seeds"]])
            for key, value in first.items():
                if isinstance(value, float) and all(r[key] is not None for r in group):
                    row[key] = sum(r[key] for r in group) / len(group)
            pooled.append(row)
            continue
        n = sum(r["n"] for r in group)
        k = round(sum(r["accuracy"] * r["n"] for r in group))
        lo, hi = wilson_interval(k, n)
        accs = [r["accuracy"] for r in group]
        mean = sum(accs) / len(accs)
        row = dict(first)
        for key in ("entries", "state_bytes", "tokens_per_s", "token_accuracy", "answer_loss",
                    "rss_increase_mb", "train_seconds"):
            row[key] = sum(r[key] for r in group) / len(group)
        row.update(n=n, accuracy=k / n, ci_low=lo, ci_high=hi,
                   sequences=sum(r["sequences"] for r in group),
                   peak_rss_mb=max(r["peak_rss_mb"] for r in group),
                   seeds=[s for r in group for s in r["seeds"]], seed_accuracy=accs,
                   seed_std=(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5)
        if first.get("macro_f1") is not None:
            for key in ("macro_precision", "macro_recall", "macro_f1"):
                row[key] = sum(r[key] for r in group) / len(group)
            row.update(f1_low=min(r["f1_low"] for r in group),
                       f1_high=max(r["f1_high"] for r in group),
                       confusion=[[sum(c) for c in zip(*rows_)] for rows_ in
                                  zip(*(r["confusion"] for r in group))])
        pooled.append(row)
    return pooled


def lm_row(spec: AblationSpec, model: MemoryLM, variant: str, task: Task,
           progress: bool = False) -> dict[str, Any]:
    """The row of a language-modelling task at task.seq_len (`evaluate_lm_stream`):
    LM_FIELDS, "within" being the positions below the longest training sequence of the
    spec (train_len) and "beyond" those at or past it (None when T <= train_len)."""
    train_len = max(t.seq_len for t in spec.training_tasks())
    T = task.seq_len
    edges = [0, train_len, T] if train_len < T else [0, T]
    r = evaluate_lm_stream(model, task, n=spec.eval_n, batch_size=spec.eval_batch_size,
                           segment=spec.segment, split=spec.eval_split, edges=edges,
                           progress=progress).to_dict()
    within = r["bins"][0]
    beyond = r["bins"][1] if len(r["bins"]) > 1 else dict(bpb=None, bpb_low=None,
                                                          bpb_high=None)
    return dict(variant=variant, task=r["task"], T=T, n=r["sequences"], bpb=r["bpb"],
                bpb_low=r["bpb_low"], bpb_high=r["bpb_high"], bpb_within=within["bpb"],
                bpb_within_low=within["bpb_low"], bpb_within_high=within["bpb_high"],
                bpb_beyond=beyond["bpb"], bpb_beyond_low=beyond["bpb_low"],
                bpb_beyond_high=beyond["bpb_high"], train_len=train_len,
                byte_accuracy=r["byte_accuracy"], entries=r["entries"],
                state_bytes=r["state_bytes"], tokens_per_s=r["tokens_per_s"],
                peak_rss_mb=r["peak_rss_mb"], tokens=r["tokens"], loss=r["loss"])


def _write_json(path: Path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(command: Optional[str] = None, workers: int = 1) -> str:
    """The command (None: this process's, as the ablation module's), machine, versions
    and date of this run, as a markdown paragraph."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else _cpu_name()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if command is None:
        command = f"python -m memmodel.training.ablation {' '.join(sys.argv[1:])}".strip()
    threads = torch.get_num_threads()
    each = max(1, threads // workers)
    how = f"{threads} torch threads" if workers == 1 else \
        f"{workers} worker processes of {each} torch thread{'s' if each > 1 else ''}"
    return (f"Command: `{command}`  \n"
            f"Machine: {device}, {os.cpu_count()} CPUs ({how}), "
            f"{platform.system()}  \n"
            f"Versions: Python {platform.python_version()}, torch {torch.__version__}  \n"
            f"Date: {when}\n")


def warmup_note(spec: AblationSpec) -> str:
    """A line saying how the spec's variants were trained (warm-up and budget)."""
    steps = spec.train_config().steps
    if not spec.warmup_steps:
        return (f"Training: no warm-up; every variant from its initialisation, {steps} "
                f"steps.\n")
    w = spec.warmup_steps
    return (f"Training: a store_all warm-up of {w} steps, shared by the long-term-memory "
            f"variants, each of which then trains {steps} steps under its own controller; "
            f"ssm and wm train {w} + {steps} steps on their own model (the same batches, "
            f"the optimiser restarted after {w}).\n")


def markdown_table(rows: list[dict[str, Any]], spec: Optional[AblationSpec] = None,
                   command: Optional[str] = None, workers: int = 1,
                   note: Optional[str] = None) -> str:
    """The rows as one markdown table per task, with the provenance (`provenance(command,
    workers)`), given the spec, how it trained (`warmup_note`), and `note` when given,
    above them."""
    lines = ["# Memory ablation", "", provenance(command, workers)]
    if spec is not None:
        lines += [warmup_note(spec)]
        for variant, top in spec.eval_max.items():
            skipped = [T for T in spec.eval_lengths if T > top]
            if variant in spec.variants and skipped:
                lines += [f"{variant} is not evaluated beyond T = {top} (eval_max): no row at "
                          f"{', '.join(map(str, skipped))}.\n"]
        if spec.warmup_tasks is not None:
            lines += ["Warm-up tasks (a curriculum): " + "; ".join(
                _task_line(t) for t in spec.warming_tasks()) + ".\n",
                "Training tasks: " + "; ".join(
                _task_line(t) for t in spec.training_tasks()) + ".\n"]
    if note:
        lines += [note]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        if "bpb" in mine[0]:
            lines += ["", f"## {task}", "", f"Bits per byte (95% interval over the "
                      f"{mine[0]['n']} sequences), within the training length "
                      f"({mine[0]['train_len']}) and beyond it.", "",
                      "| variant | T | n | bits/byte | within | beyond | entries | "
                      "state KB | tokens/s |",
                      "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: |"]
            for r in mine:
                lines.append(
                    f"| {r['variant']} | {r['T']} | {r['n']} | "
                    f"{_interval(r, 'bpb')} | {_interval(r, 'bpb_within')} | "
                    f"{_interval(r, 'bpb_beyond')} | {r['entries']:.1f} | "
                    f"{r['state_bytes'] / 1024:.1f} | {r['tokens_per_s']:.0f} |")
            continue
        f1 = mine[0].get("macro_f1") is not None
        lines += ["", f"## {task}", "",
                  "| variant | T | n | accuracy [95% CI] |" + (" macro F1 [95% CI] |" if f1
                                                               else "") +
                  " chance | entries | state KB | tokens/s | peak RSS MB |",
                  "| --- | ---: | ---: | --- |" + (" --- |" if f1 else "") +
                  " ---: | ---: | ---: | ---: | ---: |"]
        for r in mine:
            seeds = r.get("seed_accuracy", [])
            spread = "" if len(seeds) < 2 else (
                f" ({len(seeds)} seeds: " + ", ".join(f"{a:.2f}" for a in seeds)
                + f"; sd {r['seed_std']:.2f})")
            lines.append(
                f"| {r['variant']} | {r['T']} | {r['n']} | {r['accuracy']:.3f} "
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]{spread} | " +
                (f"{r['macro_f1']:.3f} [{r['f1_low']:.3f}, {r['f1_high']:.3f}] | " if f1
                 else "") +
                f"{r['chance']:.2g} | "
                f"{r['entries']:.1f} | {r['state_bytes'] / 1024:.1f} | "
                f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def _interval(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None:
        return "-"
    return f"{row[key]:.3f} [{row[key + '_low']:.3f}, {row[key + '_high']:.3f}]"


def _task_line(task: Task) -> str:
    """A task's name and the parameters that differ from its defaults."""
    default = type(task)()
    changed = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
               if getattr(task, f.name) != getattr(default, f.name)}
    return f"{task.name} " + ", ".join(f"{k}={v!r}" for k, v in changed.items())


def plot_results(rows: list[dict[str, Any]], path) -> bool:
    """Accuracy against T (log x), a line per variant with its 95% interval, a panel per
    task, the chance level dashed. Returns False (and logs a warning) without matplotlib."""
    plt = pyplot(path)
    if plt is None:
        return False
    rows = [r for r in rows if "accuracy" in r]  # language-modelling rows: tables only
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if not tasks:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False,
                             sharey=True)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        for variant in dict.fromkeys(r["variant"] for r in mine):
            pts = sorted((r["T"], r["accuracy"], r["ci_low"], r["ci_high"]) for r in mine
                         if r["variant"] == variant)
            T, acc, lo, hi = zip(*pts)
            line, = ax.plot(T, acc, marker="o", label=variant)
            ax.fill_between(T, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(mine[0]["chance"], color="gray", linestyle="--", linewidth=1,
                   label="chance")
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("T (tokens)")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the memory variants with one budget and "
                                            "evaluate them at every length.")
    p.add_argument("--spec", default=None, help="a JSON AblationSpec (default: the built-in)")
    p.add_argument("--out", default=None, help="folder for the results and models")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {VARIANTS}")
    p.add_argument("--steps", type=int, default=None, help="training steps of each variant")
    p.add_argument("--seconds", type=float, default=None, help="training seconds of each")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="steps of the shared store_all warm-up (0: none)")
    p.add_argument("--lengths", default=None, help="comma-separated evaluation lengths")
    p.add_argument("--eval-n", type=int, default=None, help="sequences per evaluation")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=1,
                   help="processes training and evaluating variants side by side")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seeds", default=None,
                   help="comma-separated training seeds: the whole ablation once per seed "
                        "(into seed-<s>/), the rows pooled (mean, spread)")
    p.add_argument("--print-spec", action="store_true",
                   help="print the resolved spec as JSON and exit")
    args = p.parse_args(argv)
    seeds = None if args.seeds is None else parse_seeds(p, "--seeds", args.seeds)
    data = {}
    if args.spec:
        with open(args.spec, encoding="utf-8") as f:
            data = json.load(f)
    if args.variants:
        data["variants"] = args.variants.split(",")
    for key, value in (("steps", args.steps), ("seconds", args.seconds)):
        if value is not None:
            data["train"] = {**data.get("train", {}), key: value}
    if args.lengths:
        data["eval_lengths"] = [int(t) for t in args.lengths.split(",")]
    if args.eval_n is not None:
        data["eval_n"] = args.eval_n
    if args.warmup_steps is not None:
        data["warmup_steps"] = args.warmup_steps
    try:
        spec = AblationSpec.from_dict(data)
    except ValueError as e:
        p.error(str(e))
    if args.print_spec:
        sys.stdout.write(json.dumps(spec.resolved(), indent=1) + "\n")
        return
    if args.out is None:
        p.error("--out: expected a folder for the results")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers < 1:
        p.error(f"--workers: expected a positive int, got {args.workers}")
    if seeds is None:
        run_ablation(spec, args.out, progress=not args.no_progress, workers=args.workers)
    else:
        try:
            check_seeds(spec, seeds)
        except ValueError as e:
            p.error(str(e))
        run_seeds(spec, seeds, args.out, progress=not args.no_progress, workers=args.workers)
    log.info("results in %s", args.out)


def parse_seeds(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """Comma-separated distinct ints >= 0 from the command line; anything else stops the
    program through `parser.error`, naming `flag`."""
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{flag}: expected comma-separated ints, got {text!r}")
    if any(x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        parser.error(f"{flag}: expected distinct ints >= 0, got {text!r}")
    return seeds


if __name__ == "__main__":
    main()
