"""Triton helpers shared by the ops' kernels."""
