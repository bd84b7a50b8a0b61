"""The checkpoint file format of the training loops: written atomically, read safely.

A checkpoint is one `torch.save` file holding a dict of plain data only:

    {"format": "memmodel.checkpoint", "version": 1, "kind": "lm" | "memory",
     "checksum": sha256 hex digest, "payload": {...}}

The payload is nested dicts, lists and tuples of tensors and plain values (str, int,
float, bool, None): configs are stored as dicts, never as pickled objects. It is read
with `torch.load(weights_only=True)`, which builds nothing but tensors and containers, so
a crafted file cannot run code; anything else in it is refused.

The checksum is a sha256 over the kind and the payload, walked in order: each value's
place in the payload, its type, and its bytes (a tensor: dtype, shape and raw data; a
plain value: its repr). A flipped bit in a tensor, which torch itself would load
silently, is caught here.

A save writes a temporary file in the target's folder, flushes and fsyncs it, then
renames it over the target (`os.replace`, atomic on POSIX and Windows): a save that fails
partway leaves the previous checkpoint as it was, and the temporary file is removed.

Every problem found while reading raises `CheckpointError` (a ValueError) naming the file
and what is wrong. Example:

    >>> write_checkpoint("run.pt", "lm", {"step": 3, "weights": torch.ones(2)})
    >>> read_checkpoint("run.pt", "lm")["step"]
    3
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Optional

import torch

FORMAT = "memmodel.checkpoint"
VERSION = 1
KINDS = {"lm": "memmodel.training.lm", "memory": "memmodel.training.memory"}

_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, refused, damaged, of another
    kind or version, or not matching the run it is given to. `path` names the file."""

    def __init__(self, path, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"checkpoint {self.path}: {problem}")


def write_checkpoint(path, kind: str, payload: dict[str, Any]) -> None:
    """Save `payload` at `path` atomically, with the format marker and checksum.

    Args:
        path: the file (str or os.PathLike); its folder must exist.
        kind: "lm" (memmodel.training.lm) or "memory" (memmodel.training.memory).
        payload: a dict of tensors and plain data (see the module docstring); anything
            else raises TypeError naming where it is, before any file is touched.
    """
    if kind not in KINDS:
        raise ValueError(f"write_checkpoint: kind: expected one of {sorted(KINDS)}, got "
                         f"{kind!r}")
    if not isinstance(payload, dict):
        raise TypeError(f"write_checkpoint: payload: expected a dict, got "
                        f"{type(payload).__name__}")
    _check_plain(payload, "payload")
    record = {"format": FORMAT, "version": VERSION, "kind": kind,
              "checksum": checksum(kind, payload), "payload": payload}
    atomic_write(path, lambda f: torch.save(record, f))


def atomic_write(path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically: `write(f)` fills a temporary file (binary, opened
    exclusively) in the target's folder, which is flushed, fsynced and renamed over `path`
    (`os.replace`), then the folder is fsynced. If `write` or the rename fails, the
    temporary file is removed and whatever was at `path` stays as it was."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(os.path.dirname(os.path.abspath(path)))


def read_checkpoint(path, kind: Optional[str] = None) -> dict[str, Any]:
    """The payload saved by `write_checkpoint`, verified.

    Args:
        path: the file.
        kind: the kind expected ("lm" or "memory"); None accepts either.

    Returns:
        The payload dict; tensors are on the CPU.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, not a readable torch file (truncated or
            corrupt), refused by the safe loader (it holds pickled objects), not a memmodel
            checkpoint, of another format version or kind, or its checksum does not match.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CheckpointError(path, "the file is empty (0 bytes): a save that never "
                                        "finished, or not a checkpoint")
        try:
            record = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(path, _load_problem(e)) from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(path, f"not a memmodel checkpoint (expected a dict with "
                                    f"format {FORMAT!r}, got {_describe(record)})")
    if record.get("version") != VERSION:
        raise CheckpointError(path, f"format version {record.get('version')!r}, but this "
                                    f"memmodel reads version {VERSION}")
    if kind is not None and record.get("kind") != kind:
        raise CheckpointError(path, f"a {record.get('kind')!r} checkpoint (written by "
                                    f"{KINDS.get(record.get('kind'), 'something else')}), "
                                    f"expected a {kind!r} checkpoint (of {KINDS[kind]})")
    payload = record.get("payload")
    if not isinstance(payload, dict):
        raise CheckpointError(path, f"expected a payload dict, got {_describe(payload)}")
    stored, computed = record.get("checksum"), checksum(record["kind"], payload)
    if stored != computed:
        raise CheckpointError(path, f"checksum mismatch: the file was changed after it was "
                                    f"saved (stored sha256 {stored}, computed {computed})")
    return payload


def checksum(kind: str, payload: dict[str, Any]) -> str:
    """The sha256 hex digest of `kind` and `payload` (see the module docstring)."""
    h = hashlib.sha256(f"{FORMAT}:{kind}\n".encode())
    _digest(payload, "payload", h)
    return h.hexdigest()


def expect_same(path, what: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise CheckpointError when the plain dicts `saved` (from the file at `path`) and
    `current` differ, listing each differing key with both values."""
    diff = [f"{k}: saved {saved.get(k, '<absent>')!r}, given {current.get(k, '<absent>')!r}"
            for k in list(saved) + [k for k in current if k not in saved]
            if saved.get(k, _ABSENT) != current.get(k, _ABSENT)]
    if diff:
        raise CheckpointError(path, f"saved with another {what} ({'; '.join(diff)})")


def rng_states() -> dict[str, Any]:
    """The global random states: torch's CPU generator and, where CUDA is in use, every
    device's generator."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned (the CUDA states where CUDA is available)."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])


_ABSENT = object()


def _check_plain(obj, where: str):
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"write_checkpoint: {where}: expected str or int keys, got "
                                f"{k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"write_checkpoint: {where}: expected tensors and plain data (dict, "
                        f"list, tuple, str, int, float, bool, None), got "
                        f"{type(obj).__name__}")


def _digest(obj, where: str, h):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{where}:tensor:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"{where}:dict:{len(obj)}\n".encode())
        for k, v in obj.items():
            _digest(v, f"{where}[{k!r}]", h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{where}:{type(obj).__name__}:{len(obj)}\n".encode())
        for i, v in enumerate(obj):
            _digest(v, f"{where}[{i}]", h)
    else:
        h.update(f"{where}:{type(obj).__name__}:{obj!r}\n".encode())


def _load_problem(e: Exception) -> str:
    text = str(e)
    refused = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", text)
    if refused:
        return (f"refused: it holds pickled objects, not only tensors and plain data "
                f"({refused.group(1).strip()}); nothing in it was run. A memmodel "
                f"checkpoint holds plain data only, so this file is corrupt or was not "
                f"written by memmodel")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"not a readable torch file, truncated or corrupt ({type(e).__name__}: {first})"


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:8]}"
    return type(obj).__name__


def _sync_folder(folder: str):
    """fsync the folder so the rename itself survives a crash (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build_saved_model(path, payload: dict[str, Any]):
    """(model, controller) from a "memory" checkpoint's payload: the model with its
    weights, in eval mode, and its controller (greedy like the model; None without a
    long-term memory) with its learning state: a qlearning controller is one object
    attached to every layer, any other is built per layer, and this is the first
    layer's. CheckpointError
    names the file when the payload does not build them."""
    from .config import MemoryConfig, QLearningConfig
    from .controllers import QLearningController, build_controller
    from .model import MemoryLM

    try:
        config = MemoryConfig(**payload["config"])
        model = MemoryLM(config)
        saved, controller = payload["controller"], None
        if saved is not None and config.ltm_controller != "none":
            if saved["name"] == "qlearning":  # one learner, shared by the layers
                controller = QLearningController(config,
                                                 QLearningConfig.from_dict(saved["state"]["rl"]))
                controller.load_training_state(saved["state"])
                made = lambda: controller
            else:
                # one per layer, as MemoryLM builds them: a controller with parameters
                # (gumbel) has a set of its own in each layer's saved weights
                def made():
                    ctrl = build_controller(config, saved["name"])
                    if saved["state"] is not None:
                        ctrl.load_training_state(saved["state"])
                    return ctrl
            for layer in model.layers:
                if layer.long_term_memory is not None:
                    layer.long_term_memory.controller = made()
                    if controller is None:
                        controller = layer.long_term_memory.controller
        # after the controller is attached: its networks are part of the model's weights
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"does not build the saved model and controller "
                                    f"({type(e).__name__}: {e})") from e
    return model.eval(), controller


def load(path, device=None):
    """A saved model ready for evaluation, and the task it was trained on.

    Args:
        path: a checkpoint written by the training loops (`memmodel.training.memory` or
            the ablation runner's `models/<variant>.pt`, a "memory" checkpoint; or
            `memmodel.training.lm`'s, an "lm" checkpoint).
        device: where to put the model (None: the CPU).

    Returns:
        (model, task): the MemoryLM in eval mode, its controllers greedy and recording
        nothing; the training task as plain data, its `spec()` (name, format, alphabets,
        key length, marker and query bytes, every parameter; `memmodel.tasks.task_from_spec`
        rebuilds it); for a model trained on several tasks (the ablation runner's and
        the demo's models), {"name": "mix", "tasks": [the spec of each]}; None for a
        language-model checkpoint.

    Raises:
        CheckpointError: the file is unreadable, refused, damaged or does not build a model.

    Example:
        >>> model, task = memmodel.load("results/models/full.pt")
        >>> task["name"], task["marker"], task["query"]
        ('passkey', '#', '?')
    """
    payload = read_checkpoint(path)
    if "controller" in payload:  # a "memory" checkpoint
        model, _ = build_saved_model(path, payload)
        task = payload.get("task")
    else:
        from .config import MemoryConfig
        from .model import MemoryLM

        try:
            model = MemoryLM(MemoryConfig(**payload["config"]))
            model.load_state_dict(payload["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(path, f"does not build the saved model "
                                        f"({type(e).__name__}: {e})") from e
        model.eval()
        task = None
    if device is not None:
        model.to(device)
    return model, task

