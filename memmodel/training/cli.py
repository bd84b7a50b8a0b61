"""The `memmodel` command: train, eval, ablate, demo and bench (docs/cli.md).

    memmodel train --config run.json --set model.wm_slots=4 --out runs/wm
    torchrun --nproc_per_node=4 -m memmodel train --config run.yaml --out runs/ddp
    memmodel eval runs/wm/model.pt --set lengths=[1024,8192] --out runs/wm/eval
    memmodel ablate --spec spec.json --set train.steps=50 --out results/small
    memmodel demo --out results
    memmodel bench bench_evaluation_cpu -- --lengths 16384,65536

A run is a config file (JSON, or YAML with PyYAML installed) and overrides on top of it,
each `--set SECTION.FIELD=VALUE` or `--SECTION.FIELD VALUE` (VALUE read as JSON when it
parses, else as a string: `--set model.ltm_capacity=[4,2]`, `--set model.ltm_controller=fifo`).
What the run used, every default filled in, is written beside its results
(config.json; the ablation's spec.json). `--print-config` shows it without running.

A training run's config (`memmodel train --print-config` prints the defaults):

    loop       "memory" (a task, the memory controller learning alongside:
               memmodel.training.memory) or "lm" (the byte corpus: memmodel.training.lm)
    model      MemoryConfig fields: sizes, the working memory (wm_*), the long-term memory
               (ltm_*, its controller ltm_controller), memory_layers, backend
    qlearning  QLearningConfig fields of a "qlearning" controller: costs (memory_cost,
               retrieve_cost), exploration, replay, network
    task       the task's spec (memmodel.tasks.task_from_spec), loop "memory"
    train      MemoryTrainConfig (loop "memory") or TrainConfig (loop "lm") fields;
               batch_size is the global batch, split over the ranks under torchrun
    threads    torch CPU threads (null: torch's default)

It writes under --out: config.json, model.pt (the checkpoint, loadable with
`memmodel.load`; always OUT/model.pt, whatever train.checkpoint says), train.json (the
loss of every step, the logged history, the final evaluation) and train_loss.png (loss
against step; needs the `plot` extra).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("memmodel.training.cli")

COMMANDS = ("train", "eval", "ablate", "demo", "bench")
LOOPS = ("memory", "lm")

# `memmodel train` with no config: the memory loop on the passkey task, a small model
# with working and long-term memory and a Q-learning controller (its defaults as
# `python -m memmodel.training.memory`'s).
DEFAULT_TRAIN: dict[str, Any] = {
    "loop": "memory",
    "model": dict(d_model=64, n_layers=2, d_state=16, wm_slots=4, wm_heads=2,
                  ltm_controller="qlearning", ltm_heads=2, ltm_chunk_size=16,
                  ltm_summaries=1, ltm_levels=1, ltm_capacity=[2], ltm_merge=2),
    "qlearning": dict(memory_cost=0.01, retrieve_cost=0.01, n_step=4, epsilon_decay=600),
    "task": dict(name="passkey", seq_len=255, chunk_size=16, key_len=1),
    "train": dict(steps=300, batch_size=16, lr=3e-3),
    "threads": None,
}
DEFAULT_LM = dict(d_model=128, n_layers=2, d_state=16)

DEFAULT_EVAL: dict[str, Any] = {
    "task": None, "lengths": [1024, 8192], "n": 64, "batch_size": 8, "segment": 4096,
    "split": "test", "depth_bins": 5, "threads": None,
}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


# ---------------------------------------------------------------------------------------
# config files and overrides


def load_config(path) -> dict[str, Any]:
    """A config file as a dict: JSON, or YAML (.yaml / .yml; needs PyYAML).

    Raises:
        ConfigError: the file is not a mapping, does not parse, or is YAML without PyYAML.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: a YAML config needs PyYAML (pip install "
                              f"'memmodel[yaml]'), or write the config as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); YAML files need a .yaml or "
                              f".yml suffix") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """An override's value: JSON when it parses (numbers, true / false / null, lists,
    objects, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Set `KEY.PATH=VALUE` in `data` (in place; also returned), making the sections on
    the way. Raises ConfigError for a malformed assignment or a path through a value."""
    key, sep, value = assignment.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set: expected KEY=VALUE with KEY a dotted path such as "
                          f"model.wm_slots, got {assignment!r}")
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is {child!r}, not a "
                              f"section")
        node = child
    node[parts[-1]] = parse_value(value)
    return data


def split_dotted_flags(extra: list[str]) -> list[str]:
    """`--KEY VALUE` and `--KEY=VALUE` (KEY a dotted path such as model.wm_slots) among
    the arguments argparse did not know, as KEY=VALUE assignments. Raises ConfigError for
    anything else."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"unrecognised argument {arg!r} (an override is --set "
                              f"KEY=VALUE or --KEY VALUE)")
        if "=" in arg:
            out.append(arg[2:])
            i += 1
        elif i + 1 < len(extra):
            out.append(f"{arg[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise ConfigError(f"{arg}: expected a value after it")
    return out


def merged(defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """defaults updated by data, one level deep: a section given replaces the defaults'
    keys it names and keeps the others."""
    out = copy.deepcopy(defaults)
    for key, value in data.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(where: str, given: dict[str, Any], allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of "
                          f"{sorted(allowed)}")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(where: str, cls, values: dict[str, Any]):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got "
                          f"{values!r}")
    _check_keys(where, values, _field_names(cls))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------
# train


def resolve_train_config(data: dict[str, Any]) -> dict[str, Any]:
    """A training run's config with every default filled in and every section checked
    (MemoryConfig, QLearningConfig, the task, the loop's train config): what
    `memmodel train` runs and writes as config.json. Reading it back resolves to itself.

    Raises:
        ConfigError: an unknown section or field, or a value a config refuses (the
            message names the section and the field).
    """
    from ..config import MemoryConfig, QLearningConfig
    from ..tasks import task_from_spec
    from .lm import TrainConfig
    from .memory import MemoryTrainConfig

    if not isinstance(data, dict):
        raise ConfigError(f"train config: expected a mapping, got {type(data).__name__}")
    _check_keys("train config", data, DEFAULT_TRAIN)
    loop = data.get("loop", DEFAULT_TRAIN["loop"])
    if loop not in LOOPS:
        raise ConfigError(f"loop: expected one of {list(LOOPS)}, got {loop!r}")
    defaults = copy.deepcopy(DEFAULT_TRAIN)
    if loop == "lm":  # the byte corpus: a plain model, no task
        defaults.update(model=dict(DEFAULT_LM), qlearning={}, task=None,
                        train=dict(seconds=90.0))
    cfg = merged(defaults, data)
    model = _build("model", MemoryConfig, cfg["model"])
    rl = _build("qlearning", QLearningConfig, cfg["qlearning"] or {})
    if loop == "lm":
        if cfg.get("task") is not None:
            raise ConfigError("task: expected null with loop 'lm' (it trains on the byte "
                              f"corpus), got {cfg['task']!r}")
        train = _build("train", TrainConfig, cfg["train"])
        task = None
    else:
        train = _build("train", MemoryTrainConfig, cfg["train"])
        try:
            task = task_from_spec(cfg["task"]).spec()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"task: {e}") from None
    threads = cfg.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 1):
        raise ConfigError(f"threads: expected a positive int or null, got {threads!r}")
    return {"loop": loop, "model": model.to_dict(),
            "qlearning": dataclasses.asdict(rl) if model.ltm_controller == "qlearning"
            else {}, "task": task, "train": _plain(dataclasses.asdict(train)),
            "threads": threads}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in d.items()}


def run_train(cfg: dict[str, Any], out, resume: Optional[str] = None,
              progress: bool = True) -> dict[str, Any]:
    """Train what the resolved config `cfg` describes (under torchrun: on every rank);
    rank 0 writes config.json, model.pt, train.json and train_loss.png under `out`.
    The results (train.json's content)."""
    import torch

    from ..config import MemoryConfig, QLearningConfig
    from ..controllers import QLearningController
    from ..model import MemoryLM
    from ..tasks import task_from_spec
    from . import distributed
    from .lm import TrainConfig, train
    from .memory import MemoryTrainConfig, train_memory

    ctx = distributed.current()
    out = Path(out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    config = MemoryConfig(**cfg["model"])
    results: dict[str, Any] = {"loop": cfg["loop"], "world_size": ctx.world_size,
                               "resumed_from": resume}
    if cfg["loop"] == "lm":
        tc = TrainConfig(**cfg["train"])
        r = train(config, tc, resume=resume, progress=progress)
        results.update(steps=r.steps, losses=r.train_losses, val_loss_start=r.val_loss_start,
                       val_loss_end=r.val_loss_end, tokens_per_s=r.tokens_per_s,
                       compile_s=r.compile_s)
    else:
        tc = MemoryTrainConfig(**cfg["train"])
        task = task_from_spec(cfg["task"])
        torch.manual_seed(tc.seed)
        model = MemoryLM(config)
        controller = None
        if config.ltm_controller == "qlearning":
            controller = QLearningController(config, QLearningConfig(**cfg["qlearning"]))
        r = train_memory(model, task, tc, controller, resume=resume, progress=progress)
        results.update(steps=r.steps, losses=r.losses, history=r.history, final=r.final,
                       seconds=r.seconds)
    results["first_step"] = results["steps"] - len(results["losses"]) + 1
    if ctx.is_main:
        write_json(out / "train.json", results)
        plot_losses(results, out / "train_loss.png")
    ctx.barrier()
    return results


def plot_losses(results: dict[str, Any], path) -> bool:
    """The loss of every step against the step (a line; its running mean over 1/20 of
    the run on top). False (and a warning) without matplotlib."""
    from ..plotting import pyplot

    plt = pyplot(path)
    if plt is None:
        return False
    losses = results["losses"]
    steps = list(range(results["first_step"], results["first_step"] + len(losses)))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(steps, losses, linewidth=0.8, alpha=0.5, label="loss per step")
    w = max(1, len(losses) // 20)
    if w > 1:
        run = [sum(losses[max(0, i - w + 1):i + 1]) / len(losses[max(0, i - w + 1):i + 1])
               for i in range(len(losses))]
        ax.plot(steps, run, linewidth=1.6, label=f"mean over {w} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("answer loss" if results["loop"] == "memory" else "loss (nats / byte)")
    ax.set_title(f"training ({results['loop']} loop, {results['world_size']} "
                 f"process{'es' if results['world_size'] > 1 else ''})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_json(path: Path, data) -> None:
    """`data` as indented JSON at `path`, written whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# eval


def resolve_eval_config(data: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's config with the defaults filled in (DEFAULT_EVAL); checked."""
    _check_keys("eval config", data, DEFAULT_EVAL)
    cfg = merged(DEFAULT_EVAL, data)
    lengths = cfg["lengths"]
    if (not isinstance(lengths, list) or not lengths
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1
                       for t in lengths)):
        raise ConfigError(f"lengths: expected a non-empty list of positive ints, got "
                          f"{lengths!r}")
    for key in ("n", "batch_size", "segment", "depth_bins"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{key}: expected a positive int, got {v!r}")
    if cfg["split"] not in ("train", "val", "test"):
        raise ConfigError(f"split: expected 'train', 'val' or 'test', got {cfg['split']!r}")
    if cfg["task"] is not None and not isinstance(cfg["task"], (dict, list)):
        raise ConfigError(f"task: expected a task spec, a list of them or null, got "
                          f"{cfg['task']!r}")
    return cfg


def run_eval(checkpoint, cfg: dict[str, Any], out, progress: bool = True
             ) -> list[dict[str, Any]]:
    """Stream the model of `checkpoint` (`memmodel.load`) through each task at each
    length (`memmodel.evaluation.evaluate_stream`); writes eval.json (one row per task
    and length), eval_config.json and eval.png (accuracy against length) under `out`.

    The tasks: cfg["task"] (a spec or a list of specs), else the checkpoint's training
    task (each task of a mix). Raises ConfigError when there is neither (a
    language-model checkpoint and no task)."""
    import torch

    from .. import load
    from ..evaluation import evaluate_stream
    from ..tasks import task_from_spec
    from .ablation import plot_results

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    model, saved = load(checkpoint)
    specs = cfg["task"] if cfg["task"] is not None else saved
    if specs is None:
        raise ConfigError(f"task: {checkpoint} holds a language model without a task; give "
                          f"one, e.g. --set task.name=passkey")
    if isinstance(specs, dict) and specs.get("name") == "mix":
        specs = specs["tasks"]
    try:
        tasks = [task_from_spec(s) for s in (specs if isinstance(specs, list) else [specs])]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task: {e}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval_config.json", {"checkpoint": os.fspath(checkpoint), **cfg,
                                          "task": [t.spec() for t in tasks]})
    name = Path(checkpoint).stem
    rows = []
    for task in tasks:
        for T in cfg["lengths"]:
            r = evaluate_stream(model, task, seq_len=T, n=cfg["n"],
                                batch_size=cfg["batch_size"], segment=cfg["segment"],
                                split=cfg["split"], depth_bins=cfg["depth_bins"],
                                progress=progress).to_dict()
            rows.append({"variant": name, "task": r.pop("task"), "T": T, **r})
            write_json(out / "eval.json", rows)
    plot_results(rows, out / "eval.png")
    return rows


# ---------------------------------------------------------------------------------------
# bench


def benchmarks_dir() -> Path:
    """The checkout's benchmarks/ folder (the scripts are not installed).

    Raises:
        ConfigError: the package does not run from a checkout that has one.
    """
    here = Path(__file__).resolve().parents[2] / "benchmarks"
    if not here.is_dir():
        raise ConfigError(f"bench: the benchmark scripts live in the source checkout's "
                          f"benchmarks/ folder, which is not at {here} (the package is "
                          f"installed, not run from a checkout); clone the repository "
                          f"and `pip install -e .` it")
    return here


def benchmark_names() -> list[str]:
    return sorted(p.stem for p in benchmarks_dir().glob("*.py")
                  if p.stem not in ("harness", "summarize", "dry_run") and
                  not p.stem.startswith("_"))


X_KEYS = ("T", "seq_len", "M", "capacity")
Y_KEYS = ("tokens_per_s", "Mtok_s_fwd_bwd", "fwd_ms", "ms_fwd", "ms", "seconds",
          "peak_rss_mb")


def run_bench(names: list[str], args: list[str], out, progress: bool = True
              ) -> dict[str, list[dict[str, Any]]]:
    """Run benchmarks/<name>.py with `args` for each name, in turn (a bar over them);
    their output passes through; the JSON lines each prints go to <out>/<name>.jsonl and,
    when they vary a length (T, seq_len, M) and report a speed, to <out>/<name>.png (the
    scaling, log-log). The rows of each, by name.

    Raises:
        ConfigError: an unknown benchmark, or one that exits with an error.
    """
    from tqdm.auto import tqdm

    folder = benchmarks_dir()
    known = benchmark_names()
    for name in names:
        if name not in known:
            raise ConfigError(f"bench: expected a benchmark from {known}, got {name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    for name in tqdm(names, desc="benchmarks", unit="script",
                     disable=not progress or len(names) < 2):
        cmd = [sys.executable, str(folder / f"{name}.py"), *args]
        log.info("$ %s", " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                cwd=folder.parent)
        rows = []
        for line in proc.stdout:
            sys.stdout.write(line)
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        if proc.wait():
            raise ConfigError(f"bench: {name} exited with status {proc.returncode}")
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        plot_scaling(rows, out / f"{name}.png", name)
        found[name] = rows
    return found


def plot_scaling(rows: list[dict[str, Any]], path, title: str = "") -> bool:
    """A benchmark's speed against its length, log-log, a line per case (the rows'
    other string fields). False when the rows vary no length or report no speed, or
    without matplotlib (with a warning)."""
    x = next((k for k in X_KEYS if len({r.get(k) for r in rows if k in r}) > 1), None)
    y = next((k for k in Y_KEYS if any(isinstance(r.get(k), (int, float)) for r in rows)),
             None)
    if x is None or y is None:
        return False
    from ..plotting import pyplot

    plt = pyplot(path)
    if plt is None:
        return False
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)):
            label = " ".join(f"{k}={v}" for k, v in r.items()
                             if isinstance(v, str) and k not in (x, y)) or title
            groups.setdefault(label, []).append((r[x], r[y]))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, pts in groups.items():
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------
# the command line


def _run_parser(sub, name: str, help: str, description: str, config_help: str):
    p = sub.add_parser(name, help=help, description=description, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE", help=config_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. model.wm_slots=4 (VALUE as JSON when it "
                        "parses); repeatable. --KEY VALUE does the same")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memmodel", description="Train, evaluate, ablate and benchmark memmodel's "
        "memory models. `memmodel COMMAND --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    t = _run_parser(sub, "train", "train a model (on several processes under torchrun)",
                    "Train a model and its memory controller; under `torchrun "
                    "--nproc_per_node=N -m memmodel train ...` on N processes "
                    "(DistributedDataParallel).\n\n"
                    + __doc__[__doc__.index("A training run's config"):],
                    "a JSON or YAML run config (default: `--print-config` shows it)")
    t.add_argument("--out", default="runs/train", help="folder for the results "
                   "(default %(default)s)")
    t.add_argument("--resume", default=None, metavar="PATH",
                   help="go on from this checkpoint (written on any number of processes) "
                        "to the config's steps")
    e = _run_parser(sub, "eval", "stream a trained model through its task at each length",
                    "Evaluate a checkpoint (`memmodel.load`) on its training task (or "
                    "the config's `task`) at each of `lengths`, streamed in segments.\n"
                    "Config keys: " + ", ".join(DEFAULT_EVAL) + ".\nWrites eval.json, "
                    "eval_config.json and eval.png (accuracy against length) under --out.",
                    "a JSON or YAML evaluation config")
    e.add_argument("checkpoint", help="a model.pt of `memmodel train`, or any checkpoint "
                                      "`memmodel.load` reads")
    e.add_argument("--out", default=None, help="folder for the results (default: "
                                               "eval/ beside the checkpoint)")
    a = _run_parser(sub, "ablate", "train the memory variants and evaluate each at "
                    "every length", "The memory ablation (memmodel.training.ablation): the "
                    "config is an AblationSpec (`--print-config` shows the defaults); the "
                    "resolved spec is written as spec.json beside the results.",
                    "a JSON or YAML AblationSpec")
    a.add_argument("--spec", dest="config", default=None, metavar="FILE",
                   help="the same as --config")
    a.add_argument("--out", default=None, help="folder for the results and models")
    a.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a.add_argument("--workers", type=int, default=1,
                   help="processes training and evaluating variants side by side")
    sub.add_parser("demo", help="the package's demo: the memory ablation from 1K to 128K "
                   "tokens (`memmodel demo --help`)", add_help=False)
    b = sub.add_parser("bench", help="run benchmark scripts of the checkout's benchmarks/",
                       description="Run benchmarks/<NAME>.py (in a source checkout) with the "
                       "arguments after `--`; JSON lines they print are saved as "
                       "<out>/<NAME>.jsonl and their scaling plotted as <out>/<NAME>.png.")
    b.add_argument("names", nargs="*", metavar="NAME", help="benchmark scripts, without .py")
    b.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    b.add_argument("--out", default="runs/bench", help="folder for the results "
                   "(default %(default)s)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _configure_logging(rank: int = 0):
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s" if rank == 0 else
                        f"[rank {rank}] %(message)s")
    logging.getLogger().setLevel(level)


def _run_data(args, extra: list[str]) -> dict[str, Any]:
    data = load_config(args.config) if args.config else {}
    for assignment in args.set + split_dotted_flags(extra):
        apply_override(data, assignment)
    return data


def main(argv: Optional[list[str]] = None) -> int:
    """The `memmodel` command on `argv` (default: sys.argv[1:]); its exit status. A bad
    config, override or checkpoint exits with status 2 and a message naming it."""
    from ..checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "demo":  # the demo's own command line
        from . import demo

        demo.main(argv[1:])
        return 0
    if argv and argv[0] == "bench" and "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1:]
    else:
        bench_args = []
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "bench":
            if extra:
                raise ConfigError(f"bench: unrecognised arguments {extra}; a benchmark's "
                                  f"own arguments go after `--`")
            _configure_logging()
            if args.list or not args.names:
                sys.stdout.write("\n".join(benchmark_names()) + "\n")
                return 0
            run_bench(args.names, bench_args, args.out, progress=not args.no_progress)
            return 0
        data = _run_data(args, extra)
        if args.command == "train":
            return _train(args, data)
        if args.command == "eval":
            cfg = resolve_eval_config(data)
            if args.print_config:
                sys.stdout.write(json.dumps(cfg, indent=1) + "\n")
                return 0
            _configure_logging()
            out = args.out or str(Path(args.checkpoint).resolve().parent / "eval")
            rows = run_eval(args.checkpoint, cfg, out, progress=not args.no_progress)
            sys.stdout.write(_eval_table(rows) + "\n")
            return 0
        return _ablate(args, data, "memmodel " + " ".join(argv))
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        parser.exit(2, f"memmodel {args.command}: error: {e}\n")


def _train(args, data: dict[str, Any]) -> int:
    from . import distributed

    cfg = resolve_train_config(data)
    # the checkpoint belongs with the results: OUT/model.pt, whatever a reused config says
    given, own = cfg["train"]["checkpoint"], os.path.join(args.out, "model.pt")
    cfg["train"]["checkpoint"] = own
    cfg = resolve_train_config(cfg)
    if args.print_config:
        sys.stdout.write(json.dumps(cfg, indent=1) + "\n")
        return 0
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()  # a group made by the caller
    ctx = distributed.init_distributed()
    _configure_logging(ctx.rank)
    if given is not None and os.path.normpath(given) != os.path.normpath(own):
        log.info("train.checkpoint: writing %s (the checkpoint goes with --out), not %s",
                 own, given)
    try:
        ctx.local_batch(cfg["train"]["batch_size"], "train.batch_size")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        results = run_train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    finally:
        if not joined:
            distributed.shutdown()
    if ctx.is_main:
        final = results.get("final") or {k: results[k] for k in ("val_loss_start",
                                                                "val_loss_end")}
        sys.stdout.write(f"{results['steps']} steps on {ctx.world_size} process"
                         f"{'es' if ctx.world_size > 1 else ''}; " + ", ".join(
                             f"{k} {v:.3f}" for k, v in final.items()) +
                         f"\nresults in {args.out}: " + ", ".join(sorted(
                             p.name for p in Path(args.out).iterdir() if p.is_file())) + "\n")
    return 0


def _eval_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | T | n | accuracy | 95% CI | chance | tokens/s |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    lines += [f"| {r['task']} | {r['T']} | {r['n']} | {r['accuracy']:.3f} | "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['chance']:.3f} | "
              f"{r['tokens_per_s']:,.0f} |" for r in rows]
    return "\n".join(lines)


def _ablate(args, data: dict[str, Any], command: str) -> int:
    import torch

    from .ablation import AblationSpec, markdown_table, run_ablation

    try:
        spec = AblationSpec.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if args.print_config:
        sys.stdout.write(json.dumps(spec.resolved(), indent=1) + "\n")
        return 0
    if args.out is None:
        raise ConfigError("--out: expected a folder for the results")
    _configure_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers < 1:
        raise ConfigError(f"--workers: expected a positive int, got {args.workers}")
    rows = run_ablation(spec, args.out, progress=not args.no_progress, command=command,
                        workers=args.workers)
    sys.stdout.write(markdown_table(rows, spec, command) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
