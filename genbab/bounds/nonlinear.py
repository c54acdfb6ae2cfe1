"""Backward steps and interval images through nonlinear nodes.

Elementwise ``y = h(z)`` with lines ``s_l z + b_l <= h(z) <= s_u z + b_u``: a lower bound
``A y`` becomes ``(A+ s_l + A- s_u) z + sum(A+ b_l + A- b_u)`` (``A+ = max(A, 0)``).

Products ``z = x * y`` (McCormick, alpha-interpolated planes from :mod:`genbab.ops.bilinear`):
``a_x x + a_y y + c`` below and above; a lower bound ``A z`` takes the lower plane where
``A > 0`` and the upper plane where ``A < 0``. ``MatMul`` ``z_ik = sum_j x_ij y_jk`` is the same
on the products ``p_ijk`` with ``A_p[i, j, k] = A_z[i, k]``.
"""

from __future__ import annotations

import torch

from genbab.bounds import kernel_backend
from genbab.ops.relaxation import Relaxation


def _times(A: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``A * value`` with ``0 * inf = 0`` (a zero coefficient ignores an unbounded line)."""
    return torch.where(A == 0, torch.zeros((), dtype=A.dtype, device=A.device), A * value)


def elementwise_backward(A: torch.Tensor, lines: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` ``[B, S, *shape]`` through ``h``: new coefficients on ``z`` and the bias ``[B, S]``."""
    if kernel_backend.use_triton(A):
        return kernel_backend.elementwise_backward(A, lines)
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    coeff = pos * lines.slope_lower + neg * lines.slope_upper
    bias = _times(pos, lines.bias_lower) + _times(neg, lines.bias_upper)
    return coeff, bias.reshape(A.shape[0], A.shape[1], -1).sum(-1)


def product_interval(lx, ux, ly, uy) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact interval of ``x * y`` for ``x in [lx, ux]``, ``y in [ly, uy]`` (broadcasting)."""
    corners = torch.stack(torch.broadcast_tensors(lx * ly, lx * uy, ux * ly, ux * uy))
    corners = torch.nan_to_num(corners, nan=0.0, posinf=torch.inf, neginf=-torch.inf)  # 0 * inf corners are 0
    return corners.amin(0), corners.amax(0)


def matmul_expand(lx, ux, ly, uy):
    """Intervals of ``x[..., i, j, None]`` and ``y[..., None, j, k]`` for the products ``p_ijk``."""
    return lx.unsqueeze(-1), ux.unsqueeze(-1), ly.unsqueeze(-3), uy.unsqueeze(-3)


def matmul_interval(lx, ux, ly, uy) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval of ``x @ y``: product intervals summed over ``j``."""
    lo, hi = product_interval(*matmul_expand(lx, ux, ly, uy))
    return lo.sum(-2), hi.sum(-2)


def bilinear_backward(A: torch.Tensor, planes, x_shape, y_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` ``[B, S, *out]`` through ``x * y`` (broadcasting); returns (A_x, A_y, bias)."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    (lx_c, ly_c, l_b), (ux_c, uy_c, u_b) = planes
    A_x = pos * lx_c + neg * ux_c
    A_y = pos * ly_c + neg * uy_c
    bias = (_times(pos, l_b) + _times(neg, u_b)).reshape(A.shape[0], A.shape[1], -1).sum(-1)
    lead = tuple(A.shape[:2])
    return A_x.sum_to_size(lead + tuple(x_shape)), A_y.sum_to_size(lead + tuple(y_shape)), bias


def matmul_backward(A: torch.Tensor, planes, x_shape, y_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` ``[B, S, ..., i, k]`` through ``x @ y`` via the products ``p_ijk``."""
    A_p = A.unsqueeze(-2)  # [B, S, ..., i, 1, k]
    pos, neg = A_p.clamp(min=0), A_p.clamp(max=0)
    (lx_c, ly_c, l_b), (ux_c, uy_c, u_b) = planes
    A_x = (pos * lx_c + neg * ux_c).sum(-1)
    A_y = (pos * ly_c + neg * uy_c).sum(-3)
    bias = (_times(pos, l_b) + _times(neg, u_b)).reshape(A.shape[0], A.shape[1], -1).sum(-1)
    lead = tuple(A.shape[:2])
    return A_x.sum_to_size(lead + tuple(x_shape)), A_y.sum_to_size(lead + tuple(y_shape)), bias
