"""Tasks by name, and back from their specs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .base import SPEC_KEYS, Task
from .biology import MotifPairTask
from .language import CorpusLMTask, ModuleQuestionTask
from .needles import MultiNeedleTask
from .passkey import PasskeyTask
from .synthetic import InductionTask, MQARTask, SelectiveCopyTask
from .vision import DigitsStreamTask

TASKS: dict[str, type] = {cls.name: cls for cls in (
    PasskeyTask, MultiNeedleTask, MQARTask, SelectiveCopyTask, InductionTask,
    CorpusLMTask, ModuleQuestionTask, DigitsStreamTask, MotifPairTask)}


def build_task(name: str, **kwargs) -> Task:
    """TASKS[name](**kwargs), e.g. build_task("mqar", seq_len=4096, n_pairs=64)."""
    if name not in TASKS:
        raise ValueError(f"build_task: expected a task name in {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**kwargs)


def task_from_spec(spec: Mapping[str, Any]) -> Task:
    """The task `spec` describes (a dict from `task.spec()`, e.g. read back from JSON).

    The parameters rebuild it; the descriptive keys (SPEC_KEYS) may be left out, but when
    present (the format text aside) they must match the rebuilt task's.
    """
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"task_from_spec: expected a dict with a 'name', got {spec!r}")
    name = spec["name"]
    if name not in TASKS:
        raise ValueError(f"task_from_spec: expected a task name in {sorted(TASKS)}, got "
                         f"{name!r}")
    cls = TASKS[name]
    params = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - params - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"task_from_spec: expected only {cls.__name__} parameters and "
                         f"{list(SPEC_KEYS)}, got {unknown}")
    task = cls(**{k: v for k, v in spec.items() if k in params})
    rebuilt = task.spec()
    for key in SPEC_KEYS:
        if key != "format" and key in spec and spec[key] != rebuilt[key]:
            raise ValueError(f"task_from_spec: spec[{key!r}] = {spec[key]!r}, expected "
                             f"{rebuilt[key]!r} for the parameters given")
    return task
