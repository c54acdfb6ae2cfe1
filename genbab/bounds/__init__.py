"""Bound propagation: IBP, CROWN and alpha-CROWN over the model graph.

``compute_bounds(model, lower, upper, method, C)`` returns lower and upper bounds of ``C y``
(or of the flat output ``y`` when ``C`` is None) over a batch of input boxes.
"""

from __future__ import annotations

import torch

from genbab.bounds.alpha import AlphaConfig, optimize_rows
from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine

METHODS = ("ibp", "crown", "alpha-crown")


def engine_for(model) -> BoundEngine:
    """The model's bound engine, built once and kept on the model."""
    engine = getattr(model, "_bound_engine", None)
    if engine is None:
        engine = BoundEngine(model.graph)
        model._bound_engine = engine
    return engine


def compute_bounds(model, lower: torch.Tensor, upper: torch.Tensor, method: str = "alpha-crown",
                   C: torch.Tensor | None = None, alpha: AlphaConfig = AlphaConfig(stop_when_positive=False)
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds ``(lb, ub)`` of ``C y`` over the boxes ``lower <= x <= upper``.

    ``lower``/``upper``: ``[batch, n_inputs]`` (flat) or ``[batch, *input_shape]``, or one box
    without the batch dimension. ``C``: ``[batch, S, n_outputs]`` or ``[S, n_outputs]``; None means
    the identity (bounds on every output). Returns float64 tensors ``[batch, S]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    engine = engine_for(model)
    if lower.dim() == 1 or tuple(lower.shape) == tuple(engine.graph.input_shape):
        lower, upper = lower.unsqueeze(0), upper.unsqueeze(0)
    box = engine.box(lower, upper)
    n_out = model.n_outputs
    if C is None:
        C = torch.eye(n_out, dtype=engine.dtype)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(box.batch, -1, -1)
    C = C.to(engine.dtype)
    both = torch.cat([C, -C], dim=1)
    S = C.shape[1]
    if method == "ibp":
        bounds = engine.interval_bounds(box)
        lo, hi = (b.reshape(box.batch, -1, 1) for b in bounds[engine.graph.output_name])
        lb = (both.clamp(min=0) @ lo + both.clamp(max=0) @ hi).squeeze(-1)
    else:
        bounds = engine.intermediate_bounds(box, "crown")
        if method == "crown":
            with torch.no_grad():
                lb = engine.bound_rows(both, box, bounds)
        else:
            lb = optimize_rows(engine, both, box, bounds, alpha)
    return lb[:, :S].detach(), (-lb[:, S:]).detach()


__all__ = ["AlphaConfig", "BoundEngine", "Box", "METHODS", "compute_bounds"]
