"""memmodel.kernels: Triton kernels with PyTorch references, one folder per op.

    selective_scan, selective_state_update    the SSM backbone (kernels/selective_scan)
    gated_cache_write, gated_cache_step        the working memory (kernels/gated_cache)
    chunk_compress                             long-term memory compression (kernels/chunk_compress)
    memory_retrieve                            long-term memory retrieval (kernels/memory_retrieve)

Each op's folder holds `ref.py`, the PyTorch reference `<op>_ref` (the ground truth);
`cpu.py`, the chunked CPU fast path `cpu_<op>`, where the op has one; and one file per
Triton variant, whose function is `<variant>_<op>`: `chunk_` (chunks along time, the
state carried between them), `fused_recurrent_` (one program walks the tokens),
`parallel_` (independent blocks, no recurrence), `fused_` (the decode step). Triton
kernels are `_<op>_<role>_kernel`, the variant in front where an op has two
(`_chunk_gated_cache_fwd_kernel`, `_fused_recurrent_gated_cache_fwd_kernel`).
"""

from .chunk_compress import chunk_compress
from .gated_cache import gated_cache_step, gated_cache_write
from .memory_retrieve import memory_retrieve
from .selective_scan import selective_scan, selective_state_update

__all__ = [
    "selective_scan",
    "selective_state_update",
    "gated_cache_write",
    "gated_cache_step",
    "chunk_compress",
    "memory_retrieve",
]
