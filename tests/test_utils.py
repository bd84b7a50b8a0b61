"""kernels/utils.py: the input check, backend selection and the compile switch."""

import pytest
import torch

from memmodel.kernels import utils


def test_check_tensor_binds_and_checks_named_dims():
    dims = {}
    utils.check_tensor("u", torch.zeros(2, 5, 3), ("B", "T", "E"), dims)
    assert dims == {"B": 2, "T": 5, "E": 3}
    with pytest.raises(ValueError, match=r"A: expected shape \[E=3, N\], got \[4, 2\]"):
        utils.check_tensor("A", torch.zeros(4, 2), ("E", "N"), dims)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(t=torch.zeros(2, 3), shape=(2,)), ValueError, r"x: expected 1 dimensions"),
        (dict(t=torch.zeros(2, dtype=torch.int32), shape=(2,)), TypeError, r"x: expected dtype"),
        (dict(t=torch.zeros(0), shape=(None,)), ValueError, r"x: dimension 0 \(\*\) is 0"),
        (dict(t=torch.zeros(4, 4).t(), shape=(4, 4), contiguous=True), ValueError,
         r"x: expected a contiguous tensor"),
        (dict(t=torch.zeros(4, 4).t(), shape=(4, 4), stride_one=True), ValueError,
         r"x: expected stride 1"),
        (dict(t=torch.zeros(2), shape=(2,), device="meta"), ValueError,
         r"x: expected a tensor on meta, got one on cpu"),
        (dict(t=[1, 2], shape=(2,)), TypeError, r"x: expected a torch.Tensor, got list"),
    ],
    ids=["rank", "dtype", "empty", "contiguous", "stride", "device", "type"],
)
def test_check_tensor_errors(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        utils.check_tensor("x", **kwargs)


def test_check_positive_int():
    import numpy as np

    assert utils.check_positive_int("n", 3) == 3
    assert utils.check_positive_int("n", np.int64(5)) == 5
    for bad in (True, False, 0, -1, 2.0, "4", None):
        with pytest.raises(ValueError, match=rf"n: expected a positive int, got {bad!r}"):
            utils.check_positive_int("n", bad)


def test_resolve_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("MEMMODEL_BACKEND", raising=False)
    assert utils.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert utils.resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match=r"backend: 'triton' needs CUDA tensors"):
        utils.resolve_backend("triton", torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert utils.is_interpreter()
    assert utils.resolve_backend("auto", torch.device("cpu")) == "triton"
    monkeypatch.setenv("MEMMODEL_BACKEND", "torch")
    assert utils.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert utils.resolve_backend("triton", torch.device("cpu")) == "triton"
    monkeypatch.setenv("MEMMODEL_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"MEMMODEL_BACKEND: expected one of"):
        utils.resolve_backend("auto", torch.device("cpu"))


def test_compile_switch(monkeypatch):
    monkeypatch.setenv("MEMMODEL_COMPILE", "0")
    assert not utils.compile_enabled()
    monkeypatch.setenv("MEMMODEL_COMPILE", "1")
    assert utils.compile_enabled()
    monkeypatch.setenv("MEMMODEL_COMPILE", "yes")
    with pytest.raises(ValueError, match=r"MEMMODEL_COMPILE: expected 0, 1 or auto"):
        utils.compile_enabled()


def test_failed_compile_falls_back_to_eager(monkeypatch, caplog):
    monkeypatch.setenv("MEMMODEL_COMPILE", "1")

    def broken(*args, **kwargs):
        def run(*a):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    fn = utils.MaybeCompiled(lambda x: x + 1)
    with caplog.at_level("WARNING", logger="memmodel"):
        assert fn(torch.ones(1)).item() == 2
        assert fn(torch.ones(1)).item() == 2
    assert sum("running eagerly" in r.message for r in caplog.records) == 1
