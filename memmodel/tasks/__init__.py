"""Long-context tasks: byte-level generators with a seed per split and a chance level."""

from .passkey import IGNORE, PasskeyBatch, PasskeyTask, answer_metrics, key_kept

__all__ = ["IGNORE", "PasskeyBatch", "PasskeyTask", "answer_metrics", "key_kept"]
