"""Relaxations of smooth functions with known convex / concave pieces, sound by construction.

Every smooth op (S-shaped, GeLU, sin/cos, exp/log, powers) goes through this module.  The
slopes of the two lines are chosen by the usual rules (tangent at an alpha point inside the
region where a tangent is valid, or the chord); the *biases* are then computed rigorously for
whatever slope was chosen, from the curvature structure alone:

    b_lower = a lower bound of  min_{z in [l, u]} g(z),   g(z) = f(z) - s z,
    b_upper = an upper bound of max_{z in [l, u]} g(z).

``[l, u]`` is cut at every inflection point and at the tangent points; on a convex piece
``[a, b]`` of ``g`` the minimum is ``g(a)`` if ``g'(a) >= 0``, ``g(b)`` if ``g'(b) <= 0``, and
otherwise at least the value where the tangents of ``g`` at ``a`` and ``b`` cross (they lie
below a convex function); on a concave piece it is ``min(g(a), g(b))``.  The maximum is the
mirror image.  Hence the lines are valid for *any* slope, any (even inexact) tangent point and
any table entry; tables and bisection only affect tightness.  This is what makes every alpha
value, after projection or not, give a sound relaxation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from genbab.ops.relaxation import EPS64, F64, bisect_boundary, chord_slope, straight_through

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Curve:
    """``f``, ``f'`` (float64, accurate) and ``convex_at(z)``: True where ``f''(z) >= 0``;
    ``singular``: ``f'`` may be infinite at a cut point (e.g. ``sqrt`` at 0)."""

    f: Fn
    df: Fn
    convex_at: Fn
    singular: bool = False


def _convex_min(a: Tensor, b: Tensor, ga: Tensor, gb: Tensor, dga: Tensor,
                dgb: Tensor, singular: bool = False) -> tuple[Tensor, Tensor]:
    """Lower bound of ``min g`` on ``[a, b]`` for convex ``g`` from its values/derivatives at
    the ends: exact at an end when ``g`` is monotone there, else the crossing of the two end
    tangents (clamped into ``[a, b]``), which lie below a convex function.  Also returns two
    cuts for refinement, stacked: that crossing and the secant root of ``g'`` (both ``a`` when
    the minimum is at an end).
    ``singular``: an infinite end slope carries no information; the other tangent alone
    bounds the minimum (by its value at the far end)."""
    w = b - a
    if singular:
        bad_a, bad_b = dga == float("-inf"), dgb == float("inf")
        dga = torch.where(bad_a, -torch.ones_like(dga), dga)
        dgb = torch.where(bad_b, torch.ones_like(dgb), dgb)
        low, cross = _convex_min(a, b, ga, gb, dga, dgb)
        err = 4 * EPS64 * (ga.abs() + gb.abs() + (dga.abs() + dgb.abs()) * w)
        only_b = torch.where(dgb <= 0, gb, gb - dgb * w - err)  # tangent at b alone
        only_a = torch.where(dga >= 0, ga, ga + dga * w - err)  # tangent at a alone
        low = torch.where(bad_a, torch.where(bad_b, torch.full_like(low, float("-inf")), only_b),
                          torch.where(bad_b, only_a, low))
        return low, cross
    den = dga - dgb
    interior = (dga < 0) & (dgb > 0)
    den = torch.where(den < 0, den, -torch.ones_like(den))
    t = torch.minimum(((gb - ga - dgb * w) / den).clamp(min=0.0), w)
    # T_a decreases, T_b increases and they cross at t*: whichever side of t* the computed t
    # lies on, min(T_a(t), T_b(t)) <= T(t*) <= min g, so rounding in t cannot hurt; the
    # evaluation itself is widened by its own rounding error
    val = torch.minimum(ga + dga * t, gb + dgb * (t - w))
    val = val - 4 * EPS64 * (ga.abs() + gb.abs() + (dga.abs() + dgb.abs()) * w)
    low = torch.where(dga >= 0, ga, torch.where(dgb <= 0, gb, val))
    # refinement cuts: the tangent crossing (robust) and the secant root of g' (exact for a
    # quadratic g), both inside [a, b]
    root = torch.minimum(w * dga / den, w)
    cuts = torch.stack([torch.where(interior, a + t, a), torch.where(interior, a + root, a),
                        torch.where(interior, a + 0.5 * w, a)])
    return low, cuts


def _piece_bounds(curve: Curve, pts: Tensor, s_lo: Tensor, s_up: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-piece rigorous bounds ``(piece_lo, piece_up)``, the refinement cuts of every piece
    and the values ``g_lo``, ``g_up`` at the (sorted) cut points."""
    pts, _ = torch.sort(pts, dim=0)
    fp, dp = curve.f(pts), curve.df(pts)
    a, b = pts[:-1], pts[1:]
    convex = curve.convex_at(0.5 * (a + b))
    g_lo, g_up = fp - s_lo * pts, fp - s_up * pts
    ha = torch.where(convex, g_lo[:-1], -g_up[:-1])
    hb = torch.where(convex, g_lo[1:], -g_up[1:])
    dha = torch.where(convex, dp[:-1] - s_lo, s_up - dp[:-1])
    dhb = torch.where(convex, dp[1:] - s_lo, s_up - dp[1:])
    cm, cuts = _convex_min(a, b, ha, hb, dha, dhb, curve.singular)
    piece_lo = torch.where(convex, cm, torch.minimum(g_lo[:-1], g_lo[1:]))
    piece_up = torch.where(convex, torch.maximum(g_up[:-1], g_up[1:]), -cm)
    return pts, piece_lo, piece_up, cuts, g_lo, g_up


def _refine(curve: Curve, pts: Tensor, pieces: Tensor, cuts: Tensor, g: Tensor, s: Tensor,
            bound: Tensor, lower: bool, refine: int) -> Tensor:
    """Re-bound the piece that sets ``bound`` where the bound is not attained at a cut (up
    to 1e-9 relative): that piece alone, cut at its refinement points, recursively."""
    with torch.no_grad():
        best = g.amin(dim=0) if lower else g.amax(dim=0)
        slack = (best - bound) if lower else (bound - best)
        need = slack > 1e-9 * g.abs().amax(dim=0)
        idx = need.reshape(-1).nonzero().squeeze(1)
    if idx.numel() == 0:
        return bound
    i = (pieces.argmin(dim=0) if lower else pieces.argmax(dim=0)).unsqueeze(0)
    n = bound.numel()
    sub = torch.cat([pts[:-1].gather(0, i), pts[1:].gather(0, i),
                     *(c.gather(0, i).detach() for c in cuts)], dim=0).reshape(-1, n)[:, idx]
    others = pieces.scatter(0, i, float("inf") if lower else float("-inf")).reshape(-1, n)[:, idx]
    s_f = s.expand_as(bound).reshape(-1)[idx]
    sub_lo, sub_up = extreme_gaps(curve, sub, s_f, s_f, refine - 1)
    new = torch.minimum(others.amin(dim=0), sub_lo) if lower else \
        torch.maximum(others.amax(dim=0), sub_up)
    return bound.reshape(-1).index_put((idx,), new).reshape(bound.shape)


def extreme_gaps(curve: Curve, pts: Tensor, s_lo: Tensor, s_up: Tensor,
                 refine: int = 0) -> tuple[Tensor, Tensor]:
    """Rigorous ``(min g_lo, max g_up)`` over ``[pts.min, pts.max]`` with ``g = f - s z``.

    ``pts``: ``(K, ...)`` cut points containing both ends and every inflection point inside.
    Each piece between consecutive cuts is convex or concave; the lower bound needs the
    convex-minimum machinery on convex pieces only, the upper bound on concave pieces only,
    so one :func:`_convex_min` call on the "active" function per piece serves both.
    ``refine`` extra passes re-bound, for the elements whose bound is set inside a piece
    (slopes that are not tangent slopes, e.g. chords), that piece alone cut at its tangent
    crossing, secant root of ``g'`` and midpoint (bracketing plus superlinear tightening).
    """
    pts, piece_lo, piece_up, cuts, g_lo, g_up = _piece_bounds(curve, pts, s_lo, s_up)
    b_lo, b_up = piece_lo.amin(dim=0), piece_up.amax(dim=0)
    if refine > 0:
        b_lo = _refine(curve, pts, piece_lo, cuts, g_lo, s_lo, b_lo, True, refine)
        b_up = _refine(curve, pts, piece_up, cuts, g_up, s_up, b_up, False, refine)
    return b_lo, b_up


# ----------------------------------------------------------------------------- tangent tables


class TangentTable:
    """Boundary ``d*(a)`` of the tangent points on a region whose tangents are valid at anchor a.

    Region ``[A, B]`` has one curvature sign; the anchor lies on one side of it with the other
    curvature in between, so only the anchor needs checking.  ``lower``: tangents must pass
    below ``f(a)``; ``valid_at_hi``: valid points are ``[d*, B]`` (anchor left of the region)
    else ``[A, d*]``.  ``d*`` is tabulated on a uniform anchor grid (step ``step``) by 64-step
    bisection; a lookup reads both neighbouring entries and keeps the one on the valid side
    (sound rounding), anchors outside the grid but inside ``domain`` are bisected directly, and
    anchors outside ``domain`` are clamped into it (callers only use those results after
    checking they apply).  Empty valid sets read as ``+inf`` / ``-inf``.
    """

    def __init__(self, curve: Curve, region: tuple[float, float], lower: bool, valid_at_hi: bool,
                 grid: tuple[float, float], domain: tuple[float, float], step: float = 1 / 256):
        self.curve, self.region, self.lower, self.valid_at_hi = curve, region, lower, valid_at_hi
        self.grid, self.domain = grid, domain
        self._n = int(math.ceil((grid[1] - grid[0]) / step - 1e-9)) + 1
        self._step = (grid[1] - grid[0]) / (self._n - 1)  # grid ends exactly at grid[1]
        self._tables: dict[torch.device, Tensor] = {}

    def _valid(self, a: Tensor, fa: Tensor) -> Fn:
        f, df = self.curve.f, self.curve.df

        def valid(d: Tensor) -> Tensor:
            line = f(d) + df(d) * (a - d)
            return line <= fa if self.lower else line >= fa
        return valid

    def solve(self, a: Tensor, iters: int = 64) -> Tensor:
        """``d*(a)`` by bisection (any shape, float64)."""
        lo = torch.full_like(a, self.region[0])
        hi = torch.full_like(a, self.region[1])
        return bisect_boundary(self._valid(a, self.curve.f(a)), lo, hi, self.valid_at_hi, iters)

    def _table(self, device: torch.device) -> Tensor:
        if device not in self._tables:
            n = self._n
            a = self.grid[0] + self._step * torch.arange(n, dtype=F64)
            self._tables[device] = self.solve(a).to(device)
        return self._tables[device]

    def __call__(self, a: Tensor) -> Tensor:
        """Sound-rounded ``d*`` for anchors ``a`` (float64, any shape, no gradient)."""
        with torch.no_grad():
            a = torch.nan_to_num(a, nan=self.grid[0]).clamp(self.domain[0], self.domain[1])
            tab = self._table(a.device)
            pos = (a - self.grid[0]) / self._step
            inside = (pos >= 0) & (pos <= tab.numel() - 1)
            i = pos.clamp(0, tab.numel() - 2).floor().long()
            t0, t1 = tab[i], tab[i + 1]
            d = torch.maximum(t0, t1) if self.valid_at_hi else torch.minimum(t0, t1)
            if not bool(inside.all()):
                d = d.clone()
                d[~inside] = self.solve(a[~inside], iters=52)
            return d


# ----------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    """Where the tangent of one line may touch: ``[A, B]`` (tensors or floats) of one curvature
    sign, with the tables for an anchor left of it (``left(a)``: valid ``d >= left(a)``) and
    right of it (``right(a)``: valid ``d <= right(a)``)."""

    A: Tensor | float
    B: Tensor | float
    left: Fn | None = None
    right: Fn | None = None


def tangent_range(l: Tensor, u: Tensor, region: Region) -> tuple[Tensor, Tensor, Tensor]:
    """``(lo, hi, ok)``: tangent points in ``[lo, hi]`` give lines valid on ``[l, u]``
    (tightness sense: the rigorous biases make every point sound); ``ok`` = range non-empty."""
    with torch.no_grad():
        A = torch.as_tensor(region.A, dtype=F64, device=l.device).expand_as(l)
        B = torch.as_tensor(region.B, dtype=F64, device=l.device).expand_as(l)
        lo, hi = torch.maximum(l, A), torch.minimum(u, B)
        if region.left is not None:
            need = l < A
            lo = torch.where(need, torch.maximum(lo, region.left(torch.where(need, l, A))), lo)
        if region.right is not None:
            need = u > B
            hi = torch.where(need, torch.minimum(hi, region.right(torch.where(need, u, B))), hi)
        return lo, hi, lo <= hi


def clamp_point(p: Tensor, lo: Tensor, hi: Tensor, ok: Tensor, fallback: Tensor) -> Tensor:
    """``p`` clamped into ``[lo, hi]`` where ``ok``, else ``fallback``; the gradient passes
    straight through to ``p`` (see :func:`~genbab.ops.relaxation.straight_through`)."""
    safe_lo = torch.where(ok, lo, fallback)
    safe_hi = torch.where(ok, hi, fallback)
    p, safe_lo, safe_hi = torch.broadcast_tensors(p, safe_lo, safe_hi)
    return straight_through(p, torch.minimum(torch.maximum(p, safe_lo), safe_hi))


def _tangent_point(l: Tensor, u: Tensor, region: Region, params: dict[str, Tensor] | None,
                   name: str) -> tuple[Tensor, Tensor]:
    """``(d, ok)``: the parameter ``name`` (default: the midpoint, which clamped into the range
    is the area-optimal tangent) clamped into the valid range of ``region``."""
    mid = 0.5 * (l + u)
    lo, hi, ok = tangent_range(l, u, region)
    p = mid if params is None or name not in params else params[name].to(F64)
    return clamp_point(p, lo, hi, ok, mid), ok


def project_tangent_params(l: Tensor, u: Tensor, params: dict[str, Tensor] | None,
                           regions: dict[str, Region]) -> dict[str, Tensor]:
    """Clamp each named tangent point into its valid range (midpoint when missing)."""
    return {name: _tangent_point(l, u, region, params, name)[0] for name, region in regions.items()}


def curvature_lines(curve: Curve, l: Tensor, u: Tensor, lower: Region, upper: Region,
                    params: dict[str, Tensor] | None, cuts: list[Tensor], refine: int = 0,
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 lines ``(s_lo, b_lo, s_up, b_up)``: a tangent at ``tangent_lower`` /
    ``tangent_upper`` (projected into the valid range) when that range is non-empty, else the
    chord; biases by :func:`extreme_gaps`.  ``cuts``: every inflection point of ``f`` inside
    ``[l, u]`` (points outside are clamped in and harmless)."""
    chord = chord_slope(curve.f, curve.df, l, u)
    slopes, points = [], []
    for name, region in (("tangent_lower", lower), ("tangent_upper", upper)):
        d, ok = _tangent_point(l, u, region, params, name)
        slopes.append(torch.where(ok, curve.df(d), chord))
        points.append(d)
    cut_pts = [torch.minimum(torch.maximum(c, l), u) for c in cuts]
    pts = torch.stack(torch.broadcast_tensors(l, u, *points, *cut_pts), dim=0)
    b_lo, b_up = extreme_gaps(curve, pts, slopes[0], slopes[1], refine)
    return slopes[0], b_lo, slopes[1], b_up


NO_REGION = Region(float("inf"), float("-inf"))
WHOLE_LINE = Region(float("-inf"), float("inf"))
