"""Products of two variables ``z = x y`` with ``x in [lx, ux]``, ``y in [ly, uy]``: McCormick.

The four McCormick planes are

    z >= ly x + lx y - lx ly,     z >= uy x + ux y - ux uy,      (lower)
    z <= uy x + lx y - lx uy,     z <= ly x + ux y - ux ly.      (upper)

Any convex combination of the two lower (upper) planes is again valid, so the parameters are
``alpha_lower``, ``alpha_upper`` in ``[0, 1]``: ``coef_x = alpha ly + (1 - alpha) uy``,
``coef_y = alpha lx + (1 - alpha) ux`` (lower; upper with ``uy, ly`` / ``lx, ux``).  Soundness
in floating point: the coefficients are rounded to the dtype first and the bias is then
*recomputed* for them exactly — the residual ``x y - a x - b y`` is bilinear, so its min / max
over the box is attained at a corner — then widened by the smooth-op margins (relative to the
largest corner term) and rounded outward.  Hence every coefficient pair is sound.

Division ``x / y`` is composed at graph level as ``x * Reciprocal(y)``: relax ``w = 1/y`` with
:mod:`genbab.ops.exp_log` (``y`` bounded away from 0), then the product ``x w`` here.

Products of a graph node: ``PRODUCT_OPS[op_type]`` says how the node's factors form the
elementwise products the planes relax (``expand``): ``Mul`` broadcasts ``x`` against ``y``;
``MatMul`` ``z_ik = sum_j x_ij y_jk`` relaxes the products ``p_ijk`` of ``x[..., i, j, None]``
and ``y[..., None, j, k]``. Parameters then have the products' shape (with leading ``[B, S]``),
the same protocol as the unary ops: ``init_params(*operands)``, ``project_params(params,
*operands)``, ``relax(*operands, params)`` with ``operands = expand(lx, ux, ly, uy)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from genbab.ops.relaxation import (F64, Params, abs_margin, project_straight_through,
                                   rel_margin, round_down, round_interval, round_up, to64)


@dataclass(frozen=True)
class BilinearRelaxation:
    """``lower = (coef_x, coef_y, bias)``: ``x y >= coef_x x + coef_y y + bias`` on the box;
    ``upper`` likewise with ``<=``."""

    lower: tuple[Tensor, Tensor, Tensor]
    upper: tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class BilinearOp:
    """Registry entry of a two-input op relaxed by planes (traits as data: ``contraction``,
    ``param_names`` (optimisable when not empty), ``splittable`` (branch and bound may split its
    factors), ``table``: the product split-point table, ``lookup_tables/branch_<table>.npz``)."""

    name: str
    forward: Callable[[Tensor, Tensor], Tensor]
    interval: Callable[..., tuple[Tensor, Tensor]]
    relax: Callable[..., BilinearRelaxation]
    init_params: Callable[..., Params]
    project_params: Callable[..., Params]
    expand: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]] = lambda lx, ux, ly, uy: (lx, ux, ly, uy)
    contraction: bool = False  # the output sums the products over a shared index (MatMul's j)
    param_names: tuple[str, ...] = ("alpha_lower", "alpha_upper")
    arity: int = 2
    splittable: bool = True
    table: str | None = "Mul"

    @property
    def optimisable(self) -> bool:
        return bool(self.param_names)


def _corners(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    """``(xs, ys)``: the four corners stacked on a new leading dim."""
    return torch.stack([lx, lx, ux, ux]), torch.stack([ly, uy, ly, uy])


def interval_mul(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    """Image of the box under ``x y``: min / max of the corner products, rounded outward."""
    xs, ys = _corners(*to64(lx, ux, ly, uy))
    p = xs * ys
    return round_interval(p.amin(0), p.amax(0), lx.dtype)


def init_params_mul(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Params:
    """Both planes weighted equally."""
    half = torch.full_like(torch.broadcast_tensors(lx, ux, ly, uy)[0], 0.5)
    return {"alpha_lower": half, "alpha_upper": half.clone()}


def project_params_mul(params: Params, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Params:
    """Clamp both weights into ``[0, 1]``."""
    init = init_params_mul(lx, ux, ly, uy)
    return {k: params.get(k, init[k]).clamp(0.0, 1.0) for k in init}


def _plane(a: Tensor, b: Tensor, xs: Tensor, ys: Tensor, dtype: torch.dtype,
           upper: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Round ``(a, b)`` to ``dtype`` and give the exact-for-them, widened, rounded bias."""
    a_r, b_r = a.to(dtype), b.to(dtype)
    resid = xs * ys - a_r.to(F64) * xs - b_r.to(F64) * ys
    bias = resid.amax(0) if upper else resid.amin(0)
    with torch.no_grad():
        scale = (xs * ys).abs() + (a_r.to(F64) * xs).abs() + (b_r.to(F64) * ys).abs()
        margin = rel_margin(dtype, True) * scale.amax(0) + abs_margin(dtype, True)
    if upper:
        return a_r, b_r, round_up(bias + margin, dtype)
    return a_r, b_r, round_down(bias - margin, dtype)


def relax_mul(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor,
              params: Params | None = None) -> BilinearRelaxation:
    """McCormick planes interpolated by ``alpha_lower`` / ``alpha_upper`` (module docstring)."""
    dt = lx.dtype
    p = project_straight_through(params, project_params_mul(params or {}, lx, ux, ly, uy))
    lx64, ux64, ly64, uy64, al, au = to64(lx, ux, ly, uy, p["alpha_lower"], p["alpha_upper"])
    xs, ys = _corners(lx64, ux64, ly64, uy64)
    lower = _plane(al * ly64 + (1 - al) * uy64, al * lx64 + (1 - al) * ux64, xs, ys, dt, False)
    upper = _plane(au * uy64 + (1 - au) * ly64, au * lx64 + (1 - au) * ux64, xs, ys, dt, True)
    return BilinearRelaxation(lower, upper)


def expand_matmul(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bounds of ``x[..., i, j, None]`` and ``y[..., None, j, k]``: the factors of ``p_ijk``."""
    return lx.unsqueeze(-1), ux.unsqueeze(-1), ly.unsqueeze(-3), uy.unsqueeze(-3)


def interval_matmul(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    """Image of the box under ``x @ y``: the products' images summed over ``j`` (the sum's own
    rounding is not covered here: the engine's interval step widens by it)."""
    lo, hi = interval_mul(*expand_matmul(lx, ux, ly, uy))
    return lo.sum(-2), hi.sum(-2)


def product_gap(relaxed: BilinearRelaxation, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
    """Largest vertical distance between the upper and the lower plane over the box (a corner:
    the difference of two planes is linear), float64, the products' broadcast shape."""
    xs, ys = _corners(*to64(lx, ux, ly, uy))
    (axl, ayl, bl), (axu, ayu, bu) = ((t.to(F64) for t in plane) for plane in (relaxed.lower, relaxed.upper))
    gap = (axu - axl) * xs + (ayu - ayl) * ys + (bu - bl)
    return gap.amax(0)


_MUL = BilinearOp("Mul", torch.mul, interval_mul, relax_mul, init_params_mul, project_params_mul)

PRODUCT_OPS: dict[str, BilinearOp] = {
    "Mul": _MUL,
    "MatMul": BilinearOp("MatMul", torch.matmul, interval_matmul, relax_mul, init_params_mul,
                         project_params_mul, expand=expand_matmul, contraction=True),
}
"""Graph op type of a product node -> how its planes are formed (see the module docstring)."""

BINARY_OPS: dict[str, BilinearOp] = {"Mul": _MUL}
"""The two-input elementwise ops (the op table the relaxation tests sweep)."""
