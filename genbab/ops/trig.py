"""Sin and Cos: interval images via critical points and periodic tangent / chord relaxations.

Write both as ``f(z) = sin(z + phase)`` (``phase = 0`` for Sin, ``pi/2`` for Cos).  Maxima lie
at ``pi/2 - phase + 2 k pi``, minima at ``-pi/2 - phase + 2 k pi``: the image of ``[l, u]`` is
``[min(f(l), f(u)), max(f(l), f(u))]`` extended to -1 / 1 when such a point is inside.

Inflection points are ``c_k = k pi - phase``; ``f'' = -f``, so ``f`` is convex where ``f <= 0``.
Let ``c1`` be the first inflection point ``>= l``; the pieces ``[c1 - pi, c1]`` and
``[c1, c1 + pi]`` are one convex and one concave (by the parity of ``k``).  With at most one
inflection point inside ``[l, u]`` this is exactly the S-shaped situation: tangent at
``tangent_lower`` on the convex piece (restricted to tangents passing below the far endpoint)
or the chord, and mirrored for the upper line.  The boundary tangent points come from two
tables of ``sin`` around 0 (anchor grid step 1/256 on ``[-pi, 0]`` and ``[0, pi]``), shifted
to ``c1`` (and mirrored for odd ``k``).  With two inflection points inside the same lines are
built (biases stay rigorous: both inflection points are cut points, and three refinement
passes tighten chord biases) and compared, at the midpoint, with the constant lines of the
interval image; with three or more the constant lines are used.  Parameters:
``tangent_lower``, ``tangent_upper`` (points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genbab.ops.curvature import (Curve, Region, TangentTable, curvature_lines,
                                  project_tangent_params)
from genbab.ops.relaxation import (ElementwiseOp, OpTraits, Params, Relaxation, finalize,
                                   round_interval, to64)

PI = math.pi
SIN_CURVE = Curve(torch.sin, torch.cos, lambda z: torch.sin(z) <= 0)
# upper tangents of sin on [0, pi] through an anchor in [-pi, 0]: valid points [d*, pi]
CONCAVE_FROM_LEFT = TangentTable(SIN_CURVE, (0.0, PI), lower=False, valid_at_hi=True,
                                 grid=(-PI, 0.0), domain=(-PI, 0.0))
# lower tangents of sin on [-pi, 0] through an anchor in [0, pi]: valid points [-pi, d*]
CONVEX_FROM_RIGHT = TangentTable(SIN_CURVE, (-PI, 0.0), lower=True, valid_at_hi=False,
                                 grid=(0.0, PI), domain=(0.0, PI))


@dataclass(frozen=True)
class TrigOp:
    """``f(z) = sin(z + phase)`` as data, with its accurate float64 curve."""

    name: str
    phase: float
    curve: Curve


SIN = TrigOp("Sin", 0.0, SIN_CURVE)
COS = TrigOp("Cos", PI / 2, Curve(torch.cos, lambda z: -torch.sin(z), lambda z: torch.cos(z) <= 0))


def _contains_point(l: Tensor, u: Tensor, p0: float) -> Tensor:
    """Whether some ``p0 + 2 k pi`` lies in ``[l, u]`` (inclusive, with a tiny outward slack)."""
    k = torch.ceil((l - p0) / (2 * PI))
    p = p0 + 2 * PI * k
    return p <= u + 1e-12 * (1.0 + u.abs())


def _image(op: TrigOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Exact (float64) image of ``[l, u]``."""
    fl, fu = op.curve.f(l), op.curve.f(u)
    lo, hi = torch.minimum(fl, fu), torch.maximum(fl, fu)
    hi = torch.where(_contains_point(l, u, PI / 2 - op.phase), torch.ones_like(hi), hi)
    lo = torch.where(_contains_point(l, u, -PI / 2 - op.phase), -torch.ones_like(lo), lo)
    return lo, hi


def interval_trig(op: TrigOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]``, widened, rounded outward and clipped to ``[-1, 1]``."""
    l64, u64 = to64(l, u)
    lo, hi = round_interval(*_image(op, l64, u64), l.dtype)
    return lo.clamp(min=-1.0), hi.clamp(max=1.0)


def _structure(op: TrigOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor, dict[str, Region]]:
    """``(c1, number of inflection points in [l, u] capped at 3, tangent regions)``."""
    k1 = torch.ceil((l + op.phase) / PI)
    c1 = k1 * PI - op.phase
    n_inf = (c1 <= u).long() + (c1 + PI <= u).long() + (c1 + 2 * PI <= u).long()
    even = torch.remainder(k1, 2.0) == 0
    left_piece = (c1 - PI, c1)
    right_piece = (c1, c1 + PI)

    def from_left(a: Tensor) -> Tensor:
        return c1 + CONCAVE_FROM_LEFT(a - c1)

    def from_right(a: Tensor) -> Tensor:
        return c1 + CONVEX_FROM_RIGHT(a - c1)

    conv = [torch.where(even, x, y) for x, y in zip(left_piece, right_piece)]
    conc = [torch.where(even, y, x) for x, y in zip(left_piece, right_piece)]
    regions = {"tangent_lower": Region(conv[0], conv[1], left=from_left, right=from_right),
               "tangent_upper": Region(conc[0], conc[1], left=from_left, right=from_right)}
    return c1, n_inf, regions


def init_params_trig(op: TrigOp, l: Tensor, u: Tensor) -> Params:
    """Midpoints clamped into the tangent ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, None, _structure(op, l64, u64)[2])
    return {k: v.to(l.dtype) for k, v in out.items()}


def project_params_trig(op: TrigOp, params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp the tangent points into their ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, params, _structure(op, l64, u64)[2])
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def relax_trig(op: TrigOp, l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent / chord lines, or the constant lines of the image (see the module docstring)."""
    l64, u64 = to64(l, u)
    c1, n_inf, regions = _structure(op, l64, u64)
    s_lo, b_lo, s_up, b_up = curvature_lines(op.curve, l64, u64, regions["tangent_lower"],
                                             regions["tangent_upper"], params, [c1, c1 + PI],
                                             refine=3)
    lo, hi = _image(op, l64, u64)
    mid = 0.5 * (l64 + u64)
    const_lo = (n_inf >= 3) | ((n_inf == 2) & (s_lo * mid + b_lo < lo))
    const_up = (n_inf >= 3) | ((n_inf == 2) & (s_up * mid + b_up > hi))
    zero = torch.zeros_like(s_lo)
    s_lo, b_lo = torch.where(const_lo, zero, s_lo), torch.where(const_lo, lo, b_lo)
    s_up, b_up = torch.where(const_up, zero, s_up), torch.where(const_up, hi, b_up)
    return finalize(l64, u64, s_lo, b_lo, s_up, b_up, lo, hi, l.dtype)


def make_trig(op: TrigOp) -> ElementwiseOp:
    """Registry entry for Sin / Cos."""
    return ElementwiseOp(
        name=op.name, forward=torch.sin if op is SIN else torch.cos,
        interval=lambda l, u: interval_trig(op, l, u),
        relax=lambda l, u, params=None: relax_trig(op, l, u, params),
        init_params=lambda l, u: init_params_trig(op, l, u),
        project_params=lambda params, l, u: project_params_trig(op, params, l, u),
        traits=OpTraits("periodic", None, param_names=("tangent_lower", "tangent_upper"), table=op.name,
                        kernel=op.name))


OPS: dict[str, ElementwiseOp] = {op.name: make_trig(op) for op in (SIN, COS)}
