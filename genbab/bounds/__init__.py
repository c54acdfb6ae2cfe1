"""Bound propagation: IBP, CROWN and alpha-CROWN over the model graph.

``compute_bounds(model, lower, upper, method, C, device=..., kernels=...)`` returns lower and
upper bounds of ``C y`` (or of the flat output ``y`` when ``C`` is None) over a batch of input
boxes. ``engine_for(model, config)`` is the model's engine for one
:class:`~genbab.bounds.config.EngineConfig` (device, dtype, kernel backend), built once.
"""

from __future__ import annotations

import math

import torch

from genbab.bounds.alpha import AlphaConfig, optimize_rows
from genbab.bounds.box import Box
from genbab.bounds.config import EngineConfig
from genbab.bounds.engine import BoundEngine, interval_rows

METHODS = ("ibp", "forward", "crown", "alpha-crown")  # forward: symbolic-interval intermediates, CROWN rows


def engine_for(model, config: EngineConfig | None = None) -> BoundEngine:
    """The model's bound engine for ``config`` (default: CPU, float64, PyTorch), built once per
    config and kept on the model."""
    config = EngineConfig() if config is None else config
    engines = model.__dict__.setdefault("_bound_engines", {})
    if config not in engines:
        engines[config] = BoundEngine(model.graph, config)
    return engines[config]


ROW_BUDGET_ELEMENTS = 2.5e7  # rows x batch x neurons per chunk: alpha-CROWN keeps ~10 such numbers each


def rows_per_chunk(engine: BoundEngine, batch: int, budget: float = ROW_BUDGET_ELEMENTS) -> int:
    """How many objective rows one pass bounds at once: ``budget / (batch * neurons)``, at least 1,
    where ``neurons`` counts every value of the graph (the per-row parameters and coefficients of
    alpha-CROWN scale with it)."""
    neurons = sum(math.prod(shape) for shape in engine.shapes.values())
    return max(1, int(budget // max(1, batch * neurons)))


def compute_bounds(model, lower: torch.Tensor, upper: torch.Tensor, method: str = "alpha-crown",
                   C: torch.Tensor | None = None, alpha: AlphaConfig = AlphaConfig(stop_when_positive=False),
                   row_chunk: int | None = None, device: str | torch.device | None = None,
                   kernels: str = "auto", precision: str = "float64") -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds ``(lb, ub)`` of ``C y`` over the boxes ``lower <= x <= upper``.

    ``lower``/``upper``: ``[batch, n_inputs]`` (flat) or ``[batch, *input_shape]``, or one box
    without the batch dimension. ``C``: ``[batch, S, n_outputs]`` or ``[S, n_outputs]``; None means
    the identity (bounds on every output). Returns float64 tensors ``[batch, S]``. Rows are
    bounded ``row_chunk`` at a time (default :func:`rows_per_chunk`), so asking for thousands of
    outputs costs time, not memory beyond the budget.

    ``device`` (``auto``, ``cpu``, ``cuda``; None: ``lower``'s device) and ``kernels`` (``auto``,
    ``triton``, ``torch``) choose the engine (:meth:`EngineConfig.resolve`); the bounds are
    computed there and returned on ``lower``'s device.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    home = lower.device
    from genbab.bounds import rounding
    from genbab.bounds.config import resolve_precision

    engine = engine_for(model, EngineConfig.resolve(home if device is None else device, kernels,
                                                    resolve_precision(precision)))
    if lower.dim() == 1 or tuple(lower.shape) == tuple(engine.graph.input_shape):
        lower, upper = lower.unsqueeze(0), upper.unsqueeze(0)
    box = engine.box(lower, upper)
    n_out = model.n_outputs
    if C is None:
        C = torch.eye(n_out, dtype=engine.dtype, device=engine.device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(box.batch, -1, -1)
    if not rounding.exact_in(C, engine.dtype):  # the objective itself would change
        raise ValueError(f"the coefficients C are not exact in {engine.dtype}: use precision='float64'")
    C = C.to(engine.device, engine.dtype)
    both = torch.cat([C, -C], dim=1)
    S = C.shape[1]
    if method == "ibp":
        bounds = engine.interval_bounds(box)
        lb = interval_rows(both, *bounds[engine.graph.output_name])
    else:
        bounds = engine.intermediate_bounds(box, "forward" if method == "forward" else "crown")
        chunk = row_chunk or rows_per_chunk(engine, box.batch)
        parts = []
        for first in range(0, both.shape[1], chunk):
            rows = both[:, first:first + chunk]
            if method in ("crown", "forward"):
                with torch.no_grad():
                    parts.append(engine.bound_rows(rows, box, bounds))
            else:
                parts.append(optimize_rows(engine, rows, box, bounds, alpha).detach())
        lb = torch.cat(parts, dim=1)
    return lb[:, :S].detach().to(home), (-lb[:, S:]).detach().to(home)


__all__ = ["AlphaConfig", "BoundEngine", "Box", "EngineConfig", "METHODS", "compute_bounds", "engine_for"]
