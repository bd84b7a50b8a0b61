"""Memory controllers: who decides what the long-term memory stores, merges, evicts and
reads. See `base` for the interface, `heuristics`, `qlearning` and `gumbel` for the
controllers, `registry` for names."""

from .base import (
    Action,
    BankView,
    ChunkDecision,
    ChunkFeatures,
    Gate,
    LevelFeatures,
    MemoryController,
    Plan,
    on_host,
    ranked,
    uniform_decision,
)
from .gumbel import GumbelController
from .heuristics import (
    FifoController,
    ImportanceController,
    NoMemoryController,
    StoreAllController,
    highest_scores,
    lowest_scores,
    oldest,
)
from .qlearning import (
    Choice,
    Episode,
    QLearner,
    QLearningController,
    QNetwork,
    ReplayBuffer,
    RunningStats,
    Transitions,
    double_dqn_targets,
    nstep_returns,
)
from .registry import CONTROLLERS, build_controller, register_controller

__all__ = [
    "Action", "BankView", "ChunkDecision", "ChunkFeatures", "Gate", "LevelFeatures",
    "MemoryController", "Plan", "on_host", "ranked", "uniform_decision",
    "FifoController", "ImportanceController", "NoMemoryController", "StoreAllController",
    "highest_scores", "lowest_scores", "oldest", "GumbelController",
    "Choice", "Episode", "QLearner", "QLearningController", "QNetwork", "ReplayBuffer",
    "RunningStats", "Transitions", "double_dqn_targets", "nstep_returns",
    "CONTROLLERS", "build_controller", "register_controller",
]
