"""Choosing which neuron to split, and where.

Intercept (BaBSR-like) score: a split of neuron ``z_j`` feeding the elementwise op ``h`` can at
most remove the looseness of ``h``'s relaxation there, the largest vertical gap between its
upper and lower line on ``[l_j, u_j]`` (at an endpoint, the lines being straight), weighted by
how much the bound depends on ``h(z_j)``: ``score_j = |Lambda_j| * gap_j`` with ``Lambda`` the
coefficient of the domain's best row at ``h`` from the last backward pass. The best-scoring
neuron over all candidate nodes is split.

Products ``z = x y`` (``Mul`` / ``MatMul`` of two variables): a factor neuron ``x_j`` is
responsible for the McCormick gap ``g_p`` (largest vertical distance between the upper and lower
plane over the box) of every product ``p`` it enters; splitting it at the midpoint halves that
gap (exactly so for the default planes, whose gap is ``wx wy / 2``), so
``score_j = sum_p |Lambda_p| g_p / 2`` with ``Lambda`` the coefficient at ``z`` (``MatMul``: the
products ``p_ijk``, ``Lambda`` of ``z_ik``; summed as a backward step with planes ``(g, g, 0)``).
A factor ``a = h(s)`` made by a monotone elementwise op passes its product score on to ``s``:
splitting ``s`` shrinks ``a``'s interval as well (the interval step is exact for monotone ``h``)
and also tightens ``h``'s own lines, while a split of ``a`` alone leaves ``h``'s input interval
(hence ``h``'s lines) as it was.

Input split (small inputs): ``max(|A_i|, f max_j |A_j|) (u_i - l_i) / 2``, the part of the
concretisation gap input ``i`` is responsible for, with ``A`` the bound's coefficient on the
input, floored at a fraction ``f`` (``BabConfig.input_coeff_floor``) of the largest: an input
that enters only through an even function (``cos`` on a box centred near 0) gets a coefficient
near 0 although splitting it tightens that function's relaxation, and without the floor it is
never split. Where every coefficient is 0 the width relative to the root box decides.

BBPS (default, :mod:`genbab.bab.bbps`): the estimated worst-child gain of each split, through
the saved root linear bounds as shortcuts; the intercept score breaks ties where BBPS sees none.

Split point: ReLU-like ops at their kink (``0``); smooth ops at the pre-optimised point of the
op's lookup table (``points="opt"``) or the midpoint (``"uniform"``, and ops without a table);
a factor of an elementwise product (``Mul``, same shapes) at the product table's point
(:func:`~genbab.bab.branch_points.factor_split_point`), other products' factors at the midpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genbab.bab.bbps import Shortcut, node_scores, product_node_scores
from genbab.bab.branch_points import factor_split_point, split_point
from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine, Bounds
from genbab.bounds.nonlinear import bilinear_backward, matmul_backward
from genbab.model.graph import Node
from genbab.ops.bilinear import product_gap

GAP_CAP = 1e30
BBPS_TOP_K = 16  # per node and domain, neurons scored exactly by BBPS (chosen by a cheap upper bound)
MIN_WIDTH = 1e-6


def consumers(engine: BoundEngine, candidates: list[str]) -> dict[str, list[Node]]:
    """The nonlinear nodes reading each candidate node."""
    out: dict[str, list[Node]] = {c: [] for c in candidates}
    for node in engine.nodes:
        if engine.rules[node.name].kind != "affine":
            for name in set(node.inputs):
                if name in out:
                    out[name].append(node)
    return out


def splits_reader(engine: BoundEngine, node: Node) -> bool:
    """Whether branch and bound may split the inputs of the nonlinear ``node`` (its op's
    ``splittable`` trait: elementwise ops and products)."""
    rule = engine.rules[node.name]
    if rule.kind == "elementwise":
        return rule.op.traits.splittable
    return rule.kind == "bilinear" and rule.product.splittable


def elementwise_gap(engine: BoundEngine, node: Node, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Largest vertical distance between the upper and lower line of ``node`` on ``[lo, hi]``."""
    lines = engine.relax(engine.rules[node.name].op, lo, hi)
    ds, db = lines.slope_upper - lines.slope_lower, lines.bias_upper - lines.bias_lower
    gap = torch.maximum(ds * lo + db, ds * hi + db)
    return gap.nan_to_num(nan=GAP_CAP, posinf=GAP_CAP).clamp(min=0, max=GAP_CAP)


def product_factor_scores(engine: BoundEngine, node: Node, name: str, bounds: Bounds,
                          lam: torch.Tensor) -> torch.Tensor:
    """``[D, n]`` score ``sum_p |Lambda_p| g_p / 2`` of each neuron of ``name`` as a factor of the
    product ``node`` (module docstring); ``lam``: ``[D, *out]`` coefficient of the best row at ``z``."""
    lx, ux, ly, uy, ix, iy = engine.bilinear_operands(node, bounds)
    product = engine.rules[node.name].product
    operands = product.expand(lx, ux, ly, uy)
    gap = product_gap(product.relax(*operands), *operands)
    gap = (gap.nan_to_num(nan=GAP_CAP, posinf=GAP_CAP).clamp(min=0, max=GAP_CAP) / 2).to(lam.dtype).unsqueeze(1)
    zero = torch.zeros_like(gap)
    step = matmul_backward if product.contraction else bilinear_backward
    x_shape, y_shape = engine.shapes[node.inputs[ix]], engine.shapes[node.inputs[iy]]
    with torch.no_grad():
        s_x, s_y, _ = step(lam.abs().unsqueeze(1), ((gap, gap, zero), (zero, zero, zero)), x_shape, y_shape)
    D = lam.shape[0]
    score = torch.zeros(D, math.prod(engine.shapes[name]), dtype=lam.dtype, device=lam.device)
    for i, s_i in ((ix, s_x), (iy, s_y)):
        if node.inputs[i] == name:
            score = score + s_i.reshape(D, -1)
    return score.clamp(max=GAP_CAP)


def monotone_products(engine: BoundEngine, node_readers: list[Node],
                      readers: dict[str, list[Node]]) -> list[tuple[Node, list[Node]]]:
    """``(h, products)`` for each monotone elementwise reader ``h`` of a candidate whose output is a
    factor of the product nodes ``products`` (``readers``: every candidate's readers)."""
    out = []
    for h in node_readers:
        rule = engine.rules[h.name]
        if rule.kind != "elementwise" or rule.op.traits.monotone is None or h.name not in readers:
            continue
        prods = [p for p in readers[h.name] if engine.rules[p.name].product is not None and splits_reader(engine, p)]
        if prods and engine.shapes[h.name] == engine.shapes[h.inputs[0]]:
            out.append((h, prods))
    return out


def _product_scores(engine: BoundEngine, factor: str, products: list[Node], bounds: Bounds,
                    record: dict[str, torch.Tensor], best_row: torch.Tensor, D: int) -> torch.Tensor | None:
    """Sum of :func:`product_factor_scores` of ``factor`` over ``products`` (None: no coefficient)."""
    total = None
    for node in products:
        A = record.get(node.name)
        if A is None:
            continue
        part = product_factor_scores(engine, node, factor, bounds, A[torch.arange(D, device=A.device), best_row])
        total = part if total is None else total + part
    return total


def neuron_scores(engine: BoundEngine, name: str, readers: list[Node], bounds: Bounds,
                  record: dict[str, torch.Tensor], best_row: torch.Tensor, products: bool = True,
                  via: list[tuple[Node, list[Node]]] = (), input_floor: float = 0.0,
                  input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[D, n]`` scores of the neurons of candidate node ``name`` (``products``: count the gaps of
    the products it is a factor of, and those passed on through the monotone readers ``via``,
    see :func:`monotone_products`)."""
    lo, hi = bounds[name]
    D = lo.shape[0]
    if name == engine.graph.input_name:  # input split: the concretisation term |A_i| (u_i - l_i) / 2
        A = record.get(name)
        if A is None:
            return torch.zeros(D, lo[0].numel(), dtype=lo.dtype, device=lo.device)
        return input_scores(A[torch.arange(D, device=A.device), best_row].reshape(D, -1),
                            (hi - lo).reshape(D, -1), input_floor, input_scale)
    score = torch.zeros(D, lo[0].numel(), dtype=lo.dtype, device=lo.device)
    for node in readers:
        A = record.get(node.name)
        kind = engine.rules[node.name].kind
        if A is None:
            continue
        if not splits_reader(engine, node):
            continue
        if kind == "elementwise":
            lam = A[torch.arange(D, device=A.device), best_row].reshape(D, -1).abs()
            score = score + lam * elementwise_gap(engine, node, lo, hi).reshape(D, -1)
        elif kind == "bilinear" and products:
            lam = A[torch.arange(D, device=A.device), best_row]
            score = score + product_factor_scores(engine, node, name, bounds, lam)
    score = score + _passed_on(engine, via if products else (), bounds, record, best_row, D, score)
    width = (hi - lo).reshape(D, -1)
    return torch.where(width > MIN_WIDTH, score, torch.zeros_like(score))


def input_scores(A: torch.Tensor, width: torch.Tensor, floor: float,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[D, n]`` input-split scores ``max(|A_i|, floor max_j |A_j|) w_i / 2`` (module docstring)
    from the best row's input coefficients ``A`` and the box widths ``w`` ``[D, n]``; a domain
    whose coefficients are all 0 (or not finite) scores ``w_i / scale_i`` (``scale``: the root
    box's widths, 1 when None), so that it is still split, along its relatively widest input."""
    lam = A.abs().nan_to_num(nan=0.0, posinf=0.0)
    top = lam.amax(dim=1, keepdim=True)
    score = torch.maximum(lam, floor * top) * width / 2
    relative = width / (scale.reshape(1, -1).to(width.dtype).clamp_min(1e-300) if scale is not None else 1.0)
    return torch.where(top > 0, score, relative)


def _passed_on(engine: BoundEngine, via, bounds: Bounds, record: dict[str, torch.Tensor], best_row: torch.Tensor,
               D: int, like: torch.Tensor) -> torch.Tensor:
    """``[D, n]`` product scores of the monotone readers' outputs ``via`` (zeros when none)."""
    out = torch.zeros_like(like)
    for h, prods in via:
        part = _product_scores(engine, h.name, prods, bounds, record, best_row, D)
        if part is not None:
            out = out + part.reshape(D, -1).to(out.dtype)
    return out


def split_points(engine: BoundEngine, readers: list[Node], lo: torch.Tensor, hi: torch.Tensor,
                 mode: str = "opt", name: str | None = None, bounds: Bounds | None = None) -> torch.Tensor:
    """Where to split neurons with bounds ``[lo, hi]`` (``[D, n]``) of node ``name`` read by
    ``readers``: ReLU-like ops at their kink, smooth ops at the lookup table's point
    (``mode="opt"``) or the midpoint (``"uniform"``, inputs and ops without a table); a factor of
    one elementwise product (same shapes, the other factor's ``bounds`` given) at the product
    table's point; see :mod:`genbab.bab.branch_points`."""
    if len(readers) == 1 and engine.rules[readers[0].name].kind == "elementwise":
        return split_point(engine.rules[readers[0].name].op, lo, hi, mode=mode).to(lo.dtype)
    if len(readers) == 1 and bounds is not None and _elementwise_product(engine, readers[0]):
        node = readers[0]
        other = [i for i in node.inputs[:2] if i != name]
        if len(other) == 1:  # x * y with x = name (x * x keeps the midpoint)
            lo_y, hi_y = (b.reshape(lo.shape) for b in bounds[other[0]])
            return factor_split_point(lo, hi, lo_y, hi_y, mode=mode,
                                      key=engine.rules[node.name].product.table).to(lo.dtype)
    return (lo + hi) / 2


def _elementwise_product(engine: BoundEngine, node: Node) -> bool:
    """A product without contraction (``Mul``) whose factors and output all have one shape."""
    product = engine.rules[node.name].product
    if product is None or product.contraction or len(node.inputs) != 2:
        return False
    return engine.shapes[node.inputs[0]] == engine.shapes[node.inputs[1]] == engine.shapes[node.name]


@dataclass(frozen=True)
class BranchingContext:
    """What a branching decision may read besides the domains' bounds."""

    method: str = "bbps"  # "bbps" | "babsr"
    points: str = "opt"  # "opt" | "uniform"
    shortcuts: dict[str, Shortcut] | None = None
    box: Box | None = None
    products: bool = True  # split the factors of products too (False: elementwise inputs only)
    input_floor: float = 0.0  # input splits: coefficient floor, a fraction of the largest (input_scores)
    input_scale: torch.Tensor | None = None  # input splits: the root box's widths [n]


def candidate_scores(engine: BoundEngine, name: str, readers: list[Node], bounds: Bounds,
                     record: dict[str, torch.Tensor], best_row: torch.Tensor, ctx: BranchingContext,
                     points: torch.Tensor, via: list[tuple[Node, list[Node]]] = ()) -> torch.Tensor:
    """``[D, n]`` scores of one candidate node: BBPS where a shortcut and a single reader exist,
    elementwise or an elementwise product whose other factor has a shortcut too (falling back to
    the intercept score where BBPS expects no gain), else BaBSR."""
    babsr = neuron_scores(engine, name, readers, bounds, record, best_row, ctx.products, via, ctx.input_floor,
                          ctx.input_scale)
    shortcut = (ctx.shortcuts or {}).get(name)
    if (ctx.method != "bbps" or shortcut is None or len(readers) != 1 or ctx.box is None
            or readers[0].name not in record):
        return babsr
    reader = readers[0]
    lo, hi = (b.reshape(b.shape[0], -1) for b in bounds[name])
    D = lo.shape[0]
    lam = record[reader.name][torch.arange(D, device=lo.device), best_row].reshape(D, -1)
    if engine.rules[reader.name].kind == "elementwise":
        gain = node_scores(engine, reader, shortcut, lam, lo, hi, points, ctx.box, top_k=BBPS_TOP_K)
        if ctx.products and via:  # plus the downstream products' share (an optimistic estimate of their gain)
            passed = _passed_on(engine, via, bounds, record, best_row, D, torch.zeros_like(gain))
            gain = torch.where(passed > 0, torch.where(gain > -torch.inf, gain, 0.0) + passed, gain)
    elif ctx.products and _elementwise_product(engine, reader) and reader.inputs[0] != reader.inputs[1]:
        other = reader.inputs[1] if reader.inputs[0] == name else reader.inputs[0]
        if other not in (ctx.shortcuts or {}):
            return babsr
        split_x = reader.inputs[0] == name
        pair = (shortcut, ctx.shortcuts[other]) if split_x else (ctx.shortcuts[other], shortcut)
        mine, theirs = (lo, hi), tuple(b.reshape(D, -1) for b in bounds[other])
        bx, by = (mine, theirs) if split_x else (theirs, mine)
        gain = product_node_scores(engine, reader, split_x, pair, lam, bx, by, points, ctx.box, top_k=BBPS_TOP_K)
    else:
        return babsr
    width_ok = (hi - lo) > MIN_WIDTH
    # BBPS gains rank first; where BBPS sees no gain the intercept score (scaled far below) decides
    fallback = babsr / (1 + babsr.amax(dim=1, keepdim=True)) * 1e-9
    return torch.where(width_ok & (gain > 0), gain.clamp(max=GAP_CAP), fallback)


def choose_splits(engine: BoundEngine, candidates: list[str], readers: dict[str, list[Node]], bounds: Bounds,
                  record: dict[str, torch.Tensor], best_row: torch.Tensor,
                  ctx: BranchingContext = BranchingContext()):
    """Per domain: (candidate index or -1, flat neuron index, split point)."""
    all_points, scores = [], []
    for c in candidates:
        lo, hi = (b.reshape(b.shape[0], -1) for b in bounds[c])
        node_readers = [] if c == engine.graph.input_name else readers[c]
        pts = split_points(engine, node_readers, lo, hi, ctx.points, c, bounds)
        all_points.append(pts)
        via = monotone_products(engine, node_readers, readers) if ctx.products else []
        scores.append(candidate_scores(engine, c, node_readers, bounds, record, best_row, ctx, pts, via))
    sizes = [s.shape[1] for s in scores]
    flat = torch.cat(scores, dim=1)
    best = flat.argmax(dim=1)
    has_split = flat.gather(1, best[:, None]).squeeze(1) > 0
    offsets = torch.tensor([0] + sizes, device=flat.device).cumsum(0)
    node = torch.searchsorted(offsets[1:], best, right=True)
    index = best - offsets[node]
    points = torch.cat(all_points, dim=1).gather(1, best[:, None]).squeeze(1).to(torch.float64)
    node = torch.where(has_split, node, torch.full_like(node, -1))
    return node, index, points
