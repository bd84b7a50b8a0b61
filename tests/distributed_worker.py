"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2` (gloo, CPU).

    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT LM_CONFIG

1. `memmodel train --config LM_CONFIG --out OUT/lm` (the command's own code, on this
   process group): rank 0 writes the checkpoint and results.
2. The memory loop with a Q-learning controller: each rank saves what it ended with to
   OUT/qlearning.<rank>.pt (the model's and the Q-networks' weights, the replay buffer,
   the score statistics, the number of Q updates), for the test to compare.
"""

import sys

import torch

from memmodel.config import MemoryConfig, QLearningConfig
from memmodel.controllers import QLearningController
from memmodel.model import MemoryLM
from memmodel.tasks import PasskeyTask
from memmodel.training import cli, distributed
from memmodel.training.memory import MemoryTrainConfig, train_memory


def qlearning_run(out: str, rank: int):
    config = MemoryConfig(d_model=16, n_layers=1, d_state=4, backend="torch",
                          ltm_controller="qlearning", ltm_heads=1, ltm_chunk_size=8,
                          ltm_summaries=1, ltm_levels=1, ltm_capacity=2)
    torch.manual_seed(0)
    model = MemoryLM(config)
    ctrl = QLearningController(config, QLearningConfig(min_buffer=8, batch_size=8,
                                                       target_update=2, hidden=8))
    tc = MemoryTrainConfig(steps=4, batch_size=4, q_updates=2, eval_batches=1, log_every=4)
    train_memory(model, PasskeyTask(seq_len=47, chunk_size=8), tc, ctrl)
    torch.save({"model": {k: v for k, v in model.state_dict().items()
                          if ".controller." not in k},
                "online": ctrl.learner.online.state_dict(),
                "target": ctrl.learner.target.state_dict(),
                "buffer": ctrl.learner.buffer.state_dict(),
                "scores": [ctrl.scores.count, ctrl.scores.mean, ctrl.scores.m2],
                "updates": ctrl.learner.updates}, f"{out}/qlearning.{rank}.pt")


def main(out: str, lm_config: str):
    ctx = distributed.init_distributed(timeout_s=300)
    assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
    try:
        cli.main(["train", "--config", lm_config, "--out", f"{out}/lm", "--no-progress"])
        qlearning_run(out, ctx.rank)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
