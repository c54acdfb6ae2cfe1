"""Triton kernels for the hot bound computations, each beside its PyTorch reference."""
