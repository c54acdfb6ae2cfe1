"""Piecewise-linear ops: ReLU, LeakyReLU and Sign.

For a function that is linear on each side of 0, ``f(z) - s z`` is linear on each piece, so
for *any* slope ``s`` the best biases are the min / max of ``f(p) - s p`` over
``p in {l, clip(0, l, u), u}`` — computed in float64 and finalized (piecewise-linear margins:
``16 eps(float64)`` relative, then outward rounding).  Lines that are exact in the dtype are
returned without any margin: the stable pieces (identity, zero, ``alpha*z`` with ``alpha``
rounded toward the valid side) and the alpha lower line ``a z`` of the unstable ReLU.

* ReLU / LeakyReLU(alpha=a), convex (``a <= 1``): upper = chord, lower = ``s z`` with
  ``s = slope_lower in [a, 1]``; concave (``a > 1``): mirror, ``slope_upper in [1, a]``.
* Sign (ONNX: ``Sign(0) = 0``, a step with values -1, 0, 1): the lines must pass below /
  above the one-sided limits at 0.  Upper line ``s z + b`` with ``s = weight_upper * cap``,
  ``cap = 2/|l|`` (``1/|l|`` if ``u = 0``), lower line mirrored with ``cap = 2/u``
  (``1/u`` if ``l = 0``); weights in ``[0, 1]``, biases exact sup / inf over the pieces.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from genbab.ops.relaxation import (F64, ElementwiseOp, OpTraits, Params, Relaxation, finalize,
                                   project_straight_through, round_down, round_interval,
                                   round_up, to64)


def _leaky(z: Tensor, a: float) -> Tensor:
    if a == 0.0:
        return z.clamp(min=0.0)  # no 0 * -inf
    return torch.where(z >= 0, z, a * z)


def interval_leaky_relu(l: Tensor, u: Tensor, alpha: float = 0.01) -> tuple[Tensor, Tensor]:
    """Exact image of ``[l, u]``: extremes among ``f(l), f(u)`` and ``f(0) = 0`` if inside."""
    if alpha == 0.0:
        return l.clamp(min=0.0), u.clamp(min=0.0)
    l64, u64 = to64(l, u)
    fl, fu = _leaky(l64, alpha), _leaky(u64, alpha)
    zero = torch.zeros_like(fl)
    inside = (l64 <= 0) & (u64 >= 0)
    lo = torch.minimum(torch.minimum(fl, fu), torch.where(inside, zero, fl))
    hi = torch.maximum(torch.maximum(fl, fu), torch.where(inside, zero, fl))
    return round_interval(lo, hi, l.dtype, smooth=False)


def interval_relu(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Exact image ``[relu(l), relu(u)]``."""
    return l.clamp(min=0.0), u.clamp(min=0.0)


def _param_key(alpha: float) -> str:
    return "slope_lower" if alpha <= 1.0 else "slope_upper"


def _slope_range(alpha: float, dtype: torch.dtype) -> tuple[float, float]:
    """Valid slopes of the lines through 0, as dtype values inside the exact range."""
    a = torch.tensor(alpha, dtype=F64)
    if alpha <= 1.0:
        return float(round_up(a, dtype)), 1.0
    return 1.0, float(round_down(a, dtype))


def init_params_leaky_relu(l: Tensor, u: Tensor, alpha: float = 0.01) -> Params:
    """CROWN's adaptive choice: the steeper end slope when ``u > -l``, else the other."""
    lo, hi = _slope_range(alpha, l.dtype)
    big = (u > -l) if alpha <= 1.0 else (u <= -l)
    return {_param_key(alpha): torch.where(big, torch.full_like(l, hi), torch.full_like(l, lo))}


def project_params_leaky_relu(params: Params, l: Tensor, u: Tensor,
                              alpha: float = 0.01) -> Params:
    """Clamp the slope into ``[min(a, 1), max(a, 1)]`` (rounded inward to the dtype)."""
    key = _param_key(alpha)
    lo, hi = _slope_range(alpha, l.dtype)
    p = params[key] if key in params else init_params_leaky_relu(l, u, alpha)[key]
    return {key: p.clamp(lo, hi)}


def relax_leaky_relu(l: Tensor, u: Tensor, params: Params | None = None,
                     alpha: float = 0.01) -> Relaxation:
    """Triangle relaxation of LeakyReLU (ReLU for ``alpha = 0``), see the module docstring."""
    dt = l.dtype
    key = _param_key(alpha)
    p = project_straight_through(params, project_params_leaky_relu(params or {}, l, u, alpha))[key]
    l, u, p = torch.broadcast_tensors(l, u, p.to(dt))
    l64, u64 = to64(l, u)
    # chord (the non-parametric line) in float64, biases exact over {l, 0, u}, finalized
    fl, fu = _leaky(l64, alpha), _leaky(u64, alpha)
    w = torch.where(u64 > l64, u64 - l64, torch.ones_like(l64))
    s = torch.where(u64 > l64, (fu - fl) / w, torch.ones_like(l64))
    zero = torch.clamp(torch.zeros_like(l64), l64, u64)
    g = torch.stack([fl - s * l64, fu - s * u64, _leaky(zero, alpha) - s * zero])
    chord = finalize(l64, u64, s, g.amin(0), s, g.amax(0), torch.minimum(fl, fu),
                     torch.maximum(fl, fu), dt, smooth=False)
    zeros, ones = torch.zeros_like(l), torch.ones_like(l)
    if alpha <= 1.0:
        s_lo, b_lo, s_up, b_up = p, zeros, chord.slope_upper, chord.bias_upper
    else:
        s_lo, b_lo, s_up, b_up = chord.slope_lower, chord.bias_lower, p, zeros
    # stable negative side f = a z (z <= 0): lower slope must be >= a, upper <= a
    a64 = torch.tensor(alpha, dtype=F64)
    neg_lo = torch.full_like(l, float(round_up(a64, dt)))
    neg_hi = torch.full_like(l, float(round_down(a64, dt)))
    pos, neg = l >= 0, u <= 0
    s_lo = torch.where(pos, ones, torch.where(neg, neg_lo, s_lo))
    s_up = torch.where(pos, ones, torch.where(neg, neg_hi, s_up))
    b_lo = torch.where(pos | neg, zeros, b_lo)
    b_up = torch.where(pos | neg, zeros, b_up)
    return Relaxation(s_lo, b_lo, s_up, b_up)


def relax_relu(l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """ReLU: LeakyReLU with ``alpha = 0``; parameter ``slope_lower in [0, 1]``."""
    return relax_leaky_relu(l, u, params, 0.0)


# ----------------------------------------------------------------------------- Sign


def interval_sign(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Nondecreasing step: ``[sign(l), sign(u)]`` exactly."""
    return torch.sign(l), torch.sign(u)


def _sign_caps(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Largest useful slopes ``(cap_lower, cap_upper)`` (float64)."""
    zero = torch.zeros_like(l)
    neg_l = torch.where(l < 0, -l, torch.ones_like(l))
    pos_u = torch.where(u > 0, u, torch.ones_like(u))
    cap_up = torch.where((l < 0) & (u > 0), 2.0 / neg_l, torch.where((l < 0) & (u == 0), 1.0 / neg_l, zero))
    cap_lo = torch.where((l < 0) & (u > 0), 2.0 / pos_u, torch.where((l == 0) & (u > 0), 1.0 / pos_u, zero))
    return cap_lo, cap_up


def init_params_sign(l: Tensor, u: Tensor) -> Params:
    """Weight 1 (steepest line) where it has the smaller area over ``[l, u]``, else 0."""
    ones, zeros = torch.ones_like(l), torch.zeros_like(l)
    return {"weight_lower": torch.where((l + u > 0) | (l == 0), ones, zeros),
            "weight_upper": torch.where((l + u < 0) | (u == 0), ones, zeros)}


def project_params_sign(params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp both weights into ``[0, 1]``."""
    init = init_params_sign(l, u)
    return {k: params.get(k, init[k]).clamp(0.0, 1.0) for k in init}


def relax_sign(l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Lines below / above the step ``sign`` on ``[l, u]`` (see the module docstring)."""
    dt = l.dtype
    p = project_straight_through(params, project_params_sign(params or {}, l, u))
    l64, u64, w_lo, w_up = to64(l, u, p["weight_lower"], p["weight_upper"])
    cap_lo, cap_up = _sign_caps(l64, u64)
    s_lo, s_up = w_lo * cap_lo, w_up * cap_up
    inf = torch.full_like(l64, float("inf"))
    has_n, has_z, has_p = l64 < 0, (l64 <= 0) & (u64 >= 0), u64 > 0
    n_hi = torch.minimum(u64, torch.zeros_like(u64))
    p_lo = torch.maximum(l64, torch.zeros_like(l64))
    # piece with constant value c on ends (p, q), slope s >= 0: sup = c - s p, inf = c - s q
    b_up = torch.stack([torch.where(has_n, -1.0 - s_up * l64, -inf),
                        torch.where(has_z, torch.zeros_like(l64), -inf),
                        torch.where(has_p, 1.0 - s_up * p_lo, -inf)]).amax(0)
    b_lo = torch.stack([torch.where(has_n, -1.0 - s_lo * n_hi, inf),
                        torch.where(has_z, torch.zeros_like(l64), inf),
                        torch.where(has_p, 1.0 - s_lo * u64, inf)]).amin(0)
    r = finalize(l64, u64, s_lo, b_lo, s_up, b_up, torch.sign(l64), torch.sign(u64), dt,
                 smooth=False)
    stable = (l > 0) | (u < 0) | ((l == 0) & (u == 0))
    zeros, const = torch.zeros_like(r.slope_lower), torch.sign(l).expand_as(r.slope_lower)
    return Relaxation(torch.where(stable, zeros, r.slope_lower),
                      torch.where(stable, const, r.bias_lower),
                      torch.where(stable, zeros, r.slope_upper),
                      torch.where(stable, const, r.bias_upper))


# ----------------------------------------------------------------------------- registry


def make_leaky_relu(alpha: float = 0.01) -> ElementwiseOp:
    """LeakyRelu entry with ONNX attribute ``alpha`` (negative slope)."""
    alpha = float(alpha)
    return ElementwiseOp(
        name="LeakyRelu", forward=partial(torch.nn.functional.leaky_relu, negative_slope=alpha),
        interval=partial(interval_leaky_relu, alpha=alpha),
        relax=partial(relax_leaky_relu, alpha=alpha),
        init_params=partial(init_params_leaky_relu, alpha=alpha),
        project_params=partial(project_params_leaky_relu, alpha=alpha),
        traits=OpTraits("piecewise_linear", "increasing" if alpha >= 0 else None,
                        param_names=(_param_key(alpha),), split_point=0.0),
        attrs={"alpha": alpha}, factory=make_leaky_relu)


OPS: dict[str, ElementwiseOp] = {
    "Relu": ElementwiseOp(
        name="Relu", forward=torch.relu, interval=interval_relu, relax=relax_relu,
        init_params=partial(init_params_leaky_relu, alpha=0.0),
        project_params=partial(project_params_leaky_relu, alpha=0.0),
        traits=OpTraits("piecewise_linear", "increasing", param_names=("slope_lower",),
                        split_point=0.0)),
    "LeakyRelu": make_leaky_relu(0.01),
    "Sign": ElementwiseOp(
        name="Sign", forward=torch.sign, interval=interval_sign, relax=relax_sign,
        init_params=init_params_sign, project_params=project_params_sign,
        traits=OpTraits("piecewise_linear", "increasing",
                        param_names=("weight_lower", "weight_upper"), split_point=0.0)),
}
