"""memmodel.kernels: Triton kernels with PyTorch references, one folder per op."""

from .selective_scan import selective_scan, selective_state_update

__all__ = ["selective_scan", "selective_state_update"]
