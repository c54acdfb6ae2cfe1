"""Backward steps and interval images through nonlinear nodes.

Elementwise ``y = h(z)`` with lines ``s_l z + b_l <= h(z) <= s_u z + b_u``: a lower bound
``A y`` becomes ``(A+ s_l + A- s_u) z + sum(A+ b_l + A- b_u)`` (``A+ = max(A, 0)``).

Products ``z = x * y`` (McCormick, alpha-interpolated planes from :mod:`genbab.ops.bilinear`):
``a_x x + a_y y + c`` below and above; a lower bound ``A z`` takes the lower plane where
``A > 0`` and the upper plane where ``A < 0``. ``MatMul`` ``z_ik = sum_j x_ij y_jk`` is the same
on the products ``p_ijk`` with ``A_p[i, j, k] = A_z[i, k]``: ``A_x[i, j] = sum_k A+[i, k] a_x[i, j, k]
+ A-[i, k] a'_x[i, j, k]`` (a batched matmul), ``A_y[j, k]`` likewise summing over ``i``, and the
bias ``sum_ik A+[i, k] sum_j c[i, j, k] + ...``.

Fast paths: with finite planes / lines the sums above run as einsums and mat-vecs (no
temporary of the products' full size); the bias sums over the non-leading dims become one
mat-vec per sign when the lines do not vary along the row dim ``S``. Otherwise (an infinite
bias under a zero coefficient: ``0 * inf = 0``) the ``*_reference`` functions compute them
elementwise. Both agree up to float rounding (summation order).
"""

from __future__ import annotations

import math
import string

import torch

from genbab.bounds import kernel_backend
from genbab.bounds.rounding import broadcast_shape
from genbab.ops.relaxation import Relaxation


def _times(A: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``A * value`` with ``0 * inf = 0`` (a zero coefficient ignores an unbounded line)."""
    return torch.where(A == 0, torch.zeros((), dtype=A.dtype, device=A.device), A * value)


def _all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _bias_sum(pos: torch.Tensor, neg: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``sum(A+ lo + A- hi)`` over the non-leading dims of ``pos = A+``, ``neg = A-``
    ``[B, S, *shape]``, with ``0 * inf = 0``: ``[B, S]``.

    Finite ``lo``, ``hi`` of ``pos``'s dims, of one row (``[B or 1, 1, ...]``) and not broadcasting
    ``pos``: ``pos.reshape(B, S, N) @ lo.reshape(B or 1, N, 1)`` (plus the same for ``neg``)."""
    B, S = pos.shape[:2]
    if not _all_finite(lo, hi):
        return (_times(pos, lo) + _times(neg, hi)).reshape(B, S, -1).sum(-1)
    rest = tuple(pos.shape[2:])
    if (lo.dim() == hi.dim() == pos.dim() and lo.dtype == hi.dtype == pos.dtype
            and lo.shape[1] == 1 and hi.shape[1] == 1 and lo.shape[0] in (1, B) and hi.shape[0] in (1, B)
            and broadcast_shape(rest, lo.shape[2:], hi.shape[2:]) == rest):
        N = math.prod(rest)
        lv = lo.expand(lo.shape[0], 1, *rest).reshape(lo.shape[0], N, 1)
        hv = hi.expand(hi.shape[0], 1, *rest).reshape(hi.shape[0], N, 1)
        return (pos.reshape(B, S, N) @ lv + neg.reshape(B, S, N) @ hv).squeeze(-1)
    return (pos * lo + neg * hi).reshape(B, S, -1).sum(-1)


def elementwise_backward_reference(A: torch.Tensor, lines: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise form of :func:`elementwise_backward` (any lines, ``0 * inf = 0``)."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    coeff = pos * lines.slope_lower + neg * lines.slope_upper
    bias = _times(pos, lines.bias_lower) + _times(neg, lines.bias_upper)
    return coeff, bias.reshape(A.shape[0], A.shape[1], -1).sum(-1)


def elementwise_backward(A: torch.Tensor, lines: Relaxation, backend: str = "torch"
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` ``[B, S, *shape]`` through ``h``: new coefficients ``A+ s_l + A- s_u`` on ``z`` and
    the bias ``sum(A+ b_l + A- b_u)`` ``[B, S]`` (a mat-vec where :func:`_bias_sum` allows; the
    fused kernel with ``backend="triton"``)."""
    if backend == "triton":
        return kernel_backend.elementwise_backward(A, lines)
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    coeff = pos * lines.slope_lower
    if tuple(coeff.shape) == broadcast_shape(coeff.shape, neg.shape, lines.slope_upper.shape):
        coeff.addcmul_(neg, lines.slope_upper)  # in place: one temporary fewer
    else:
        coeff = coeff + neg * lines.slope_upper
    return coeff, _bias_sum(pos, neg, lines.bias_lower, lines.bias_upper)


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


def bilinear_backward_reference(A: torch.Tensor, planes, x_shape, y_shape
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Elementwise form of :func:`bilinear_backward` (any planes, ``0 * inf = 0``)."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    (lx_c, ly_c, l_b), (ux_c, uy_c, u_b) = planes
    A_x = pos * lx_c + neg * ux_c
    A_y = pos * ly_c + neg * uy_c
    bias = (_times(pos, l_b) + _times(neg, u_b)).reshape(A.shape[0], A.shape[1], -1).sum(-1)
    lead = tuple(A.shape[:2])
    return A_x.sum_to_size(lead + tuple(x_shape)), A_y.sum_to_size(lead + tuple(y_shape)), bias


def bilinear_backward(A: torch.Tensor, planes, x_shape, y_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` ``[B, S, *out]`` through ``x * y`` (broadcasting); returns (A_x, A_y, bias):
    ``A_x = A+ a_x + A- a'_x``, ``A_y`` likewise, ``bias = sum(A+ c + A- c')``."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    (lx_c, ly_c, l_b), (ux_c, uy_c, u_b) = planes
    A_x = pos * lx_c + neg * ux_c
    A_y = pos * ly_c + neg * uy_c
    bias = _bias_sum(pos, neg, l_b, u_b)
    lead = tuple(A.shape[:2])
    return A_x.sum_to_size(lead + tuple(x_shape)), A_y.sum_to_size(lead + tuple(y_shape)), bias


def matmul_backward_reference(A: torch.Tensor, planes, x_shape, y_shape
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`matmul_backward` on the materialised products ``[B, S, ..., i, j, k]`` (any planes)."""
    A_p = A.unsqueeze(-2)  # [B, S, ..., i, 1, k]
    pos, neg = A_p.clamp(min=0), A_p.clamp(max=0)
    (lx_c, ly_c, l_b), (ux_c, uy_c, u_b) = planes
    A_x = (pos * lx_c + neg * ux_c).sum(-1)
    A_y = (pos * ly_c + neg * uy_c).sum(-3)
    bias = (_times(pos, l_b) + _times(neg, u_b)).reshape(A.shape[0], A.shape[1], -1).sum(-1)
    lead = tuple(A.shape[:2])
    return A_x.sum_to_size(lead + tuple(x_shape)), A_y.sum_to_size(lead + tuple(y_shape)), bias


def _contract(M: torch.Tensor, P: torch.Tensor, over: int) -> torch.Tensor:
    """``sum_over M[..., i, None, k] * P[..., i, j, k]`` (broadcasting) by one einsum.

    ``M`` ``[B, S, ..., i, k]``; ``P`` has ``M``'s dims plus ``j`` before the last (missing
    leading dims or size-1 dims broadcast); ``over`` is ``-1`` (sum over ``k``: result
    ``[B, S, ..., i, j]``) or ``-3`` (sum over ``i``: ``[B, S, ..., j, k]``). A size-1 dim that
    the other operand broadcasts is squeezed away, so einsum sums it on one side only."""
    n = M.dim() + 1  # dims of the products [B, S, ..., i, j, k]
    P = P.reshape((1,) * (n - P.dim()) + tuple(P.shape))
    j, over = n - 2, n + over
    m_sub, p_sub, out_sub, m_drop, p_drop = [], [], [], [], []
    for d in range(n):
        letter, p = string.ascii_letters[d], P.shape[d]
        if d != j:
            dm = d if d < j else d - 1  # the dim of M
            a = M.shape[dm]
            if a == p or p == 1:
                m_sub.append(letter)
            else:  # a == 1 < p (or mismatched sizes, which einsum refuses)
                m_drop.append(dm)
            if a == p or a == 1:
                p_sub.append(letter)
            else:
                p_drop.append(d)
        else:
            p_sub.append(letter)
        if d != over:
            out_sub.append(letter)
    if m_drop:
        M = M.squeeze(tuple(m_drop))
    if p_drop:
        P = P.squeeze(tuple(p_drop))
    return torch.einsum(f"{''.join(m_sub)},{''.join(p_sub)}->{''.join(out_sub)}", M, P)


def matmul_backward(A: torch.Tensor, planes, x_shape, y_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` ``[B, S, ..., i, k]`` through ``x @ y`` via the products ``p_ijk`` (module docstring).

    Finite planes: ``A_x[..., i, j] = sum_k A+[..., i, k] a_x[..., i, j, k] + A-[..., i, k] a'_x[...]``
    and ``A_y`` (over ``i``) as einsums, the bias as ``_bias_sum`` of ``A+-`` with ``sum_j c``;
    otherwise :func:`matmul_backward_reference`."""
    (lx_c, ly_c, l_b), (ux_c, uy_c, u_b) = planes
    if not _all_finite(lx_c, ly_c, l_b, ux_c, uy_c, u_b) or A.dim() < 4:
        return matmul_backward_reference(A, planes, x_shape, y_shape)
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    A_x = _contract(pos, lx_c, -1) + _contract(neg, ux_c, -1)
    A_y = _contract(pos, ly_c, -3) + _contract(neg, uy_c, -3)
    n = A.dim() + 1
    l_b, u_b = (b.reshape((1,) * (n - b.dim()) + tuple(b.shape)).sum(-2) for b in (l_b, u_b))
    bias = _bias_sum(pos, neg, l_b, u_b)
    lead = tuple(A.shape[:2])
    return A_x.sum_to_size(lead + tuple(x_shape)), A_y.sum_to_size(lead + tuple(y_shape)), bias
