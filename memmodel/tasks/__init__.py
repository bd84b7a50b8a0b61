"""Long-context tasks: byte-level generators with a seed per split and a chance level."""

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
from .passkey import PasskeyBatch, PasskeyTask, key_kept

__all__ = ["IGNORE", "SPLITS", "SPLIT_MIN_ANSWERS", "PasskeyBatch", "PasskeyTask",
           "QueryScores", "Task", "TaskBatch", "answer_metrics", "answer_split", "key_kept",
           "query_metrics"]
