"""Pow ``x^p`` with a constant exponent ``p`` (ONNX ``Pow`` with a constant second input).

Integer ``p``:

* ``p = 0``: the constant 1 (also at 0, as ``torch.pow``); ``p = 1``: the identity (exact).
* even ``p >= 2``: convex; tangent below at ``tangent_lower``, chord above.
* odd ``p >= 3``: concave on ``x <= 0``, convex on ``x >= 0``.  Across 0 the lower line is a
  tangent at ``d >= t_p |l|`` on the convex side (``t_p |l|`` is where the tangent passes
  through ``(l, l^p)``; ``x^p`` is homogeneous, so ``t_p`` is one constant, e.g. ``t_3 = 1/2``),
  or the chord; the upper line mirrors it (``d <= -t_p u``).
* ``p <= -1``: on either side of 0 the function is convex, except odd ``p`` on ``x < 0``
  (concave); intervals containing 0 are unbounded: constant lines of the image (``+inf``
  above; below, ``min(l^p, u^p)`` for even ``p`` and ``-inf`` for odd ``p``).

Non-integer ``p``: domain ``x >= 0`` (``l, u`` are clamped to ``>= 0``; negative inputs would
be NaN).  ``0 < p < 1`` concave, ``p > 1`` convex, ``p < 0`` convex and ``+inf`` at 0 (upper
line the constant ``+inf`` when ``l = 0``).  Tangent points are kept ``>= max(l, 1e-12 u)``
where the derivative is infinite at 0.  Biases are rigorous (:mod:`genbab.ops.curvature`),
margins as for every smooth op.  Parameters: ``tangent_lower``, ``tangent_upper``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import torch
from torch import Tensor

from genbab.ops.curvature import (NO_REGION, WHOLE_LINE, Curve, Region, curvature_lines,
                                  project_tangent_params)
from genbab.ops.relaxation import (F64, ElementwiseOp, OpTraits, Params, Relaxation,
                                   bisect_boundary, finalize, round_interval, to64)

INF = float("inf")


@lru_cache(maxsize=None)
def odd_tangent_ratio(p: int) -> float:
    """``t_p``: the tangent of ``x^p`` at ``t_p`` passes through ``(-1, -1)`` (rounded up)."""
    def valid(d: Tensor) -> Tensor:  # tangent at d lies below (-1, -1)
        return d ** p + p * d ** (p - 1) * (-1.0 - d) <= -1.0
    t = bisect_boundary(valid, torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), True, 80)
    return float(t) * (1.0 + 1e-12)


@dataclass(frozen=True)
class PowSpec:
    """Everything about ``x^p`` for one exponent: curve, domain, regions, cut points."""

    p: float

    @property
    def is_int(self) -> bool:
        return float(self.p).is_integer()

    @property
    def odd(self) -> bool:
        return self.is_int and int(self.p) % 2 == 1

    def f(self, x: Tensor) -> Tensor:
        return torch.pow(x, self.p)

    def df(self, x: Tensor) -> Tensor:
        if self.p == 1.0:
            return torch.ones_like(x)
        return self.p * torch.pow(x, self.p - 1.0)

    def convex_at(self, x: Tensor) -> Tensor:
        p = self.p
        if self.is_int and p >= 2 and not self.odd:
            return torch.ones_like(x, dtype=torch.bool)
        if self.is_int and self.odd:  # odd: convex where sign(x) * p(p-1) >= 0
            return x >= 0
        if self.is_int:  # even negative
            return torch.ones_like(x, dtype=torch.bool)
        return torch.full_like(x, not (0.0 < p < 1.0), dtype=torch.bool)

    @property
    def curve(self) -> Curve:
        return Curve(self.f, self.df, self.convex_at, singular=0.0 < self.p < 1.0)

    def clamp(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Non-integer exponents: domain ``x >= 0``."""
        if self.is_int:
            return l, u
        return l.clamp(min=0.0), u.clamp(min=0.0)

    def unbounded(self, l: Tensor, u: Tensor) -> Tensor:
        """Where ``[l, u]`` touches the pole at 0 of a negative exponent."""
        if self.p >= 0:
            return torch.zeros_like(l, dtype=torch.bool)
        return (l <= 0) & (u >= 0)

    def regions(self, l: Tensor, u: Tensor) -> dict[str, Region]:
        p = self.p
        eps_pt = torch.maximum(1e-12 * u, torch.full_like(u, 1e-300))
        if p in (0.0, 1.0):  # exact lines, no parameters
            return {}
        if self.is_int and self.odd and p >= 3:
            t = odd_tangent_ratio(int(p))
            return {"tangent_lower": Region(0.0, INF, left=lambda a: -t * a),
                    "tangent_upper": Region(-INF, 0.0, right=lambda a: -t * a)}
        if self.is_int and self.odd:  # p <= -1: convex for x > 0, concave for x < 0
            return {"tangent_lower": Region(0.0, INF), "tangent_upper": Region(-INF, 0.0)}
        if self.is_int:
            return {"tangent_lower": WHOLE_LINE}
        if 0.0 < p < 1.0:
            return {"tangent_upper": Region(eps_pt, INF)}
        return {"tangent_lower": Region(eps_pt if p < 0 else 0.0, INF)}

    def image(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        fl, fu = self.f(l), self.f(u)
        lo, hi = torch.minimum(fl, fu), torch.maximum(fl, fu)
        if self.is_int and not self.odd and self.p > 0:
            lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(lo), lo)
        bad = self.unbounded(l, u)
        hi = hi.masked_fill(bad, INF)
        if self.odd:
            lo = lo.masked_fill(bad & (l < 0), -INF)
        return lo, hi


def interval_pow(l: Tensor, u: Tensor, exponent: float = 2.0) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]`` (after the domain clamp), widened and rounded outward."""
    spec = PowSpec(float(exponent))
    l64, u64 = spec.clamp(*to64(l, u))
    return round_interval(*spec.image(l64, u64), l.dtype)


def _line_box(spec: PowSpec, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(l', u', bad)``: the interval used to build lines, with a harmless ``[1, 1]`` where
    no finite line exists (``bad``); for non-integer negative exponents ``l = 0`` is moved
    to ``1e-12 u`` (the function is convex on ``(0, inf)``, so its tangents stay valid)."""
    bad = spec.unbounded(l, u)
    if spec.p < 0 and not spec.is_int:
        l = torch.maximum(l, torch.where(torch.isfinite(u), 1e-12 * u, torch.zeros_like(u)))
        bad = u <= 0
    one = torch.ones_like(l)
    return torch.where(bad, one, l), torch.where(bad, one, u), bad


def init_params_pow(l: Tensor, u: Tensor, exponent: float = 2.0) -> Params:
    """Midpoints clamped into the tangent ranges."""
    spec = PowSpec(float(exponent))
    l64, u64, _ = _line_box(spec, *spec.clamp(*to64(l, u)))
    out = project_tangent_params(l64, u64, None, spec.regions(l64, u64))
    return {k: v.to(l.dtype) for k, v in out.items()}


def project_params_pow(params: Params, l: Tensor, u: Tensor, exponent: float = 2.0) -> Params:
    """Clamp the tangent points into their ranges."""
    spec = PowSpec(float(exponent))
    l64, u64, _ = _line_box(spec, *spec.clamp(*to64(l, u)))
    out = project_tangent_params(l64, u64, params, spec.regions(l64, u64))
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def relax_pow(l: Tensor, u: Tensor, params: Params | None = None,
              exponent: float = 2.0) -> Relaxation:
    """Tangent / chord relaxation of ``x^p`` (see the module docstring)."""
    spec = PowSpec(float(exponent))
    dt = l.dtype
    l64, u64 = spec.clamp(*to64(l, u))
    if spec.p in (0.0, 1.0):  # exact lines
        s = torch.full_like(l64, spec.p).to(dt)
        b = torch.full_like(l64, 1.0 - spec.p).to(dt)
        return Relaxation(s, b, s, b)
    lb, ub, bad = _line_box(spec, l64, u64)
    regions = spec.regions(lb, ub)
    lines = curvature_lines(spec.curve, lb, ub, regions.get("tangent_lower", NO_REGION),
                            regions.get("tangent_upper", NO_REGION), params,
                            [torch.zeros_like(lb)])
    lo_b, hi_b = spec.image(lb, ub)
    r = finalize(lb, ub, *lines, lo_b, hi_b, dt)
    lo, hi = round_interval(*spec.image(l64, u64), dt)
    upper_inf = spec.unbounded(l64, u64) | (torch.isinf(hi) & (hi > 0))
    lower_const = bad
    z = torch.zeros_like(r.slope_lower)
    dead = (u64 <= 0) & (not spec.is_int and spec.p > 0)  # x^p on [0, 0]
    return Relaxation(torch.where(lower_const | dead, z, r.slope_lower),
                      torch.where(lower_const, lo, torch.where(dead, z, r.bias_lower)),
                      torch.where(upper_inf | dead, z, r.slope_upper),
                      torch.where(upper_inf, hi, torch.where(dead, z, r.bias_upper)))


def make_pow(exponent: float = 2.0) -> ElementwiseOp:
    """Pow entry with a constant exponent (attribute ``exponent``)."""
    spec = PowSpec(float(exponent))
    kw = {"exponent": float(exponent)}
    names = tuple(spec.regions(torch.ones(1, dtype=F64), torch.ones(1, dtype=F64)))
    kind = "convex" if names == ("tangent_lower",) else (
        "concave" if names == ("tangent_upper",) else "general")
    return ElementwiseOp(
        name="Pow", forward=lambda x: torch.pow(x, spec.p),
        interval=partial(interval_pow, **kw), relax=partial(relax_pow, **kw),
        init_params=partial(init_params_pow, **kw),
        project_params=partial(project_params_pow, **kw),
        traits=OpTraits(kind, None, domain=(-INF if spec.is_int else 0.0, INF),
                        param_names=names),
        attrs=kw, factory=make_pow)


OPS: dict[str, ElementwiseOp] = {"Pow": make_pow(2.0)}
