"""Exp, Log, Reciprocal and Sqrt: functions of one curvature sign on their domain.

Convex pieces get a tangent lower line at ``tangent_lower`` (any point of ``[l, u]``) and the
chord above; concave pieces the chord below and a tangent above at ``tangent_upper``.  Biases
are rigorous for any slope (:mod:`genbab.ops.curvature`) and finalized with the smooth-op
margins.  Domain conventions (the real input is assumed to lie in the op's domain):

* Exp: all reals.  In float32 the tangent point is capped at
  ``log(max_float) - log(2 + 2 max(|l|, |u|)) - 1`` so the lower line stays finite; where
  ``exp(u)`` itself overflows the dtype the upper line is the constant ``+inf``.
* Log: ``l, u`` are clamped to ``>= tiny`` (smallest normal of the dtype); i.e. the bounds
  are valid for inputs ``>= tiny`` — an input ``<= 0`` would make the network output NaN/-inf.
* Sqrt: ``l, u`` clamped to ``>= 0``; tangent points are kept ``>= max(l, 1e-12 u)`` so the
  upper slope stays finite.
* Reciprocal ``1/x``: convex for ``l > 0``, concave for ``u < 0``; when ``0 in [l, u]`` the
  function is unbounded and the lines are the constants ``-inf`` / ``+inf`` (image
  ``(-inf, inf)``).  Division ``x / y`` is composed at graph level as ``x * Reciprocal(y)``
  (see :mod:`genbab.ops.bilinear`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from genbab.ops.curvature import (NO_REGION, Curve, Region, curvature_lines,
                                  project_tangent_params)
from genbab.ops.relaxation import (ElementwiseOp, OpTraits, Params, Relaxation, finalize,
                                   round_interval, to64)


@dataclass(frozen=True)
class OneCurvatureOp:
    """An op as data: float64 curve, domain clamp, regions of the tangent lines, image."""

    name: str
    forward: Callable[[Tensor], Tensor]
    curve: Curve
    clamp: Callable[[Tensor, Tensor, torch.dtype], tuple[Tensor, Tensor]]
    regions: Callable[[Tensor, Tensor, torch.dtype], dict[str, Region]]
    image: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    traits: OpTraits
    value_range: tuple[float, float] = (float("-inf"), float("inf"))


def _prepare(op: OneCurvatureOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    l64, u64 = to64(l, u)
    return op.clamp(l64, u64, l.dtype)


def interval_op(op: OneCurvatureOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]`` (after the domain clamp), widened, rounded outward and clipped to
    the range of the function."""
    l64, u64 = _prepare(op, l, u)
    lo, hi = round_interval(*op.image(l64, u64), l.dtype)
    return lo.clamp(min=op.value_range[0]), hi.clamp(max=op.value_range[1])


def init_params_op(op: OneCurvatureOp, l: Tensor, u: Tensor) -> Params:
    """Midpoints clamped into the tangent ranges (area-optimal tangents)."""
    l64, u64 = _prepare(op, l, u)
    out = project_tangent_params(l64, u64, None, op.regions(l64, u64, l.dtype))
    return {k: v.to(l.dtype) for k, v in out.items()}


def project_params_op(op: OneCurvatureOp, params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp the tangent points into their ranges."""
    l64, u64 = _prepare(op, l, u)
    out = project_tangent_params(l64, u64, params, op.regions(l64, u64, l.dtype))
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def relax_op(op: OneCurvatureOp, l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent / chord relaxation (see the module docstring)."""
    l64, u64 = _prepare(op, l, u)
    regions = op.regions(l64, u64, l.dtype)
    lines = curvature_lines(op.curve, l64, u64, regions.get("tangent_lower", NO_REGION),
                            regions.get("tangent_upper", NO_REGION), params, [])
    lo, hi = op.image(l64, u64)
    return finalize(l64, u64, *lines, lo, hi, l.dtype)


def make_op(op: OneCurvatureOp) -> ElementwiseOp:
    """Registry entry for a :class:`OneCurvatureOp`."""
    return ElementwiseOp(
        name=op.name, forward=op.forward,
        interval=lambda l, u: interval_op(op, l, u),
        relax=lambda l, u, params=None: relax_op(op, l, u, params),
        init_params=lambda l, u: init_params_op(op, l, u),
        project_params=lambda params, l, u: project_params_op(op, params, l, u),
        traits=op.traits)


# ----------------------------------------------------------------------------- the ops


def _identity_clamp(l: Tensor, u: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return l, u


def _exp_regions(l: Tensor, u: Tensor, dtype: torch.dtype) -> dict[str, Region]:
    m = torch.maximum(l.abs(), u.abs())
    cap = math.log(torch.finfo(dtype).max) - torch.log(2.0 + 2.0 * m) - 1.0
    return {"tangent_lower": Region(float("-inf"), torch.maximum(cap, l))}


EXP = OneCurvatureOp(
    "Exp", torch.exp, Curve(torch.exp, torch.exp, lambda z: torch.ones_like(z, dtype=torch.bool)),
    _identity_clamp, _exp_regions, lambda l, u: (torch.exp(l), torch.exp(u)),
    OpTraits("convex", "increasing", param_names=("tangent_lower",), table="Exp"), (0.0, float("inf")))


def _log_clamp(l: Tensor, u: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    tiny = torch.finfo(dtype).tiny
    return l.clamp(min=tiny), u.clamp(min=tiny)


LOG = OneCurvatureOp(
    "Log", torch.log, Curve(torch.log, torch.reciprocal, lambda z: torch.zeros_like(z, dtype=torch.bool)),
    _log_clamp, lambda l, u, dt: {"tangent_upper": Region(0.0, float("inf"))},
    lambda l, u: (torch.log(l), torch.log(u)),
    OpTraits("concave", "increasing", domain=(0.0, float("inf")), param_names=("tangent_upper",), table="Log"))


def _sqrt_clamp(l: Tensor, u: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return l.clamp(min=0.0), u.clamp(min=0.0)


def _dsqrt(z: Tensor) -> Tensor:
    return 0.5 / torch.sqrt(z)  # +inf at 0: the curve is marked singular


SQRT = OneCurvatureOp(
    "Sqrt", torch.sqrt,
    Curve(torch.sqrt, _dsqrt, lambda z: torch.zeros_like(z, dtype=torch.bool), singular=True),
    _sqrt_clamp, lambda l, u, dt: {"tangent_upper": Region(torch.maximum(1e-12 * u, torch.full_like(u, 1e-300)),
                                                           float("inf"))},
    lambda l, u: (torch.sqrt(l), torch.sqrt(u)),
    OpTraits("concave", "increasing", domain=(0.0, float("inf")), param_names=("tangent_upper",), table="Sqrt"),
    (0.0, float("inf")))


def _recip_clamp(l: Tensor, u: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Intervals containing 0 are replaced by ``[1, 1]`` here and overridden afterwards."""
    bad = (l <= 0) & (u >= 0)
    one = torch.ones_like(l)
    return torch.where(bad, one, l), torch.where(bad, one, u)


RECIPROCAL_CORE = OneCurvatureOp(
    "Reciprocal", torch.reciprocal,
    Curve(torch.reciprocal, lambda z: -torch.reciprocal(z * z), lambda z: z > 0),
    _recip_clamp,
    lambda l, u, dt: {"tangent_lower": Region(0.0, float("inf")),
                      "tangent_upper": Region(float("-inf"), 0.0)},
    lambda l, u: (torch.reciprocal(u), torch.reciprocal(l)),
    OpTraits("general", "decreasing", param_names=("tangent_lower", "tangent_upper"), table="Reciprocal"))


def _straddles_zero(l: Tensor, u: Tensor) -> Tensor:
    return (l <= 0) & (u >= 0)


def interval_reciprocal(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``[1/u, 1/l]`` on either side of 0; ``(-inf, inf)`` when ``0 in [l, u]``."""
    lo, hi = interval_op(RECIPROCAL_CORE, l, u)
    bad = _straddles_zero(l, u)
    return lo.masked_fill(bad, float("-inf")), hi.masked_fill(bad, float("inf"))


def relax_reciprocal(l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent / chord on either side of 0; infinite constant lines when ``0 in [l, u]``."""
    r = relax_op(RECIPROCAL_CORE, l, u, params)
    bad = _straddles_zero(l, u).expand_as(r.slope_lower)
    z = torch.zeros_like(r.slope_lower)
    return Relaxation(torch.where(bad, z, r.slope_lower), r.bias_lower.masked_fill(bad, float("-inf")),
                      torch.where(bad, z, r.slope_upper), r.bias_upper.masked_fill(bad, float("inf")))


def relax_sqrt(l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent above, chord below; exact zero lines on the degenerate ``[0, 0]``."""
    r = relax_op(SQRT, l, u, params)
    dead = (u <= 0).expand_as(r.slope_lower)
    z = torch.zeros_like(r.slope_lower)
    return Relaxation(*(torch.where(dead, z, t) for t in
                        (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)))


class NonPositiveBase(ValueError):
    """A ``LogPositive`` input range reaches 0 or below: no bound (so no proof) on that box."""


def _positive_only(fn):
    def checked(l: Tensor, u: Tensor, *rest, **kw):
        if bool((l <= 0).any()):
            raise NonPositiveBase("Pow with a variable exponent: the base is not positive on this box "
                                  "(its bounds reach 0 or below), no bound is computed")
        return fn(l, u, *rest, **kw)
    return checked


_LOG_ENTRY = make_op(LOG)
OPS: dict[str, ElementwiseOp] = {
    "Exp": make_op(EXP),
    "Log": _LOG_ENTRY,
    # log of the base of a Pow with a variable exponent (exp(y log x)): defined only where x > 0,
    # so a box whose base bounds reach 0 gets no bound at all rather than a clamped one
    "LogPositive": replace(_LOG_ENTRY, name="LogPositive", interval=_positive_only(_LOG_ENTRY.interval),
                           relax=_positive_only(_LOG_ENTRY.relax)),
    "Sqrt": replace(make_op(SQRT), relax=relax_sqrt),
    "Reciprocal": replace(make_op(RECIPROCAL_CORE), interval=interval_reciprocal,
                          relax=relax_reciprocal),
}
