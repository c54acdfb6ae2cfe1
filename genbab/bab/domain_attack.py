"""Attacks inside branch and bound: start PGD where the worst domains' linear bounds are lowest.

A domain's CROWN pass gives, per spec row ``s``, ``g_s(x) >= a_s . x + c_s`` on its input box
``[l, u]``; that lower line is smallest at the corner ``x*_s`` with ``x*_si = l_i`` where
``a_si > 0`` and ``u_i`` elsewhere. ``x*_s`` is where the relaxation says a counterexample is most
likely, so a few projected-gradient steps from there (kept inside the domain's box) often find
one that random restarts miss. Every candidate is replayed on onnxruntime before it counts.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

# (starting points [P, n], the row of C each point serves [P], their boxes lower [P, n] / upper [P, n],
#  deadline) -> witness or None
DomainAttack = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], object]


def bound_minimizers(A: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``x*`` ``[D, S, n]``: per domain and row the box corner minimising ``a_s . x``
    (``A`` ``[D, S, n]``, boxes ``[D, n]``)."""
    A = A.reshape(A.shape[0], A.shape[1], -1)
    return torch.where(A > 0, lower.unsqueeze(1).to(A.dtype), upper.unsqueeze(1).to(A.dtype))


class DomainAttacker:
    """Runs ``attack`` from the bound minimisers of the ``worst`` lowest-bound open domains of each
    batch, spending at most ``share`` of the time branch and bound has run so far."""

    def __init__(self, attack: DomainAttack, worst: int = 8, share: float = 0.1):
        self.attack, self.worst, self.share = attack, worst, share
        self.start, self.spent = time.monotonic(), 0.0

    def due(self) -> bool:
        return self.spent <= self.share * (time.monotonic() - self.start)

    def __call__(self, lb: torch.Tensor, A: torch.Tensor | None, lower: torch.Tensor, upper: torch.Tensor,
                 deadline: float, row_offset: torch.Tensor | None = None):
        """A witness from the open domains (``lb <= 0``) of one bounded batch, or None; a point's
        row is ``row_offset`` of its domain (``[D]``, several boxes in one search) plus its row."""
        if A is None or not self.due():
            return None
        open_ = torch.nonzero(~(lb > 0)).flatten()
        if len(open_) == 0:
            return None
        pick = open_[torch.argsort(lb[open_])[: self.worst]]
        t0 = time.monotonic()
        x = bound_minimizers(A[pick], lower[pick], upper[pick])  # [k, S, n]
        k, S, n = x.shape
        lo = lower[pick].unsqueeze(1).expand(k, S, n).reshape(k * S, n)
        hi = upper[pick].unsqueeze(1).expand(k, S, n).reshape(k * S, n)
        try:
            rows = torch.arange(S, device=x.device).repeat(k)
            if row_offset is not None:
                rows = rows + row_offset[pick].repeat_interleave(S).to(rows.device)
            return self.attack(x.reshape(k * S, n), rows, lo, hi, deadline)
        finally:
            self.spent += time.monotonic() - t0
