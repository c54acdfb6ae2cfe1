"""Choosing which neuron to split, and where.

Intercept (BaBSR-like) score: a split of neuron ``z_j`` feeding the elementwise op ``h`` can at
most remove the looseness of ``h``'s relaxation there, the largest vertical gap between its
upper and lower line on ``[l_j, u_j]`` (at an endpoint, the lines being straight), weighted by
how much the bound depends on ``h(z_j)``: ``score_j = |Lambda_j| * gap_j`` with ``Lambda`` the
coefficient of the domain's best row at ``h`` from the last backward pass. The best-scoring
neuron over all candidate nodes is split.

Input split (small inputs): ``|A_i| (u_i - l_i) / 2``, the part of the concretisation gap
input ``i`` is responsible for, with ``A`` the bound's coefficient on the input.

BBPS (default, :mod:`genbab.bab.bbps`): the estimated worst-child gain of each split, through
the saved root linear bounds as shortcuts; the intercept score breaks ties where BBPS sees none.

Split point: ReLU-like ops at their kink (``0``); smooth ops at the pre-optimised point of the
op's lookup table (``points="opt"``) or the midpoint (``"uniform"``, and ops without a table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genbab.bab.bbps import Shortcut, node_scores
from genbab.bab.branch_points import split_point
from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine, Bounds
from genbab.model.graph import Node

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


def elementwise_gap(engine: BoundEngine, node: Node, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Largest vertical distance between the upper and lower line of ``node`` on ``[lo, hi]``."""
    lines = engine.relax(engine.rules[node.name].op, lo, hi)
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
            return torch.zeros(D, lo[0].numel(), dtype=lo.dtype, device=lo.device)
        lam = A[torch.arange(D, device=A.device), best_row].reshape(D, -1).abs()
        return lam * (hi - lo).reshape(D, -1) / 2
    score = torch.zeros(D, lo[0].numel(), dtype=lo.dtype, device=lo.device)
    for node in readers:
        A = record.get(node.name)
        if A is None or engine.rules[node.name].kind != "elementwise":
            continue
        lam = A[torch.arange(D, device=A.device), best_row].reshape(D, -1).abs()
        score = score + lam * elementwise_gap(engine, node, lo, hi).reshape(D, -1)
    width = (hi - lo).reshape(D, -1)
    return torch.where(width > MIN_WIDTH, score, torch.zeros_like(score))


def split_points(engine: BoundEngine, readers: list[Node], lo: torch.Tensor, hi: torch.Tensor,
                 mode: str = "opt") -> torch.Tensor:
    """Where to split neurons with bounds ``[lo, hi]`` read by ``readers``: ReLU-like ops at their
    kink, smooth ops at the lookup table's point (``mode="opt"``) or the midpoint (``"uniform"``,
    inputs, products and ops without a table); see :mod:`genbab.bab.branch_points`."""
    if len(readers) != 1 or engine.rules[readers[0].name].kind != "elementwise":
        return (lo + hi) / 2
    return split_point(engine.rules[readers[0].name].op, lo, hi, mode=mode).to(lo.dtype)


@dataclass(frozen=True)
class BranchingContext:
    """What a branching decision may read besides the domains' bounds."""

    method: str = "bbps"  # "bbps" | "babsr"
    points: str = "opt"  # "opt" | "uniform"
    shortcuts: dict[str, Shortcut] | None = None
    box: Box | None = None


def candidate_scores(engine: BoundEngine, name: str, readers: list[Node], bounds: Bounds,
                     record: dict[str, torch.Tensor], best_row: torch.Tensor, ctx: BranchingContext,
                     points: torch.Tensor) -> torch.Tensor:
    """``[D, n]`` scores of one candidate node: BBPS where a shortcut and a single elementwise
    reader exist (falling back to the intercept score where BBPS expects no gain), else BaBSR."""
    babsr = neuron_scores(engine, name, readers, bounds, record, best_row)
    shortcut = (ctx.shortcuts or {}).get(name)
    if (ctx.method != "bbps" or shortcut is None or len(readers) != 1 or ctx.box is None
            or engine.rules[readers[0].name].kind != "elementwise" or readers[0].name not in record):
        return babsr
    lo, hi = (b.reshape(b.shape[0], -1) for b in bounds[name])
    D = lo.shape[0]
    lam = record[readers[0].name][torch.arange(D, device=lo.device), best_row].reshape(D, -1)
    gain = node_scores(engine, readers[0], shortcut, lam, lo, hi, points, ctx.box, top_k=BBPS_TOP_K)
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
        pts = split_points(engine, node_readers, lo, hi, ctx.points)
        all_points.append(pts)
        scores.append(candidate_scores(engine, c, node_readers, bounds, record, best_row, ctx, pts))
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
