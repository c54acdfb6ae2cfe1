"""BBPS: branching scores from bound propagation with shortcuts.

For a candidate node ``z`` read by an elementwise node ``h``, the last backward pass left the
coefficient ``Lambda`` of the domain's best row at ``h(z)``. Through ``h``'s lines
``s_l z + b_l <= h(z) <= s_u z + b_u`` it becomes the coefficient ``a = Lambda+ s_l + Lambda- s_u``
on ``z`` and the bias ``beta = Lambda+ b_l + Lambda- b_u``. Instead of propagating ``a`` further
back, the *shortcut* replaces ``z`` by its root linear bounds in the input,
``W_l x + c_l <= z <= W_u x + c_u``:

    estimate = min_x  (a+ W_l + a- W_u) x + a+ c_l + a- c_u + sum(beta)
             = G x0 - |G| eps + g + sum(beta).

Splitting neuron ``j`` at ``p`` rebuilds ``h``'s lines on ``[l_j, p]`` and ``[p, u_j]``; only
``a_j`` and ``beta_j`` change, so each child's estimate needs one rank-one update of ``G``:
``G' = G + (a'_j+ - a_j+) W_l[j] + (a'_j- - a_j-) W_u[j]``. The score of ``j`` is the worse
child's gain ``min_c (estimate_c - estimate)``; every neuron and both children are scored in
one batched computation per node (chunked over neurons to bound memory). The scores only
steer the search; soundness never depends on them.

Products ``p = x * y`` (elementwise, one shape): ``Lambda`` at ``p`` through the planes gives
coefficients ``a_x``, ``a_y`` on both factors and the bias ``beta``; both factors take their
shortcut (``G = a_x+ W^x_l + a_x- W^x_u + a_y+ W^y_l + a_y- W^y_u``), and splitting ``x_j`` rebuilds
the planes of ``p_j`` on the child box, a rank-two update of ``G`` (rows ``j`` of both factors'
shortcuts), scored like the rank-one case (:func:`product_node_scores`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine, Bounds
from genbab.model.graph import Node

MAX_SHORTCUT_BYTES = 256e6  # per node: [2, n, n_inputs] float64
CHUNK_ELEMENTS = 4e6


@dataclass(frozen=True)
class Shortcut:
    """Root linear bounds of one node: ``W_l x + c_l <= z <= W_u x + c_u`` (flat ``[n, n_in]``, ``[n]``)."""

    W_l: torch.Tensor
    c_l: torch.Tensor
    W_u: torch.Tensor
    c_u: torch.Tensor


def root_shortcuts(engine: BoundEngine, names: list[str], box: Box, bounds: Bounds,
                   deadline: float | None = None) -> dict[str, Shortcut]:
    """CROWN linear bounds (rows ``+e_j`` and ``-e_j``) of every named node over the root box
    (``box.batch == 1``), skipping nodes whose shortcut would exceed ``MAX_SHORTCUT_BYTES``."""
    n_in = math.prod(engine.graph.input_shape)
    out = {}
    for name in names:
        shape = engine.shapes[name]
        n = math.prod(shape)
        if 2 * n * n_in * 8 > MAX_SHORTCUT_BYTES or name == engine.graph.input_name:
            continue
        eye = torch.eye(n, dtype=engine.dtype, device=engine.device)
        A = torch.cat([eye, -eye]).reshape(1, 2 * n, *shape)
        with torch.no_grad():
            A_in, bias = engine.backward(name, A, bounds)
        if A_in is None:
            continue
        A_in = A_in.reshape(2 * n, n_in)
        bias = bias.reshape(2 * n)
        out[name] = Shortcut(A_in[:n], bias[:n], -A_in[n:], -bias[n:])
    return out


def _concretize(G: torch.Tensor, center: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``min_x G x`` over the box: ``G x0 - |G| eps`` (sum over the last axis)."""
    return (G * center).sum(-1) - (G.abs() * radius).sum(-1)


def node_scores(engine: BoundEngine, reader: Node, shortcut: Shortcut, lam: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor, points: torch.Tensor, box: Box, top_k: int | None = None) -> torch.Tensor:
    """``[D, n]`` worst-child estimated gains of splitting each neuron of ``reader``'s input at ``points``.

    ``lam``: ``[D, n]`` coefficient of the best row at ``reader``'s output; ``lo``/``hi``/``points``: ``[D, n]``.
    With ``top_k``, only the ``top_k`` neurons with the highest cheap upper bound of the score
    (:func:`_score_upper_bounds`) are scored exactly; the others get ``-inf``."""
    op = engine.rules[reader.name].op
    D, n = lam.shape
    lam_p, lam_n = lam.clamp(min=0), lam.clamp(max=0)

    def coeffs(l, u):
        """(a, beta): coefficient on z and per-neuron bias of ``Lambda h(z)`` with lines on [l, u]."""
        lines = engine.relax(op, l, u)
        a = lam_p * lines.slope_lower + lam_n * lines.slope_upper
        beta = lam_p * lines.bias_lower + lam_n * lines.bias_upper
        return a, torch.where(lam == 0, torch.zeros_like(beta), beta)

    a, beta = coeffs(lo, hi)
    a_p, a_n = a.clamp(min=0), a.clamp(max=0)
    G = a_p @ shortcut.W_l + a_n @ shortcut.W_u  # [D, n_in]
    center = box.center.reshape(D, -1).to(G.dtype)
    radius = box.radius.reshape(D, -1).to(G.dtype)
    base = _concretize(G, center, radius)
    children = []
    for c_lo, c_hi in ((lo, points), (points, hi)):
        a_c, beta_c = coeffs(c_lo, c_hi)
        d_p, d_n = a_c.clamp(min=0) - a_p, a_c.clamp(max=0) - a_n  # [D, n]
        d_const = d_p * shortcut.c_l + d_n * shortcut.c_u + (beta_c - beta)
        children.append((d_p, d_n, torch.nan_to_num(d_const, nan=-torch.inf)))
    if top_k is not None and top_k < n:
        bound = _score_upper_bounds(shortcut, children, center, radius)
        idx = torch.topk(bound, top_k, dim=1).indices  # [D, k]
        exact = _exact_scores(shortcut, children, G, base, center, radius, idx)
        return torch.full((D, n), -torch.inf, dtype=G.dtype, device=G.device).scatter(1, idx, exact)
    return _exact_scores(shortcut, children, G, base, center, radius, None)


def _exact_scores(shortcut: Shortcut, children, G, base, center, radius, idx: torch.Tensor | None) -> torch.Tensor:
    """Worst-child gains by the rank-one updates of ``G`` for every neuron (``idx`` None) or for
    the neurons ``idx`` ``[D, k]`` of each domain."""
    D = G.shape[0]
    score = None
    for d_p, d_n, d_const in children:
        if idx is None:
            rows = torch.arange(d_p.shape[1], device=d_p.device).expand(D, -1)  # only its width is used
        else:
            rows = idx
            d_p, d_n, d_const = (t.gather(1, idx) for t in (d_p, d_n, d_const))
        k = rows.shape[1]
        chunk = max(1, int(CHUNK_ELEMENTS // max(1, D * G.shape[1])))
        gains = []
        for s in range(0, k, chunk):
            e = slice(s, s + chunk)
            r = e if idx is None else rows[:, e]  # all neurons: broadcast the rows instead of gathering
            G_new = G.unsqueeze(1) + d_p[:, e, None] * shortcut.W_l[r] + d_n[:, e, None] * shortcut.W_u[r]
            gains.append(_concretize(G_new, center.unsqueeze(1), radius.unsqueeze(1)) - base.unsqueeze(1))
        gain = (torch.cat(gains, dim=1) + d_const).nan_to_num(nan=-torch.inf)
        score = gain if score is None else torch.minimum(score, gain)
    return score


def _score_upper_bounds(shortcut: Shortcut, children, center: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``[D, n]`` upper bounds of the worst-child gains, without the rank-one updates: a child's gain
    ``delta.x0 - (|G + delta| - |G|).eps + const`` with ``delta = d_p W_l[j] + d_n W_u[j]`` is at most
    ``d_p (W_l x0)_j + d_n (W_u x0)_j + |d_p| (|W_l| eps)_j + |d_n| (|W_u| eps)_j + const``
    (triangle inequality)."""
    lin_l, lin_u = center @ shortcut.W_l.T, center @ shortcut.W_u.T  # [D, n]
    rad_l, rad_u = radius @ shortcut.W_l.abs().T, radius @ shortcut.W_u.abs().T
    bound = None
    for d_p, d_n, d_const in children:
        b = d_p * lin_l + d_n * lin_u + d_p.abs() * rad_l + d_n.abs() * rad_u + d_const
        b = b.nan_to_num(nan=-torch.inf)
        bound = b if bound is None else torch.minimum(bound, b)
    return bound


def product_node_scores(engine: BoundEngine, reader: Node, split_x: bool, shortcuts: tuple[Shortcut, Shortcut],
                        lam: torch.Tensor, bounds_x: tuple[torch.Tensor, torch.Tensor],
                        bounds_y: tuple[torch.Tensor, torch.Tensor], points: torch.Tensor, box: Box,
                        top_k: int | None = None) -> torch.Tensor:
    """``[D, n]`` worst-child estimated gains of splitting each neuron of one factor of the
    elementwise product ``reader`` (``split_x``: the factor ``x``, else ``y``) at ``points``.

    ``shortcuts``: ``(x's, y's)``; ``lam``: ``[D, n]`` coefficient of the best row at the product;
    ``bounds_x`` / ``bounds_y``: ``[D, n]`` factor bounds; ``points``: ``[D, n]`` in the split factor.
    With ``top_k`` only the ``top_k`` neurons of highest cheap upper bound are scored exactly."""
    relax = engine.rules[reader.name].product.relax
    lam_p, lam_n = lam.clamp(min=0), lam.clamp(max=0)
    sx, sy = shortcuts

    def coeffs(lx, ux, ly, uy):
        """(a_x, a_y, beta) of ``Lambda p`` with planes on the box."""
        planes = relax(lx, ux, ly, uy)
        (cxl, cyl, bl), (cxu, cyu, bu) = planes.lower, planes.upper
        beta = lam_p * bl + lam_n * bu
        return (lam_p * cxl + lam_n * cxu, lam_p * cyl + lam_n * cyu,
                torch.where(lam == 0, torch.zeros_like(beta), beta))

    (lx, ux), (ly, uy) = bounds_x, bounds_y
    a_x, a_y, beta = coeffs(lx, ux, ly, uy)
    parts = ((a_x.clamp(min=0), a_x.clamp(max=0), sx), (a_y.clamp(min=0), a_y.clamp(max=0), sy))
    G = sum(p @ sc.W_l + n @ sc.W_u for p, n, sc in parts)  # [D, n_in]
    D = G.shape[0]
    center = box.center.reshape(D, -1).to(G.dtype)
    radius = box.radius.reshape(D, -1).to(G.dtype)
    base = _concretize(G, center, radius)
    children = []
    for side in (0, 1):
        if split_x:
            box_c = (lx, points, ly, uy) if side == 0 else (points, ux, ly, uy)
        else:
            box_c = (lx, ux, ly, points) if side == 0 else (lx, ux, points, uy)
        c_x, c_y, beta_c = coeffs(*box_c)
        terms, d_const = [], beta_c - beta
        for a_c, (p, n, sc) in zip((c_x, c_y), parts):
            d_p, d_n = a_c.clamp(min=0) - p, a_c.clamp(max=0) - n
            terms.append((d_p, d_n, sc))
            d_const = d_const + d_p * sc.c_l + d_n * sc.c_u
        children.append((terms, torch.nan_to_num(d_const, nan=-torch.inf)))
    n_neurons = lam.shape[1]
    idx = None
    if top_k is not None and top_k < n_neurons:
        bound = None
        for terms, d_const in children:
            b = d_const.clone()
            for d_p, d_n, sc in terms:
                b = b + d_p * (center @ sc.W_l.T) + d_n * (center @ sc.W_u.T)
                b = b + d_p.abs() * (radius @ sc.W_l.abs().T) + d_n.abs() * (radius @ sc.W_u.abs().T)
            b = b.nan_to_num(nan=-torch.inf)
            bound = b if bound is None else torch.minimum(bound, b)
        idx = torch.topk(bound, top_k, dim=1).indices
    rows = torch.arange(n_neurons, device=G.device).expand(D, -1) if idx is None else idx
    score = None
    for terms, d_const in children:
        k = rows.shape[1]
        chunk = max(1, int(CHUNK_ELEMENTS // max(1, D * G.shape[1])))
        gains = []
        for s in range(0, k, chunk):
            r = rows[:, s:s + chunk]  # [D, c]
            G_new = G.unsqueeze(1).expand(-1, r.shape[1], -1)
            for d_p, d_n, sc in terms:
                dp, dn = d_p.gather(1, r), d_n.gather(1, r)
                G_new = G_new + dp[..., None] * sc.W_l[r] + dn[..., None] * sc.W_u[r]
            gains.append(_concretize(G_new, center.unsqueeze(1), radius.unsqueeze(1)) - base.unsqueeze(1))
        gain = (torch.cat(gains, dim=1) + d_const.gather(1, rows)).nan_to_num(nan=-torch.inf)
        score = gain if score is None else torch.minimum(score, gain)
    if idx is None:
        return score
    return torch.full((D, n_neurons), -torch.inf, dtype=G.dtype, device=G.device).scatter(1, idx, score)
