"""Shared helpers of the kernel modules: launch checks and block sizes."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Whether Triton runs through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_launchable(*tensors: torch.Tensor) -> None:
    """Raise unless every tensor is on CUDA, or on the CPU with the interpreter enabled."""
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            continue
        raise RuntimeError(f"Triton kernels need CUDA tensors (got {t.device}); on the CPU set "
                           "TRITON_INTERPRET=1 before importing triton to use the interpreter")


def pow2(n: int, lo: int = 1, hi: int = 1 << 30) -> int:
    """The power of two ``>= n``, clipped into ``[lo, hi]``."""
    return max(lo, min(hi, 1 << max(0, int(n) - 1).bit_length()))
