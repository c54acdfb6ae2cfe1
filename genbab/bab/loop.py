"""The branch-and-bound loop for one case ``C y <= d`` over one input box.

Bound the root; then repeatedly take the ``batch_size / 2`` open domains with the lowest
bound, split each at its chosen neuron, bound all children in one batched CROWN pass (split
constraints clamp the intermediate bounds, so each child's relaxations are rebuilt on its
smaller intervals), drop the proved children and keep the rest. Intermediate bounds come from
CROWN once, at the root; below it they are the root's, tightened by the split constraints and an
IBP pass (each child costs one interval pass and one backward pass from the output). ``unsat`` when no domain is
open, ``timeout`` at the deadline, ``unknown`` when a domain cannot be split further or the
domain limit is reached. A domain whose bounds are contradictory (some ``lower > upper``) is
empty, hence proved; a NaN bound never proves anything.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from genbab.bab.branching import choose_splits, consumers
from genbab.bab.domains import DomainBatch, root_domains, split
from genbab.bounds.alpha import AlphaConfig, optimize_rows
from genbab.bounds.engine import BoundEngine, BoundsTimeout


@dataclass(frozen=True)
class BabConfig:
    batch_size: int = 64
    max_domains: int = 100_000
    alpha_iterations: int = 8
    input_split_max_dims: int = 32  # also split the input box when it has at most this many dims


@dataclass
class BabResult:
    status: str
    visited: int = 0
    open: int = 0
    max_depth: int = 0
    history: list[tuple[float, float, int]] = field(default_factory=list)  # (seconds, worst open bound, open)


class BranchAndBound:
    """Proves ``min_{x in box} max_j (C f(x) - d)_j > 0`` by splitting nonlinearity inputs."""

    def __init__(self, engine: BoundEngine, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                 d: torch.Tensor, config: BabConfig = BabConfig()):
        self.engine, self.config = engine, config
        self.lower, self.upper = lower, upper
        self.C, self.d = C.to(engine.dtype), d.to(engine.dtype)
        self.input = engine.graph.input_name
        self.candidates = sorted(n for n in engine.needs_bounds if n != self.input)
        if math.prod(engine.graph.input_shape) <= config.input_split_max_dims:
            self.candidates.append(self.input)
        self.readers = consumers(engine, self.candidates)
        self.start = time.monotonic()
        self.root_bounds = None  # CROWN bounds of the root, reused (and refreshed by IBP) below it
        self.alpha = AlphaConfig(iterations=config.alpha_iterations, lr=0.2, stop_when_positive=True)

    def bound(self, domains: DomainBatch, deadline: float) -> DomainBatch:
        """Bound every domain (one batched pass) and choose each one's next split."""
        D = len(domains)
        lower, upper = self.lower.expand(D, -1), self.upper.expand(D, -1)
        if self.input in domains.lower:  # input splits shrink the box itself
            lower = torch.maximum(lower, domains.lower[self.input].reshape(D, -1))
            upper = torch.minimum(upper, domains.upper[self.input].reshape(D, -1))
        box = self.engine.box(lower, upper)
        splits = {k: v for k, v in domains.clamps().items() if k != self.input}
        with torch.no_grad():
            if self.root_bounds is None:
                bounds = self.engine.intermediate_bounds(box, "crown", deadline, clamps=domains.clamps())
                self.root_bounds = bounds
            else:
                bounds = self.engine.intermediate_bounds(box, "ibp", deadline, clamps=domains.clamps(),
                                                         base=self.root_bounds)
        record: dict[str, torch.Tensor] = {}
        C, d = self.C.expand(D, -1, -1), self.d.expand(D, -1)
        rows = optimize_rows(self.engine, C, box, bounds, self.alpha, offset=d, deadline=deadline, record=record,
                             splits=splits)
        rows = rows.nan_to_num(nan=-torch.inf)
        lb, best_row = rows.max(dim=1)
        empty = (box.lower > box.upper).reshape(D, -1).any(dim=1)
        for lo, hi in bounds.values():
            empty |= (lo > hi).reshape(D, -1).any(dim=1)
        lb = torch.maximum(lb.to(torch.float64), domains.lb)  # a child lies inside its parent
        lb = torch.where(empty, torch.full_like(lb, torch.inf), lb)
        node, index, point = choose_splits(self.engine, self.candidates, self.readers, bounds, record, best_row)
        return DomainBatch(domains.lower, domains.upper, lb.to(torch.float64), domains.depth, node, index, point)

    def run(self, deadline: float) -> BabResult:
        result = BabResult("timeout")
        shapes = {c: self.engine.shapes[c] for c in self.candidates}
        to_bound = root_domains(shapes, self.engine.dtype)
        open_domains = to_bound.select(torch.zeros(0, dtype=torch.int64))
        try:
            while True:
                bounded = self.bound(to_bound, deadline)
                result.visited += len(bounded)
                result.max_depth = max(result.max_depth, int(bounded.depth.max()))
                unproved = bounded.select(torch.nonzero(~(bounded.lb > 0)).flatten())
                if bool((unproved.split_node < 0).any()):
                    return self._finish(result, "unknown", open_domains.cat(unproved))
                open_domains = open_domains.cat(unproved)
                self._log(result, open_domains)
                if len(open_domains) == 0:
                    return self._finish(result, "unsat", open_domains)
                if len(open_domains) > self.config.max_domains:
                    return self._finish(result, "unknown", open_domains)
                if time.monotonic() >= deadline:
                    return self._finish(result, "timeout", open_domains)
                order = torch.argsort(open_domains.lb)
                take = max(1, self.config.batch_size // 2)
                parents, open_domains = open_domains.select(order[:take]), open_domains.select(order[take:])
                to_bound = split(parents, self.candidates)
        except BoundsTimeout:
            return self._finish(result, "timeout", open_domains)

    def _log(self, result: BabResult, open_domains: DomainBatch) -> None:
        worst = float(open_domains.lb.min()) if len(open_domains) else float("inf")
        result.history.append((round(time.monotonic() - self.start, 3), worst, len(open_domains)))

    def _finish(self, result: BabResult, status: str, open_domains: DomainBatch) -> BabResult:
        result.status, result.open = status, len(open_domains)
        result.history = result.history[-50:]
        return result
