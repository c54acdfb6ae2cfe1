"""Input-box clipping: drop the parts of a domain's box that a linear bound already proves.

A CROWN pass gives, per spec row ``s``, ``g_s(x) >= a_s . x + c_s`` on the box ``[l, u]`` and its
minimum ``lb_s = c_s + sum_i min(a_si l_i, a_si u_i)``. A counterexample needs every row
``g_s(x) <= 0``, hence ``a_s . x + c_s <= 0``. Fixing every coordinate but ``i`` at its most
favourable value gives ``a_si x_i - min(a_si l_i, a_si u_i) <= -lb_s``, i.e.

    a_si > 0:  x_i <= l_i + (-lb_s) / a_si,        a_si < 0:  x_i >= u_i - (-lb_s) / |a_si|.

So the box can shrink to those limits (for every row, intersected) without losing any
counterexample. The limits are widened by a relative ``1e-9`` and an absolute ``1e-12`` of the
box scale against float64 rounding; ``lb_s >= 0`` or ``a_si = 0`` leaves coordinate ``i`` alone
(a positive ``lb_s`` proves the domain anyway).
"""

from __future__ import annotations

import torch

REL_SLACK = 1e-9


def clip_box(lower: torch.Tensor, upper: torch.Tensor, A: torch.Tensor, rows: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped ``(lower, upper)`` ``[D, n]`` from input coefficients ``A`` ``[D, S, n]`` and the row
    bounds ``rows`` ``[D, S]`` of the same linear bounds over ``[lower, upper]``."""
    A = A.reshape(A.shape[0], A.shape[1], -1).to(torch.float64)
    lo, hi = lower.to(torch.float64).unsqueeze(1), upper.to(torch.float64).unsqueeze(1)
    gap = (-rows.to(torch.float64)).unsqueeze(-1)  # -lb_s, [D, S, 1]
    usable = torch.isfinite(gap) & (gap > 0) & (A != 0) & torch.isfinite(A)
    scale = torch.maximum(lo.abs(), hi.abs())
    reach = gap * (1 + REL_SLACK) / A.abs().clamp_min(1e-300) + 1e-12 * (scale + 1)
    reach = torch.where(usable, reach, torch.full_like(reach, torch.inf))
    new_hi = torch.where(A > 0, lo + reach, hi).amin(dim=1)
    new_lo = torch.where(A < 0, hi - reach, lo).amax(dim=1)
    return torch.maximum(lower.to(torch.float64), new_lo), torch.minimum(upper.to(torch.float64), new_hi)
