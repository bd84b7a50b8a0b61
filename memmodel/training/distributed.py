"""Training on several processes: what the loops need of torch.distributed, in one place.

    torchrun --nproc_per_node=4 -m memmodel train --config run.json

`init_distributed()` joins the process group that torchrun describes in the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL with one GPU per process
(cuda:LOCAL_RANK) when CUDA is available, gloo on CPUs. Without those variables it
returns the single-process context and joins nothing. The training loops
(`memmodel.training.lm.train`, `memmodel.training.memory.train_memory`) read the context
with `current()` and then:

- every rank draws the whole global batch from the same generator and keeps its rows
  (`shard`): rank r of W takes rows [r * B / W, (r + 1) * B / W). The batch generator's
  state is the same on every rank, so a checkpoint resumes on any number of ranks and
  W processes see exactly the rows one process would. B not divisible by W is an error;
- the model is wrapped in `DistributedDataParallel` (`wrap`), which averages the
  gradients; the parameters of learning memory controllers are left out of it (their
  learner synchronises itself: `QLearningController.synchronise`);
- the logged loss is the mean over the ranks (`mean`); only rank 0 writes checkpoints and
  results (`is_main`), the others wait for it (`barrier`).

The gradient of W shards equals the gradient of the global batch when each row's loss has
the same weight (every row has the same number of supervised tokens: true of the byte
corpus and of the tasks, whose rows all hold the same number of answer bytes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

log = logging.getLogger("memmodel.training.distributed")

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank of world_size, its device and the backend
    ("nccl", "gloo", or None for a single process outside any group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes checkpoints and results."""
        return self.rank == 0

    def local_batch(self, batch_size: int, what: str = "batch_size") -> int:
        """batch_size / world_size: the rows of each rank.

        Raises:
            ValueError: batch_size is not divisible by the world size.
        """
        if batch_size % self.world_size:
            raise ValueError(f"{what}: expected a global batch divisible by the world size "
                             f"{self.world_size} (each rank takes an equal shard), got "
                             f"{batch_size}")
        return batch_size // self.world_size

    def shard(self, batch):
        """This rank's rows of a global batch: a tensor [B, ...], or a tuple / NamedTuple
        of them (entries that are not tensors with B rows, e.g. None, are kept whole)."""
        if not self.distributed:
            return batch
        if isinstance(batch, torch.Tensor):
            n = self.local_batch(batch.shape[0], "shard: the batch's rows")
            return batch[self.rank * n:(self.rank + 1) * n]
        rows = next(t.shape[0] for t in batch if isinstance(t, torch.Tensor))
        n = self.local_batch(rows, "shard: the batch's rows")
        parts = [t[self.rank * n:(self.rank + 1) * n]
                 if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == rows else t
                 for t in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else type(batch)(parts)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the ranks (the tensor itself on one process)."""
        if not self.distributed:
            return value
        out = value.detach().clone().to(self.device)
        dist.all_reduce(out)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (so that every rank stops at the same step,
        e.g. when one is past its time budget)."""
        if not self.distributed:
            return bool(flag)
        return bool(self.mean(torch.tensor(float(flag), device=self.device)).item() > 0)

    def barrier(self):
        if self.distributed:
            dist.barrier()


_SINGLE = DistContext()


def current() -> DistContext:
    """The context of the process group this process is in (`init_distributed` or
    any `torch.distributed.init_process_group`); the single-process one outside a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return _SINGLE
    backend = dist.get_backend()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local}" if backend == "nccl" else "cpu"
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local, backend=backend, device=device)


def init_distributed(backend: Optional[str] = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes in the environment; the context.

    Args:
        backend: "nccl" or "gloo"; None: NCCL when CUDA is available, else gloo.
        timeout_s: how long a collective waits for the other ranks.

    Returns:
        The DistContext; the single-process one (rank 0 of 1, no group) when the
        torchrun variables are absent or WORLD_SIZE is 1.

    Raises:
        ValueError: a backend other than "nccl" / "gloo", or NCCL without CUDA, or fewer
            GPUs on the node than LOCAL_RANK needs.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if any(k not in os.environ for k in ENV) or int(os.environ["WORLD_SIZE"]) == 1:
        return _SINGLE
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"init_distributed: expected backend 'nccl' or 'gloo', got "
                         f"{backend!r}")
    local = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("init_distributed: expected CUDA for the 'nccl' backend, got "
                             "none (use 'gloo' on CPUs)")
        if local >= torch.cuda.device_count():
            raise ValueError(f"init_distributed: LOCAL_RANK {local} needs GPU {local}, got "
                             f"{torch.cuda.device_count()} GPUs on this node")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    ctx = current()
    log.info("rank %d of %d (%s, %s)", ctx.rank, ctx.world_size, backend, ctx.device)
    return ctx


def shutdown():
    """Leave the process group (nothing outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def controller_parameter_names(model: torch.nn.Module) -> list[str]:
    """The names (in model.state_dict()) of the parameters and buffers that belong to a
    memory controller (a module named `controller` or under one): DDP leaves them out."""
    names = []
    for module_name, module in model.named_modules():
        if module_name.split(".")[-1] != "controller":
            continue
        names += [f"{module_name}.{n}" for n, _ in module.named_parameters()]
        names += [f"{module_name}.{n}" for n, _ in module.named_buffers()]
    return names


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The module a training step calls: `model` itself on one process, else
    `DistributedDataParallel(model)` (every rank starts from rank 0's weights; the
    controllers' parameters are left out; with a long-term memory
    `find_unused_parameters`, as its controller's decisions may leave a parameter out of
    a step's graph, e.g. no chunk read)."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ignore = controller_parameter_names(model)
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
    device_ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    config = getattr(model, "config", None)
    unused = getattr(config, "ltm_controller", "none") != "none"
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False,
                                   find_unused_parameters=unused)
