"""Smooth activations: Softplus, Cosh, Sinh, Atan, Softsign and Mish, as data for the generic
curvature relaxations (:mod:`genbab.ops.curvature`).

* Softplus ``log(1 + e^z)`` (convex, increasing, ``f' = sigma``) and Cosh (convex, minimum 1 at
  0) are :class:`~genbab.ops.exp_log.OneCurvatureOp`: tangent below at ``tangent_lower``, chord
  above.  Cosh's tangent points are kept in ``|d| <= log(max) - log(2 + 2 max(|l|, |u|)) - 1``
  of the dtype (as for Exp) so its lower line stays finite; its image includes ``cosh(0) = 1``
  when ``0 in [l, u]``.
* Atan and Softsign ``z / (1 + |z|)`` are S-shaped (convex for ``z < 0``, concave for ``z > 0``,
  :mod:`genbab.ops.s_shaped`); Softsign is only C^1 at 0, which the curvature engine allows
  (0 is a cut point, both one-sided pieces have one curvature sign).
* Sinh is the mirror case: concave for ``z < 0``, convex for ``z > 0``.  Lower line: tangent at
  ``tangent_lower`` on the convex side; when ``l < 0`` only points ``d >= d*(l)`` (tangent
  passing below ``(l, sinh l)``, tabulated), chord when none; upper line mirrored.  Tangent
  points are capped like Cosh's.
* Mish ``z tanh(softplus z)`` is concave on ``(-inf, c1]``, convex on ``[c1, c2]`` and concave
  on ``[c2, inf)`` (``c1 ~ -2.2564``, ``c2 ~ 1.4905``, roots of ``f''`` found by bisection),
  with one minimum ``x_min ~ -1.1924``: the GeLU construction with asymmetric cuts — lower
  tangent on the convex middle restricted by tables to tangents below the far ends, upper
  tangent on the one concave piece met (else the chord), three refinement passes.

Biases are rigorous for any slope; :func:`~genbab.ops.relaxation.finalize` applies the
smooth-op margins.  Parameters: ``tangent_lower`` (Softplus, Cosh), ``tangent_lower`` and
``tangent_upper`` (the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from genbab.ops.curvature import (Curve, Fn, Region, TangentTable, curvature_lines,
                                  project_tangent_params)
from genbab.ops.exp_log import OneCurvatureOp, make_op
from genbab.ops.relaxation import (F64, ElementwiseOp, OpTraits, Params, Relaxation,
                                   bisect_boundary, finalize, round_interval, to64)
from genbab.ops.s_shaped import SShapedOp, make_s_shaped

GRID = 128.0
BIG = 700.0  # sinh / cosh stay finite in float64 below ~710


def _identity_clamp(l: Tensor, u: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return l, u


def _overflow_cap(l: Tensor, u: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest ``|d|`` whose tangent of ``e^|d| / 2``-sized functions stays finite on ``[l, u]``."""
    m = torch.maximum(l.abs(), u.abs())
    return (math.log(torch.finfo(dtype).max) - torch.log(2.0 + 2.0 * m) - 1.0).clamp(max=BIG)


# ----------------------------------------------------------------------------- Softplus, Cosh


def softplus(z: Tensor) -> Tensor:
    """``log(1 + e^z) = max(z, 0) + log1p(e^-|z|)`` (accurate in both tails)."""
    return z.clamp(min=0.0) + torch.log1p(torch.exp(-z.abs()))


def _always(z: Tensor) -> Tensor:
    return torch.ones_like(z, dtype=torch.bool)


SOFTPLUS = OneCurvatureOp(
    "Softplus", softplus, Curve(softplus, torch.sigmoid, _always), _identity_clamp,
    lambda l, u, dt: {"tangent_lower": Region(float("-inf"), float("inf"))},
    lambda l, u: (softplus(l), softplus(u)),
    OpTraits("convex", "increasing", param_names=("tangent_lower",)), (0.0, float("inf")))


def _cosh_regions(l: Tensor, u: Tensor, dtype: torch.dtype) -> dict[str, Region]:
    cap = _overflow_cap(l, u, dtype)
    return {"tangent_lower": Region(torch.minimum(-cap, u), torch.maximum(cap, l))}


def _cosh_image(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``[cosh(clip(0, l, u)), max(cosh l, cosh u)]``: the minimum 1 at 0 when inside."""
    zero = torch.minimum(torch.maximum(torch.zeros_like(l), l), u)
    return torch.cosh(zero), torch.maximum(torch.cosh(l), torch.cosh(u))


COSH = OneCurvatureOp(
    "Cosh", torch.cosh, Curve(torch.cosh, torch.sinh, _always), _identity_clamp, _cosh_regions,
    _cosh_image, OpTraits("convex", None, param_names=("tangent_lower",)), (1.0, float("inf")))


# ----------------------------------------------------------------------------- Atan, Softsign


def _datan(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + z * z)


def softsign(z: Tensor) -> Tensor:
    """``z / (1 + |z|)`` (``+-1`` at ``+-inf``)."""
    return torch.where(z.abs() == float("inf"), torch.sign(z), z / (1.0 + z.abs()))


def _dsoftsign(z: Tensor) -> Tensor:
    return (1.0 + z.abs()).pow(-2)


HALF_PI_UP = math.nextafter(math.pi / 2, math.inf)
ATAN = SShapedOp("Atan", torch.atan, _datan, torch.atan, value_range=(-HALF_PI_UP, HALF_PI_UP))
SOFTSIGN = SShapedOp("Softsign", softsign, _dsoftsign, softsign)


# ----------------------------------------------------------------------------- Sinh


SINH_CURVE = Curve(torch.sinh, torch.cosh, lambda z: z >= 0)
# lower tangents on the convex side [0, BIG] through an anchor a < 0: valid points [d*(a), BIG]
SINH_CONVEX_FROM_LEFT = TangentTable(SINH_CURVE, (0.0, BIG), lower=True, valid_at_hi=True,
                                     grid=(-GRID, 0.0), domain=(float("-inf"), 0.0))
# upper tangents on the concave side [-BIG, 0] through an anchor a > 0: valid points [-BIG, d*(a)]
SINH_CONCAVE_FROM_RIGHT = TangentTable(SINH_CURVE, (-BIG, 0.0), lower=False, valid_at_hi=False,
                                       grid=(0.0, GRID), domain=(0.0, float("inf")))


def _sinh_regions(l: Tensor, u: Tensor, dtype: torch.dtype) -> dict[str, Region]:
    cap = _overflow_cap(l, u, dtype)
    return {"tangent_lower": Region(0.0, cap, left=SINH_CONVEX_FROM_LEFT),
            "tangent_upper": Region(-cap, 0.0, right=SINH_CONCAVE_FROM_RIGHT)}


def interval_sinh(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Increasing: ``[sinh l, sinh u]``, widened and rounded outward."""
    l64, u64 = to64(l, u)
    return round_interval(torch.sinh(l64), torch.sinh(u64), l.dtype)


def init_params_sinh(l: Tensor, u: Tensor) -> Params:
    """Midpoints clamped into the tangent ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, None, _sinh_regions(l64, u64, l.dtype))
    return {k: v.to(l.dtype) for k, v in out.items()}


def project_params_sinh(params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp the tangent points into their ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, params, _sinh_regions(l64, u64, l.dtype))
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def relax_sinh(l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent / chord lines cut at the inflection point 0 (see the module docstring)."""
    l64, u64 = to64(l, u)
    regions = _sinh_regions(l64, u64, l.dtype)
    lines = curvature_lines(SINH_CURVE, l64, u64, regions["tangent_lower"],
                            regions["tangent_upper"], params, [torch.zeros_like(l64)])
    return finalize(l64, u64, *lines, torch.sinh(l64), torch.sinh(u64), l.dtype)


# ----------------------------------------------------------------------------- Mish


def mish(z: Tensor) -> Tensor:
    """``z tanh(softplus z)`` (0 at ``-inf``, not ``-inf * 0``)."""
    y = z * torch.tanh(softplus(z))
    return torch.where(z == float("-inf"), torch.zeros_like(y), y)


def _dmish(z: Tensor) -> Tensor:
    """``tanh(sp) + z sech(sp)^2 sigma(z)``, ``sech^2 = cosh^-2`` (accurate in the tails)."""
    sp = softplus(z)
    y = torch.tanh(sp) + z * torch.cosh(sp.clamp(max=350.0)).pow(-2) * torch.sigmoid(z)
    return torch.where(z == float("-inf"), torch.zeros_like(y), y)


def _d2mish(z: Tensor) -> Tensor:
    """``f''`` by automatic differentiation of :func:`_dmish` (only used to locate c1, c2)."""
    with torch.enable_grad():
        x = z.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_dmish(x).sum(), x)
    return g


def _root(g: Fn, lo: float, hi: float) -> float:
    """Scalar sign change of ``g`` on ``[lo, hi]`` by bisection."""
    a, b = torch.tensor([lo], dtype=F64), torch.tensor([hi], dtype=F64)
    sign_hi = bool(g(b) > 0)
    return float(bisect_boundary(lambda x: (g(x) > 0) == sign_hi, a, b, True, iters=80))


@dataclass(frozen=True, eq=False)
class BumpCurve:
    """A function concave on ``(-inf, c1]``, convex on ``[c1, c2]``, concave on ``[c2, inf)``
    with one minimum ``x_min`` in ``[c1, c2]``; tables as for GeLU."""

    f: Fn
    df: Fn
    c1: float
    c2: float

    @cached_property
    def curve(self) -> Curve:
        return Curve(self.f, self.df, lambda x: (x >= self.c1) & (x <= self.c2))

    @cached_property
    def x_min(self) -> float:
        return _root(self.df, self.c1, self.c2)

    @cached_property
    def tables(self) -> dict[str, TangentTable]:
        c1, c2, cv, inf = self.c1, self.c2, self.curve, float("inf")
        return {
            "mid_left": TangentTable(cv, (c1, c2), True, True, (c1 - GRID, c1), (-inf, c1)),
            "mid_right": TangentTable(cv, (c1, c2), True, False, (c2, c2 + GRID), (c2, inf)),
            "right_from_left": TangentTable(cv, (c2, c2 + 1e3), False, True, (c1, c2), (c1, c2)),
            "left_from_right": TangentTable(cv, (c1 - 1e3, c1), False, False, (c1, c2), (c1, c2)),
        }

    def regions(self, l: Tensor, u: Tensor) -> dict[str, Region]:
        """Convex middle for the lower tangent; the one concave piece met for the upper."""
        c1, c2, t, inf = self.c1, self.c2, self.tables, float("inf")
        right = (u > c2) & (l >= c1)
        left = (l < c1) & (u <= c2)
        val = torch.tensor([c2, -inf, inf, inf, c1, -inf], dtype=F64, device=l.device)
        A = torch.where(right, val[0], torch.where(left, val[1], val[2]))
        B = torch.where(right, val[3], torch.where(left, val[4], val[5]))
        return {"tangent_lower": Region(c1, c2, left=t["mid_left"], right=t["mid_right"]),
                "tangent_upper": Region(A, B, left=t["right_from_left"], right=t["left_from_right"])}

    def image(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Endpoint values and the minimum ``f(x_min)`` when inside."""
        fl, fu = self.f(l), self.f(u)
        xm = torch.full_like(l, self.x_min)
        inside = (l <= xm) & (xm <= u)
        lo = torch.where(inside, torch.minimum(torch.minimum(fl, fu), self.f(xm)), torch.minimum(fl, fu))
        return lo, torch.maximum(fl, fu)


MISH = BumpCurve(mish, _dmish, _root(_d2mish, -4.0, -1.5), _root(_d2mish, 0.5, 3.0))


def interval_bump(form: BumpCurve, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]``, widened and rounded outward."""
    l64, u64 = to64(l, u)
    return round_interval(*form.image(l64, u64), l.dtype)


def init_params_bump(form: BumpCurve, l: Tensor, u: Tensor) -> Params:
    """Midpoints clamped into the tangent ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, None, form.regions(l64, u64))
    return {k: v.to(l.dtype) for k, v in out.items()}


def project_params_bump(form: BumpCurve, params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp the tangent points into their ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, params, form.regions(l64, u64))
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def relax_bump(form: BumpCurve, l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent / chord lines cut at ``c1``, ``c2`` with three refinement passes."""
    l64, u64 = to64(l, u)
    regions = form.regions(l64, u64)
    cuts = [torch.full_like(l64, form.c1), torch.full_like(l64, form.c2)]
    lines = curvature_lines(form.curve, l64, u64, regions["tangent_lower"],
                            regions["tangent_upper"], params, cuts, refine=3)
    return finalize(l64, u64, *lines, *form.image(l64, u64), l.dtype)


def make_bump(name: str, form: BumpCurve) -> ElementwiseOp:
    """Registry entry for a concave-convex-concave op."""
    return ElementwiseOp(
        name=name, forward=form.f,
        interval=lambda l, u: interval_bump(form, l, u),
        relax=lambda l, u, params=None: relax_bump(form, l, u, params),
        init_params=lambda l, u: init_params_bump(form, l, u),
        project_params=lambda params, l, u: project_params_bump(form, params, l, u),
        traits=OpTraits("general", None, param_names=("tangent_lower", "tangent_upper")))


OPS: dict[str, ElementwiseOp] = {
    "Softplus": make_op(SOFTPLUS),
    "Cosh": make_op(COSH),
    "Atan": make_s_shaped(ATAN),
    "Softsign": make_s_shaped(SOFTSIGN),
    "Sinh": ElementwiseOp(
        name="Sinh", forward=torch.sinh, interval=interval_sinh, relax=relax_sinh,
        init_params=init_params_sinh, project_params=project_params_sinh,
        traits=OpTraits("general", "increasing", param_names=("tangent_lower", "tangent_upper"),
                        split_point=0.0)),
    "Mish": make_bump("Mish", MISH),
}
