"""Test harness: Triton's interpreter on, a fixed seed, NaN-poisoned allocations, markers.

Without a CUDA GPU, TRITON_INTERPRET=1 is set before any kernel is defined, so the Triton
kernels run on CPU tensors; with one, the kernels compile for it and the `gpu` tests run.
MEMMODEL_COMPILE=0 keeps the CPU fast paths eager: the tests check the chunked code
itself, and the compiled version is checked once, in a test that sets it back on.
"""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MEMMODEL_COMPILE", "0")

SEED = 0


def _vectorise_interpreter_scan():
    """Make Triton's interpreter run `tl.associative_scan` one slice at a time.

    The interpreter scans element by element in Python (about 10 us per element), which
    makes a [64, 16, 16] tile cost seconds. This runs the same sequential inclusive scan,
    in the same order along the axis, vectorised over the other axes with NumPy.
    Only the interpreter is touched; compiled kernels are unaffected.
    """
    try:
        from triton.runtime.interpreter import ScanOps
    except ImportError:  # a Triton without the interpreter layout this patch expects
        return
    if not hasattr(ScanOps, "generic_scan"):
        return

    def generic_scan(self, input):
        ins = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in input]
        outs = [np.empty_like(d) for d in ins]
        dtypes = [arg.dtype for arg in input]
        acc = [self.to_tensor(np.ascontiguousarray(d[0]), dt) for d, dt in zip(ins, dtypes)]
        for i in range(ins[0].shape[0]):
            if i > 0:
                x = [self.to_tensor(np.ascontiguousarray(d[i]), dt) for d, dt in zip(ins, dtypes)]
                ret = self.combine_fn.fn(*acc, *x)
                acc = list(ret) if isinstance(ret, tuple) else [ret]
            for o, a in zip(outs, acc):
                o[i] = a.handle.data
        return [self.to_tensor(np.ascontiguousarray(np.moveaxis(o, 0, self.axis)), dt)
                for o, dt in zip(outs, dtypes)]

    ScanOps.generic_scan = generic_scan


_vectorise_interpreter_scan()


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
