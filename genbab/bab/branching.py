"""Choosing which neuron to split, and where.

Intercept (BaBSR-like) score: a split of neuron ``z_j`` feeding the elementwise op ``h`` can at
most remove the looseness of ``h``'s relaxation there, the largest vertical gap between its
upper and lower line on ``[l_j, u_j]`` (at an endpoint, the lines being straight), weighted by
how much the bound depends on ``h(z_j)``: ``score_j = |Lambda_j| * gap_j`` with ``Lambda`` the
coefficient of the domain's best row at ``h`` from the last backward pass. The best-scoring
neuron over all candidate nodes is split.

Input split (small inputs): ``|A_i| (u_i - l_i) / 2``, the part of the concretisation gap
input ``i`` is responsible for, with ``A`` the bound's coefficient on the input.

Split point: the op's natural point (``0`` for ReLU-like and S-shaped ops) when it lies inside
the interval, else the midpoint.
"""

from __future__ import annotations

import torch

from genbab.bounds.engine import BoundEngine, Bounds
from genbab.model.graph import Node

GAP_CAP = 1e30
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


def elementwise_gap(engine: BoundEngine, node: Node, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Largest vertical distance between the upper and lower line of ``node`` on ``[lo, hi]``."""
    lines = engine.rules[node.name].op.relax(lo, hi)
    ds, db = lines.slope_upper - lines.slope_lower, lines.bias_upper - lines.bias_lower
    gap = torch.maximum(ds * lo + db, ds * hi + db)
    return gap.nan_to_num(nan=GAP_CAP, posinf=GAP_CAP).clamp(min=0, max=GAP_CAP)


def neuron_scores(engine: BoundEngine, name: str, readers: list[Node], bounds: Bounds,
                  record: dict[str, torch.Tensor], best_row: torch.Tensor) -> torch.Tensor:
    """``[D, n]`` scores of the neurons of candidate node ``name``."""
    lo, hi = bounds[name]
    D = lo.shape[0]
    if name == engine.graph.input_name:  # input split: the concretisation term |A_i| (u_i - l_i) / 2
        A = record.get(name)
        if A is None:
            return torch.zeros(D, lo[0].numel(), dtype=lo.dtype)
        lam = A[torch.arange(D), best_row].reshape(D, -1).abs()
        return lam * (hi - lo).reshape(D, -1) / 2
    score = torch.zeros(D, lo[0].numel(), dtype=lo.dtype)
    for node in readers:
        A = record.get(node.name)
        if A is None or engine.rules[node.name].kind != "elementwise":
            continue
        lam = A[torch.arange(D), best_row].reshape(D, -1).abs()
        score = score + lam * elementwise_gap(engine, node, lo, hi).reshape(D, -1)
    width = (hi - lo).reshape(D, -1)
    return torch.where(width > MIN_WIDTH, score, torch.zeros_like(score))


def split_points(engine: BoundEngine, readers: list[Node], lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Where to split neurons with bounds ``[lo, hi]``: the op's natural point if inside, else the midpoint."""
    mid = (lo + hi) / 2
    natural = None
    if not readers:
        return mid
    if len(readers) == 1 and engine.rules[readers[0].name].kind == "elementwise":
        natural = engine.rules[readers[0].name].op.traits.split_point
    if natural is None:
        return mid
    inside = (lo < natural) & (natural < hi)
    return torch.where(inside, torch.full_like(mid, natural), mid)


def choose_splits(engine: BoundEngine, candidates: list[str], readers: dict[str, list[Node]], bounds: Bounds,
                  record: dict[str, torch.Tensor], best_row: torch.Tensor):
    """Per domain: (candidate index or -1, flat neuron index, split point)."""
    scores = [neuron_scores(engine, c, readers[c], bounds, record, best_row) for c in candidates]
    sizes = [s.shape[1] for s in scores]
    flat = torch.cat(scores, dim=1)
    best = flat.argmax(dim=1)
    has_split = flat.gather(1, best[:, None]).squeeze(1) > 0
    offsets = torch.tensor([0] + sizes).cumsum(0)
    node = torch.searchsorted(offsets[1:], best, right=True)
    index = best - offsets[node]
    points = torch.zeros(len(best), dtype=torch.float64)
    for c, name in enumerate(candidates):
        rows = torch.nonzero(node == c).flatten()
        if len(rows) == 0:
            continue
        lo, hi = (b.reshape(b.shape[0], -1)[rows, index[rows]] for b in bounds[name])
        natural_readers = [] if name == engine.graph.input_name else readers[name]
        points[rows] = split_points(engine, natural_readers, lo, hi).to(torch.float64)
    node = torch.where(has_split, node, torch.full_like(node, -1))
    return node, index, points
