"""The package's layout: the config is a leaf, controllers are modules the model owns, and
names register in one place."""

import ast
import pathlib

import pytest
import torch

import memmodel
from memmodel.config import CONTROLLER_NAMES, MemoryConfig
from memmodel.controllers import (
    CONTROLLERS,
    FifoController,
    MemoryController,
    QLearningController,
    register_controller,
)
from memmodel.model import MemoryLM

PACKAGE = pathlib.Path(memmodel.__file__).parent


def _package_imports(path):
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or
                                                     (node.module or "").startswith("memmodel"))]


def test_the_config_imports_nothing_of_the_package():
    assert _package_imports(PACKAGE / "config.py") == []


def test_the_library_does_not_import_its_training_loops():
    # __main__.py is not library code: it is `python -m memmodel`, the command line's entry
    library = [p for p in PACKAGE.rglob("*.py") if "training" not in p.relative_to(PACKAGE).parts
               and p.relative_to(PACKAGE) != pathlib.Path("__main__.py")]
    assert len(library) > 10
    for path in library:
        names = [(n.module or "") for n in _package_imports(path)]
        assert not [n for n in names if "training" in n.split(".")], path


def test_the_registry_and_the_config_know_the_same_names():
    assert set(CONTROLLERS) == CONTROLLER_NAMES


def test_a_registered_controller_is_a_valid_config_name():
    class Oldest(FifoController):
        name = "oldest_first"

    with pytest.raises(ValueError, match="ltm_controller: expected one of"):
        MemoryConfig(ltm_controller="oldest_first")
    register_controller("oldest_first", Oldest)
    try:
        model = MemoryLM(MemoryConfig(d_model=16, ltm_controller="oldest_first", ltm_heads=2,
                                      backend="torch"))
        assert isinstance(model.layers[0].long_term_memory.controller, Oldest)
    finally:
        CONTROLLERS.pop("oldest_first")
        CONTROLLER_NAMES.discard("oldest_first")
    with pytest.raises(TypeError, match="factory: expected a callable"):
        register_controller("x", 3)


def test_controllers_are_modules_the_model_owns():
    cfg = MemoryConfig(d_model=16, n_layers=2, ltm_controller="qlearning", ltm_heads=2,
                       ltm_chunk_size=4, ltm_summaries=1, ltm_levels=1, ltm_capacity=2,
                       backend="torch")
    model = MemoryLM(cfg)
    shared = QLearningController(cfg)
    for layer in model.layers:
        layer.long_term_memory.controller = shared
    assert isinstance(shared, torch.nn.Module) and isinstance(shared, MemoryController)
    keys = [k for k in model.state_dict() if ".controller.online." in k]
    assert keys and all(k.startswith("layers.") for k in keys)
    names = {id(p) for p in shared.parameters()}
    assert names <= {id(p) for p in model.parameters()}, "one shared module, its parameters once"
    model.eval()
    assert not shared.training
    model.to(torch.float64)
    assert next(shared.online.parameters()).dtype == torch.float64
    model.to(torch.float32)
    # a Q update leaves no gradient behind, so the language model's optimiser skips them
    from memmodel.controllers import Transitions
    F = shared.feature_dim
    shared.learner.update(Transitions(torch.rand(4, F), torch.rand(4), torch.rand(4),
                                      torch.rand(4, 3, F), torch.ones(4, 3, dtype=torch.bool)))
    assert all(p.grad is None for p in shared.parameters())
