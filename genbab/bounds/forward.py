"""Forward linear bounds over the box's free input dimensions (symbolic intervals).

When only ``k`` input coordinates of a batch of boxes have positive width (nn4sys mscn: 1-3 of
154), every node's value is kept in the form

    z = sum_j G_j eps_j + p,        eps in [-1, 1]^k,  p in [p_lo, p_hi],

``G`` ``[B, k, *shape]`` (``None``: all zero), ``p_lo``, ``p_hi`` ``[B, *shape]``. The input is
``x = x0 + sum_j r_j e_{f_j} eps_j`` (``r`` rounded up, so the form covers the box). Affine nodes
map ``G`` by their linear part and ``p`` by their (outward-rounded) interval step; an elementwise
``h`` on ``[l, u]`` with relaxation lines ``a_l z + b_l <= h(z) <= a_u z + b_u`` becomes
``h(z) = a z + r`` with one slope ``a`` per neuron (``a_l``, ``a_u``, their mean, or 0, whichever
leaves the narrowest residual ``r in [min_z (a_l - a) z + b_l, max_z (a_u - a) z + b_u]``); a
product ``x y`` likewise with the McCormick planes' coefficients. A node's bounds are
``p_lo - sum_j |G_j|`` and ``p_hi + sum_j |G_j|``. Cost: about ``k + 3`` interval passes, against
CROWN's backward pass per neuron, and nearly as tight when the box is narrow.

Floating point: every computed generator and interval carries a rigorous error term (``gamma_n``
times the magnitudes that entered it), added to ``p`` outward, so the bounds are true bounds of
the real-valued network on the box. Non-finite values fall back to the interval form
(``G = None``, ``p`` = the node's interval bounds).
"""

from __future__ import annotations

import math

import torch

from genbab.bounds import rounding

MAX_FREE = 24  # more free input coordinates than this: the caller uses another method
NARROW = 2.0**-40  # narrower than this times (1 + |value|): a constant up to rounding


class Form:
    """``z = G eps + [lo, hi]`` for one node (module docstring)."""

    __slots__ = ("G", "lo", "hi", "_M")

    def __init__(self, G, lo, hi):
        self.G, self.lo, self.hi, self._M = G, lo, hi, None

    def abs_sum(self) -> torch.Tensor:
        """``sum_j |G_j|`` ``[B, *shape]`` as computed (nearest rounding; cached)."""
        if self._M is None:
            self._M = self.G.abs().sum(1)
        return self._M

    def spread(self) -> torch.Tensor | None:
        """``sum_j |G_j|`` rounded up (None when ``G`` is zero)."""
        if self.G is None:
            return None
        M = self.abs_sum()
        return M + rounding.gamma(self.G.shape[1] + 1, M.dtype) * M

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        M = self.spread()
        if M is None:
            return self.lo, self.hi
        return rounding.widen(self.lo, self.hi, M)


def free_dims(box) -> torch.Tensor:
    """Per box ``[B, n]`` bool: the input coordinates of positive width."""
    return ((box.upper - box.lower) > 0).reshape(box.batch, -1)


def input_form(box, free: torch.Tensor) -> Form:
    """The box as a form: centre ``x0`` (a point interval) plus ``r_j eps_j``, one generator per
    free coordinate of each box (``k`` = the most any box has; box ``b``'s generator ``j`` is its
    ``j``-th free coordinate, zero when it has fewer)."""
    B = box.batch
    lower, upper = box.lower.reshape(B, -1), box.upper.reshape(B, -1)
    mid = lower + (upper - lower) / 2
    mid = torch.where(free, torch.minimum(torch.maximum(mid, lower), upper), lower)
    r = torch.maximum(upper - mid, mid - lower)
    r = torch.where(free, torch.nextafter(r, torch.full_like(r, math.inf)), 0.0)  # rounded up
    k = int(free.sum(dim=1).max()) if B else 0
    if k == 0:  # points: the form is an interval
        x0 = mid.reshape(box.lower.shape)
        return Form(None, x0, x0.clone())
    order = torch.argsort((~free).to(torch.int8), dim=1, stable=True)[:, :k]  # [B, k] free dims first
    G = torch.zeros(B, k, lower.shape[1], dtype=lower.dtype, device=lower.device)
    G.scatter_(2, order.unsqueeze(2), r.gather(1, order).unsqueeze(2))
    shape = box.lower.shape
    x0 = mid.reshape(shape)
    return Form(G.reshape(B, k, *shape[1:]), x0, x0.clone())


def _sane(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return lo.nan_to_num(nan=-math.inf, posinf=math.inf), hi.nan_to_num(nan=math.inf, neginf=-math.inf)


def _finite(form: Form) -> bool:
    ok = bool(torch.isfinite(form.lo).all() and torch.isfinite(form.hi).all())
    return ok and (form.G is None or bool(torch.isfinite(form.G).all()))


def affine_form(engine, node, forms: list[Form]) -> Form:
    """``G -> L G`` (the linear part, batched over ``B k``), ``p`` by the interval step, plus the
    rounding of ``L G``: ``gamma_{t+6} k (|L| M + |c|)`` with ``M = sum_j |G_j|``."""
    bounds = {name: (f.lo, f.hi) for name, f in zip(node.inputs, forms)}
    lo, hi = engine.interval_step(node, bounds)
    if all(f.G is None for f in forms):
        return Form(None, lo, hi)
    affine = engine.affine(node)
    ref = next(f.G for f in forms if f.G is not None)
    B, k = ref.shape[:2]
    gens = [(f.G if f.G is not None else torch.zeros(B, k, *f.lo.shape[1:], dtype=ref.dtype, device=ref.device))
            for f in forms]
    out = affine._batched([g.reshape(B * k, *g.shape[2:]) for g in gens])
    if not affine._const_zero:
        out = out - affine.const.to(out.dtype)
    G = out.reshape(B, k, *out.shape[1:])
    forward_terms, _ = engine.terms[node.name]
    if forward_terms > 0 or not affine._const_zero:
        with torch.no_grad():
            Ms = [f.abs_sum() if f.G is not None else torch.zeros_like(f.lo) for f in forms]
            m_lo, m_hi = affine.interval([-m for m in Ms], Ms)
            v = rounding.magnitude(m_lo, m_hi)
            slack = rounding.gamma(forward_terms + 6, v.dtype) * k * v
        lo, hi = rounding.widen(lo, hi, slack)
    return Form(G, *_sane(lo, hi))


def _scale_interval(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a [lo, hi]`` (nearest rounding; the caller widens), 0 where ``a = 0`` even for infinite ends."""
    p, q = a * lo, a * hi
    zero = a == 0
    p, q = torch.where(zero, 0.0, p), torch.where(zero, 0.0, q)
    return torch.minimum(p, q), torch.maximum(p, q)


def _pick(candidates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Per neuron the candidate ``(a, r_lo, r_hi)`` with the narrowest residual."""
    best_a, best_lo, best_hi = candidates[0]
    best_w = (best_hi - best_lo).nan_to_num(nan=math.inf)
    for a, r_lo, r_hi in candidates[1:]:
        w = (r_hi - r_lo).nan_to_num(nan=math.inf)
        take = w < best_w
        best_a, best_lo, best_hi = (torch.where(take, a, best_a), torch.where(take, r_lo, best_lo),
                                    torch.where(take, r_hi, best_hi))
        best_w = torch.where(take, w, best_w)
    return best_a, best_lo, best_hi


def _line_residual(slope, bias, a, lo, hi, m, lower: bool):
    """``min`` (``lower``) or ``max`` over ``z in [lo, hi]`` of ``(slope - a) z + bias``, rounded
    outward by ``gamma_4 (|slope - a| m + |bias|)`` (this covers the rounding of ``slope - a``)."""
    d = slope - a
    e1, e2 = d * lo, d * hi
    e1, e2 = torch.where(d == 0, 0.0, e1), torch.where(d == 0, 0.0, e2)
    slack = rounding.gamma(4, lo.dtype) * (d.abs() * m + bias.abs())
    slack = torch.where(d == 0, rounding.gamma(4, lo.dtype) * bias.abs(), slack)
    if lower:
        return torch.minimum(e1, e2) + bias - slack
    return torch.maximum(e1, e2) + bias + slack


def elementwise_form(engine, node, op, form: Form, bounds: tuple[torch.Tensor, torch.Tensor],
                     image: tuple[torch.Tensor, torch.Tensor]) -> Form:
    """``h(z) = a z + r`` (module docstring); ``bounds``: ``z``'s final bounds, ``image``: ``h``'s
    interval. Only neurons wider than rounding noise are relaxed; the others keep ``a = 0`` and
    ``r = image`` (as tight as a line there)."""
    lo, hi = bounds
    if form.G is None:
        return Form(None, *image)
    tol = NARROW * (1 + rounding.magnitude(lo, hi))
    wide = torch.nonzero((((hi - lo) > tol) & torch.isfinite(lo) & torch.isfinite(hi)).reshape(-1)).flatten()
    a = torch.zeros_like(lo)
    r_lo, r_hi = image[0].clone(), image[1].clone()
    if len(wide):
        l_w, u_w = lo.reshape(-1)[wide], hi.reshape(-1)[wide]
        a_w, lo_w, hi_w = _relaxed_slope(engine, op, l_w, u_w, image[0].reshape(-1)[wide], image[1].reshape(-1)[wide])
        a.view(-1)[wide], r_lo.view(-1)[wide], r_hi.view(-1)[wide] = a_w, lo_w, hi_w
    G = a.unsqueeze(1) * form.G
    s_lo, s_hi = _scale_interval(a, form.lo, form.hi)
    p_lo, p_hi = s_lo + r_lo, s_hi + r_hi
    M = form.abs_sum()
    slack = rounding.gamma(4, lo.dtype) * (a.abs() * (M + rounding.magnitude(form.lo, form.hi))
                                          + rounding.magnitude(r_lo, r_hi))
    p_lo, p_hi = rounding.widen(p_lo, p_hi, torch.where(a == 0, 0.0, slack))
    return Form(G, *_sane(p_lo, p_hi))


def _relaxed_slope(engine, op, lo, hi, h_lo, h_hi):
    """Per neuron (flat ``[W]``) the slope ``a`` and residual ``[r_lo, r_hi]`` of the narrowest
    candidate: 0 (residual: the interval image), either line's slope, their mean, and for ops
    with a slope parameter the line parallel to the other one."""
    lines = engine.relax(op, lo, hi)
    a_l, b_l, a_u, b_u = torch.broadcast_tensors(*(t.detach() for t in (
        lines.slope_lower, lines.bias_lower, lines.slope_upper, lines.bias_upper)))
    m = rounding.magnitude(lo, hi)
    clean = lambda t: t.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # noqa: E731
    candidates = [(torch.zeros_like(lo), h_lo, h_hi)]
    for a in (a_l, a_u, (a_l + a_u) / 2):
        a = clean(a)
        candidates.append((a, _line_residual(a_l, b_l, a, lo, hi, m, True),
                           _line_residual(a_u, b_u, a, lo, hi, m, False)))
    keys = op.init_params(lo, hi).keys()
    for key, other in (("slope_lower", a_u), ("slope_upper", a_l)):  # parallel lines (DeepZ for ReLU)
        if key in keys:
            par = engine.relax(op, lo, hi, {key: clean(other)})
            pl, ql, pu, qu = torch.broadcast_tensors(*(t.detach() for t in (
                par.slope_lower, par.bias_lower, par.slope_upper, par.bias_upper)))
            a = clean(pu if key == "slope_lower" else pl)
            candidates.append((a, _line_residual(pl, ql, a, lo, hi, m, True),
                               _line_residual(pu, qu, a, lo, hi, m, False)))
    return _pick(candidates)


def _align(t: torch.Tensor, rank: int, lead: int) -> torch.Tensor:
    """Insert size-1 dims after the ``lead`` leading dims so that ``t`` has ``lead + rank`` dims."""
    missing = lead + rank - t.dim()
    return t if missing <= 0 else t.reshape(*t.shape[:lead], *([1] * missing), *t.shape[lead:])


def product_form(engine, node, fx: Form, fy: Form, bx, by, ix: int, iy: int,
                 image: tuple[torch.Tensor, torch.Tensor]) -> Form:
    """``x y = c_x x + c_y y + r`` from the McCormick planes (common coefficients per neuron:
    either plane's, their mean, or 0 with the product's interval as residual)."""
    product = engine.rules[node.name].product
    lx, ux = bx
    ly, uy = by
    if (product is None or product.contraction or (fx.G is None and fy.G is None)
            or not all(bool(torch.isfinite(t).all()) for t in (lx, ux, ly, uy))):
        return Form(None, *image)
    rank = image[0].dim() - 1
    lx, ux, ly, uy = (_align(t, rank, 1) for t in (lx, ux, ly, uy))
    for (l_, u_), f_var, (lv, uv), first in (((ly, uy), fx, (lx, ux), True), ((lx, ux), fy, (ly, uy), False)):
        if bool(((u_ - l_) <= NARROW * (1 + rounding.magnitude(l_, u_))).all()):  # a factor is a constant
            return _scaled_form(f_var, l_, u_, lv, uv, rank, image)
    relaxed = product.relax(lx, ux, ly, uy, None)
    (cxl, cyl, bl), (cxu, cyu, bu) = ((t.detach() for t in relaxed.lower), (t.detach() for t in relaxed.upper))
    shape = image[0].shape
    cxl, cyl, bl, cxu, cyu, bu = (t.expand(shape) for t in (cxl, cyl, bl, cxu, cyu, bu))
    mx, my = rounding.magnitude(lx, ux), rounding.magnitude(ly, uy)
    g4 = rounding.gamma(6, image[0].dtype)

    def residual(cx, cy, cxp, cyp, bp, lower):
        dx, dy = cxp - cx, cyp - cy
        ex = torch.stack([dx * lx, dx * ux]).nan_to_num(nan=0.0)
        ey = torch.stack([dy * ly, dy * uy]).nan_to_num(nan=0.0)
        slack = g4 * (dx.abs() * mx + dy.abs() * my + bp.abs())
        if lower:
            return ex.amin(0) + ey.amin(0) + bp - slack
        return ex.amax(0) + ey.amax(0) + bp + slack

    candidates = [(torch.zeros(shape, dtype=image[0].dtype, device=image[0].device),) * 2 + image]
    for cx, cy in ((cxl, cyl), (cxu, cyu), ((cxl + cxu) / 2, (cyl + cyu) / 2)):
        candidates.append((cx, cy, residual(cx, cy, cxl, cyl, bl, True), residual(cx, cy, cxu, cyu, bu, False)))
    best = candidates[0]
    best_w = (best[3] - best[2]).nan_to_num(nan=math.inf)
    for cand in candidates[1:]:
        w = (cand[3] - cand[2]).nan_to_num(nan=math.inf)
        take = w < best_w
        best = tuple(torch.where(take, c, b) for c, b in zip(cand, best))
        best_w = torch.where(take, w, best_w)
    cx, cy, r_lo, r_hi = best
    terms, p_lo, p_hi, slack = [], r_lo, r_hi, rounding.magnitude(r_lo, r_hi)
    for c, f in ((cx, fx), (cy, fy)):
        f_lo, f_hi = _align(f.lo, rank, 1), _align(f.hi, rank, 1)
        s_lo, s_hi = _scale_interval(c, f_lo, f_hi)
        p_lo, p_hi = p_lo + s_lo, p_hi + s_hi
        M = 0.0
        if f.G is not None:
            Gf = _align(f.G, rank, 2)
            terms.append(c.unsqueeze(1) * Gf)
            M = _align(f.abs_sum(), rank, 1)
        slack = slack + c.abs() * (M + rounding.magnitude(f_lo, f_hi))
    G = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    G = G.expand(shape[0], G.shape[1], *shape[1:])
    p_lo, p_hi = rounding.widen(p_lo, p_hi, g4 * slack)
    return Form(G, *_sane(p_lo, p_hi))


def _scaled_form(f: Form, lc, uc, lv, uv, rank: int, image) -> Form:
    """``v c`` with ``c in [lc, uc]`` (nearly) constant: ``c_m v + (c - c_m) v`` with
    ``|(c - c_m) v| <= r_c m_v`` (``c_m``, ``r_c``: the factor's centre and radius)."""
    cm = lc + (uc - lc) / 2
    rc = torch.maximum(uc - cm, cm - lc)
    rc = torch.nextafter(rc, torch.full_like(rc, math.inf))
    mv = rounding.magnitude(lv, uv)
    err = rc * mv
    f_lo, f_hi = _align(f.lo, rank, 1), _align(f.hi, rank, 1)
    p_lo, p_hi = _scale_interval(cm, f_lo, f_hi)
    M = 0.0
    G = None
    if f.G is not None:
        Gf = _align(f.G, rank, 2)
        G = cm.unsqueeze(1) * Gf
        M = _align(f.abs_sum(), rank, 1)
    slack = err + rounding.gamma(4, cm.dtype) * (cm.abs() * (M + rounding.magnitude(f_lo, f_hi)) + err)
    p_lo, p_hi = rounding.widen(p_lo, p_hi, slack)
    shape = image[0].shape
    p_lo, p_hi = p_lo.expand(shape), p_hi.expand(shape)
    if G is not None:
        G = G.expand(shape[0], G.shape[1], *shape[1:])
    return Form(G, *_sane(p_lo, p_hi))


def node_form(engine, node, forms: dict[str, Form], bounds, image) -> Form:
    """The form of ``node``'s value from its inputs' forms and final ``bounds``; ``image``: its
    interval bounds (the fallback)."""
    rule = engine.rules[node.name]
    ins = [forms.get(i) for i in node.inputs]
    if any(f is None for f in ins):
        return Form(None, *image)
    if rule.kind == "affine":
        return affine_form(engine, node, ins)
    if rule.kind == "elementwise":
        return elementwise_form(engine, node, rule.op, ins[0], bounds[node.inputs[0]], image)
    lx, ux, ly, uy, ix, iy = engine.bilinear_operands(node, bounds)
    return product_form(engine, node, ins[ix], ins[iy], (lx, ux), (ly, uy), ix, iy, image)
