"""The two ways branch and bound splits a domain, as strategies of one loop
(:class:`~genbab.bab.loop.BranchAndBound`).

- :class:`InputSplitting` (boxes with few free coordinates): the candidate is the input itself;
  every sub-box gets its own intermediate bounds (forward symbolic intervals or CROWN, inside the
  root's), plain CROWN rows, no stored parameters, and is clipped to where a counterexample may
  lie (:mod:`genbab.bab.clipping`); its passes are wide and may run on every core.
- :class:`ActivationSplitting`: the candidates are the inputs of nonlinearities; the root gets
  CROWN intermediate bounds once, its children those clamped by their splits and refreshed by
  IBP; BBPS shortcuts are computed at the root; alpha/beta values are stored per domain and
  warm-start the children.

A strategy answers what differs; the loop does the rest (bounding rows, worst cases, the domain
attack, branching choices, the store).
"""

from __future__ import annotations

import torch

from genbab.bab.bbps import root_shortcuts
from genbab.bab.branching import consumers, splits_reader
from genbab.bab.domains import DomainBatch
from genbab.bounds import rounding


class InputSplitting:
    """Split the input box (see the module docstring)."""

    input_mode = True

    def candidates(self, engine) -> list[str]:
        return [engine.graph.input_name]

    def alpha_iterations(self, config) -> int:
        return config.input_alpha_iterations

    def max_batch(self, config) -> int:
        return config.input_batch_size

    def threads(self, config) -> int:
        return config.input_threads

    def intermediate(self, bab, box, domains: DomainBatch, deadline: float):
        """Every sub-box's own bounds (``config.input_bounds``), inside the root's when known."""
        return bab.engine.intermediate_bounds(box, bab.config.input_bounds, deadline, clamps=domains.clamps(),
                                              base=bab.root_bounds)

    def shortcuts(self, bab, deadline: float) -> dict:
        return {}

    def warm(self, domains: DomainBatch):
        return None

    def after_bound(self, bab, domains: DomainBatch, lower, upper, record: dict, case_lb, lb, bounds):
        """Clip each sub-box to where a counterexample may lie (a box with no case left is proved)."""
        lower_d, upper_d = domains.lower, domains.upper
        name = bab.input
        if name not in record:
            return lower_d, upper_d, lb, bounds
        clipped, none = bab.clip(lower, upper, record[name], record["rows"], case_lb)
        lb = torch.where(none, torch.full_like(lb, torch.inf), lb)
        shape = domains.lower[name].shape
        lower_d = {**lower_d, name: rounding.to_dtype_down(clipped[0].reshape(shape), bab.engine.dtype)}
        upper_d = {**upper_d, name: rounding.to_dtype_up(clipped[1].reshape(shape), bab.engine.dtype)}
        return lower_d, upper_d, lb, {**bounds, name: (lower_d[name], upper_d[name])}

    def params(self, record: dict) -> dict:
        return {}


class ActivationSplitting:
    """Split the inputs of nonlinearities (see the module docstring)."""

    input_mode = False

    def candidates(self, engine) -> list[str]:
        """The inputs of nonlinear nodes whose op may be split (``splittable`` trait)."""
        names = sorted(n for n in engine.needs_bounds if n != engine.graph.input_name)
        readers = consumers(engine, names)
        return [n for n in names if any(splits_reader(engine, r) for r in readers[n])]

    def alpha_iterations(self, config) -> int:
        return config.alpha_iterations

    def max_batch(self, config) -> int:
        return config.batch_size

    def threads(self, config) -> int:
        return 0

    def intermediate(self, bab, box, domains: DomainBatch, deadline: float):
        """CROWN at the root (kept as ``bab.root_bounds``), then the root's clamped and refreshed by IBP."""
        engine = bab.engine
        if bab.root_bounds is None:
            bab.root_bounds = engine.intermediate_bounds(box, "crown", deadline, clamps=domains.clamps())
            return bab.root_bounds
        return engine.intermediate_bounds(box, "ibp", deadline, clamps=domains.clamps(), base=bab.root_bounds)

    def shortcuts(self, bab, deadline: float) -> dict:
        """BBPS: the root's linear bounds of every candidate node (none for the intercept score)."""
        if bab.config.branching != "bbps":
            return {}
        root_box = bab.engine.box(bab.lower.reshape(1, -1), bab.upper.reshape(1, -1))
        return root_shortcuts(bab.engine, bab.candidates, root_box, bab.root_bounds, deadline)

    def warm(self, domains: DomainBatch):
        return domains.params

    def after_bound(self, bab, domains: DomainBatch, lower, upper, record: dict, case_lb, lb, bounds):
        return domains.lower, domains.upper, lb, bounds

    def params(self, record: dict) -> dict:
        return record.get("warm", {})
