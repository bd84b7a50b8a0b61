"""A test fixture: a one-layer MemoryLM set by hand that answers a one-byte passkey
exactly when its long-term memory still holds the key's chunk."""

import torch

from memmodel.config import MemoryConfig
from memmodel.model import MemoryLM
from memmodel.tasks import PasskeyTask


def passkey_reader(task: PasskeyTask, controller: str, capacity=2, merge: int = 2,
                   backend: str = "auto") -> MemoryLM:
    """A frozen one-layer MemoryLM set by hand to answer a one-byte passkey exactly when its
    long-term memory still holds the key's chunk and reads it at the question: the SSM's
    output is zeroed, so the memory is the only way to the answer. For controller
    experiments without model training.

    d_model 32. Embeddings: digit i -> e_i, the marker -> e_10, the query -> e_11, filler
    bytes -> random unit vectors on dims 12..31 (the output head is tied). The memory's keys
    mark digits (k = 4 f, f = head dim 0), its values are the digit's one-hot, the pooling,
    merging and every query look for f, and the output adds 10 x the retrieved digit, which
    the tied head then predicts.

    Args:
        task: a PasskeyTask with key_len 1 and the default 10-digit key alphabet.
        controller: the config's `ltm_controller`.
        capacity: `ltm_capacity` (its length sets the levels); merge: `ltm_merge`.
    """
    if task.key_len != 1 or len(task.key_alphabet) > 10:
        raise ValueError(f"passkey_reader: expected key_len 1 and at most 10 key bytes, got "
                         f"key_len {task.key_len} and {task.key_alphabet!r}")
    D = 32
    capacity = [capacity] if isinstance(capacity, int) else list(capacity)
    config = MemoryConfig(d_model=D, n_layers=1, d_state=4, ltm_controller=controller,
                          ltm_heads=1, ltm_chunk_size=task.chunk_size, ltm_summaries=1,
                          ltm_levels=len(capacity), ltm_capacity=capacity, ltm_merge=merge,
                          backend=backend)
    model = MemoryLM(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = model.embedding.weight
        emb.zero_()
        for i, ch in enumerate(task.key_alphabet):
            emb[ord(ch), i] = 1.0
        emb[ord(task.marker), 10] = 1.0
        emb[ord(task.query), 11] = 1.0
        for ch in task.filler:
            emb[ord(ch), 12:] = torch.nn.functional.normalize(
                torch.randn(D - 12, generator=g), dim=0)
        model.layers[0].mixer.out_proj.weight.zero_()
        ltm = model.layers[0].long_term_memory
        w, b = ltm.in_proj.weight, ltm.in_proj.bias  # rows: q, k, v, output gate (D each)
        w.zero_()
        b.zero_()
        b[0] = 5.0  # q = 5 f
        w[D, :10] = 4.0  # k = 4 f on digits
        w[2 * D: 2 * D + 10, :10] = torch.eye(10)  # v = the digit's one-hot
        b[3 * D:] = 30.0  # output gate open
        ltm.out_proj.weight.zero_()
        ltm.out_proj.weight[:10, :10] = 10 * torch.eye(10)
        ltm.q_pool.zero_()
        ltm.q_pool[..., 0] = 5.0
        ltm.merge_q.zero_()
        ltm.merge_q[..., 0] = 5.0
    return model.requires_grad_(False)
