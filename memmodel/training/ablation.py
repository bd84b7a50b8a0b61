"""The memory ablation: train each variant with one budget, evaluate each at every length.

    python -m memmodel.training.ablation --out results/                 # the default spec
    python -m memmodel.training.ablation --spec spec.json --out results/ --variants ssm,full
    python -m memmodel.training.ablation --print-spec > spec.json       # to edit

Variants (`VARIANTS`), all from one `AblationSpec`:

    ssm         the SSM alone
    wm          + working memory
    fifo, importance, store_all, qlearning
                + long-term memory run by that controller
    full        working memory + long-term memory + qlearning

Each is built from the same seed and trained by `memmodel.training.memory.train_memory` for
the same budget (steps and seconds) on the same batches (one seed, the training split of
the spec's task mix); a Q-learning controller learns alongside. The long-term memory's
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
                   it with `memmodel.training.memory.load_checkpoint`)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import MemoryConfig, QLearningConfig
from ..controllers import QLearningController
from ..evaluation import evaluate_stream
from ..model import MemoryLM
from ..tasks import Task, task_from_spec
from .memory import MemoryTrainConfig, train_memory

log = logging.getLogger("memmodel.training.ablation")

VARIANTS = ("ssm", "wm", "fifo", "importance", "store_all", "qlearning", "full")
ROW_FIELDS = ("variant", "task", "T", "n", "accuracy", "ci_low", "ci_high", "chance",
              "entries", "state_bytes", "tokens_per_s", "peak_rss_mb")


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
        train: MemoryTrainConfig fields (the budget: steps, seconds; batch_size, lr, ...),
            the same for every variant; not seed, split or checkpoint.
        qlearning: QLearningConfig fields of the Q-learning controller (horizon: the
            longest training sequence unless given; seed: the spec's unless given).
        eval_tasks: task specs evaluated; their seq_len is replaced by each of eval_lengths.
        eval_lengths: T of the evaluations.
        eval_n, eval_batch_size, segment, eval_split: `evaluate_stream`'s n, batch_size,
            segment and split.
        seed: of the models' init and of the training batches.

    Raises ValueError on construction when a field is unknown or invalid, when a variant's
    config or a task cannot be built, or when the long-term memory's capacity does not bind
    at training length.
    """

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    model: dict[str, Any] = field(default_factory=_default_model)
    wm: dict[str, Any] = field(default_factory=_default_wm)
    ltm: dict[str, Any] = field(default_factory=_default_ltm)
    train_tasks: list[dict[str, Any]] = field(default_factory=_default_train_tasks)
    train: dict[str, Any] = field(default_factory=_default_train)
    qlearning: dict[str, Any] = field(default_factory=_default_qlearning)
    eval_tasks: list[dict[str, Any]] = field(default_factory=_default_eval_tasks)
    eval_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 65536])
    eval_n: int = 32
    eval_batch_size: int = 8
    segment: int = 4096
    eval_split: str = "test"
    seed: int = 0

    def __post_init__(self):
        self.variants = list(self.variants)
        bad = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or bad or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"AblationSpec.variants: expected distinct names from {VARIANTS}, "
                             f"got {self.variants!r}")
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
        for name, own in (("model", _MODEL_OWN), ("train", _TRAIN_OWN)):
            taken = sorted(set(getattr(self, name)) & set(own))
            if taken:
                raise ValueError(f"AblationSpec.{name}: the runner sets {taken} itself")
        if not self.train_tasks or not self.eval_tasks:
            raise ValueError("AblationSpec: expected at least one training and one "
                             "evaluation task")
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
        out["eval_tasks"] = [t.spec() for t in self.evaluation_tasks()]
        out["qlearning"] = dataclasses.asdict(self.qlearning_config())
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
        try:
            return MemoryTrainConfig(**self.train, seed=self.seed, split="train",
                                     checkpoint=checkpoint)
        except TypeError as e:
            raise ValueError(f"AblationSpec.train: {e}") from e

    def qlearning_config(self) -> QLearningConfig:
        kw = dict(horizon=max(t.seq_len for t in self.training_tasks()), seed=self.seed)
        try:
            return QLearningConfig(**{**kw, **self.qlearning})
        except TypeError as e:
            raise ValueError(f"AblationSpec.qlearning: {e}") from e

    def training_tasks(self) -> list[Task]:
        return [task_from_spec(s) for s in self.train_tasks]

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

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None,
               split: Optional[str] = None, index: int = 0):
        i = int(torch.randint(len(self.tasks), (1,), generator=generator))
        return self.tasks[i].sample(batch_size, generator, split=split, index=index)


def train_variant(spec: AblationSpec, variant: str, checkpoint: Optional[str] = None):
    """Build `variant` from the spec's seed and train it: (model, MemoryTrainResult)."""
    config = spec.config(variant)
    torch.manual_seed(spec.seed)
    model = MemoryLM(config)
    controller = None
    if config.ltm_controller == "qlearning":
        controller = QLearningController(config, spec.qlearning_config())
    tasks = spec.training_tasks()
    task = tasks[0] if len(tasks) == 1 else TaskMix(tasks)
    result = train_memory(model, task, spec.train_config(checkpoint), controller)
    return model, result


def run_ablation(spec: AblationSpec, out, progress: bool = False) -> list[dict[str, Any]]:
    """Train and evaluate every variant of `spec`, writing the files listed in the module
    docstring under `out` (the JSON files rewritten after each evaluation, the table and
    the figure after each variant).

    Returns:
        The rows of results.json.
    """
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    _write_json(out / "spec.json", spec.resolved())
    rows: list[dict[str, Any]] = []
    depth_rows: list[dict[str, Any]] = []
    for variant in spec.variants:
        log.info("== %s: training", variant)
        model, trained = train_variant(spec, variant, str(out / "models" / f"{variant}.pt"))
        for task in spec.evaluation_tasks():
            for T in spec.eval_lengths:
                r = evaluate_stream(model, _with_length(task, T), n=spec.eval_n,
                                    batch_size=spec.eval_batch_size, segment=spec.segment,
                                    split=spec.eval_split, progress=progress)
                d = r.to_dict()
                rows.append(dict(
                    variant=variant, task=d["task"], T=T, n=d["n"], accuracy=d["accuracy"],
                    ci_low=d["ci_low"], ci_high=d["ci_high"], chance=d["chance"],
                    entries=d["entries"], state_bytes=d["state_bytes"],
                    tokens_per_s=d["tokens_per_s"], peak_rss_mb=d["peak_rss_mb"],
                    sequences=d["sequences"], token_accuracy=d["token_accuracy"],
                    answer_loss=d["answer_loss"], rss_increase_mb=d["rss_increase_mb"],
                    train_steps=trained.steps, train_seconds=trained.seconds))
                depth_rows += [dict(variant=variant, task=d["task"], T=T, **b)
                               for b in d["depth_bins"]]
                _write_json(out / "results.json", rows)
                _write_json(out / "depth.json", depth_rows)
        (out / "results.md").write_text(markdown_table(rows), encoding="utf-8")
        plot_results(rows, out / "results.png")
    return rows


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


def provenance() -> str:
    """The command, machine, versions and date of this run, as a markdown paragraph."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else _cpu_name()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Command: `python -m memmodel.training.ablation {' '.join(sys.argv[1:])}`  \n"
            f"Machine: {device}, {os.cpu_count()} CPUs, {platform.system()}  \n"
            f"Versions: Python {platform.python_version()}, torch {torch.__version__}  \n"
            f"Date: {when}\n")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one markdown table per task, with the provenance above them."""
    lines = ["# Memory ablation", "", provenance()]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += ["", f"## {task}", "",
                  "| variant | T | n | accuracy [95% CI] | chance | entries | state KB | "
                  "tokens/s | peak RSS MB |",
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            if r["task"] != task:
                continue
            lines.append(
                f"| {r['variant']} | {r['T']} | {r['n']} | {r['accuracy']:.3f} "
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['chance']:.2g} | "
                f"{r['entries']:.1f} | {r['state_bytes'] / 1024:.1f} | "
                f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict[str, Any]], path) -> bool:
    """Accuracy against T (log x), a line per variant with its 95% interval, a panel per
    task, the chance level dashed. Returns False (and logs a warning) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'memmodel[plot]'): %s not "
                    "written", path)
        return False
    tasks = list(dict.fromkeys(r["task"] for r in rows))
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
    p.add_argument("--lengths", default=None, help="comma-separated evaluation lengths")
    p.add_argument("--eval-n", type=int, default=None, help="sequences per evaluation")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-spec", action="store_true",
                   help="print the resolved spec as JSON and exit")
    args = p.parse_args(argv)
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
    run_ablation(spec, args.out, progress=not args.no_progress)
    log.info("results in %s", args.out)


if __name__ == "__main__":
    main()
