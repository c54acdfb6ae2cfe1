"""Kinked activations: Elu, Selu, HardSigmoid, HardSwish, Abs and Clip as piecewise-smooth data.

An op is a sorted tuple of finite breakpoints ``t_1 < ... < t_k`` and ``k + 1`` pieces; piece
``i`` is a :class:`~genbab.ops.curvature.Curve` of *one* curvature sign on all reals, used on
``[t_i, t_{i+1}]``, so its derivative is monotone and the kinks are where the one-sided
derivatives jump (Selu: ``gamma alpha`` left of 0, ``gamma`` right; HardSwish: ``0 | -1/2``
at -3 and ``3/2 | 1`` at 3, two concave kinks around a convex quadratic).

* Biases, for *any* slope ``s``: ``min`` / ``max`` of ``g = f - s z`` over ``[l, u]`` is the
  extreme over the pieces met of the rigorous per-piece bound
  (:func:`~genbab.ops.curvature.extreme_gaps` on ``[max(l, t_i), min(u, t_{i+1})]``, cut at
  ``touch(s)``, the point where the piece's slope is ``s``: exact on convex / concave pieces).
* Image: ``f`` at ``l``, ``u``, the breakpoints inside and each piece's stationary point
  ``touch(0)`` clipped into it (exact: ``f`` is continuous and these hold every extremum).
* Parameters ``slope_lower``, ``slope_upper``, projected into ``[s_min, s_max]``, the range of
  the one-sided derivatives on ``[l, u]``.  Initial slopes: among ``s_min``, ``s_max``, the
  chord, ``f'`` at the midpoint and the slopes from each breakpoint inside to both ends, the
  one whose line is highest (lower line) / lowest (upper line) at the midpoint, i.e. with the
  least area between line and ``f``.
* Margins: exact ops (Abs, Clip) get the piecewise-linear ones; the others the smooth ones
  plus the absolute scale of the usual float evaluations (``|gamma alpha|`` for the
  ``alpha (e^z - 1)`` pieces, ``|alpha| m + |beta|`` for HardSigmoid, ``m`` for HardSwish,
  ``m = max(|l|, |u|)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor

from genbab.ops.curvature import Curve, Fn, extreme_gaps
from genbab.ops.relaxation import (F64, ElementwiseOp, OpTraits, Params, Relaxation, finalize,
                                   project_straight_through, round_interval, to64)

INF = float("inf")
SELU_ALPHA = 1.67326319217681884765625  # ONNX defaults (float32 values)
SELU_GAMMA = 1.05070102214813232421875


@dataclass(frozen=True)
class Piece:
    """One smooth piece: its curve and ``touch(s)``, a point where ``f' = s`` (any real when
    ``f'`` never equals ``s``: it is only a cut point), ``None`` for a linear piece."""

    curve: Curve
    touch: Fn | None = None


def linear(slope: float, intercept: float = 0.0) -> Piece:
    """The piece ``slope z + intercept``."""
    return Piece(Curve(lambda z: slope * z + intercept if slope else torch.full_like(z, intercept),
                       lambda z: torch.full_like(z, slope), lambda z: torch.ones_like(z, dtype=torch.bool)))


def exp_piece(k: float) -> Piece:
    """``k (e^z - 1)``: convex for ``k > 0``, concave for ``k < 0``; ``f' = s`` at ``log(s/k)``."""
    if k == 0.0:
        return linear(0.0)

    def touch(s: Tensor) -> Tensor:
        return torch.log((s / k).clamp(min=1e-300)).clamp(-800.0, 800.0)
    return Piece(Curve(lambda z: k * torch.expm1(z), lambda z: k * torch.exp(z),
                       lambda z: torch.full_like(z, k > 0, dtype=torch.bool)), touch)


def quadratic_piece(a: float, b: float, c: float) -> Piece:
    """``a z^2 + b z + c`` with ``a > 0``; ``f' = s`` at ``(s - b) / (2a)``."""
    return Piece(Curve(lambda z: (a * z + b) * z + c, lambda z: 2 * a * z + b,
                       lambda z: torch.ones_like(z, dtype=torch.bool)), lambda s: (s - b) / (2 * a))


@dataclass(frozen=True, eq=False)
class PiecewiseOp:
    """A continuous piecewise-smooth function as data (see the module docstring)."""

    name: str
    breaks: tuple[float, ...]
    pieces: tuple[Piece, ...]
    exact: bool  # f is evaluated exactly in floating point (Abs, Clip)
    abs_scale: Callable[[Tensor], Tensor | float] = lambda m: 0.0
    traits: OpTraits = field(default_factory=lambda: OpTraits("general"))

    def edges(self) -> list[tuple[float, float]]:
        e = [-INF, *self.breaks, INF]
        return list(zip(e[:-1], e[1:]))

    def forward(self, z: Tensor) -> Tensor:
        """Float64-accurate value (each piece on its own range)."""
        out = self.pieces[0].curve.f(z)
        for t, piece in zip(self.breaks, self.pieces[1:]):
            out = torch.where(z > t, piece.curve.f(z), out)
        return out

    def parts(self, l: Tensor, u: Tensor) -> list[tuple[Piece, Tensor, Tensor, Tensor]]:
        """``(piece, a, b, met)``: the pieces' parts ``[a, b]`` of ``[l, u]`` (a point inside
        the piece, finite where possible, when not met)."""
        out = []
        for piece, (lo, hi) in zip(self.pieces, self.edges()):
            a, b = l.clamp(lo, hi), u.clamp(lo, hi)
            out.append((piece, a, b, (l <= hi) & (u >= lo)))
        return out


def _image(op: PiecewiseOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Exact float64 image: ``f`` at the ends, the breakpoints and stationary points inside."""
    pts = [l, u] + [torch.full_like(l, t).clamp(l, u) for t in op.breaks]
    for piece, a, b, met in op.parts(l, u):
        if piece.touch is not None:
            p = torch.minimum(torch.maximum(piece.touch(torch.zeros_like(a)), a), b)
            pts.append(torch.where(met, p, l))
    vals = op.forward(torch.stack(pts))
    return vals.amin(0), vals.amax(0)


def _abs_scale(op: PiecewiseOp, l: Tensor, u: Tensor) -> Tensor | float:
    return op.abs_scale(torch.maximum(l.abs(), u.abs()))


def interval_pw(op: PiecewiseOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]``, widened and rounded outward."""
    l64, u64 = to64(l, u)
    return round_interval(*_image(op, l64, u64), l.dtype, smooth=not op.exact,
                          abs_scale=_abs_scale(op, l64, u64))


def slope_range(op: PiecewiseOp, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``[s_min, s_max]``: extremes of the one-sided derivatives on ``[l, u]`` (float64)."""
    s_min, s_max = torch.full_like(l, INF), torch.full_like(l, -INF)
    for piece, a, b, met in op.parts(l, u):
        d = torch.stack([piece.curve.df(a), piece.curve.df(b)])
        s_min = torch.where(met, torch.minimum(s_min, d.amin(0)), s_min)
        s_max = torch.where(met, torch.maximum(s_max, d.amax(0)), s_max)
    return s_min, s_max


def gaps(op: PiecewiseOp, l: Tensor, u: Tensor, s_lo: Tensor, s_up: Tensor) -> tuple[Tensor, Tensor]:
    """Rigorous ``(min (f - s_lo z), max (f - s_up z))`` over ``[l, u]`` (float64, broadcast)."""
    l, u, s_lo, s_up = torch.broadcast_tensors(l, u, s_lo, s_up)
    b_lo, b_up = torch.full_like(l, INF), torch.full_like(l, -INF)
    for piece, a, b, met in op.parts(l, u):
        pts = [a, b]
        if piece.touch is not None:
            pts += [torch.minimum(torch.maximum(piece.touch(s.detach()), a), b) for s in (s_lo, s_up)]
        lo, up = extreme_gaps(piece.curve, torch.stack(pts), s_lo, s_up)
        b_lo = torch.where(met, torch.minimum(b_lo, lo), b_lo)
        b_up = torch.where(met, torch.maximum(b_up, up), b_up)
    return b_lo, b_up


def _candidates(op: PiecewiseOp, l: Tensor, u: Tensor) -> Tensor:
    """Candidate slopes, stacked ``(C, ...)``, each inside ``[s_min, s_max]``."""
    s_min, s_max = slope_range(op, l, u)
    w = u - l
    wide = w > 1e-12 * (l.abs() + u.abs()) + 1e-300
    fl, fu = op.forward(l), op.forward(u)
    mid = 0.5 * (l + u)
    cands = [s_min, s_max, torch.where(wide, (fu - fl) / torch.where(wide, w, torch.ones_like(w)), s_min)]
    for piece, a, b, met in op.parts(mid, mid):
        cands.append(torch.where(met, piece.curve.df(mid), s_min))
    for t in op.breaks:
        tt = torch.full_like(l, t)
        inside = (l < tt) & (tt < u)
        ft = op.forward(tt)
        cands.append(torch.where(inside, (ft - fl) / torch.where(inside, tt - l, torch.ones_like(l)), s_min))
        cands.append(torch.where(inside, (fu - ft) / torch.where(inside, u - tt, torch.ones_like(l)), s_min))
    c = torch.stack(cands)
    return torch.minimum(torch.maximum(c, s_min), s_max).nan_to_num(0.0)


def init_params_pw(op: PiecewiseOp, l: Tensor, u: Tensor) -> Params:
    """The candidate slope with the least area per line (see the module docstring)."""
    l64, u64 = to64(l, u)
    with torch.no_grad():
        c = _candidates(op, l64, u64)
        b_lo, b_up = gaps(op, l64, u64, c, c)
        mid = 0.5 * (l64 + u64)
        val_lo = (c * mid + b_lo).nan_to_num(nan=-INF)
        val_up = (c * mid + b_up).nan_to_num(nan=INF)
        lo = c.gather(0, val_lo.argmax(0, keepdim=True))[0]
        up = c.gather(0, val_up.argmin(0, keepdim=True))[0]
    return project_params_pw(op, {"slope_lower": lo.to(l.dtype), "slope_upper": up.to(l.dtype)}, l, u)


def project_params_pw(op: PiecewiseOp, params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp both slopes into ``[s_min, s_max]`` (missing ones: the initial slopes)."""
    if not {"slope_lower", "slope_upper"} <= set(params):
        params = {**init_params_pw(op, l, u), **params}
    l64, u64 = to64(l, u)
    s_min, s_max = slope_range(op, l64, u64)
    out = {}
    for k in ("slope_lower", "slope_upper"):
        p = params[k].detach().to(F64)
        out[k] = torch.minimum(torch.maximum(p, s_min), s_max).nan_to_num(0.0).to(params[k].dtype)
    return out


def relax_pw(op: PiecewiseOp, l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Lines of the given (projected) slopes with rigorous biases, finalized."""
    dt = l.dtype
    p = project_straight_through(params, project_params_pw(op, params or {}, l, u))
    l64, u64, s_lo, s_up = to64(l, u, p["slope_lower"], p["slope_upper"])
    b_lo, b_up = gaps(op, l64, u64, s_lo, s_up)
    lo, hi = _image(op, l64, u64)
    return finalize(l64, u64, s_lo, b_lo, s_up, b_up, lo, hi, dt, smooth=not op.exact,
                    abs_scale=_abs_scale(op, l64, u64))


def make_pw(op: PiecewiseOp, attrs: dict[str, Any] | None = None,
            factory: Callable[..., ElementwiseOp] | None = None) -> ElementwiseOp:
    """Registry entry for a :class:`PiecewiseOp`."""
    return ElementwiseOp(
        name=op.name, forward=op.forward,
        interval=partial(interval_pw, op), relax=partial(relax_pw, op),
        init_params=partial(init_params_pw, op), project_params=partial(project_params_pw, op),
        traits=op.traits, attrs=attrs or {}, factory=factory)


# ----------------------------------------------------------------------------- the ops

PARAMS = ("slope_lower", "slope_upper")


def _exp_linear(name: str, k: float, g: float, attrs: dict[str, float], factory) -> ElementwiseOp:
    """``k (e^z - 1)`` for ``z <= 0``, ``g z`` for ``z > 0`` (Elu: ``k = alpha, g = 1``)."""
    convex = 0.0 <= k <= g
    monotone = "increasing" if k >= 0 and g >= 0 else None
    op = PiecewiseOp(name, (0.0,), (exp_piece(k), linear(g)), exact=False,
                     abs_scale=lambda m: abs(k),
                     traits=OpTraits("convex" if convex else "general", monotone,
                                     param_names=PARAMS, split_point=0.0))
    return make_pw(op, attrs, factory)


def make_elu(alpha: float = 1.0) -> ElementwiseOp:
    """Elu entry, ONNX attribute ``alpha`` (default 1)."""
    alpha = float(alpha)
    return _exp_linear("Elu", alpha, 1.0, {"alpha": alpha}, make_elu)


def make_selu(alpha: float = SELU_ALPHA, gamma: float = SELU_GAMMA) -> ElementwiseOp:
    """Selu entry, ONNX attributes ``alpha``, ``gamma`` (kink slopes ``gamma alpha | gamma``)."""
    alpha, gamma = float(alpha), float(gamma)
    return _exp_linear("Selu", gamma * alpha, gamma, {"alpha": alpha, "gamma": gamma}, make_selu)


def make_hard_sigmoid(alpha: float = 0.2, beta: float = 0.5) -> ElementwiseOp:
    """HardSigmoid ``max(0, min(1, alpha z + beta))``, corners where the line hits 0 and 1."""
    alpha, beta = float(alpha), float(beta)
    attrs = {"alpha": alpha, "beta": beta}
    scale = lambda m: abs(alpha) * m + abs(beta)
    if alpha == 0.0:
        op = PiecewiseOp("HardSigmoid", (), (linear(0.0, min(max(beta, 0.0), 1.0)),), exact=False,
                         abs_scale=scale, traits=OpTraits("piecewise_linear", "increasing", param_names=PARAMS))
        return make_pw(op, attrs, make_hard_sigmoid)
    t0, t1 = -beta / alpha, (1.0 - beta) / alpha
    left, right = (linear(0.0, 0.0), linear(0.0, 1.0)) if alpha > 0 else (linear(0.0, 1.0), linear(0.0, 0.0))
    op = PiecewiseOp("HardSigmoid", (min(t0, t1), max(t0, t1)), (left, linear(alpha, beta), right),
                     exact=False, abs_scale=scale,
                     traits=OpTraits("piecewise_linear", "increasing" if alpha > 0 else "decreasing",
                                     param_names=PARAMS, split_point=min(t0, t1)))
    return make_pw(op, attrs, make_hard_sigmoid)


def make_clip(min: float = -INF, max: float = INF) -> ElementwiseOp:  # noqa: A002 (ONNX names)
    """Clip to constant ``[min, max]`` (``min > max``: the constant ``max``, as ONNX Runtime)."""
    lo, hi = float(min), float(max)
    attrs = {"min": lo, "max": hi}
    traits = OpTraits("piecewise_linear", "increasing", param_names=PARAMS,
                      split_point=lo if math.isfinite(lo) else (hi if math.isfinite(hi) else None))
    if lo > hi:
        op = PiecewiseOp("Clip", (), (linear(0.0, hi),), exact=True, traits=traits)
        return make_pw(op, attrs, make_clip)
    breaks, pieces = [], [linear(1.0)]
    if math.isfinite(lo):
        breaks, pieces = [lo], [linear(0.0, lo), linear(1.0)]
    if math.isfinite(hi):
        breaks, pieces = breaks + [hi], pieces + [linear(0.0, hi)]
    return make_pw(PiecewiseOp("Clip", tuple(breaks), tuple(pieces), exact=True, traits=traits),
                   attrs, make_clip)


HARD_SWISH = PiecewiseOp(
    "HardSwish", (-3.0, 3.0), (linear(0.0), quadratic_piece(1.0 / 6.0, 0.5, 0.0), linear(1.0)),
    exact=False, abs_scale=lambda m: m, traits=OpTraits("general", None, param_names=PARAMS))
ABS = PiecewiseOp("Abs", (0.0,), (linear(-1.0), linear(1.0)), exact=True,
                  traits=OpTraits("piecewise_linear", None, param_names=PARAMS, split_point=0.0))

OPS: dict[str, ElementwiseOp] = {
    "Elu": make_elu(),
    "Selu": make_selu(),
    "HardSigmoid": make_hard_sigmoid(),
    "HardSwish": make_pw(HARD_SWISH),
    "Abs": make_pw(ABS),
    "Clip": make_clip(),
}
