"""memmodel: a selective state-space model with external memory.

    model, task = memmodel.load("results/models/full.pt")   # a trained model, ready to evaluate
"""

from .checkpoint import load
from .model import MemoryClassifier, MemoryLM

__all__ = ["MemoryClassifier", "MemoryLM", "load"]
