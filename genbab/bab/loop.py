"""The branch-and-bound loop for the cases ``C_k y <= d_k`` of one input box (or of several), as one
search; what differs between splitting the input box and splitting activations is a strategy
(:mod:`genbab.bab.strategy`).

A domain is proved when every case is: some row of each case has a positive lower bound
(``row_case`` maps rows to cases; one case by default). Splits serve the domain's worst case
(its best row's coefficients score them), and input clipping keeps the hull of what each case
leaves of the box. Bounding all the cases of a box together shares the intermediate bounds,
which are most of a pass's cost (lsnc: 13 cases over one box, 3 left open at the root).

Bound the root; then repeatedly take the ``batch / 2`` open domains with the lowest bound,
split each at its chosen neuron, bound all children in one batched CROWN pass (split
constraints clamp the intermediate bounds, so each child's relaxations are rebuilt on its
smaller intervals, and alpha/beta start from the parent's values), drop the proved children and
keep the rest; the worst domains of each batch are attacked from their bound minimisers
(:mod:`genbab.bab.domain_attack`, ``sat`` with a replayed witness). Intermediate bounds come
from CROWN once, at the root; below it they are the root's, tightened by the split constraints
and an IBP pass (each child costs one interval pass and one backward pass from the output).
``unsat`` when no domain is open, ``timeout`` at the deadline, ``unknown`` when a domain cannot
be split further or the domain limit is reached. The batch is the configured maximum or less,
as free memory allows (:mod:`genbab.bab.memory`), halves after an out-of-memory error, and
shrinks when the last pass's time per domain says the next would outlast ``PASS_SECONDS``. A
domain whose bounds are contradictory (some ``lower > upper``) is empty, hence proved; a NaN
bound never proves anything.

Everything lives on the engine's device (box, case rows, domains, parameters). Per pass the
loop reads back to the host only what it must decide on: the number of unproved children and
whether one of them cannot be split (one transfer), and, for the progress report, the worst open
bound and the depth (one transfer). The alpha/beta optimisation of a pass adds its own (see
:func:`genbab.bounds.alpha.optimize_rows`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import torch

from genbab.bab.branching import BranchingContext, choose_splits, consumers
from genbab.bab.clipping import clip_box
from genbab.bab.domain_attack import DomainAttack, DomainAttacker
from genbab.bab.domains import DomainBatch, root_domains, split
from genbab.bab.store import DomainStore
from genbab.bab.strategy import ActivationSplitting, InputSplitting
from genbab.bab.memory import fitting_batch, free_bytes, is_out_of_memory, pass_bytes_per_domain
from genbab.bounds import rounding
from genbab.bounds.alpha import AlphaConfig, optimize_rows
from genbab.bounds.engine import BoundEngine, BoundsTimeout


PASS_SECONDS = 3.0  # a bound pass over one batch of children should take about this long at most


@dataclass(frozen=True)
class BabConfig:
    batch_size: int = 64  # most domains per bound pass (fewer when free memory is short)
    max_domains: int = 5_000_000
    alpha_iterations: int = 8  # alpha steps per bound pass when splitting activations
    input_alpha_iterations: int = 0  # ... when splitting the input: plain CROWN, ~4x the sub-boxes per second
    input_split_max_dims: int = 24  # boxes with at most this many coordinates of positive width: split the input box only (forward.MAX_FREE: their sub-boxes get cheap forward bounds; pensieve, 32 of 96, proves faster by activation splits)
    input_batch_size: int = 16384  # domains per batch when splitting the input (larger batches: fewer, wider passes)
    input_bounds: str = "forward"  # intermediate bounds of input-split sub-boxes: "forward" | "crown"
    input_coeff_floor: float = 0.1  # input splits: |A_i| floored at this fraction of max_j |A_j| (branching.input_scores)
    input_skip_tightening: bool = True  # input splits ahead: no tightening rounds at the root (api.verify)
    tighten_unstable_only: bool = True  # root tightening rounds: rows only for neurons shaping a relaxation (alpha.shaping_neurons)
    input_threads: int = 0  # torch threads during input-split passes (wide batches gain from every core); 0: as set
    joint_cases: bool = True  # the open cases of one input box in one search (api.run_bab); False: case by case
    shared_frontier: bool = True  # input splits over several boxes: one search for all (api.run_bab_boxes)
    split_products: bool = True  # activation splits also score the factors of products (False: elementwise only)
    branching: str = "bbps"  # "bbps" | "babsr" (activation splits)
    branching_points: str = "opt"  # "opt" (lookup tables) | "uniform" (midpoints)
    memory_bytes: float = 4e9  # the open domains' split bounds may use about this much


@dataclass
class BabResult:
    status: str
    visited: int = 0
    open: int = 0
    max_depth: int = 0
    batch: int = 0  # domains per bound pass at the end (halved after each out-of-memory error)
    witness: object | None = None  # status "sat": the confirmed counterexample a domain attack found
    history: list[tuple[float, float, int]] = field(default_factory=list)  # (seconds, worst open bound, open)


class BranchAndBound:
    """Proves ``min_{x in box} max_{j in rows(k)} (C f(x) - d)_j > 0`` for every case ``k`` by
    splitting nonlinearity inputs (or the input box); ``C`` ``[S, n_out]``, ``d`` ``[S]``,
    ``row_case`` ``[S]`` the case of each row (all 0 when None).

    Several input boxes in one search (one frontier, shared batches): ``lower``/``upper``
    ``[G, n]``, ``C`` ``[G, S, n_out]``, ``d`` ``[G, S]``, the same ``row_case`` in every group.
    Each root domain is one box; a domain's rows are its group's. Only by input splitting (the
    root's intermediate bounds of one box would not hold in another)."""

    def __init__(self, engine: BoundEngine, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                 d: torch.Tensor, config: BabConfig = BabConfig(), root_bounds=None,
                 attack: DomainAttack | None = None, on_progress=None, row_case: torch.Tensor | None = None):
        self.engine, self.config = engine, config
        self.groups = lower.shape[0] if lower.dim() == 2 else 0
        self.group_lower = rounding.to_dtype_down(lower.to(engine.device), engine.dtype)  # outward: no point is lost
        self.group_upper = rounding.to_dtype_up(upper.to(engine.device), engine.dtype)
        self.group_C = C.to(engine.device, engine.dtype)
        self.group_d = rounding.to_dtype_up(d.to(engine.device), engine.dtype)
        if self.groups:  # the hull, for what reads one box (input scale, experimental split choices)
            self.lower, self.upper = self.group_lower.amin(dim=0), self.group_upper.amax(dim=0)
            self.C, self.d = self.group_C[0], self.group_d[0]
        else:
            self.lower, self.upper, self.C, self.d = self.group_lower, self.group_upper, self.group_C, self.group_d
        if row_case is None:
            row_case = torch.zeros(self.C.shape[0], dtype=torch.int64)
        self.row_case = row_case.to(engine.device, torch.int64)
        self.case_rows = [torch.nonzero(self.row_case == k).flatten() for k in range(int(row_case.max()) + 1)]
        self.input = engine.graph.input_name
        # coordinates of positive width: what splitting shrinks (the most of any box)
        free = int((self.group_upper > self.group_lower).reshape(max(1, self.groups), -1).sum(dim=1).max())
        self.strategy = InputSplitting() if free <= config.input_split_max_dims else ActivationSplitting()
        if self.groups and not self.input_mode:
            raise ValueError("a search over several input boxes splits the input: each box may have at most "
                             f"{config.input_split_max_dims} free coordinates")
        self.candidates = self.strategy.candidates(engine)
        self.readers = consumers(engine, self.candidates)
        self.start = time.monotonic()
        self.root_bounds = root_bounds  # the root's intermediate bounds, reused (and refreshed by IBP) below it
        self.shortcuts: dict | None = None  # BBPS: root linear bounds of the candidate nodes
        self.split_bytes = sum(2 * 8 * math.prod(engine.shapes[c]) for c in self.candidates) + 64
        self.max_domains = int(min(config.max_domains, config.memory_bytes // self.split_bytes))
        self.alpha = AlphaConfig(iterations=self.strategy.alpha_iterations(config), lr=0.2, stop_when_positive=True)
        itemsize = torch.empty((), dtype=engine.dtype).element_size()
        self.batch = fitting_batch(self.strategy.max_batch(config), pass_bytes_per_domain(engine.shapes, self.C.shape[0], itemsize),
                                   free_bytes(engine.device))
        self.on_progress = on_progress  # called with the BabResult after every batch
        self.domain_attack = DomainAttacker(attack) if attack is not None else None
        self.witness = None

    @property
    def input_mode(self) -> bool:
        """Whether this search splits the input box (:class:`~genbab.bab.strategy.InputSplitting`)."""
        return self.strategy.input_mode

    def bound(self, domains: DomainBatch, deadline: float) -> DomainBatch:
        """Bound every domain (one batched pass) and choose each one's next split."""
        D = len(domains)
        if self.groups:
            lower, upper = self.group_lower[domains.group], self.group_upper[domains.group]
        else:
            lower, upper = self.lower.expand(D, -1), self.upper.expand(D, -1)
        if self.input in domains.lower:  # input splits shrink the box itself
            lower = torch.maximum(lower, domains.lower[self.input].reshape(D, -1))
            upper = torch.minimum(upper, domains.upper[self.input].reshape(D, -1))
        box = self.engine.box(lower, upper)
        splits = {k: v for k, v in domains.clamps().items() if k != self.input}
        with torch.no_grad():
            bounds = self.strategy.intermediate(self, box, domains, deadline)
            if self.shortcuts is None:
                self.shortcuts = self.strategy.shortcuts(self, deadline)
        record: dict[str, torch.Tensor] = {}
        if self.groups:
            C, d = self.group_C[domains.group], self.group_d[domains.group]
        else:
            C, d = self.C.expand(D, -1, -1), self.d.expand(D, -1)
        rows = optimize_rows(self.engine, C, box, bounds, self.alpha, offset=d, deadline=deadline, record=record,
                             splits=splits, warm=self.strategy.warm(domains))
        rows = rows.nan_to_num(nan=-torch.inf)
        case_lb, best_row = self.worst_case(rows)
        lb = case_lb.amin(dim=1)
        empty = (box.lower > box.upper).reshape(D, -1).any(dim=1)
        for lo, hi in bounds.values():
            empty |= (lo > hi).reshape(D, -1).any(dim=1)
        lb = torch.maximum(lb.to(torch.float64), domains.lb)  # a child lies inside its parent
        lb = torch.where(empty, torch.full_like(lb, torch.inf), lb)
        if self.domain_attack is not None:
            offset = None if domains.group is None else domains.group * self.C.shape[0]
            self.witness = self.domain_attack(lb, record.get(self.input), lower, upper, deadline, offset)
        lower_d, upper_d, lb, bounds = self.strategy.after_bound(self, domains, lower, upper, record, case_lb, lb,
                                                                 bounds)
        ctx = BranchingContext(self.config.branching, self.config.branching_points, self.shortcuts, box,
                               products=self.config.split_products, input_floor=self.config.input_coeff_floor,
                               input_scale=self.upper - self.lower)
        node, index, point = choose_splits(self.engine, self.candidates, self.readers, bounds, record, best_row, ctx)
        return DomainBatch(lower_d, upper_d, lb.to(torch.float64), domains.depth, node, index, point,
                           self.strategy.params(record), domains.group)

    def worst_case(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per domain the bound of each case (its best row's) ``[D, K]`` and the index of the best
        row of the worst case ``[D]`` (its coefficients score the next split)."""
        if len(self.case_rows) == 1:
            lb, best = rows.max(dim=1)
            return lb.unsqueeze(1), best
        bounds, bests = [], []
        for idx in self.case_rows:
            lb, arg = rows[:, idx].max(dim=1)
            bounds.append(lb)
            bests.append(idx[arg])
        case_lb = torch.stack(bounds, dim=1)
        worst = case_lb.argmin(dim=1, keepdim=True)
        return case_lb, torch.stack(bests, dim=1).gather(1, worst).squeeze(1)

    def clip(self, lower: torch.Tensor, upper: torch.Tensor, A: torch.Tensor, rows: torch.Tensor,
             case_lb: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The clipped boxes ``[D, n]`` (:func:`~genbab.bab.clipping.clip_box` per case; the hull of
        the cases' boxes not yet proved) and per domain whether no case is left ``[D]``."""
        if len(self.case_rows) == 1:
            lo, hi = clip_box(lower, upper, A, rows)
            return (lo, hi), (lo > hi).any(dim=1)
        los, his, alive = [], [], []
        for k, idx in enumerate(self.case_rows):
            lo, hi = clip_box(lower, upper, A[:, idx], rows[:, idx])
            los.append(lo)
            his.append(hi)
            alive.append(~((lo > hi).any(dim=1) | (case_lb[:, k] > 0)))
        live = torch.stack(alive, dim=1).unsqueeze(2)  # [D, K, 1]
        lo = torch.where(live, torch.stack(los, dim=1), torch.inf).amin(dim=1)
        hi = torch.where(live, torch.stack(his, dim=1), -torch.inf).amax(dim=1)
        none = ~live.squeeze(2).any(dim=1)
        lo = torch.where(none.unsqueeze(1), lower.to(lo.dtype), lo)
        hi = torch.where(none.unsqueeze(1), upper.to(hi.dtype), hi)
        return (lo, hi), none

    def run(self, deadline: float) -> BabResult:
        """The search until ``unsat``, ``sat``, ``unknown`` or ``deadline``; input-split passes run
        on ``config.input_threads`` torch threads when that is set (restored afterwards)."""
        threads = self.strategy.threads(self.config)
        before = torch.get_num_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            return self._search(deadline)
        finally:
            torch.set_num_threads(before)

    def _search(self, deadline: float) -> BabResult:
        result = BabResult("timeout")
        shapes = {c: self.engine.shapes[c] for c in self.candidates}
        to_bound = root_domains(shapes, self.engine.dtype, self.engine.device, self.groups)
        self.store = store = DomainStore()  # the open domains (genbab.bab.store: no whole-set copy per pass)
        self._max_depth = torch.zeros((), dtype=torch.float64, device=self.engine.device)
        in_flight = None  # the parents whose children are being bounded: still open until then
        try:
            while True:
                started = time.monotonic()
                bounded = self.bound_in_chunks(to_bound, deadline)
                seconds_per_domain = (time.monotonic() - started) / max(1, len(to_bound))
                result.visited += len(bounded)
                self._max_depth = torch.maximum(self._max_depth, bounded.depth.max().to(torch.float64))
                if self.witness is not None:
                    result.witness = self.witness
                    store.push(bounded)
                    return self._finish(result, "sat")
                in_flight = None
                unproved, stuck = self._unproved(bounded)
                store.push(unproved)
                if stuck:
                    return self._finish(result, "unknown")
                self._fit_max_domains(store)
                self._log(result, store)
                if len(store) == 0:
                    return self._finish(result, "unsat")
                if len(store) > self.max_domains:
                    return self._finish(result, "unknown")
                if time.monotonic() >= deadline:
                    return self._finish(result, "timeout")
                in_flight = store.pop_lowest(self.parents_per_pass(seconds_per_domain, deadline))
                to_bound = split(in_flight, self.candidates)
        except BoundsTimeout:
            if in_flight is not None:  # their children were not all bounded: the parents stay open
                store.push(in_flight)
            return self._finish(result, "timeout")

    @staticmethod
    def _unproved(bounded: DomainBatch) -> tuple[DomainBatch, bool]:
        """The domains not proved (``lb > 0`` fails, NaN included), in their order, and whether
        one of them cannot be split: one transfer to the host (their count and the flag)."""
        open_ = ~(bounded.lb > 0)
        n_open, stuck = torch.stack([open_.sum(), (open_ & (bounded.split_node < 0)).any().long()]).tolist()
        order = torch.argsort((~open_).to(torch.int8), stable=True)[: int(n_open)]
        return bounded.select(order), bool(stuck)

    def parents_per_pass(self, seconds_per_domain: float, deadline: float) -> int:
        """Parents to split next: half the batch, fewer when the last pass's time per domain says
        their children would take more than ``PASS_SECONDS`` (or than the time left) to bound, so
        that the deadline is kept between passes even on large models."""
        seconds = min(PASS_SECONDS, max(0.0, deadline - time.monotonic()))
        by_time = int(seconds / max(2 * seconds_per_domain, 1e-9))
        return max(1, min(self.batch // 2, by_time))

    def bound_in_chunks(self, domains: DomainBatch, deadline: float) -> DomainBatch:
        """:meth:`bound` on at most ``self.batch`` domains at a time; an out-of-memory error halves
        the batch and starts the chunks again (nothing is lost: bounding has no side effects)."""
        while True:
            try:
                parts = []
                for first in range(0, len(domains), self.batch):
                    parts.append(self.bound(domains.select(slice(first, first + self.batch)), deadline))
                    if self.witness is not None:
                        break
                return functools.reduce(DomainBatch.cat, parts)
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err) or self.batch <= 1:
                    raise
                self.batch = max(1, self.batch // 2)
                if self.engine.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _fit_max_domains(self, store: DomainStore) -> None:
        """Count the stored parameters of each domain against the memory budget as well."""
        params = store.param_bytes()
        if len(store) and params:
            per_domain = self.split_bytes + params
            self.max_domains = min(self.max_domains,
                                   int(min(self.config.max_domains, self.config.memory_bytes // per_domain)))

    def _log(self, result: BabResult, store: DomainStore) -> None:
        """History and progress: the worst open bound and the depth, in one transfer to the host."""
        worst = store.min_lb().to(self._max_depth.device) if len(store) else torch.full_like(self._max_depth, torch.inf)
        worst, depth = torch.stack([worst.to(torch.float64), self._max_depth]).tolist()
        result.max_depth = int(depth)
        result.history.append((round(time.monotonic() - self.start, 3), worst, len(store)))
        if self.on_progress is not None:
            self.on_progress(result)

    @property
    def open_domains(self) -> DomainBatch:
        """After :meth:`run`, the domains still open (a copy out of the store)."""
        if self.store.slots is None:  # nothing was ever left open
            shapes = {c: self.engine.shapes[c] for c in self.candidates}
            return root_domains(shapes, self.engine.dtype, self.engine.device).select(slice(0, 0))
        return self.store.all()

    def open_groups(self) -> list[int]:
        """After :meth:`run`, the groups (input boxes) with a domain still open, ascending."""
        store = getattr(self, "store", None)
        return [] if store is None else store.groups()

    def _finish(self, result: BabResult, status: str) -> BabResult:
        result.status, result.open, result.batch = status, len(self.store), self.batch
        result.max_depth = int(self._max_depth)
        result.history = result.history[:: max(1, len(result.history) // 25)][-50:]
        return result
