"""S-shaped activations (Sigmoid, Tanh, Erf): one generic relaxation driven by op data.

An S-shaped op is increasing, convex for ``z < c`` and concave for ``z > c`` (inflection ``c``,
here 0 for all three).  Relaxation on ``[l, u]``:

* ``u <= c`` (convex): lower = tangent at ``tangent_lower`` in ``[l, u]``, upper = chord;
* ``l >= c`` (concave): upper = tangent at ``tangent_upper`` in ``[l, u]``, lower = chord;
* ``l < c < u``: upper = tangent at a point ``d >= d*(l)`` of the concave side, where the
  tangent at ``d*(l)`` passes through ``(l, f(l))``; if ``d*(l) > u`` the chord.  Lower line:
  mirror image (tangent points ``<= d*(u)`` on the convex side, else the chord).

``d*`` comes from tables built once per op and device (anchor grid step 1/256 on ``[-128,
128]``, read with rounding toward the valid side, bisection outside the grid).  Biases are
rigorous for any tangent point (see :mod:`genbab.ops.curvature`), then :func:`finalize`
applies the floating-point margins.  Parameters: ``tangent_lower``, ``tangent_upper``
(points; projection clamps them into the valid ranges above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from genbab.ops.curvature import (Curve, Fn, Region, TangentTable, curvature_lines,
                                  project_tangent_params)
from genbab.ops.relaxation import (ElementwiseOp, OpTraits, Params, Relaxation, finalize,
                                   round_interval, to64)

GRID = 128.0


@dataclass(frozen=True, eq=False)
class SShapedOp:
    """An S-shaped function as data: float64 ``f``, ``df``, inflection ``c`` and torch forward."""

    name: str
    f: Fn
    df: Fn
    forward: Fn
    c: float = 0.0
    value_range: tuple[float, float] = (-1.0, 1.0)

    @cached_property
    def curve(self) -> Curve:
        c = self.c
        return Curve(self.f, self.df, lambda z: z <= c)

    @cached_property
    def right_of_convex(self) -> TangentTable:
        """Lower line: tangent on ``(-inf, c]`` through an anchor ``a > c``."""
        c = self.c
        return TangentTable(self.curve, (c - 1e3, c), lower=True, valid_at_hi=False,
                            grid=(c, c + GRID), domain=(c, float("inf")))

    @cached_property
    def left_of_concave(self) -> TangentTable:
        """Upper line: tangent on ``[c, inf)`` through an anchor ``a < c``."""
        c = self.c
        return TangentTable(self.curve, (c, c + 1e3), lower=False, valid_at_hi=True,
                            grid=(c - GRID, c), domain=(float("-inf"), c))

    def regions(self) -> dict[str, Region]:
        """Lower tangents live on the convex side, upper tangents on the concave side."""
        return {"tangent_lower": Region(float("-inf"), self.c, right=self.right_of_convex),
                "tangent_upper": Region(self.c, float("inf"), left=self.left_of_concave)}


def s_interval(op: SShapedOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Increasing: ``[f(l), f(u)]``, widened, rounded outward, clipped to the range."""
    l64, u64 = to64(l, u)
    lo, hi = round_interval(op.f(l64), op.f(u64), l.dtype)
    return lo.clamp(min=op.value_range[0]), hi.clamp(max=op.value_range[1])


def s_init_params(op: SShapedOp, l: Tensor, u: Tensor) -> Params:
    """Midpoint of ``[l, u]`` clamped into each valid tangent range (area-optimal tangent)."""
    l64, u64 = to64(l, u)
    return {k: v.to(l.dtype) for k, v in project_tangent_params(l64, u64, None, op.regions()).items()}


def s_project_params(op: SShapedOp, params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp ``tangent_lower`` / ``tangent_upper`` into their valid ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, params, op.regions())
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def s_relax(op: SShapedOp, l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Tangent / chord relaxation of an S-shaped op on ``[l, u]`` (see module docstring)."""
    l64, u64 = to64(l, u)
    regions = op.regions()
    cut = torch.full_like(l64, op.c)
    s_lo, b_lo, s_up, b_up = curvature_lines(op.curve, l64, u64, regions["tangent_lower"],
                                             regions["tangent_upper"], params, [cut])
    return finalize(l64, u64, s_lo, b_lo, s_up, b_up, op.f(l64), op.f(u64), l.dtype)


# ----------------------------------------------------------------------------- the ops


def _sigmoid(z: Tensor) -> Tensor:
    return torch.sigmoid(z)


def _dsigmoid(z: Tensor) -> Tensor:
    """``sigma(z) sigma(-z)``: accurate in both tails (unlike ``sigma (1 - sigma)``)."""
    return torch.sigmoid(z) * torch.sigmoid(-z)


def _dtanh(z: Tensor) -> Tensor:
    """``1 / cosh(z)^2``: accurate in the tails (unlike ``1 - tanh^2``)."""
    return torch.cosh(z.clamp(-350.0, 350.0)).pow(-2)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _derf(z: Tensor) -> Tensor:
    return _TWO_OVER_SQRT_PI * torch.exp(-z * z)


SIGMOID = SShapedOp("Sigmoid", _sigmoid, _dsigmoid, torch.sigmoid, value_range=(0.0, 1.0))
TANH = SShapedOp("Tanh", torch.tanh, _dtanh, torch.tanh)
ERF = SShapedOp("Erf", torch.special.erf, _derf, torch.special.erf)


def make_s_shaped(op: SShapedOp, served: bool = False) -> ElementwiseOp:
    """Wrap an :class:`SShapedOp` as a registry entry (``served``: a split-point table and the
    relaxation kernel exist under its name)."""
    return ElementwiseOp(
        name=op.name, forward=op.forward,
        interval=lambda l, u: s_interval(op, l, u),
        relax=lambda l, u, params=None: s_relax(op, l, u, params),
        init_params=lambda l, u: s_init_params(op, l, u),
        project_params=lambda params, l, u: s_project_params(op, params, l, u),
        traits=OpTraits("s_shaped", "increasing", param_names=("tangent_lower", "tangent_upper"),
                        split_point=op.c, table=op.name if served else None,
                        kernel=op.name if served else None))


OPS: dict[str, ElementwiseOp] = {op.name: make_s_shaped(op, served=True) for op in (SIGMOID, TANH, ERF)}
