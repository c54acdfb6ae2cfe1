"""Steps: the float image of a comparison, ``[z > 0]`` (``StepPositive``) and ``[z >= 0]``
(``StepNonNegative``), values 0 and 1; and the staircases ``Trunc`` (a cast to an integer type),
``Floor``, ``Ceil`` and ``Round``.

:mod:`genbab.model.simplify` rewrites ``Greater(a, b)`` as ``StepPositive(a - b)``,
``GreaterOrEqual`` as ``StepNonNegative(a - b)`` and ``Less`` / ``LessOrEqual`` with ``b - a``;
a ``Where`` on such a condition becomes ``b + step * (a - b)`` (a product of two variables).

On ``[l, u]`` the step ``f`` is 0 left of 0, ``v0 = f(0)`` at 0 and 1 right of 0.  Stable boxes
(``f`` constant on ``[l, u]``: ``u < 0``, ``l > 0``, and for the strict step ``u <= 0``, for the
other ``l >= 0``) get the exact constant lines.  Otherwise the lines have slopes
``s = weight * cap`` with weights in ``[0, 1]`` (alpha): upper ``cap = 1/|l|`` (``l < 0``, the
line from ``(l, 0)`` to ``(0, 1)``; ``0`` if ``l = 0``), lower ``cap = 1/u`` (``u > 0``; ``0`` if
``u = 0``).  For a slope ``s >= 0`` the biases are the exact sup / inf of ``f(z) - s z`` over the
pieces met (the one-sided limits at 0 included), then finalized with the piecewise-linear
margins.  The branching point is the switch, 0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from genbab.ops.relaxation import (ElementwiseOp, OpTraits, Params, Relaxation, finalize,
                                   project_straight_through, to64)


def step(z: Tensor, at_zero: float) -> Tensor:
    """``1`` for ``z > 0``, ``at_zero`` at ``z = 0``, ``0`` for ``z < 0`` (dtype of ``z``)."""
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    return torch.where(z > 0, one, torch.where(z == 0, torch.full_like(z, at_zero), zero))


def _stable(l: Tensor, u: Tensor, at_zero: float) -> tuple[Tensor, Tensor]:
    """``(is_stable, value)``: where ``f`` is constant on ``[l, u]`` and that constant."""
    if at_zero == 0.0:
        zero_side, one_side = u <= 0, l > 0
    else:
        zero_side, one_side = u < 0, l >= 0
    return zero_side | one_side, one_side.to(l.dtype)


def interval_step(l: Tensor, u: Tensor, at_zero: float) -> tuple[Tensor, Tensor]:
    """Nondecreasing: ``[f(l), f(u)]`` exactly."""
    return step(l, at_zero), step(u, at_zero)


def init_params_step(l: Tensor, u: Tensor) -> Params:
    """Weight 1 (steepest line) where it has the smaller area over ``[l, u]``, else 0."""
    ones, zeros = torch.ones_like(l), torch.zeros_like(l)
    return {"weight_lower": torch.where(l + u > 0, ones, zeros),
            "weight_upper": torch.where(l + u < 0, ones, zeros)}


def project_params_step(params: Params, l: Tensor, u: Tensor) -> Params:
    """Clamp both weights into ``[0, 1]``."""
    init = init_params_step(l, u)
    return {k: params.get(k, init[k]).clamp(0.0, 1.0) for k in init}


def relax_step(l: Tensor, u: Tensor, params: Params | None = None, at_zero: float = 0.0) -> Relaxation:
    """Lines below / above the step on ``[l, u]`` (see the module docstring)."""
    dt = l.dtype
    p = project_straight_through(params, project_params_step(params or {}, l, u))
    l64, u64, w_lo, w_up = to64(l, u, p["weight_lower"], p["weight_upper"])
    zero, one = torch.zeros_like(l64), torch.ones_like(l64)
    cap_up = torch.where(l64 < 0, 1.0 / torch.where(l64 < 0, -l64, one), zero)
    cap_lo = torch.where(u64 > 0, 1.0 / torch.where(u64 > 0, u64, one), zero)
    s_up, s_lo = w_up * cap_up, w_lo * cap_lo
    inf = torch.full_like(l64, float("inf"))
    has_n, has_z, has_p = l64 < 0, (l64 <= 0) & (u64 >= 0), u64 > 0
    n_hi, p_lo = torch.minimum(u64, zero), torch.maximum(l64, zero)
    v0 = torch.full_like(l64, at_zero)
    # piece of constant value c on the ends (p, q), slope s >= 0: sup = c - s p, inf = c - s q
    b_up = torch.stack([torch.where(has_n, -s_up * l64, -inf),
                        torch.where(has_z, v0, -inf),
                        torch.where(has_p, 1.0 - s_up * p_lo, -inf)]).amax(0)
    b_lo = torch.stack([torch.where(has_n, -s_lo * n_hi, inf),
                        torch.where(has_z, v0, inf),
                        torch.where(has_p, 1.0 - s_lo * u64, inf)]).amin(0)
    lo, hi = interval_step(l64, u64, at_zero)
    r = finalize(l64, u64, s_lo, b_lo, s_up, b_up, lo, hi, dt, smooth=False)
    stable, value = _stable(l, u, at_zero)
    stable = stable.expand_as(r.slope_lower)
    zeros, const = torch.zeros_like(r.slope_lower), value.expand_as(r.slope_lower)
    return Relaxation(torch.where(stable, zeros, r.slope_lower), torch.where(stable, const, r.bias_lower),
                      torch.where(stable, zeros, r.slope_upper), torch.where(stable, const, r.bias_upper))


def make_step(name: str, at_zero: float) -> ElementwiseOp:
    """The step entry ``name`` with value ``at_zero`` at 0."""
    return ElementwiseOp(
        name=name, forward=partial(step, at_zero=at_zero), interval=partial(interval_step, at_zero=at_zero),
        relax=partial(relax_step, at_zero=at_zero), init_params=init_params_step,
        project_params=project_params_step,
        traits=OpTraits("piecewise_linear", "increasing", param_names=("weight_lower", "weight_upper"),
                        split_point=0.0))


# ----------------------------------------------------------------------------- staircases
# ``Trunc`` (a float-to-integer ``Cast``: toward zero), ``Floor``, ``Ceil``, ``Round`` (half to
# even): staircases with infinitely many steps, so no split point. Each is nondecreasing, so the
# interval is ``[f(l), f(u)]`` exactly, and stays within ``z - below <= f(z) <= z + above``
# (Trunc 1, 1; Floor 1, 0; Ceil 0, 1; Round 1/2, 1/2). Lines: the constants ``f(l)`` / ``f(u)``
# when they are at most ``below + above`` apart (exact where they are equal), else that band.


def interval_staircase(fn, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Nondecreasing: ``[f(l), f(u)]`` (exact: integers are representable up to 2^53)."""
    return fn(l), fn(u)


def relax_staircase(fn, below: float, above: float, l: Tensor, u: Tensor, params: Params | None = None) -> Relaxation:
    """Constant lines on short stairs, the slope-1 band ``[z - below, z + above]`` on long ones."""
    lo, hi = fn(l), fn(u)
    flat = (hi - lo) <= below + above
    zero, one = torch.zeros_like(l), torch.ones_like(l)
    # z - below and z + above round (to nearest) only far above 2^53, where f(z) = z; the margin covers it
    margin = torch.finfo(l.dtype).eps * torch.maximum(l.abs(), u.abs())
    return Relaxation(torch.where(flat, zero, one), torch.where(flat, lo, -below - margin),
                      torch.where(flat, zero, one), torch.where(flat, hi, above + margin))


def make_staircase(name: str, fn, below: float, above: float) -> ElementwiseOp:
    return ElementwiseOp(name=name, forward=fn, interval=partial(interval_staircase, fn),
                         relax=partial(relax_staircase, fn, below, above),
                         init_params=lambda l, u: {}, project_params=lambda params, l, u: {},
                         traits=OpTraits("piecewise_linear", "increasing"))


OPS: dict[str, ElementwiseOp] = {
    "StepPositive": make_step("StepPositive", 0.0),
    "StepNonNegative": make_step("StepNonNegative", 1.0),
    "Trunc": make_staircase("Trunc", torch.trunc, 1.0, 1.0),
    "Floor": make_staircase("Floor", torch.floor, 1.0, 0.0),
    "Ceil": make_staircase("Ceil", torch.ceil, 0.0, 1.0),
    "Round": make_staircase("Round", torch.round, 0.5, 0.5),
}
