"""Input boxes and the concretisation of linear bounds over them.

A linear lower bound ``c^T f(x) >= A x + b`` over the box ``lower <= x <= upper`` is smallest at
``min_x A x + b = A x0 - |A| eps + b`` with centre ``x0 = (lower + upper) / 2`` and radius
``eps = (upper - lower) / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genbab.bounds import kernel_backend


@dataclass(frozen=True)
class Box:
    """A batch of input boxes, ``lower``/``upper`` of shape ``[batch, *input_shape]``."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def center(self) -> torch.Tensor:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2

    @property
    def batch(self) -> int:
        return int(self.lower.shape[0])


def concretize_lower(A: torch.Tensor, bias: torch.Tensor, box: Box) -> torch.Tensor:
    """``min_{x in box} A x + b`` for ``A`` ``[batch, S, *input_shape]`` and ``b`` ``[batch, S]``."""
    if kernel_backend.use_triton(A):
        return kernel_backend.concretize_lower(A, bias, box.lower, box.upper)
    A_flat = A.reshape(A.shape[0], A.shape[1], -1)
    center = box.center.reshape(box.batch, -1, 1).to(A.dtype)
    radius = box.radius.reshape(box.batch, -1, 1).to(A.dtype)
    return torch.bmm(A_flat, center).squeeze(-1) - torch.bmm(A_flat.abs(), radius).squeeze(-1) + bias
