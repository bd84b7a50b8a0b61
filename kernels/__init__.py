"""memmodel.kernels: Triton kernels with PyTorch references, one folder per op.

    selective_scan, selective_state_update    the SSM backbone (kernels/selective_scan)
    gated_cache_write, gated_cache_step        the working memory (kernels/gated_cache)
    chunk_compress                             long-term memory compression (kernels/chunk_compress)
    memory_retrieve                            long-term memory retrieval (kernels/memory_retrieve)
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
