"""Batched tangent / chord relaxation of S-shaped, periodic and GeLU nodes, one kernel.

For every element (domain x spec row x neuron) with input interval ``[l, u]`` and optional
tangent points ``p_lo``, ``p_up`` (the alpha parameters) the kernel computes, in float64:

1. the valid tangent range ``[lo, hi]`` of each line (region of one curvature sign, narrowed
   by the tangent-point tables ``d*(anchor)`` of :mod:`genbab.ops.curvature`, read with
   rounding toward the valid side; anchors off the table grid are bisected in the kernel);
2. the tangent point ``d = clamp(p, lo, hi)`` (``p`` = midpoint when no parameter is given),
   slope ``f'(d)`` where the range is non-empty, else the chord slope;
3. rigorous biases for those slopes: ``[l, u]`` is cut at ``l, u``, both tangent points and
   the inflection points inside (six sorted cut points, five pieces of one curvature sign);
   on each piece ``g = f - s z`` is bounded by its end values (concave side) or by the convex
   minimum (end value where ``g`` is monotone, else the crossing of the end tangents, after
   ``REFINE`` bisection steps on the sign of ``g'``, widened by the rounding of that sign test);
4. periodic ops: constant lines of the image when the interval holds three inflection points,
   or two and the line is worse than the constant at the midpoint (as ``relax_trig``);
5. an extra outward margin ``32 eps64 (|b| + |s| max(|l|,|u|) + F)`` (``F`` = 1, or
   ``max(|l|,|u|)`` for GeLU) for the kernel's own function evaluations (``tanh`` by a ``sinh``
   series near 0, GeLU from ``erf`` with absolute error ``~eps |z|``).

The float64 lines and the image ``[lo, hi]`` then go through
:func:`genbab.ops.relaxation.finalize` (slope rounding with exact bias correction, the
project's margins, outward rounding to the input dtype), exactly as the PyTorch path.
Soundness therefore does not depend on the tables, the tangent points or the refinement; those
only decide tightness. ``REFINE`` is 0 for S-shaped ops (as the PyTorch path, results agree to
rounding) and 40 for Sin, Cos and GeLU (the PyTorch path refines chord biases three times by
tangent crossings: the kernel is as tight or tighter).

:func:`relax` is the differentiable entry point: kernel forward; backward the gradient of the
PyTorch relaxation (:func:`relax_reference`, recomputed on the saved inputs) with respect to
``l``, ``u`` and the tangent points. The two forwards agree to float tolerance (the kernel's
lines may be slightly tighter), so alpha-CROWN steps match the torch backend's to that tolerance.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from genbab.kernels._common import check_launchable
from genbab.ops import gelu as gelu_mod
from genbab.ops import s_shaped, trig
from genbab.ops.relaxation import F64, Relaxation, finalize

SIGMOID, TANH, ERF, SIN, COS, GELU, GELU_TANH = range(7)
OP_CODES = {"Sigmoid": SIGMOID, "Tanh": TANH, "Erf": ERF, "Sin": SIN, "Cos": COS}
SUPPORTED = ("Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Gelu")
REFINE = {SIGMOID: 0, TANH: 0, ERF: 0, SIN: 40, COS: 40, GELU: 40, GELU_TANH: 40}
META = 8  # per table: offset, n, grid start, step, domain lo, domain hi, region lo, region hi

PI_C = tl.constexpr(math.pi)
INF_C = tl.constexpr(float("inf"))
EPS_C = tl.constexpr(torch.finfo(torch.float64).eps)
INV_SQRT2_C = tl.constexpr(1.0 / math.sqrt(2.0))
INV_SQRT_2PI_C = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))
TWO_OVER_SQRT_PI_C = tl.constexpr(2.0 / math.sqrt(math.pi))
K_TANH_C = tl.constexpr(math.sqrt(2.0 / math.pi))
A_TANH_C = tl.constexpr(0.044715)
C_ERF_C = tl.constexpr(gelu_mod.ERF_FORM.c)
C_TANH_C = tl.constexpr(gelu_mod.TANH_FORM.c)
XMIN_ERF_C = tl.constexpr(gelu_mod.ERF_FORM.x_min)
XMIN_TANH_C = tl.constexpr(gelu_mod.TANH_FORM.x_min)
# NB: float constants are only ever used inline against float64 tensors (``zero + C``): bound
# to a local name first, the interpreter turns them into float32 tensors.


# ----------------------------------------------------------------------------- functions


@triton.jit
def _sigmoid(z):
    """``1 / (1 + e^-z)`` without cancellation or overflow in either tail."""
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _tanh(z):
    """``tanh``: ``sinh / sqrt(1 + sinh^2)`` with a ``sinh`` series for ``|z| < 0.55``, else
    ``(1 - e) / (1 + e)``, ``e = exp(-2|z|)`` (relative error a few ulps everywhere)."""
    x = tl.where(tl.abs(z) < 0.55, z, 0.0)
    x2 = x * x
    s = 1.0 + x2 / 272.0
    s = 1.0 + x2 / 210.0 * s
    s = 1.0 + x2 / 156.0 * s
    s = 1.0 + x2 / 110.0 * s
    s = 1.0 + x2 / 72.0 * s
    s = 1.0 + x2 / 42.0 * s
    s = 1.0 + x2 / 20.0 * s
    s = x * (1.0 + x2 / 6.0 * s)
    small = s / tl.sqrt(1.0 + s * s)
    e = tl.exp(-2.0 * tl.abs(z))
    big = (1.0 - e) / (1.0 + e)
    big = tl.where(z < 0, -big, big)
    return tl.where(tl.abs(z) < 0.55, small, big)


@triton.jit
def _gelu_inner(z):
    """``w = 2k(z + a z^3)`` and ``dw/dz`` of the tanh-form GeLU (``x sigma(w)``)."""
    w = 2.0 * K_TANH_C * (z + A_TANH_C * z * z * z)
    dw = 2.0 * K_TANH_C * (1.0 + 3.0 * A_TANH_C * z * z)
    return w, dw


@triton.jit
def _f(z, OP: tl.constexpr):
    """The op in float64."""
    if OP == 0:
        y = _sigmoid(z)
    elif OP == 1:
        y = _tanh(z)
    elif OP == 2:
        y = tl.erf(z)
    elif OP == 3:
        y = tl.sin(z)
    elif OP == 4:
        y = tl.cos(z)
    elif OP == 5:
        y = 0.5 * z * (1.0 + tl.erf(z * INV_SQRT2_C))
        y = tl.where(z == -INF_C, 0.0, y)
    else:
        w, dw = _gelu_inner(z)
        y = tl.where(z == -INF_C, 0.0, z * _sigmoid(w))
    return y


@triton.jit
def _df(z, OP: tl.constexpr):
    """The derivative in float64 (tail-accurate forms for Sigmoid and Tanh)."""
    if OP == 0:
        e = tl.exp(-tl.abs(z))
        y = e / ((1.0 + e) * (1.0 + e))
    elif OP == 1:
        e = tl.exp(-2.0 * tl.abs(z))
        y = 4.0 * e / ((1.0 + e) * (1.0 + e))
    elif OP == 2:
        y = TWO_OVER_SQRT_PI_C * tl.exp(-z * z)
    elif OP == 3:
        y = tl.cos(z)
    elif OP == 4:
        y = -tl.sin(z)
    elif OP == 5:
        y = 0.5 * (1.0 + tl.erf(z * INV_SQRT2_C)) + z * INV_SQRT_2PI_C * tl.exp(-0.5 * z * z)
    else:
        w, dw = _gelu_inner(z)
        sp = _sigmoid(w)
        y = sp + z * sp * _sigmoid(-w) * dw
    return y


@triton.jit
def _convex_at(z, OP: tl.constexpr):
    """Where ``f'' >= 0``."""
    if OP <= 2:
        c = z <= 0.0
    elif OP == 3:
        c = tl.sin(z) <= 0.0
    elif OP == 4:
        c = tl.cos(z) <= 0.0
    elif OP == 5:
        c = tl.abs(z) <= C_ERF_C
    else:
        c = tl.abs(z) <= C_TANH_C
    return c


# ----------------------------------------------------------------------------- tables


@triton.jit
def _solve(a, rlo, rhi, LOWER: tl.constexpr, VALID_AT_HI: tl.constexpr, OP: tl.constexpr):
    """``d*(a)`` by 52 bisection steps (as ``TangentTable.solve``): the end of the set of
    points ``d`` in ``[rlo, rhi]`` whose tangent passes below (``LOWER``) / above ``f(a)``."""
    fa = _f(a, OP)
    if VALID_AT_HI:
        good = tl.zeros_like(a) + rhi
        bad = tl.zeros_like(a) + rlo
    else:
        good = tl.zeros_like(a) + rlo
        bad = tl.zeros_like(a) + rhi
    line_g = _f(good, OP) + _df(good, OP) * (a - good)
    line_b = _f(bad, OP) + _df(bad, OP) * (a - bad)
    if LOWER:
        empty = ~(line_g <= fa)
        full = line_b <= fa
    else:
        empty = ~(line_g >= fa)
        full = line_b >= fa
    for _ in range(52):
        mid = 0.5 * (good + bad)
        line = _f(mid, OP) + _df(mid, OP) * (a - mid)
        if LOWER:
            v = line <= fa
        else:
            v = line >= fa
        good = tl.where(v, mid, good)
        bad = tl.where(v, bad, mid)
    good = tl.where(full, bad, good)
    if VALID_AT_HI:
        good = tl.where(empty, INF_C, good)
    else:
        good = tl.where(empty, -INF_C, good)
    return good


@triton.jit
def _table(tab_ptr, meta_ptr, a, T: tl.constexpr, LOWER: tl.constexpr, VALID_AT_HI: tl.constexpr,
           OP: tl.constexpr, BISECT: tl.constexpr):
    """Sound-rounded ``d*(a)`` from table ``T`` (both neighbouring grid entries, the one on the
    valid side); anchors clamped into the table's domain, off-grid anchors bisected."""
    m = meta_ptr + T * 8
    off = tl.load(m + 0).to(tl.int64)
    n = tl.load(m + 1).to(tl.int64)
    g0 = tl.load(m + 2)
    step = tl.load(m + 3)
    a = tl.where(a != a, g0, a)
    a = tl.minimum(tl.maximum(a, tl.load(m + 4)), tl.load(m + 5))
    pos = (a - g0) / step
    inside = (pos >= 0) & (pos <= (n - 1).to(tl.float64))
    i = tl.floor(tl.minimum(tl.maximum(pos, 0.0), (n - 2).to(tl.float64))).to(tl.int64)
    t0 = tl.load(tab_ptr + off + i)
    t1 = tl.load(tab_ptr + off + i + 1)
    if VALID_AT_HI:
        d = tl.maximum(t0, t1)
    else:
        d = tl.minimum(t0, t1)
    if BISECT:
        if tl.max((~inside).to(tl.int32), axis=0) > 0:
            solved = _solve(a, tl.load(m + 6), tl.load(m + 7), LOWER, VALID_AT_HI, OP)
            d = tl.where(inside, d, solved)
    return d


@triton.jit
def _narrow(l, u, A, B, tab_ptr, meta_ptr, TL: tl.constexpr, TR: tl.constexpr, LOWER: tl.constexpr,
            OP: tl.constexpr, BISECT: tl.constexpr, SHIFT):
    """Tangent range ``[max(l, A), min(u, B)]`` narrowed by the left table ``TL`` (anchor ``l < A``,
    valid ``d >= d*(l)``) and the right table ``TR`` (anchor ``u > B``, valid ``d <= d*(u)``);
    ``-1`` = no table; tables are read at ``anchor - SHIFT`` and shifted back."""
    lo = tl.maximum(l, A)
    hi = tl.minimum(u, B)
    if TL >= 0:
        need = l < A
        d = SHIFT + _table(tab_ptr, meta_ptr, tl.where(need, l, A) - SHIFT, TL, LOWER, True, OP, BISECT)
        lo = tl.where(need, tl.maximum(lo, d), lo)
    if TR >= 0:
        need = u > B
        d = SHIFT + _table(tab_ptr, meta_ptr, tl.where(need, u, B) - SHIFT, TR, LOWER, False, OP, BISECT)
        hi = tl.where(need, tl.minimum(hi, d), hi)
    return lo, hi


@triton.jit
def _ranges(l, u, tab_ptr, meta_ptr, OP: tl.constexpr):
    """``(lo_L, hi_L, lo_U, hi_U, c1)``: tangent ranges of the lower and upper line, and the
    op's two inflection cuts ``(k1, k2)``."""
    inf = INF_C
    if OP <= 2:  # S-shaped, inflection 0: tables 0 = right_of_convex, 1 = left_of_concave
        zero = tl.zeros_like(l)
        lo_L, hi_L = _narrow(l, u, zero - inf, zero, tab_ptr, meta_ptr, -1, 0, True, OP, True, 0.0)
        lo_U, hi_U = _narrow(l, u, zero, zero + inf, tab_ptr, meta_ptr, 1, -1, False, OP, True, 0.0)
        k1 = zero
        k2 = zero
    elif OP <= 4:  # sin(z + phase): tables 0 = concave_from_left, 1 = convex_from_right (of sin)
        phase = _phase(l, OP)
        kk = tl.ceil((l + phase) / PI_C)
        c1 = kk * PI_C - phase
        even = (kk - 2.0 * tl.floor(0.5 * kk)) == 0.0
        A_cv = tl.where(even, c1 - PI_C, c1)
        A_cc = tl.where(even, c1, c1 - PI_C)
        lo_L, hi_L = _narrow(l, u, A_cv, A_cv + PI_C, tab_ptr, meta_ptr, 0, 1, True, OP, False, c1)
        lo_U, hi_U = _narrow(l, u, A_cc, A_cc + PI_C, tab_ptr, meta_ptr, 0, 1, False, OP, False, c1)
        k1 = c1
        k2 = c1 + PI_C
    else:  # GeLU: 0 mid_left, 1 mid_right, 2 right_from_left, 3 left_from_right
        zero = tl.zeros_like(l)
        if OP == 5:
            c = zero + C_ERF_C
        else:
            c = zero + C_TANH_C
        lo_L, hi_L = _narrow(l, u, zero - c, zero + c, tab_ptr, meta_ptr, 0, 1, True, OP, True, 0.0)
        right = (u > c) & (l >= -c)
        left = (l < -c) & (u <= c)
        A = tl.where(right, c, tl.where(left, -inf, inf))
        B = tl.where(right, inf, tl.where(left, -c, -inf))
        lo_U, hi_U = _narrow(l, u, A, B, tab_ptr, meta_ptr, 2, 3, False, OP, True, 0.0)
        k1 = zero - c
        k2 = zero + c
    return lo_L, hi_L, lo_U, hi_U, k1, k2


# ----------------------------------------------------------------------------- biases


@triton.jit
def _cswap(a, b):
    return tl.minimum(a, b), tl.maximum(a, b)


@triton.jit
def _sort6(p0, p1, p2, p3, p4, p5):
    """Optimal 12-comparator sorting network for six values (elementwise)."""
    p0, p5 = _cswap(p0, p5)
    p1, p3 = _cswap(p1, p3)
    p2, p4 = _cswap(p2, p4)
    p1, p2 = _cswap(p1, p2)
    p3, p4 = _cswap(p3, p4)
    p0, p3 = _cswap(p0, p3)
    p2, p5 = _cswap(p2, p5)
    p0, p1 = _cswap(p0, p1)
    p2, p3 = _cswap(p2, p3)
    p4, p5 = _cswap(p4, p5)
    p1, p2 = _cswap(p1, p2)
    p3, p4 = _cswap(p3, p4)
    return p0, p1, p2, p3, p4, p5


@triton.jit
def _convex_min(a, b, ha, hb, dha, dhb, sgn, s, OP: tl.constexpr, REFINE: tl.constexpr):
    """Lower bound of ``min h`` on ``[a, b]`` for convex ``h = sgn (f - s z)`` from end values and
    slopes: an end value where ``h`` is monotone, else the crossing of the end tangents (below
    a convex function) after ``REFINE`` bisection steps that keep the minimiser bracketed."""
    w0 = b - a
    slack = 16.0 * EPS_C * (tl.abs(dha) + tl.abs(dhb) + 2.0 * tl.abs(s)) * w0
    for _ in range(REFINE):
        m = 0.5 * (a + b)
        hm = sgn * (_f(m, OP) - s * m)
        dhm = sgn * (_df(m, OP) - s)
        interior = (dha < 0) & (dhb > 0)
        go_right = interior & (dhm < 0)
        go_left = interior & (dhm >= 0)
        a = tl.where(go_right, m, a)
        ha = tl.where(go_right, hm, ha)
        dha = tl.where(go_right, dhm, dha)
        b = tl.where(go_left, m, b)
        hb = tl.where(go_left, hm, hb)
        dhb = tl.where(go_left, dhm, dhb)
    w = b - a
    den = dha - dhb
    den = tl.where(den < 0, den, -1.0)
    t = tl.minimum(tl.maximum((hb - ha - dhb * w) / den, 0.0), w)
    val = tl.minimum(ha + dha * t, hb + dhb * (t - w))
    val = val - 4.0 * EPS_C * (tl.abs(ha) + tl.abs(hb) + (tl.abs(dha) + tl.abs(dhb)) * w)
    low = tl.where(dha >= 0, ha, tl.where(dhb <= 0, hb, val))
    if REFINE > 0:
        low = low - slack
    return low


@triton.jit
def _piece(a, b, fa, fb, da, db, s_lo, s_up, OP: tl.constexpr, REFINE: tl.constexpr):
    """``(min g_lo, max g_up)`` bounds on one piece ``[a, b]`` of one curvature sign."""
    convex = _convex_at(0.5 * (a + b), OP)
    glo_a = fa - s_lo * a
    glo_b = fb - s_lo * b
    gup_a = fa - s_up * a
    gup_b = fb - s_up * b
    ha = tl.where(convex, glo_a, -gup_a)
    hb = tl.where(convex, glo_b, -gup_b)
    dha = tl.where(convex, da - s_lo, s_up - da)
    dhb = tl.where(convex, db - s_lo, s_up - db)
    sgn = tl.where(convex, 1.0, -1.0)
    s = tl.where(convex, s_lo, s_up)
    cm = _convex_min(a, b, ha, hb, dha, dhb, sgn, s, OP, REFINE)
    lo = tl.where(convex, cm, tl.minimum(glo_a, glo_b))
    up = tl.where(convex, tl.maximum(gup_a, gup_b), -cm)
    return lo, up


@triton.jit
def _gaps(p0, p1, p2, p3, p4, p5, s_lo, s_up, OP: tl.constexpr, REFINE: tl.constexpr):
    """Rigorous ``(min (f - s_lo z), max (f - s_up z))`` over ``[min p, max p]``."""
    p0, p1, p2, p3, p4, p5 = _sort6(p0, p1, p2, p3, p4, p5)
    f0, f1, f2, f3, f4, f5 = _f(p0, OP), _f(p1, OP), _f(p2, OP), _f(p3, OP), _f(p4, OP), _f(p5, OP)
    d0, d1, d2, d3, d4, d5 = _df(p0, OP), _df(p1, OP), _df(p2, OP), _df(p3, OP), _df(p4, OP), _df(p5, OP)
    b_lo, b_up = _piece(p0, p1, f0, f1, d0, d1, s_lo, s_up, OP, REFINE)
    lo, up = _piece(p1, p2, f1, f2, d1, d2, s_lo, s_up, OP, REFINE)
    b_lo, b_up = tl.minimum(b_lo, lo), tl.maximum(b_up, up)
    lo, up = _piece(p2, p3, f2, f3, d2, d3, s_lo, s_up, OP, REFINE)
    b_lo, b_up = tl.minimum(b_lo, lo), tl.maximum(b_up, up)
    lo, up = _piece(p3, p4, f3, f4, d3, d4, s_lo, s_up, OP, REFINE)
    b_lo, b_up = tl.minimum(b_lo, lo), tl.maximum(b_up, up)
    lo, up = _piece(p4, p5, f4, f5, d4, d5, s_lo, s_up, OP, REFINE)
    return tl.minimum(b_lo, lo), tl.maximum(b_up, up)


# ----------------------------------------------------------------------------- image, lines


@triton.jit
def _phase(l, OP: tl.constexpr):
    """``phase`` of ``sin(z + phase)`` as a float64 tensor like ``l`` (0 for Sin, pi/2 for Cos)."""
    if OP == 3:
        ph = tl.zeros_like(l)
    else:
        ph = tl.zeros_like(l) + 0.5 * PI_C
    return ph


@triton.jit
def _contains(l, u, p0):
    """Whether some ``p0 + 2 k pi`` lies in ``[l, u]`` (tiny outward slack, as ``trig``)."""
    k = tl.ceil((l - p0) / (2.0 * PI_C))
    p = p0 + 2.0 * PI_C * k
    return p <= u + 1e-12 * (1.0 + tl.abs(u))


@triton.jit
def _image(l, u, fl, fu, OP: tl.constexpr):
    """Exact float64 image ``[lo, hi]`` of ``[l, u]``."""
    lo = tl.minimum(fl, fu)
    hi = tl.maximum(fl, fu)
    if OP == 3 or OP == 4:
        phase = _phase(l, OP)
        hi = tl.where(_contains(l, u, 0.5 * PI_C - phase), 1.0, hi)
        lo = tl.where(_contains(l, u, -0.5 * PI_C - phase), -1.0, lo)
    if OP >= 5:
        if OP == 5:
            x_min = tl.zeros_like(l) + XMIN_ERF_C
        else:
            x_min = tl.zeros_like(l) + XMIN_TANH_C
        inside = (l <= x_min) & (x_min <= u)
        lo = tl.where(inside, tl.minimum(lo, _f(x_min, OP)), lo)
    return lo, hi


@triton.jit
def _chord(l, u, fl, fu, OP: tl.constexpr):
    """``(f(u) - f(l)) / (u - l)``, or ``f'`` at the midpoint for (near-)degenerate intervals."""
    w = u - l
    small = w <= 1e-7 * (tl.abs(l) + tl.abs(u)) + 1e-300
    q = (fu - fl) / tl.where(small, 1.0, w)
    return tl.where(small, _df(0.5 * (l + u), OP), q)


@triton.jit
def _relax_kernel(l_ptr, u_ptr, pl_ptr, pu_ptr, tab_ptr, meta_ptr, out_ptr, N,
                  OP: tl.constexpr, HAS_PL: tl.constexpr, HAS_PU: tl.constexpr,
                  REFINE: tl.constexpr, BLOCK: tl.constexpr):
    """Elements ``pid*BLOCK ...``: writes ``s_lo, b_lo, s_up, b_up, lo, hi`` (six rows of ``N``)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    l = tl.load(l_ptr + offs, mask=mask, other=0.0)
    u = tl.load(u_ptr + offs, mask=mask, other=1.0)
    mid = 0.5 * (l + u)
    fl = _f(l, OP)
    fu = _f(u, OP)
    chord = _chord(l, u, fl, fu, OP)
    lo_L, hi_L, lo_U, hi_U, k1, k2 = _ranges(l, u, tab_ptr, meta_ptr, OP)
    p_lo = mid
    p_up = mid
    if HAS_PL:
        p_lo = tl.load(pl_ptr + offs, mask=mask, other=0.0)
    if HAS_PU:
        p_up = tl.load(pu_ptr + offs, mask=mask, other=0.0)
    ok_L = lo_L <= hi_L
    ok_U = lo_U <= hi_U
    d_lo = tl.where(ok_L, tl.minimum(tl.maximum(p_lo, lo_L), hi_L), mid)
    d_up = tl.where(ok_U, tl.minimum(tl.maximum(p_up, lo_U), hi_U), mid)
    s_lo = tl.where(ok_L, _df(d_lo, OP), chord)
    s_up = tl.where(ok_U, _df(d_up, OP), chord)
    c1 = tl.minimum(tl.maximum(k1, l), u)
    c2 = tl.minimum(tl.maximum(k2, l), u)
    b_lo, b_up = _gaps(l, u, d_lo, d_up, c1, c2, s_lo, s_up, OP, REFINE)
    lo, hi = _image(l, u, fl, fu, OP)
    if OP == 3 or OP == 4:
        n_inf = (k1 <= u).to(tl.int32) + (k1 + PI_C <= u).to(tl.int32) + (k1 + 2.0 * PI_C <= u).to(tl.int32)
        const_lo = (n_inf >= 3) | ((n_inf == 2) & (s_lo * mid + b_lo < lo))
        const_up = (n_inf >= 3) | ((n_inf == 2) & (s_up * mid + b_up > hi))
        s_lo = tl.where(const_lo, 0.0, s_lo)
        b_lo = tl.where(const_lo, lo, b_lo)
        s_up = tl.where(const_up, 0.0, s_up)
        b_up = tl.where(const_up, hi, b_up)
    m = tl.maximum(tl.abs(l), tl.abs(u))
    if OP >= 5:
        fscale = m
    else:
        fscale = tl.zeros_like(m) + 1.0
    b_lo = b_lo - 32.0 * EPS_C * (tl.abs(b_lo) + tl.abs(s_lo) * m + fscale)
    b_up = b_up + 32.0 * EPS_C * (tl.abs(b_up) + tl.abs(s_up) * m + fscale)
    mg_lo = 32.0 * EPS_C * (tl.abs(lo) + fscale)
    mg_hi = 32.0 * EPS_C * (tl.abs(hi) + fscale)
    lo = lo - tl.where(mg_lo < INF_C, mg_lo, 0.0)  # infinite margins dropped as in round_interval
    hi = hi + tl.where(mg_hi < INF_C, mg_hi, 0.0)
    tl.store(out_ptr + offs, s_lo, mask=mask)
    tl.store(out_ptr + N + offs, b_lo, mask=mask)
    tl.store(out_ptr + 2 * N + offs, s_up, mask=mask)
    tl.store(out_ptr + 3 * N + offs, b_up, mask=mask)
    tl.store(out_ptr + 4 * N + offs, lo, mask=mask)
    tl.store(out_ptr + 5 * N + offs, hi, mask=mask)


# ----------------------------------------------------------------------------- launcher


def _op_code(op_name: str, approximate: str = "none") -> int:
    if op_name == "Gelu":
        return GELU if approximate == "none" else GELU_TANH
    return OP_CODES[op_name]


def _tables(code: int, approximate: str = "none"):
    """The op's :class:`~genbab.ops.curvature.TangentTable` objects in kernel slot order."""
    if code <= ERF:
        op = {SIGMOID: s_shaped.SIGMOID, TANH: s_shaped.TANH, ERF: s_shaped.ERF}[code]
        return [op.right_of_convex, op.left_of_concave]
    if code <= COS:
        return [trig.CONCAVE_FROM_LEFT, trig.CONVEX_FROM_RIGHT]
    t = gelu_mod.FORMS[approximate].tables
    return [t["mid_left"], t["mid_right"], t["right_from_left"], t["left_from_right"]]


_PACKED: dict = {}


def packed_tables(code: int, device: torch.device, approximate: str = "none"):
    """``(tables, meta)``: the op's tables concatenated (float64) and their metadata rows."""
    key = (code, approximate, device)
    if key not in _PACKED:
        tabs, rows, off = [], [], 0
        for t in _tables(code, approximate):
            data = t._table(torch.device("cpu"))
            rows.append([off, data.numel(), t.grid[0], t._step, *t.domain, *t.region])
            tabs.append(data)
            off += data.numel()
        _PACKED[key] = (torch.cat(tabs).to(device), torch.tensor(rows, dtype=F64, device=device))
    return _PACKED[key]


def _finalize(code: int, l64, u64, raw: torch.Tensor, dtype: torch.dtype) -> Relaxation:
    s_lo, b_lo, s_up, b_up, lo, hi = raw.unbind(0)
    abs_scale = 0.5 * torch.maximum(l64.abs(), u64.abs()) if code >= GELU else 0.0
    return finalize(l64, u64, s_lo, b_lo, s_up, b_up, lo, hi, dtype, abs_scale=abs_scale)


def relax_raw_triton(op_name: str, l: torch.Tensor, u: torch.Tensor, params=None,
                     approximate: str = "none"):
    """Launch the kernel: ``(l64, u64, raw)`` with ``raw`` ``[6, *shape]`` = float64
    ``s_lo, b_lo, s_up, b_up`` (exact-arithmetic-valid lines with the kernel margin) and the image."""
    code = _op_code(op_name, approximate)
    params = params or {}
    names = ("tangent_lower", "tangent_upper")
    given = [params.get(k) for k in names]
    ts = torch.broadcast_tensors(l.to(F64), u.to(F64), *[p.detach().to(F64) for p in given if p is not None])
    l64, u64 = ts[0], ts[1]
    flat = [t.contiguous().reshape(-1) for t in ts]
    extra = iter(flat[2:])
    p_lo = next(extra) if given[0] is not None else flat[0]
    p_up = next(extra) if given[1] is not None else flat[0]
    check_launchable(flat[0])
    N = flat[0].numel()
    raw = torch.empty((6, N), dtype=F64, device=l.device)
    if N:
        tab, meta = packed_tables(code, l.device, approximate)
        block = 256 if l.is_cuda else 1024
        _relax_kernel[(triton.cdiv(N, block),)](
            flat[0], flat[1], p_lo, p_up, tab, meta, raw, N,
            OP=code, HAS_PL=given[0] is not None, HAS_PU=given[1] is not None,
            REFINE=REFINE[code], BLOCK=block)
    return l64, u64, raw.reshape(6, *l64.shape)


def relax_triton(op_name: str, l: torch.Tensor, u: torch.Tensor, params=None,
                 approximate: str = "none") -> Relaxation:
    """Sound lines in ``l.dtype``: the kernel's float64 lines through ``finalize`` (no gradient)."""
    with torch.no_grad():
        l64, u64, raw = relax_raw_triton(op_name, l, u, params, approximate)
        return _finalize(_op_code(op_name, approximate), l64, u64, raw, l.dtype)


def relax_reference(op_name: str, l: torch.Tensor, u: torch.Tensor, params=None,
                    approximate: str = "none") -> Relaxation:
    """PyTorch reference: the op's own relaxation in :mod:`genbab.ops` (``relax_gelu`` for GeLU)."""
    if op_name == "Gelu":
        return gelu_mod.relax_gelu(l, u, params, approximate)
    if op_name in ("Sin", "Cos"):
        return trig.relax_trig(trig.SIN if op_name == "Sin" else trig.COS, l, u, params)
    op = {"Sigmoid": s_shaped.SIGMOID, "Tanh": s_shaped.TANH, "Erf": s_shaped.ERF}[op_name]
    return s_shaped.s_relax(op, l, u, params)


PARAM_NAMES = ("tangent_lower", "tangent_upper")


class _Relax(torch.autograd.Function):
    """Kernel forward; backward by autograd through :func:`relax_reference` at the same inputs."""

    @staticmethod
    def forward(ctx, op_name, approximate, l, u, p_lo, p_up):
        ctx.op_name, ctx.approximate = op_name, approximate
        ctx.save_for_backward(l, u, p_lo, p_up)
        params = {k: v for k, v in zip(PARAM_NAMES, (p_lo, p_up)) if v is not None}
        r = relax_triton(op_name, l, u, params or None, approximate)
        return r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            inputs = [None if t is None else (t.detach().requires_grad_(True) if n else t.detach())
                      for t, n in zip(saved, need)]
            params = {k: v for k, v in zip(PARAM_NAMES, inputs[2:]) if v is not None}
            r = relax_reference(ctx.op_name, inputs[0], inputs[1], params or None, ctx.approximate)
            outs = (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)
            wanted = [t for t, n in zip(inputs, need) if n]
            pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
            found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                        allow_unused=True) if pairs and wanted else [None] * len(wanted)
        found = iter(found)
        out = [next(found) if n else None for n in need]
        out = [None if g is None or t is None else g.sum_to_size(t.shape) for g, t in zip(out, saved)]
        return (None, None, *out)


def relax(op_name: str, l: torch.Tensor, u: torch.Tensor, params=None,
          approximate: str = "none") -> Relaxation:
    """:func:`relax_triton` with autograd for ``l``, ``u`` and the tangent points (see the
    module docstring); without gradients needed, the kernel alone."""
    params = params or {}
    p_lo, p_up = (params.get(k) for k in PARAM_NAMES)
    ts = [t for t in (l, u, p_lo, p_up) if t is not None]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in ts)):
        return relax_triton(op_name, l, u, params or None, approximate)
    return Relaxation(*_Relax.apply(op_name, approximate, l, u, p_lo, p_up))
