"""Linear relaxations of elementwise nonlinearities: the shared vocabulary and soundness rules.

A relaxation of ``h`` on the box ``[l, u]`` is a pair of lines
``slope_lower*z + bias_lower <= h(z) <= slope_upper*z + bias_upper`` valid for every real ``z`` in
``[l, u]`` (elementwise, any tensor shape).  Every op module computes its lines in float64 and
hands them to :func:`finalize`, which makes them sound *in floating point*:

1. the slopes are rounded to the output dtype and the biases corrected for that rounding
   exactly (``b_lower += min_z (s - s_rounded) z`` over ``z in {l, u}``, ``max`` for upper);
2. the biases are widened by ``margin = rel * (|s|*max(|l|,|u|) + |b| + abs_scale) + 4*tiny``
   with ``rel = 16*eps(float64) + 4*eps(dtype)`` for smooth ops (``4*eps(dtype)`` covers the
   rounding of ``h`` and of the line evaluation in that dtype, the float64 term our own
   arithmetic) and ``rel = 16*eps(float64)`` for piecewise-linear ops; ``tiny`` is the
   dtype's smallest normal number (flush-to-zero of subnormals);
3. the biases are rounded outward (down for lower, up for upper) to the dtype;
4. a line that is not finite in the dtype (or on an unbounded box) becomes the constant line
   of the interval image.

Interval images get the same treatment through :func:`round_interval`.  Rounding corrections
are applied as detached offsets, so gradients (alpha-CROWN) flow as through the exact formulas.

Parameters (alpha) are explicit dicts of named tensors, broadcastable against ``l``/``u``
(e.g. with a leading spec dimension).  ``relax`` always projects them first, so *any* value
gives a sound relaxation; the projection is straight-through for gradients (the value is
projected, the gradient is that of the selected line), the usual projected-gradient setup in
which the optimizer calls ``project_params`` after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

F64 = torch.float64
EPS64 = torch.finfo(F64).eps
K_INTERNAL = 16.0  # float64 eps multiples: our own float64 arithmetic
K_DTYPE = 4.0  # output-dtype eps multiples: evaluating h and the line in that dtype
Params = dict[str, Tensor]


@dataclass(frozen=True)
class Relaxation:
    """``slope_lower*z + bias_lower <= h(z) <= slope_upper*z + bias_upper`` on ``[l, u]``."""

    slope_lower: Tensor
    bias_lower: Tensor
    slope_upper: Tensor
    bias_upper: Tensor

    def lower(self, z: Tensor) -> Tensor:
        """Value of the lower line at ``z``."""
        return self.slope_lower * z + self.bias_lower

    def upper(self, z: Tensor) -> Tensor:
        """Value of the upper line at ``z``."""
        return self.slope_upper * z + self.bias_upper


@dataclass(frozen=True)
class OpTraits:
    """Properties of an op that generic code (branching, bounds) may read.

    ``kind``: "piecewise_linear", "convex", "concave", "s_shaped", "periodic" or "general";
    ``monotone``: "increasing", "decreasing" or None; ``domain``: the real inputs the math is
    defined for (inputs outside are clamped, see each module); ``param_names``: keys of the
    alpha dict (none: not optimisable); ``split_point``: natural branching point (ReLU: 0) or
    None; ``splittable``: branch and bound may split its input; ``table``: the key of its
    pre-optimised split-point table (``lookup_tables/branch_<table>.npz``), None for none;
    ``kernel``: the name the relaxation kernel (``kernels/relax.py``) serves it under, None when
    only PyTorch relaxes it.
    """

    kind: str
    monotone: str | None = None
    domain: tuple[float, float] = (float("-inf"), float("inf"))
    param_names: tuple[str, ...] = ()
    split_point: float | None = None
    splittable: bool = True
    table: str | None = None
    kernel: str | None = None

    @property
    def optimisable(self) -> bool:
        """Whether alpha-CROWN has parameters to optimise (``param_names`` not empty)."""
        return bool(self.param_names)


@dataclass(frozen=True)
class ElementwiseOp:
    """One elementwise op: forward, interval image and relaxation with explicit parameters.

    ``forward(x)``, ``interval(l, u) -> (lo, hi)``, ``relax(l, u, params=None) -> Relaxation``,
    ``init_params(l, u) -> dict``, ``project_params(params, l, u) -> dict``.  Ops with ONNX
    attributes (LeakyRelu ``alpha``, Gelu ``approximate``, Pow ``exponent``) carry them in
    ``attrs`` and are re-instantiated with :meth:`bind`.
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    interval: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    relax: Callable[..., Relaxation]
    init_params: Callable[[Tensor, Tensor], Params]
    project_params: Callable[[Params, Tensor, Tensor], Params]
    traits: OpTraits
    attrs: Mapping[str, Any] = field(default_factory=dict)
    factory: Callable[..., "ElementwiseOp"] | None = None

    def bind(self, **attrs: Any) -> "ElementwiseOp":
        """The same op with (some) attributes replaced, e.g. ``OPS["Pow"].bind(exponent=3)``."""
        if not attrs:
            return self
        if self.factory is None:
            raise TypeError(f"op {self.name} takes no attributes, got {sorted(attrs)}")
        return self.factory(**{**self.attrs, **attrs})


# ----------------------------------------------------------------------------- rounding


def _detached_shift(x: Tensor, target: Tensor) -> Tensor:
    """``target`` in value, gradient of ``x`` (for rounding corrections; infinities pass)."""
    both = torch.isfinite(x) & torch.isfinite(target)
    return torch.where(both, x - x.detach() + target.detach(), target)  # exact in value


def round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest ``dtype`` value ``<= x`` (x float64); values above the dtype range (``+inf``
    included: an overflowed real) go to the dtype's max."""
    y = x.to(dtype)
    y_d = y.detach()
    big = torch.finfo(dtype).max
    if dtype == x.dtype:
        return _detached_shift(y, torch.where(y_d == float("inf"), big, y_d))
    y_d = torch.where(y_d == float("inf"), big, y_d)
    bad = y_d.to(x.dtype) > x.detach()
    fixed = torch.where(bad, torch.nextafter(y_d, torch.full_like(y_d, float("-inf"))), y_d)
    return _detached_shift(y, fixed)


def round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Smallest ``dtype`` value ``>= x`` (x float64)."""
    return -round_down(-x, dtype)


def rel_margin(dtype: torch.dtype, smooth: bool) -> float:
    """Relative widening used for lines and intervals (see the module docstring)."""
    return K_INTERNAL * EPS64 + (K_DTYPE * torch.finfo(dtype).eps if smooth else 0.0)


def abs_margin(dtype: torch.dtype, smooth: bool) -> float:
    """Absolute widening: a few smallest normals (subnormal flush), smooth ops only."""
    return 4.0 * torch.finfo(dtype).tiny if smooth else 0.0


def round_interval(lo: Tensor, hi: Tensor, dtype: torch.dtype, smooth: bool = True,
                   abs_scale: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Widen a float64 interval by the margins and round it outward to ``dtype``.

    ``abs_scale`` adds ``rel * abs_scale`` absolute slack (ops whose usual implementations
    have absolute rather than relative error, e.g. GeLU).
    """
    rel = rel_margin(dtype, smooth)
    ab = abs_margin(dtype, smooth)
    with torch.no_grad():
        w_lo = rel * (lo.abs() + abs_scale) + ab
        w_hi = rel * (hi.abs() + abs_scale) + ab
        w_lo = torch.where(torch.isfinite(w_lo), w_lo, torch.zeros_like(w_lo))
        w_hi = torch.where(torch.isfinite(w_hi), w_hi, torch.zeros_like(w_hi))
    return round_down(lo - w_lo, dtype), round_up(hi + w_hi, dtype)


def straight_through(raw: Tensor, projected: Tensor) -> Tensor:
    """``projected`` in value, gradient of ``raw`` (projected-gradient convention: a parameter
    sitting on or beyond the boundary of its valid set still gets the gradient of the line it
    selects, so an optimizer can move it back inside; ``project_params`` undoes overshoot)."""
    projected = projected.to(raw.dtype).detach()
    return torch.where(torch.isfinite(raw), raw - raw.detach() + projected, projected)


def project_straight_through(params: Params | None, projected: Params) -> Params:
    """Apply :func:`straight_through` to every projected entry that was given raw."""
    params = params or {}
    return {k: straight_through(params[k], v) if k in params else v for k, v in projected.items()}


# ----------------------------------------------------------------------------- finalize


def _round_slope_correct(s: Tensor, b: Tensor, l: Tensor, u: Tensor, dtype: torch.dtype,
                         upper: bool) -> tuple[Tensor, Tensor]:
    """Round the slope to ``dtype`` and shift the bias so the rounded line stays on its side."""
    s_r = s.to(dtype)
    with torch.no_grad():
        ds = s - s_r.to(F64)
        a, c = ds * l, ds * u
        shift = torch.maximum(a, c) if upper else torch.minimum(a, c)
        shift = torch.nan_to_num(shift, nan=0.0, posinf=0.0, neginf=0.0)
    return s_r, b + shift


def finalize(l: Tensor, u: Tensor, s_lo: Tensor, b_lo: Tensor, s_up: Tensor, b_up: Tensor,
             lo: Tensor, hi: Tensor, dtype: torch.dtype, smooth: bool = True,
             abs_scale: Tensor | float = 0.0) -> Relaxation:
    """Turn float64 lines valid in exact arithmetic into sound lines in ``dtype``.

    ``lo``/``hi`` is the float64 interval image of h on ``[l, u]`` (used for the constant
    fallback of non-finite lines); ``abs_scale`` as in :func:`round_interval`.
    """
    rel = rel_margin(dtype, smooth)
    ab = abs_margin(dtype, smooth)
    m = torch.maximum(l.abs(), u.abs())
    finite_box = torch.isfinite(m)  # an unbounded box gets the constant lines of the image
    lo_r, hi_r = round_interval(lo, hi, dtype, smooth, abs_scale)
    out = []
    for s, b, upper, const in ((s_lo, b_lo, False, lo_r), (s_up, b_up, True, hi_r)):
        ok64 = torch.isfinite(s) & torch.isfinite(b)
        s = torch.where(ok64, s, torch.zeros_like(s))
        b = torch.where(ok64, b, torch.zeros_like(b))
        s_r, b = _round_slope_correct(s, b, l, u, dtype, upper)
        with torch.no_grad():
            margin = rel * (s_r.to(F64).abs() * m + b.abs() + abs_scale) + ab
            margin = torch.nan_to_num(margin, nan=float("inf"), posinf=float("inf"))
        b_r = round_up(b + margin, dtype) if upper else round_down(b - margin, dtype)
        ok = ok64 & finite_box & torch.isfinite(s_r) & torch.isfinite(b_r)
        s_r = torch.where(ok, s_r, torch.zeros_like(s_r))
        b_r = torch.where(ok, b_r, const.to(b_r.dtype))
        out += [s_r, b_r]
    return Relaxation(*out)


# ----------------------------------------------------------------------------- line helpers


def to64(*xs: Tensor) -> list[Tensor]:
    """Cast to float64 and broadcast to a common shape."""
    return list(torch.broadcast_tensors(*[x.to(F64) for x in xs]))


def chord_slope(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor],
                l: Tensor, u: Tensor) -> Tensor:
    """Slope of the chord ``(f(u) - f(l)) / (u - l)``; ``f'((l+u)/2)`` for (near-)degenerate
    intervals, where the difference quotient would be dominated by rounding."""
    w = u - l
    small = w <= 1e-7 * (l.abs() + u.abs()) + 1e-300
    w_safe = torch.where(small, torch.ones_like(w), w)
    q = (f(u) - f(l)) / w_safe
    return torch.where(small, df(0.5 * (l + u)), q)


def tangent_line(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor],
                 d: Tensor) -> tuple[Tensor, Tensor]:
    """Tangent at ``d``: slope ``f'(d)``, bias ``f(d) - f'(d) d``."""
    s = df(d)
    return s, f(d) - s * d


def bisect_boundary(valid: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor,
                    valid_at_hi: bool, iters: int = 60) -> Tensor:
    """Vectorized bisection for the end of a set ``{valid}`` that is an interval touching one end.

    If ``valid_at_hi`` the valid set is ``[d*, hi]`` and ``d*`` (rounded toward ``hi``, i.e.
    to the valid side) is returned; otherwise the set is ``[lo, d*]``.  Empty valid set:
    ``+inf`` (resp. ``-inf``); whole range valid: ``lo`` (resp. ``hi``).
    """
    with torch.no_grad():
        good = hi.clone() if valid_at_hi else lo.clone()
        bad = lo.clone() if valid_at_hi else hi.clone()
        empty = ~valid(good)
        full = valid(bad)
        for _ in range(iters):
            mid = 0.5 * (good + bad)
            v = valid(mid)
            good = torch.where(v, mid, good)
            bad = torch.where(v, bad, mid)
        sentinel = float("inf") if valid_at_hi else float("-inf")
        good = torch.where(full, bad, good)
        return torch.where(empty, torch.full_like(good, sentinel), good)
