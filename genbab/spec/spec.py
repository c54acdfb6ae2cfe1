"""The verification property as tensors.

A VNN-LIB property describes an *unsafe* set. After parsing it is a disjunction of cases;
case ``i`` is the set of inputs ``x`` with ``lower[i] <= x <= upper[i]`` (elementwise, over the
flattened input) whose output ``y = f(x)`` (flattened) satisfies every row of ``C[i] y <= d[i]``.
The property is *violated* (``sat``) iff some case has such an ``x``. A bound may be infinite
(an input the property leaves unconstrained): no bound propagation runs on such a box, only the
attack, on finite boxes inside it (:meth:`Spec.finite`).

Cases have different numbers of rows; they are padded to the largest count with rows
``0 . y <= 1``, which every output satisfies with margin ``-1 < 0``, so padding never changes
the set nor keeps a witness of a short case from counting (a ``0 . y <= 0`` row would hold a
case's margin at 0, never strictly negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Spec:
    """Disjunction of (input box, ``C y <= d``) cases, all float64 tensors.

    Shapes: ``lower``/``upper`` ``[n_cases, n_inputs]``, ``C`` ``[n_cases, n_rows, n_outputs]``,
    ``d`` ``[n_cases, n_rows]``.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    C: torch.Tensor
    d: torch.Tensor

    @property
    def n_cases(self) -> int:
        return int(self.lower.shape[0])

    @property
    def n_inputs(self) -> int:
        return int(self.lower.shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self.C.shape[2])

    @property
    def n_rows(self) -> int:
        return int(self.C.shape[1])

    def violation(self, y: torch.Tensor, case: torch.Tensor | int | None = None) -> torch.Tensor:
        """Margin ``max_j (C y - d)_j`` per case: ``<= 0`` exactly when ``y`` is in that case's unsafe set.

        ``y`` is ``[batch, n_outputs]``. With ``case=None`` returns ``[batch, n_cases]``; with an
        index tensor ``case`` of shape ``[batch]`` (or an int) returns ``[batch]`` for those cases.
        """
        y = y.to(self.C.dtype)
        if case is None:
            return (torch.einsum("krn,bn->bkr", self.C, y) - self.d).amax(dim=-1)
        C = self.C[case]
        d = self.d[case]
        if C.dim() == 2:
            return (y @ C.T - d).amax(dim=-1)
        return (torch.einsum("brn,bn->br", C, y) - d).amax(dim=-1)

    def unbounded(self) -> torch.Tensor:
        """``[n_cases, n_inputs]``: which input elements have an infinite bound in which case."""
        return torch.isinf(self.lower) | torch.isinf(self.upper)

    def finite(self, width: float) -> "Spec":
        """The property with every infinite input bound made finite, each box a subset of its own:
        an element ranges over ``width`` either side of 0, or ``width`` beyond its one finite bound
        when 0 lies outside its range."""
        anchor = torch.clamp(torch.zeros_like(self.lower), self.lower, self.upper)
        lower = torch.where(torch.isinf(self.lower), anchor - width, self.lower)
        upper = torch.where(torch.isinf(self.upper), anchor + width, self.upper)
        return Spec(lower, upper, self.C, self.d)

    def subset(self, cases: torch.Tensor) -> "Spec":
        """The property restricted to the given case indices (a disjunction of fewer cases)."""
        return Spec(self.lower[cases], self.upper[cases], self.C[cases], self.d[cases])
