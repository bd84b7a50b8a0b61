"""Shared helpers for every op: input checks, backend selection, interpreter detection,
and the optional `torch.compile` wrapper used by the CPU fast paths.

The input check is one function, `check_tensor`, that every public op calls. Shapes are
written with symbolic dimension names; the first tensor that shows a name binds it and
every later tensor must agree, so a mismatch is reported by name:

    dims = {}
    check_tensor("u", u, ("B", "T", "E"), dims)
    check_tensor("A", A, ("E", "N"), dims)     # E must equal u's E
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Callable, Optional, Union

import torch

logger = logging.getLogger("memmodel")

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int32, torch.int64)
BACKENDS = ("auto", "triton", "torch")

Dim = Union[int, str, None]


def _fmt_shape(spec: Sequence[Dim], dims: dict) -> str:
    parts = []
    for d in spec:
        if isinstance(d, str):
            parts.append(f"{d}={dims[d]}" if d in dims else d)
        else:
            parts.append("*" if d is None else str(d))
    return "[" + ", ".join(parts) + "]"


def check_tensor(
    name: str,
    t,
    shape: Sequence[Dim],
    dims: Optional[dict] = None,
    *,
    dtypes: Optional[Sequence[torch.dtype]] = FLOAT_DTYPES,
    device: Optional[torch.device] = None,
    contiguous: bool = False,
    stride_one: bool = False,
) -> torch.Tensor:
    """Check one tensor argument and bind its symbolic dimensions.

    Args:
        name: the argument's name, used in the error message.
        t: the value passed.
        shape: one entry per dimension: an int (exact size), a str (a named size bound on
            first sight and checked afterwards) or None (any size).
        dims: the dictionary of named sizes shared by the checks of one call.
        dtypes: allowed dtypes, or None for any.
        device: the device the tensor must be on, or None.
        contiguous: require `t.is_contiguous()`.
        stride_one: require the last dimension to have stride 1.

    Returns:
        t, unchanged.

    Raises:
        TypeError: t is not a tensor or has a dtype outside `dtypes`.
        ValueError: wrong rank, a size that disagrees with `shape`/`dims`, a zero size,
            the wrong device, or a layout that is not allowed.
    """
    if dims is None:
        dims = {}
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape):
        raise ValueError(
            f"{name}: expected {len(shape)} dimensions {_fmt_shape(shape, dims)}, "
            f"got {t.dim()} with shape {list(t.shape)}"
        )
    for i, (want, got) in enumerate(zip(shape, t.shape)):
        if got == 0:
            raise ValueError(
                f"{name}: dimension {i} ({want if want is not None else '*'}) is 0; "
                f"empty tensors are not accepted (shape {list(t.shape)})"
            )
        if want is None:
            continue
        if isinstance(want, str):
            if want not in dims:
                dims[want] = got
                continue
            want_size = dims[want]
        else:
            want_size = want
        if got != want_size:
            label = f"{want}={want_size}" if isinstance(want, str) else str(want_size)
            raise ValueError(
                f"{name}: expected shape {_fmt_shape(shape, dims)}, got {list(t.shape)} "
                f"(dimension {i} should be {label}, got {got})"
            )
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({allowed}), got {str(t.dtype)[6:]}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()}")
    if stride_one and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected stride 1 in the last dimension, got {t.stride()}")
    return t


def check_same_dtype(names: Sequence[str], tensors: Sequence[Optional[torch.Tensor]]) -> None:
    """Raise TypeError unless every given (non-None) tensor has the first one's dtype."""
    pairs = [(n, t) for n, t in zip(names, tensors) if t is not None]
    first_name, first = pairs[0]
    for n, t in pairs[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{n}: expected the same dtype as {first_name} ({str(first.dtype)[6:]}), "
                f"got {str(t.dtype)[6:]}"
            )


def check_cu_seqlens(cu_seqlens, total: int, batch: int, device: torch.device) -> int:
    """Check packed-sequence offsets and return the number of sequences.

    Args:
        cu_seqlens: [num_seqs + 1] int32/int64, 0 first, strictly increasing, `total` last.
        total: T, the packed length.
        batch: the batch size of the packed inputs; must be 1.
        device: the inputs' device.
    """
    check_tensor("cu_seqlens", cu_seqlens, (None,), dtypes=INT_DTYPES, device=device)
    if cu_seqlens.numel() < 2:
        raise ValueError(
            f"cu_seqlens: expected at least 2 offsets [0, ..., T], got {cu_seqlens.tolist()}"
        )
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch size 1, got {batch}")
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens: expected the first offset to be 0, got {offsets[0]}")
    if offsets[-1] != total:
        raise ValueError(
            f"cu_seqlens: expected the last offset to equal T={total}, got {offsets[-1]}"
        )
    for i in range(1, len(offsets)):
        if offsets[i] <= offsets[i - 1]:
            raise ValueError(
                f"cu_seqlens: expected strictly increasing offsets, got "
                f"{offsets[i - 1]} then {offsets[i]} at index {i}"
            )
    return len(offsets) - 1


def check_scale(scale) -> None:
    """Raise unless `scale` (a softmax temperature argument) is None or a finite number > 0."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale: expected None or a finite, positive number, got "
                        f"{type(scale).__name__}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected None or a finite, positive number, got {scale}")


def check_positive_int(name: str, value) -> int:
    """Return `value` as an int; raise ValueError naming `name` unless it is an integer
    >= 1. A bool is refused although Python counts it as an int (True would mean 1)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def is_interpreter() -> bool:
    """True when Triton's interpreter is on (`TRITON_INTERPRET=1`): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - an environment without a working Triton
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Pick the implementation for a call: "triton" or "torch".

    Args:
        backend: "auto", "triton" or "torch". The environment variable MEMMODEL_BACKEND,
            when set, overrides "auto".
        device: the device of the call's inputs.

    "auto" runs Triton on CUDA tensors, and on CPU tensors when the interpreter is on;
    the PyTorch reference otherwise. "triton" on a CPU tensor without the interpreter
    raises, since no compiled Triton kernel can run there.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("MEMMODEL_BACKEND", "auto")
        if env not in BACKENDS:
            raise ValueError(f"MEMMODEL_BACKEND: expected one of {BACKENDS}, got {env!r}")
        backend = env
    device = torch.device(device)
    triton_ok = triton_available() and (device.type == "cuda" or is_interpreter())
    if backend == "auto":
        return "triton" if triton_ok else "torch"
    if backend == "triton" and not triton_ok:
        raise ValueError(
            f"backend: 'triton' needs CUDA tensors or TRITON_INTERPRET=1, got tensors on "
            f"{device} with TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}"
        )
    return backend


@functools.cache
def compiler_available() -> bool:
    """True when torch.compile can generate CPU code here (a C++ compiler is on PATH)."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def compile_enabled() -> bool:
    """Whether the CPU fast paths use torch.compile.

    MEMMODEL_COMPILE=0 turns it off, =1 forces it on, "auto" (the default) turns it on
    where a C++ compiler is present.
    """
    mode = os.environ.get("MEMMODEL_COMPILE", "auto")
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"MEMMODEL_COMPILE: expected 0, 1 or auto, got {mode!r}")
    if mode == "auto":
        return compiler_available()
    return mode == "1"


class MaybeCompiled:
    """A function run through `torch.compile` when `compile_enabled()`, eagerly otherwise.

    Compilation happens on the first call for each new shape. If it fails (no working
    compiler, an unsupported op), the failure is logged once and this function runs
    eagerly from then on.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self._compiled = None
        self._failed = False
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if self._failed or not compile_enabled():
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, fullgraph=True, dynamic=False)
        try:
            return self._compiled(*args)
        except Exception as err:  # compilation failure: fall back to eager, loudly
            self._failed = True
            logger.warning("torch.compile of %s failed (%s); running eagerly", self.fn.__name__,
                           str(err).splitlines()[0] if str(err) else type(err).__name__)
            return self.fn(*args)


def maybe_compiled(fn: Callable) -> MaybeCompiled:
    """Decorator form of MaybeCompiled."""
    return MaybeCompiled(fn)


def log_compile_fallback_once() -> None:
    """Log, once per process, that the CPU fast path runs eagerly for lack of a compiler."""
    if not compile_enabled() and os.environ.get("MEMMODEL_COMPILE", "auto") == "auto":
        _log_once("no C++ compiler found: the CPU fast path runs eagerly (slower)")


@functools.cache
def _log_once(message: str) -> None:
    logger.warning(message)


# The CPU fast paths' chunk layout (selective_scan, gated_cache)

def pad_time(x: torch.Tensor, Tp: int) -> torch.Tensor:
    """[B, T, ...] -> [B, Tp, ...], zeros after T (Tp >= T)."""
    T = x.shape[1]
    if T == Tp:
        return x
    pad = x.new_zeros((x.shape[0], Tp - T) + tuple(x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def to_chunks(x: torch.Tensor, L: int) -> torch.Tensor:
    """[B, n * L, ...] -> [n, B, L, ...] contiguous: chunk c is then x[c], whose strides do
    not depend on n, so the compiled chunk sees one layout at every sequence length (a
    slice of [B, T, ...] has strides that change with T, and each would recompile)."""
    x = x.unflatten(1, (-1, L)).transpose(0, 1)
    # a fresh tensor: contiguous() keeps the strides of size-1 dimensions (B = 1)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


def from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[n, B, L, ...] -> [B, T, ...] (the first T of the n * L steps)."""
    return x.transpose(0, 1).flatten(1, 2)[:, :T]
