"""Long-context tasks: byte-level generators with a seed per split and a chance level.

Every task is a dataclass of plain parameters with `sample(batch_size, generator=None,
split=None, index=0)`, `batches(split, batch_size, count=None, start=0)`, `chance`,
`token_chance` and `spec()`; see docs/tasks.md.
"""

from .base import (
    IGNORE,
    SPLIT_MIN_ANSWERS,
    SPLITS,
    QueryScores,
    Task,
    TaskBatch,
    answer_metrics,
    answer_split,
    query_metrics,
)
from .biology import MotifPairTask, load_motif
from .language import CorpusLMTask, ModuleQuestionTask
from .needles import MultiNeedleTask
from .passkey import PasskeyBatch, PasskeyTask, key_kept
from .registry import TASKS, build_task, task_from_spec
from .synthetic import InductionTask, MQARTask, SelectiveCopyTask
from .vision import DigitsStreamTask, digit_pixels, digit_split_indices

__all__ = ["IGNORE", "SPLITS", "SPLIT_MIN_ANSWERS", "TASKS", "CorpusLMTask", "DigitsStreamTask",
           "InductionTask", "MQARTask", "ModuleQuestionTask", "MotifPairTask",
           "MultiNeedleTask", "PasskeyBatch", "PasskeyTask", "QueryScores",
           "SelectiveCopyTask", "Task", "TaskBatch", "answer_metrics", "answer_split",
           "build_task", "digit_pixels", "digit_split_indices", "key_kept", "load_motif",
           "query_metrics", "task_from_spec"]
