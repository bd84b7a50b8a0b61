"""Training on two CPU processes (gloo, under torchrun) against one process.

One torchrun launch (tests/distributed_worker.py) runs `memmodel train` on a tiny language
model for K = 3 steps, then the memory loop with a Q-learning controller; the tests below
compare what it wrote with runs in this process.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memmodel.checkpoint import read_checkpoint
from memmodel.config import MemoryConfig
from memmodel.training import distributed
from memmodel.training.lm import TrainConfig, train

HERE = Path(__file__).resolve().parent
K = 3
LM_CONFIG = {
    "loop": "lm",
    "model": {"d_model": 16, "n_layers": 1, "d_state": 4, "backend": "torch"},
    "train": {"max_steps": K, "seconds": 1e9, "batch_size": 4, "seq_len": 32, "lr": 3e-3,
              "warmup_steps": 0, "eval_batches": 1, "log_every": 1},
}
TOL = dict(rtol=1e-4, atol=1e-5)


def _lm(max_steps, checkpoint=None, resume=None):
    """The LM run of LM_CONFIG in this process (one rank)."""
    cfg = MemoryConfig(**LM_CONFIG["model"])
    tc = TrainConfig(**{**LM_CONFIG["train"], "max_steps": max_steps,
                        "checkpoint": checkpoint})
    return train(cfg, tc, resume=resume)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The output folder of one 2-process run of tests/distributed_worker.py."""
    out = tmp_path_factory.mktemp("ddp")
    config = out / "lm.json"
    config.write_text(json.dumps(LM_CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMMODEL_COMPILE": "0"}
    # a session of its own, so that a run past the time limit is stopped with its workers
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "distributed_worker.py"), str(out), str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("the 2-process run did not end within 600 s:\n" + stderr[-3000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return out


def test_two_ranks_train_as_one(two_ranks, tmp_path):
    """K steps of the global batch split over 2 ranks end at one process's parameters."""
    two = read_checkpoint(two_ranks / "lm" / "model.pt", "lm")
    one = _lm(K, checkpoint=str(tmp_path / "one.pt"))
    ref = read_checkpoint(tmp_path / "one.pt", "lm")
    assert two["step"] == ref["step"] == K
    for name, p in ref["model"].items():
        torch.testing.assert_close(two["model"][name], p, **TOL, msg=name)
    # the training moved the weights: equal after K steps is not equal at the start
    init = MemoryConfig(**LM_CONFIG["model"])
    torch.manual_seed(LM_CONFIG["train"].get("seed", 0))
    from memmodel.model import MemoryLM

    start = MemoryLM(init).state_dict()
    assert max((start[k] - p).abs().max().item() for k, p in ref["model"].items()) > 1e-3
    results = json.loads((two_ranks / "lm" / "train.json").read_text())
    assert results["world_size"] == 2 and len(results["losses"]) == K
    torch.testing.assert_close(torch.tensor(results["losses"]),
                               torch.tensor(one.train_losses), **TOL)
    written = json.loads((two_ranks / "lm" / "config.json").read_text())
    assert written["train"]["batch_size"] == 4 and written["loop"] == "lm"


def test_two_rank_checkpoint_resumes_on_one(two_ranks, tmp_path):
    """The 2-rank checkpoint at step K goes on, on one process, to the parameters of a
    one-process run that was never interrupted."""
    resumed_at = tmp_path / "resumed.pt"
    resumed = _lm(K + 2, checkpoint=str(resumed_at), resume=str(two_ranks / "lm" / "model.pt"))
    assert resumed.steps == K + 2 and len(resumed.train_losses) == 2
    _lm(K + 2, checkpoint=str(tmp_path / "straight.pt"))
    a = read_checkpoint(resumed_at, "lm")["model"]
    b = read_checkpoint(tmp_path / "straight.pt", "lm")["model"]
    for name, p in b.items():
        torch.testing.assert_close(a[name], p, **TOL, msg=name)


def test_qlearning_networks_stay_equal_across_ranks(two_ranks):
    """Each rank learns from its own replay buffer (different transitions), yet after the
    Q updates its online and target networks, the score statistics and the model equal
    the other rank's."""
    r0, r1 = (torch.load(two_ranks / f"qlearning.{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["updates"] == r1["updates"] > 0
    for net in ("online", "target"):
        for name, p in r0[net].items():
            torch.testing.assert_close(r1[net][name], p, rtol=1e-6, atol=1e-7, msg=name)
    for name, p in r0["model"].items():
        torch.testing.assert_close(r1["model"][name], p, rtol=1e-6, atol=1e-7, msg=name)
    assert r0["scores"][0] == r1["scores"][0] > 0
    assert r0["scores"][1:] == pytest.approx(r1["scores"][1:], rel=1e-9)
    # the buffers hold each rank's own transitions
    b0, b1 = r0["buffer"], r1["buffer"]
    assert b0["size"] > 0 and b1["size"] > 0
    n = min(b0["size"], b1["size"])
    assert not torch.equal(b0["data"]["x"][:n], b1["data"]["x"][:n])


def test_batch_not_divisible_by_world_size():
    ctx = distributed.DistContext(rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"batch_size: expected a global batch divisible by "
                                         r"the world size 3.*got 4"):
        ctx.local_batch(4)
    assert ctx.local_batch(6) == 2


def test_shard_takes_the_rank_rows():
    from memmodel.tasks import PasskeyTask

    batch = PasskeyTask(seq_len=32, chunk_size=8).sample(4, torch.Generator().manual_seed(0))
    part = distributed.DistContext(rank=1, world_size=2).shard(batch)
    assert type(part) is type(batch)
    for whole, mine in zip(batch, part):
        if isinstance(whole, torch.Tensor):
            assert torch.equal(mine, whole[2:4])
    assert distributed.DistContext().shard(batch) is batch


def test_single_process_outside_torchrun(monkeypatch):
    for key in distributed.ENV:
        monkeypatch.delenv(key, raising=False)
    ctx = distributed.init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.distributed) == (0, 1, None, False)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx) is model
