"""Controllers by name: `CONTROLLERS`, `register_controller`, `build_controller`.

A name registered here is also a valid `MemoryConfig.ltm_controller` (the config keeps
the list of names, since it imports nothing of the package).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..config import CONTROLLER_NAMES
from .base import MemoryController
from .gumbel import GumbelController
from .heuristics import (
    FifoController,
    ImportanceController,
    NoMemoryController,
    StoreAllController,
)
from .qlearning import QLearningController

# name -> factory(config): every entry returns a MemoryController built from the config.
CONTROLLERS: dict[str, Callable[..., MemoryController]] = {
    "none": NoMemoryController,
    "fifo": FifoController,
    "importance": ImportanceController,
    "store_all": StoreAllController,
    "qlearning": QLearningController,
    "gumbel": GumbelController,
}


def register_controller(name: str, factory: Callable[..., MemoryController]):
    """Make `name` build `factory(config)` (a MemoryController) and a valid
    `ltm_controller`.

    Example:
        >>> register_controller("lru", LRUController)
        >>> MemoryLM(MemoryConfig(ltm_controller="lru"))
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_controller: name: expected a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_controller: factory: expected a callable, got "
                        f"{type(factory).__name__}")
    CONTROLLERS[name] = factory
    CONTROLLER_NAMES.add(name)


def build_controller(config: Optional[Any] = None, name: Optional[str] = None) -> MemoryController:
    """The controller named `name` (default: `config.ltm_controller`).

    Args:
        config: a MemoryConfig, or None when `name` is given.
        name: a key of `CONTROLLERS`.

    Example:
        >>> build_controller(name="fifo")
        FifoController()
    """
    if name is None:
        if config is None:
            raise ValueError("build_controller: expected a config or a name, got neither")
        name = config.ltm_controller
    if name not in CONTROLLERS:
        raise ValueError(f"controller: expected one of {sorted(CONTROLLERS)}, got {name!r}")
    controller = CONTROLLERS[name](config)
    if not isinstance(controller, MemoryController):
        raise TypeError(f"build_controller: the factory of {name!r} returned a "
                        f"{type(controller).__name__}, expected a MemoryController")
    return controller
