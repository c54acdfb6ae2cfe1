"""GeLU in both ONNX forms: ``x Phi(x)`` (``approximate="none"``) and the tanh approximation.

Both are concave on ``(-inf, -c]``, convex on ``[-c, c]`` and concave on ``[c, inf)``
(``c = sqrt(2)`` for the erf form, ``c ~ 1.4185`` for the tanh form, found by bisection of
``f''``), with a single minimum at ``x_min ~ -0.75``.  Accurate float64 forms: ``Phi(x) =
erfc(-x/sqrt 2)/2`` and ``(1 + tanh y)/2 = sigmoid(2y)`` (no cancellation for ``x << 0``).

Relaxation on ``[l, u]``:

* lower line: tangent at ``tangent_lower`` on the convex middle piece, restricted to the
  tangents that pass below ``f(l)`` (if ``l < -c``) and ``f(u)`` (if ``u > c``), both read
  from tangent tables (anchor step 1/256, sound rounding); chord if that set is empty or the
  interval is inside one concave piece;
* upper line: when ``[l, u]`` meets exactly one concave piece, the tangent at
  ``tangent_upper`` on it passing above the far endpoint (tables again), else the chord.

Biases are rigorous for any slope (cut points ``-c, c`` and three refinement passes, see
:mod:`genbab.ops.curvature`).  Common GeLU implementations (including ONNX Runtime and
PyTorch) evaluate ``0.5 x (1 + erf(x / sqrt 2))`` with an *absolute* error of order
``eps |x|``, so the margins get the extra absolute scale ``0.5 max(|l|, |u|)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, partial

import torch
from torch import Tensor

from genbab.ops.curvature import (Curve, Fn, Region, TangentTable, curvature_lines,
                                  project_tangent_params)
from genbab.ops.relaxation import (F64, ElementwiseOp, OpTraits, Params, Relaxation,
                                   bisect_boundary, finalize, round_interval, to64)

SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
K_TANH = math.sqrt(2.0 / math.pi)
A_TANH = 0.044715
GRID = 128.0


def _at_minus_inf_zero(x: Tensor, y: Tensor) -> Tensor:
    """GeLU(-inf) = 0 (the products below would give -inf * 0)."""
    return torch.where(x == float("-inf"), torch.zeros_like(y), y)


def _gelu_erf(x: Tensor) -> Tensor:
    return _at_minus_inf_zero(x, 0.5 * x * torch.special.erfc(-x / SQRT2))


def _dgelu_erf(x: Tensor) -> Tensor:
    return 0.5 * torch.special.erfc(-x / SQRT2) + x * INV_SQRT_2PI * torch.exp(-0.5 * x * x)


def _inner(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``z = 2k(x + a x^3)`` and its first two derivatives for the tanh form."""
    z = 2.0 * K_TANH * (x + A_TANH * x ** 3)
    dz = 2.0 * K_TANH * (1.0 + 3.0 * A_TANH * x * x)
    return z, dz, 12.0 * K_TANH * A_TANH * x


def _gelu_tanh(x: Tensor) -> Tensor:
    return _at_minus_inf_zero(x, x * torch.sigmoid(_inner(x)[0]))


def _dgelu_tanh(x: Tensor) -> Tensor:
    z, dz, _ = _inner(x)
    return torch.sigmoid(z) + x * torch.sigmoid(z) * torch.sigmoid(-z) * dz


def _curv_sign_tanh(x: Tensor) -> Tensor:
    """``f'' / (sigma(z) sigma(-z))`` for the tanh form (same sign as ``f''``)."""
    z, dz, ddz = _inner(x)
    return 2.0 * dz + x * (1.0 - 2.0 * torch.sigmoid(z)) * dz * dz + x * ddz


def _root(g: Fn, lo: float, hi: float) -> float:
    """Scalar root of an increasing-or-decreasing ``g`` on ``[lo, hi]`` by bisection."""
    a, b = torch.tensor([lo], dtype=F64), torch.tensor([hi], dtype=F64)
    sign_hi = bool(g(b) > 0)
    return float(bisect_boundary(lambda x: (g(x) > 0) == sign_hi, a, b, True, iters=80))


@dataclass(frozen=True, eq=False)
class GeluForm:
    """One GeLU form as data."""

    approximate: str
    f: Fn
    df: Fn
    c: float

    @cached_property
    def curve(self) -> Curve:
        return Curve(self.f, self.df, lambda x: x.abs() <= self.c)

    @cached_property
    def x_min(self) -> float:
        """The global minimiser (root of ``f'`` on ``[-c, 0]``)."""
        return _root(self.df, -self.c, 0.0)

    @cached_property
    def tables(self) -> dict[str, TangentTable]:
        c, cv = self.c, self.curve
        return {
            "mid_left": TangentTable(cv, (-c, c), True, True, (-GRID, -c), (float("-inf"), -c)),
            "mid_right": TangentTable(cv, (-c, c), True, False, (c, GRID), (c, float("inf"))),
            "right_from_left": TangentTable(cv, (c, c + 1e3), False, True, (-c, c), (-c, c)),
            "left_from_right": TangentTable(cv, (-c - 1e3, -c), False, False, (-c, c), (-c, c)),
        }

    def regions(self, l: Tensor, u: Tensor) -> dict[str, Region]:
        """Convex middle for the lower tangent; the one concave piece met for the upper."""
        c, t, inf = self.c, self.tables, float("inf")
        right = (u > c) & (l >= -c)
        left = (l < -c) & (u <= c)
        def pick(r: float, lf: float, none: float) -> Tensor:
            val = torch.tensor([r, lf, none], dtype=F64, device=l.device)
            return torch.where(right, val[0], torch.where(left, val[1], val[2]))
        A, B = pick(c, -inf, inf), pick(inf, -c, -inf)
        return {"tangent_lower": Region(-c, c, left=t["mid_left"], right=t["mid_right"]),
                "tangent_upper": Region(A, B, left=t["right_from_left"],
                                        right=t["left_from_right"])}


ERF_FORM = GeluForm("none", _gelu_erf, _dgelu_erf, SQRT2)
TANH_FORM = GeluForm("tanh", _gelu_tanh, _dgelu_tanh, _root(_curv_sign_tanh, 0.5, 3.0))
FORMS = {"none": ERF_FORM, "tanh": TANH_FORM}


def _image(form: GeluForm, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    fl, fu = form.f(l), form.f(u)
    xm = torch.full_like(l, form.x_min)
    inside = (l <= xm) & (xm <= u)
    lo = torch.minimum(fl, fu)
    lo = torch.where(inside, torch.minimum(lo, form.f(xm)), lo)
    return lo, torch.maximum(fl, fu)


def interval_gelu(l: Tensor, u: Tensor, approximate: str = "none") -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]``: endpoints and the minimum ``f(x_min)`` when inside, widened."""
    form = FORMS[approximate]
    l64, u64 = to64(l, u)
    return round_interval(*_image(form, l64, u64), l.dtype,
                          abs_scale=0.5 * torch.maximum(l64.abs(), u64.abs()))


def init_params_gelu(l: Tensor, u: Tensor, approximate: str = "none") -> Params:
    """Midpoints clamped into the tangent ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, None, FORMS[approximate].regions(l64, u64))
    return {k: v.to(l.dtype) for k, v in out.items()}


def project_params_gelu(params: Params, l: Tensor, u: Tensor,
                        approximate: str = "none") -> Params:
    """Clamp the tangent points into their ranges."""
    l64, u64 = to64(l, u)
    out = project_tangent_params(l64, u64, params, FORMS[approximate].regions(l64, u64))
    return {k: v.to(params[k].dtype if k in params else l.dtype) for k, v in out.items()}


def relax_gelu(l: Tensor, u: Tensor, params: Params | None = None,
               approximate: str = "none") -> Relaxation:
    """Tangent / chord relaxation of GeLU (see the module docstring)."""
    form = FORMS[approximate]
    l64, u64 = to64(l, u)
    regions = form.regions(l64, u64)
    cuts = [torch.full_like(l64, -form.c), torch.full_like(l64, form.c)]
    lines = curvature_lines(form.curve, l64, u64, regions["tangent_lower"],
                            regions["tangent_upper"], params, cuts, refine=3)
    lo, hi = _image(form, l64, u64)
    return finalize(l64, u64, *lines, lo, hi, l.dtype,
                    abs_scale=0.5 * torch.maximum(l64.abs(), u64.abs()))


def make_gelu(approximate: str = "none") -> ElementwiseOp:
    """Gelu entry with ONNX attribute ``approximate`` ("none" or "tanh")."""
    if approximate not in FORMS:
        raise ValueError(f"Gelu approximate={approximate!r}: expected 'none' or 'tanh'")
    kw = {"approximate": approximate}
    return ElementwiseOp(
        name="Gelu", forward=partial(torch.nn.functional.gelu, **kw),
        interval=partial(interval_gelu, **kw), relax=partial(relax_gelu, **kw),
        init_params=partial(init_params_gelu, **kw),
        project_params=partial(project_params_gelu, **kw),
        traits=OpTraits("general", None, param_names=("tangent_lower", "tangent_upper"),
                        table="Gelu_tanh" if approximate == "tanh" else "Gelu", kernel="Gelu"),
        attrs=kw, factory=make_gelu)


OPS: dict[str, ElementwiseOp] = {"Gelu": make_gelu("none")}
