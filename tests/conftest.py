"""Test harness: Triton's interpreter on, a fixed seed, NaN-poisoned allocations, markers.

TRITON_INTERPRET must be set before Triton is imported, so it is set here, at the top.
MEMMODEL_COMPILE=0 keeps the CPU fast paths eager: the tests check the chunked code
itself, and the compiled version is checked once, in a test that sets it back on.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MEMMODEL_COMPILE", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

SEED = 0


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    yield


def _poisoned(factory):
    def make(*args, **kwargs):
        t = factory(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    return make


@pytest.fixture(autouse=True)
def _nan_poison(monkeypatch):
    """Fill every float tensor made by torch.empty* with NaN, so an unwritten output fails."""
    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, _poisoned(getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))
    yield
