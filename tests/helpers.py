"""Shared test helpers: one closeness check, small input factories, and a way to run an
autotuned kernel with one chosen config under the interpreter."""

import torch

# Bound on the relative RMS error, by the dtype of the tensor under test.
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def assert_close(actual, expected, name="tensor", dtype=None, rtol=None):
    """Fail unless `actual` is within a relative RMS error of `expected`.

    The bound is RTOL[dtype] (dtype defaults to actual's), or `rtol` when given. NaN or
    Inf in `actual` where `expected` is finite fails, and shapes must match exactly.
    """
    assert actual is not None, f"{name}: got None"
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    bad = ~torch.isfinite(actual.detach()) & torch.isfinite(expected.detach())
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values"
    bound = rtol if rtol is not None else RTOL[dtype or actual.dtype]
    err = rel_rms_error(actual, expected)
    assert err <= bound, f"{name}: relative RMS error {err:.3e} > {bound:.1e}"


def force_config(monkeypatch, kernel, **kwargs):
    """Make the autotuned `kernel` run with the one config `kwargs` (4 warps) for this test,
    whatever the tuner would choose: a way to test a GPU-only tuning candidate."""
    import triton

    monkeypatch.setattr(kernel, "configs", [triton.Config(kwargs, num_warps=4)])
    monkeypatch.setattr(kernel, "cache", {})


GRAD_LAYOUTS = ("permuted", "broadcast", "expanded")


def layout_loss(outputs, layout, seed=2):
    """A scalar of `outputs` (tensors or None) whose gradient reaches each of them in
    `layout`, as autograd hands it to an op's backward:

        "permuted"   a random tensor with the dimensions reversed (no unit stride last)
        "broadcast"  one random row for every leading index: strides (0, ..., 0, 1)
        "expanded"   the gradient of a plain sum: ones with every stride 0
    """
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for x in outputs:
        if x is None:
            continue
        if layout == "permuted":
            xp = x.permute(*reversed(range(x.dim())))
            loss = loss + (xp * torch.randn(xp.shape, generator=g).to(x.device)).sum()
        elif layout == "broadcast":
            row = torch.randn(x.shape[-1], generator=g).to(x.device)
            loss = loss + (x.sum(tuple(range(x.dim() - 1))) * row).sum()
        elif layout == "expanded":
            loss = loss + x.sum()
        else:
            raise ValueError(f"layout: expected one of {GRAD_LAYOUTS}, got {layout!r}")
    return loss
