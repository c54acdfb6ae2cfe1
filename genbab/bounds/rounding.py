"""Rigorous rounding-error terms of the backward (CROWN) pass and of interval steps.

Floating-point arithmetic rounds to nearest; a bound computed in it may exceed the true one by
the accumulated rounding error. Every step of :meth:`BoundEngine.backward` therefore also adds an
upper bound of its own error to a per-row ledger ``err`` ``[B, S]``, and the bound reported is
``concretised - err``. With unit roundoff ``u`` (``2^-53`` in float64, ``2^-24`` in float32) and
``gamma_n = n u / (1 - n u)`` (the classic bound for a sum of ``n`` products in any order, FMA or
not), and ``m = max(|l|, |u|)`` of a node's bounds (``|z| <= m`` on the domain):

- affine ``z = L x + c``: the coefficients ``A L`` and the bias ``A c`` are sums of at most ``N``
  (the node's size) products, so the step errs by at most ``gamma_{2N+4} |A| . v`` with
  ``v = |L| m_x + |c|`` (the largest magnitude of the interval image of ``[-m_x, m_x]``);
- elementwise lines ``s z + b``: one product per coefficient and a sum of ``N`` products for the
  bias: ``sum |A| (u max|s| m + gamma_{N+2} max|b|)``;
- products ``x * y`` / ``x @ y`` (McCormick planes with ``|a_x| <= m_y``, ``|a_y| <= m_x``,
  ``|c| <= 3.01 m_x m_y``): ``6 gamma_{J+N+4} |A| . (m_x * m_y)`` (``m_x @ m_y`` for MatMul);
- sums of contributions and biases: ``u`` of each result's magnitude.

The interval (IBP) image of an affine node is widened by ``gamma_{2N+4} v`` likewise. Magnitudes
are capped at the dtype's largest finite value so that a zero coefficient times an unbounded
coordinate counts 0, and the whole ledger is scaled by ``1.01`` for its own rounding. Underflow
adds at most ``tiny`` per operation: ``(N + 4) tiny`` per step.
"""

from __future__ import annotations

import math

import torch

SAFETY = 1.01


def broadcast_shape(*shapes) -> tuple[int, ...] | None:
    """NumPy broadcasting of ``shapes`` (None when they do not broadcast). Pure Python: the first
    ``torch.broadcast_shapes`` call of a process imports sympy (~0.5 s)."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: half the machine epsilon of ``dtype``."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """``1.01 gamma_n = 1.01 n u / (1 - n u)`` (``inf`` when ``n u >= 1/2``)."""
    k = n * unit_roundoff(dtype)
    return math.inf if k >= 0.5 else SAFETY * k / (1 - k)


def magnitude(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``max(|lo|, |hi|)`` capped at the dtype's largest finite value."""
    return torch.maximum(lo.abs(), hi.abs()).clamp(max=torch.finfo(lo.dtype).max)


def _rowsum(A_abs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum |A| w`` over the non-leading dims: ``A_abs`` ``[B, S, *shape]``, ``w`` broadcasting
    to it: ``[B, S]`` (a batched mat-vec when ``w`` is one row per batch element)."""
    B, S = A_abs.shape[:2]
    rest = tuple(A_abs.shape[2:])
    w = w.to(A_abs.dtype)  # a node may compute in another dtype (a Cast): magnitudes are what count
    if w.dim() == A_abs.dim() and w.shape[1] == 1 and w.shape[0] in (1, B) and tuple(w.shape[2:]) == rest:
        N = math.prod(rest)
        return (A_abs.reshape(B, S, N) @ w.expand(B, 1, *rest).reshape(B, N, 1)).squeeze(-1)
    return (A_abs * w).reshape(B, S, -1).sum(-1)


def tiny_term(n: int, dtype: torch.dtype) -> float:
    return (n + 4) * torch.finfo(dtype).tiny


def affine_error(A: torch.Tensor, v: torch.Tensor, terms: int, const: torch.Tensor | None) -> torch.Tensor:
    """Error bound ``[B, S]`` of an affine backward step: ``A`` ``[B, S, *out]``, ``v``
    ``[B, *out]`` (``|L| m_x + |c|``), ``terms`` the rounded operations behind one input
    coefficient; the bias ``A c`` (``const``, None when zero) is a sum over every output."""
    n = math.prod(A.shape[2:])
    dt = v.dtype if v.dtype.itemsize < A.dtype.itemsize else A.dtype  # a node computing in less precision
    w = gamma(terms + 4, dt) * v.to(A.dtype)
    if const is not None:
        w = w + gamma(n + 4, dt) * const.abs().to(A.dtype)
    return _rowsum(A.abs(), w.unsqueeze(1)) + tiny_term(n, dt)


def elementwise_error(A: torch.Tensor, lines, m: torch.Tensor) -> torch.Tensor:
    """Error bound ``[B, S]`` of an elementwise backward step: lines ``[B, S or 1, *shape]``,
    ``m`` ``[B, 1, *shape]`` the magnitude of the node's input."""
    dt = A.dtype
    n = math.prod(A.shape[2:])
    top = torch.finfo(dt).max
    s = torch.maximum(lines.slope_lower.abs(), lines.slope_upper.abs()).clamp(max=top)
    b = torch.maximum(lines.bias_lower.abs(), lines.bias_upper.abs()).clamp(max=top)
    w = (unit_roundoff(dt) * SAFETY) * s * m + gamma(n + 2, dt) * b
    return _rowsum(A.abs(), w.clamp(max=top)) + tiny_term(n, dt)


def product_error(A: torch.Tensor, mx: torch.Tensor, my: torch.Tensor, matmul: bool) -> torch.Tensor:
    """Error bound ``[B, S]`` of a McCormick backward step through ``x * y`` (broadcasting) or
    ``x @ y``: ``mx``/``my`` ``[B, *x_shape]``/``[B, *y_shape]``."""
    dt = A.dtype
    top = torch.finfo(dt).max
    n = math.prod(A.shape[2:])
    if matmul:
        J = mx.shape[-1]
        mm = (mx @ my).clamp(max=top)
    else:
        J = 1
        mm = (mx * my).clamp(max=top)
    return 6 * gamma(J + n + 4, dt) * _rowsum(A.abs(), mm.unsqueeze(1)) + tiny_term(n * J, dt)


def sum_error(total: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Error bound ``[B, S]`` of adding coefficient contributions into ``total`` ``[B, S, *shape]``
    (one rounding per element) for a node of magnitude ``m`` ``[B, 1, *shape]``."""
    dt = total.dtype
    return (unit_roundoff(dt) * SAFETY) * _rowsum(total.abs(), m) + tiny_term(math.prod(total.shape[2:]), dt)


def bias_add_error(bias: torch.Tensor) -> torch.Tensor:
    """Error bound of the addition that produced ``bias`` ``[B, S]``."""
    return (unit_roundoff(bias.dtype) * SAFETY) * bias.abs() + torch.finfo(bias.dtype).tiny


def to_dtype_down(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, rounded toward ``-inf`` (a box's lower end must not move inward)."""
    y = x.to(dtype)
    if x.dtype == dtype:
        return y
    return torch.where(y.to(x.dtype) > x, torch.nextafter(y, _toward(y, -math.inf)), y)


def to_dtype_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, rounded toward ``+inf``."""
    y = x.to(dtype)
    if x.dtype == dtype:
        return y
    return torch.where(y.to(x.dtype) < x, torch.nextafter(y, _toward(y, math.inf)), y)


def exact_in(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every value of ``x`` is representable in ``dtype`` (so casting changes nothing)."""
    return bool((x.to(dtype).to(x.dtype) == x).all())


def widen(lo: torch.Tensor, hi: torch.Tensor, slack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo - slack, hi + slack]`` for ``slack >= 0``, each moved one more ulp outward: the
    subtraction itself rounds (to nearest), and a slack below half an ulp would vanish in it."""
    return torch.nextafter(lo - slack, _toward(lo, -math.inf)), torch.nextafter(hi + slack, _toward(hi, math.inf))


def subtract(value: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """``value - err`` rounded downward: the nearest rounding, moved one ulp down unless it was
    exact (the rounding error of the difference, by Knuth's two-sum, is zero: ``0 - 0`` stays 0)."""
    diff = value - err
    back = diff - value
    exact = ((value - (diff - back)) + (-err - back) == 0) & torch.isfinite(diff)
    return torch.where(exact, diff, torch.nextafter(diff, _toward(diff, -math.inf)))


def _toward(x: torch.Tensor, target: float) -> torch.Tensor:
    return torch.full((), target, dtype=x.dtype, device=x.device)
