"""Input boxes and the concretisation of linear bounds over them.

A linear lower bound ``c^T f(x) >= A x + b`` over the box ``lower <= x <= upper`` is smallest at
``min_x A x + b = A x0 - |A| eps + b`` with centre ``x0 = (lower + upper) / 2`` and radius
``eps = (upper - lower) / 2``. Computed in floating point, that value is lowered by a rigorous
bound on its rounding error (:func:`rounding_allowance`), so it is a true lower bound of the
real-valued minimum.
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


def concretize_lower(A: torch.Tensor, bias: torch.Tensor, box: Box, backend: str = "torch") -> torch.Tensor:
    """A true lower bound of ``min_{x in box} A x + b`` for ``A`` ``[batch, S, *input_shape]`` and
    ``b`` ``[batch, S]``, despite floating-point rounding: the computed value (fused kernel, or
    ``A x0 - |A| eps + b`` in PyTorch) minus :func:`rounding_allowance`. ``backend``: the engine
    config's, ``"triton"`` for the kernel. Every ``> 0`` decision
    (a proved row) reads this value, so no rounding can turn a violated row into a proved one."""
    A_flat = A.reshape(A.shape[0], A.shape[1], -1)
    lower = box.lower.reshape(box.lower.shape[0], -1, 1).to(A.dtype)
    upper = box.upper.reshape(box.upper.shape[0], -1, 1).to(A.dtype)
    if backend == "triton":
        value = kernel_backend.concretize_lower(A, bias, box.lower, box.upper)
        magnitude = torch.bmm(A_flat.abs(), _magnitude(lower, upper).expand(A_flat.shape[0], -1, -1)).squeeze(-1)
        return value - rounding_allowance(magnitude, bias, A_flat.shape[-1])
    center = box.center.reshape(box.batch, -1, 1).to(A.dtype)
    radius = box.radius.reshape(box.batch, -1, 1).to(A.dtype)
    spread = torch.bmm(A_flat.abs(), torch.cat([radius, _magnitude(lower, upper)], dim=-1))
    value = torch.bmm(A_flat, center).squeeze(-1) - spread[..., 0] + bias
    return value - rounding_allowance(spread[..., 1], bias, A_flat.shape[-1])


def _magnitude(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``max(|l|, |u|)`` per coordinate, capped at the dtype's largest finite value (so a zero
    coefficient times an unbounded coordinate is 0, not NaN)."""
    return torch.maximum(lower.abs(), upper.abs()).clamp(max=torch.finfo(lower.dtype).max)


def rounding_allowance(magnitude: torch.Tensor, bias: torch.Tensor, n: int) -> torch.Tensor:
    """Bound on ``|computed - exact|`` of ``min_x A x + b`` over ``n`` coordinates: with
    ``M = |A| max(|l|, |u|)`` (``magnitude``, ``[batch, S]``), unit roundoff ``u`` and
    ``gamma_k = k u / (1 - k u)``, the centre and radius (one rounding each), the two dot products
    (any summation order, FMA or not: ``gamma_n``) and the two final additions err by at most
    ``gamma_{n+3} (M + |b|)``. Returned: ``2 (n + 4) u * 1.01 (M + |b|) + (n + 4) tiny``, which
    also covers the rounding of ``M`` itself, of the final subtraction and underflow."""
    fi = torch.finfo(magnitude.dtype)
    return (n + 4) * fi.eps * 1.01 * (magnitude + bias.abs()) + (n + 4) * fi.tiny
