"""Proving a property with bounds alone (no branching): one alpha-CROWN pass per input box.

Case ``k`` (box ``B_k``, unsafe set ``C_k y <= d_k``) is infeasible, hence proved, when some row
has ``min_{x in B_k} (C_k f(x) - d_k)_j > 0``; a lower bound of that minimum above zero suffices.
Cases sharing a box are bounded together: all their rows form the objective of one pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from genbab.bounds import engine_for
from genbab.bounds.alpha import AlphaConfig, optimize_rows, tighten_intermediates
from genbab.bounds.engine import BoundsTimeout
from genbab.model.model import Model
from genbab.spec.spec import Spec


@dataclass
class ProofReport:
    """Which cases are proved, and the best lower bound of each case's best row."""

    proved: torch.Tensor  # [n_cases] bool
    case_bounds: torch.Tensor  # [n_cases] float64: max over rows of the row lower bounds
    boxes: int
    seconds: float
    root_bounds: list = field(default_factory=list)  # per case: the intermediate bounds of its box (or None)


def group_by_box(spec: Spec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique boxes ``[G, 2, n_in]`` and, per case, the index of its box ``[n_cases]``."""
    boxes = torch.stack([spec.lower, spec.upper], dim=1)
    unique, inverse = torch.unique(boxes, dim=0, return_inverse=True)
    return unique, inverse, boxes


TIGHTEN_SHARE = 0.3  # at most this share of the time left goes to tightening intermediate bounds
TIGHTEN_ROUNDS = 4  # rounds of tightening (4, 8, 16, 32 Adam steps), each from the last one's bounds
TIGHTEN_PROGRESS = 1e-3  # a round must raise some row bound by this much for another round


def prove_cases(model: Model, spec: Spec, deadline: float, alpha: AlphaConfig = AlphaConfig(),
                boxes_per_pass: int = 16, tighten: bool = True, engine=None, unstable_only: bool = False) -> ProofReport:
    """Bound every case with alpha-CROWN; stop (leaving cases unproved) at the deadline.

    First every box gets CROWN intermediate bounds and alpha-CROWN (``boxes_per_pass`` boxes per
    batched pass); then, where a box's cases are left unproved, its intermediate bounds are
    tightened by alpha-CROWN node by node (:func:`~genbab.bounds.alpha.tighten_intermediates`)
    and its cases bounded again (:func:`_tighten_in_rounds`: rounds of 4, 8, 16 and 32 steps
    while some row bound still rises, at most ``TIGHTEN_SHARE`` of the time left, shared evenly
    by those boxes so that a property with 500 boxes does not spend it on the first).
    ``unstable_only``: tightening rows only for the neurons that shape a relaxation
    (:func:`~genbab.bounds.alpha.shaping_neurons`). ``engine``: the bound engine to use (default: :func:`~genbab.bounds.engine_for` ``(model)``,
    CPU); the report's tensors are on the CPU, ``root_bounds`` on the engine's device."""
    start = time.monotonic()
    engine = engine_for(model) if engine is None else engine
    unique, inverse, _ = group_by_box(spec)
    case_bounds = torch.full((spec.n_cases,), -torch.inf, dtype=torch.float64)
    root_bounds: list = [None] * spec.n_cases
    passes = []
    for first in range(0, len(unique), boxes_per_pass):
        if time.monotonic() >= deadline:
            break
        group_ids = torch.arange(first, min(first + boxes_per_pass, len(unique)))
        members = [torch.nonzero(inverse == g).flatten() for g in group_ids]
        C, d = _rows_for_groups(spec, members)
        box = engine.box(unique[group_ids, 0], unique[group_ids, 1])
        try:
            with torch.no_grad():
                bounds = engine.intermediate_bounds(box, "crown", deadline)
        except BoundsTimeout:
            break
        lb = optimize_rows(engine, C, box, bounds, alpha, offset=d, deadline=deadline).detach()
        _record(spec, members, lb, bounds, case_bounds, root_bounds)
        if not _all_proved(lb, members, spec.n_rows):
            passes.append((members, C, d, box, bounds, lb))
    if tighten and passes and time.monotonic() < deadline:
        _tighten_in_rounds(engine, spec, passes, alpha, deadline, case_bounds, root_bounds, unstable_only)
    proved = case_bounds > 0
    return ProofReport(proved, case_bounds, len(unique), time.monotonic() - start, root_bounds)


def _tighten_in_rounds(engine, spec: Spec, passes: list, alpha: AlphaConfig, deadline: float,
                       case_bounds: torch.Tensor, root_bounds: list, unstable_only: bool = False) -> None:
    """Tighten the intermediate bounds of the unproved ``passes`` ``(members, C, d, box, bounds,
    lb)`` and bound their cases again, in rounds of 4, 8, 16, 32 Adam steps; a pass goes on to the
    next round only while it is unproved and improving. ``TIGHTEN_SHARE`` of the time left is
    split evenly over the passes still waiting in a round."""
    budget_left = TIGHTEN_SHARE * (deadline - time.monotonic())
    for rnd in range(TIGHTEN_ROUNDS):  # a round that ends early leaves time for a longer one
        improving = []
        for i, (members, C, d, box, bounds, lb) in enumerate(passes):
            now = time.monotonic()
            if now >= deadline or budget_left <= 0:
                break
            share = budget_left / (len(passes) - i)
            bounds = tighten_intermediates(engine, box, bounds, iterations=4 * 2 ** rnd,
                                           deadline=min(deadline, now + share), only_unstable=unstable_only)
            again = torch.maximum(lb, optimize_rows(engine, C, box, bounds, alpha, offset=d,
                                                    deadline=deadline).detach())
            _record(spec, members, again, bounds, case_bounds, root_bounds)
            budget_left -= time.monotonic() - now
            if not _all_proved(again, members, spec.n_rows) and bool((again - lb > TIGHTEN_PROGRESS).any()):
                improving.append((members, C, d, box, bounds, again))
        passes = improving
        if not passes or budget_left <= 0 or time.monotonic() >= deadline:
            return


def _record(spec: Spec, members: list[torch.Tensor], lb: torch.Tensor, bounds, case_bounds: torch.Tensor,
            root_bounds: list) -> None:
    """Store each member case's best row bound and its box's intermediate bounds (in place)."""
    for g, cases in enumerate(members):
        for case in cases.tolist():
            root_bounds[case] = {k: (lo[g:g + 1], hi[g:g + 1]) for k, (lo, hi) in bounds.items()}
        per_case = lb[g, : len(cases) * spec.n_rows].reshape(len(cases), spec.n_rows)
        best = per_case.amax(dim=1).to(case_bounds.device, torch.float64)
        case_bounds[cases] = torch.maximum(case_bounds[cases], best)


def _all_proved(lb: torch.Tensor, members: list[torch.Tensor], n_rows: int) -> bool:
    """Whether every case of every box has a row with a positive lower bound."""
    for g, cases in enumerate(members):
        per_case = lb[g, : len(cases) * n_rows].reshape(len(cases), n_rows)
        if not bool((per_case.amax(dim=1) > 0).all()):
            return False
    return True


def _rows_for_groups(spec: Spec, members: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective rows per box: the rows of its cases, concatenated and zero-padded to the same count."""
    width = max(len(m) for m in members) * spec.n_rows
    C = torch.zeros(len(members), width, spec.n_outputs, dtype=torch.float64)
    d = torch.zeros(len(members), width, dtype=torch.float64)
    for g, cases in enumerate(members):
        n = len(cases) * spec.n_rows
        C[g, :n] = spec.C[cases].reshape(n, spec.n_outputs)
        d[g, :n] = spec.d[cases].reshape(n)
    return C, d
