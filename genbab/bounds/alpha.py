"""alpha-CROWN: optimise the relaxation parameters for the final objective.

For every elementwise node with parameters (tangent points, lower slopes...), one set per
box and per objective row, shape ``[B, S, *node_shape]``; for every product node (``Mul`` /
``MatMul`` of two variables) the McCormick weights ``alpha_lower`` / ``alpha_upper``, shape
``[B, S, *products]`` (``MatMul``: the products ``p_ijk``, see :mod:`genbab.ops.bilinear`). We maximise ``sum`` of the row
lower bounds with Adam, projecting the parameters back into their valid set after each step
(so every iterate gives a sound bound) and keep the elementwise best bound seen.
Tangent points are optimised in units of the interval width ``u - l`` so that one learning
rate fits wide and narrow intervals alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from genbab.bounds import rounding

from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine, Bounds, Params


@dataclass(frozen=True)
class AlphaConfig:
    iterations: int = 20
    lr: float = 0.2
    lr_decay: float = 0.95
    stop_when_positive: bool = True  # stop early once every row is proved (> 0)
    products: bool = True  # optimise the McCormick weights of product nodes too (False: fixed planes)


def _scale(name: str, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Optimisation unit of a parameter: interval width for points, 1 for slopes/weights."""
    if name.startswith("tangent"):
        return (hi - lo).clamp_min(1e-6)
    return torch.ones_like(lo)


def relaxer(engine: BoundEngine, node, bounds: Bounds, products: bool = True):
    """``(op, operands)`` of a node with relaxation parameters, or None: ``op`` has
    ``init_params(*operands)`` / ``project_params(params, *operands)``; ``operands`` are the
    bounds ``[B, 1, ...]`` its relaxation reads (elementwise: ``(lo, hi)`` of the input; a
    product: the expanded ``(lx, ux, ly, uy)`` of its two factors)."""
    rule = engine.rules[node.name]
    if rule.kind == "elementwise" and rule.op.traits.optimisable:
        return rule.op, tuple(b.unsqueeze(1) for b in bounds[node.inputs[0]])
    if products and rule.kind == "bilinear" and rule.product.optimisable:
        op = rule.product
        lx, ux, ly, uy = engine.bilinear_operands(node, bounds)[:4]
        return op, op.expand(*(b.unsqueeze(1) for b in (lx, ux, ly, uy)))
    return None


def param_elements(engine: BoundEngine, before: int | None = None, products: bool = True) -> int:
    """Parameter elements per box and row of the nodes before index ``before``."""
    total = 0
    for node in engine.nodes[:before]:
        rule = engine.rules[node.name]
        if rule.kind == "elementwise" and rule.op.traits.optimisable:
            total += math.prod(engine.shapes[node.inputs[0]])
        elif products and rule.kind == "bilinear" and rule.product.optimisable:
            ix, iy = engine.bilinear_operands(node, {i: (None, None) for i in node.inputs})[4:]
            x, y = (torch.empty((1, *engine.shapes[node.inputs[i]]), device="meta") for i in (ix, iy))
            total += math.prod(torch.broadcast_shapes(*(t.shape for t in rule.product.expand(x, x, y, y))))
    return total


class AlphaParams:
    """Free variables ``r`` with parameters ``p = r * scale`` per parameterised node
    (elementwise ops and, with ``products``, product nodes)."""

    def __init__(self, engine: BoundEngine, bounds: Bounds, n_rows: int, before: int | None = None,
                 warm: dict[str, torch.Tensor] | None = None, products: bool = True):
        self.engine, self.bounds, self.products = engine, bounds, products
        self.free: dict[str, dict[str, torch.Tensor]] = {}
        self.scales: dict[str, dict[str, torch.Tensor]] = {}
        for node in engine.nodes[:before]:
            found = relaxer(engine, node, bounds, products)
            if found is None:
                continue
            op, operands = found
            init = op.init_params(*operands)
            lo, hi = operands[:2]
            full = torch.broadcast_shapes(*(o.shape for o in operands))
            shape = (full[0], n_rows, *full[2:])
            self.scales[node.name] = {k: _scale(k, lo, hi) for k in init}
            init = {k: _warm(v.expand(shape), (warm or {}).get(f"alpha/{node.name}/{k}")) for k, v in init.items()}
            self.free[node.name] = {k: (v / self.scales[node.name][k]).clone().requires_grad_(True)
                                    for k, v in init.items()}
        if warm:
            self.project()  # warm values from a parent domain: into this domain's valid set

    def tensors(self) -> list[torch.Tensor]:
        return [t for group in self.free.values() for t in group.values()]

    def state(self) -> dict[str, torch.Tensor]:
        """The parameters ``[B, S, *shape]`` by ``alpha/<node>/<name>`` (to warm-start children)."""
        return {f"alpha/{n}/{k}": v.detach() for n, g in self.params().items() for k, v in g.items()}

    def params(self) -> Params:
        return {n: {k: v * self.scales[n][k] for k, v in g.items()} for n, g in self.free.items()}

    @torch.no_grad()
    def project(self) -> None:
        """Clamp every parameter into its valid set (in place)."""
        for name, group in self.free.items():
            node = self.engine.nodes[self.engine.index[name]]
            op, operands = relaxer(self.engine, node, self.bounds, self.products)
            params = {k: v * self.scales[name][k] for k, v in group.items()}
            projected = op.project_params(params, *operands)
            for k, v in group.items():
                v.copy_(projected[k].to(v.dtype).expand(v.shape) / self.scales[name][k])


class BetaParams:
    """beta-CROWN multipliers of split constraints ``z <= u`` and ``z >= l`` (where finite).

    On the domain ``beta_u (z - u) <= 0`` and ``beta_l (l - z) <= 0`` for ``beta >= 0``, so adding
    them to the objective keeps a valid lower bound: an extra coefficient ``beta_u - beta_l`` on
    ``z`` and bias ``beta_l l - beta_u u`` (see :meth:`BoundEngine.backward`'s ``extra``)."""

    def __init__(self, splits: Bounds, n_rows: int, dtype: torch.dtype, warm: dict[str, torch.Tensor] | None = None,
                 device: torch.device | str = "cpu"):
        self.limits, self.free = {}, {}
        warm = warm or {}
        if splits:  # which nodes have a finite limit anywhere: one transfer to the host for all of them
            used = torch.stack([(torch.isfinite(lo).any() | torch.isfinite(hi).any()) for lo, hi in splits.values()])
            splits = {name: s for name, s, u in zip(splits, splits.values(), used.tolist()) if u}
        for name, (lo, hi) in splits.items():
            has_lo, has_hi = torch.isfinite(lo), torch.isfinite(hi)
            shape = (lo.shape[0], n_rows, *lo.shape[1:])
            self.limits[name] = (torch.where(has_lo, lo, 0.0).unsqueeze(1), has_lo.unsqueeze(1),
                                 torch.where(has_hi, hi, 0.0).unsqueeze(1), has_hi.unsqueeze(1))
            zero = torch.zeros(shape, dtype=dtype, device=device)
            self.free[name] = tuple(_warm(zero, warm.get(f"beta/{name}/{side}")).clamp(min=0).requires_grad_(True)
                                    for side in ("lower", "upper"))

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in self.free.values() for t in pair]

    def state(self) -> dict[str, torch.Tensor]:
        """The multipliers ``[B, S, *shape]`` by ``beta/<node>/lower|upper``."""
        return {f"beta/{n}/{side}": t.detach() for n, pair in self.free.items()
                for side, t in zip(("lower", "upper"), pair)}

    def extra(self) -> Bounds:
        out = {}
        for name, (beta_l, beta_u) in self.free.items():
            lo, has_lo, hi, has_hi = self.limits[name]
            beta_l, beta_u = beta_l * has_lo, beta_u * has_hi
            bias = (beta_l * lo - beta_u * hi).reshape(beta_l.shape[0], beta_l.shape[1], -1).sum(-1)
            out[name] = (beta_u - beta_l, bias)
        return out

    @torch.no_grad()
    def project(self) -> None:
        for pair in self.free.values():
            for t in pair:
                t.clamp_(min=0)


def _warm(default: torch.Tensor, warm: torch.Tensor | None) -> torch.Tensor:
    """``warm`` where it is given and not NaN, else ``default`` (same shape)."""
    if warm is None or warm.shape != default.shape:
        return default
    warm = warm.to(default.device, default.dtype)
    return torch.where(torch.isnan(warm), default, warm)


def optimize_rows(engine: BoundEngine, C: torch.Tensor, box: Box, bounds: Bounds,
                  config: AlphaConfig = AlphaConfig(), offset: torch.Tensor | None = None,
                  deadline: float | None = None, record: dict | None = None,
                  splits: Bounds | None = None, warm: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Best lower bounds ``[B, S]`` of ``C y - offset`` found by alpha optimisation (never below CROWN).

    ``record`` receives the backward coefficients at the nonlinear nodes and at the input of the
    plain CROWN pass, and that pass's row bounds under ``"rows"``.
    ``splits`` (branch and bound): per node the domain's split limits ``[B, *shape]``, whose
    beta multipliers are optimised jointly with alpha. ``warm``: starting values by the keys of
    :meth:`AlphaParams.state` / :meth:`BetaParams.state` (NaN or absent: the defaults);
    ``record["warm"]`` receives the final values under the same keys."""
    offset = (torch.zeros(C.shape[:2], dtype=engine.dtype, device=engine.device) if offset is None
              else rounding.to_dtype_up(offset.to(engine.device), engine.dtype))
    with torch.no_grad():
        best = rounding.subtract(engine.bound_rows(C, box, bounds, record=record), offset)
    if record is not None:
        record["rows"] = best.clone()  # the plain CROWN rows, whose input coefficients record holds
    alpha = AlphaParams(engine, bounds, C.shape[1], warm=warm, products=config.products)
    beta = BetaParams(splits or {}, C.shape[1], engine.dtype, warm=warm, device=engine.device)
    if not (alpha.free or beta.free) or config.iterations == 0 or (
            config.stop_when_positive and bool((best > 0).all())):
        return best
    opt = torch.optim.Adam(alpha.tensors() + beta.tensors(), lr=config.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, config.lr_decay)
    for _ in range(config.iterations):
        if deadline is not None and time.monotonic() >= deadline:
            break
        lb = rounding.subtract(engine.bound_rows(C, box, bounds, alpha.params(), extra=beta.extra() if beta.free else None),
                               offset)
        best = torch.maximum(best, lb.detach())
        if config.stop_when_positive and bool((best > 0).all()):
            break
        opt.zero_grad()
        (-lb.clamp(min=-1e12).sum()).backward()
        opt.step()
        sched.step()
        alpha.project()
        beta.project()
    if record is not None:
        record["warm"] = {**alpha.state(), **beta.state()}
    return best


TIGHTEN_BYTES_PER_ELEMENT = 8 * 128  # float64 parameters and the relaxation temporaries autograd keeps


def tighten_intermediates(engine: BoundEngine, box: Box, bounds: Bounds, iterations: int = 4, lr: float = 0.2,
                          deadline: float | None = None, max_param_elements: float | None = None,
                          only_unstable: bool = False) -> Bounds:
    """Intermediate bounds tightened by alpha-CROWN, node by node in topological order.

    For each CROWN target ``z`` (``n`` neurons) the rows ``+e_j`` and ``-e_j`` get their own
    relaxation parameters for every parameterised node (elementwise or product) before ``z``, optimised with Adam for
    ``sum_j lb_j(z) - ub_j(z)``; the best bounds seen are intersected with the current ones, and
    the interval bounds of every later node are refreshed before the next target. Every iterate
    is a sound bound, so stopping at the deadline (or skipping a node whose parameters would
    exceed ``max_param_elements``, by default what a quarter of the free memory holds at
    ``TIGHTEN_BYTES_PER_ELEMENT``) leaves sound, merely looser, bounds. ``only_unstable``: rows only
    for the neurons whose bounds shape a relaxation (:func:`shaping_neurons`), a node with none is
    skipped."""
    if max_param_elements is None:
        from genbab.bab.memory import free_bytes
        max_param_elements = min(3e7, 0.25 * free_bytes(engine.device) / TIGHTEN_BYTES_PER_ELEMENT)
    bounds = dict(bounds)
    for node in engine.nodes:
        name = node.name
        if name not in engine.crown_targets or engine._exact_by_ibp(node):
            continue
        if deadline is not None and time.monotonic() >= deadline:
            break
        lo, hi = bounds[name]
        rows = shaping_neurons(engine, name, lo, hi) if only_unstable else None
        if rows is not None and not len(rows):
            continue
        best = _optimize_node(engine, node, box, bounds, iterations, lr, deadline, max_param_elements, rows)
        if best is None:
            continue
        m = best.shape[1] // 2
        if rows is None:
            lo = torch.maximum(lo, best[:, :m].reshape(lo.shape))
            hi = torch.minimum(hi, (-best[:, m:]).reshape(hi.shape))
        else:
            flat_lo, flat_hi = lo.reshape(lo.shape[0], -1).clone(), hi.reshape(hi.shape[0], -1).clone()
            flat_lo[:, rows] = torch.maximum(flat_lo[:, rows], best[:, :m])
            flat_hi[:, rows] = torch.minimum(flat_hi[:, rows], -best[:, m:])
            lo, hi = flat_lo.reshape(lo.shape), flat_hi.reshape(hi.shape)
        bounds[name] = (lo, hi)
        _refresh_after(engine, engine.index[name], bounds)
    return bounds


LINEAR_SLACK = 1e-12  # relative gap of two equal-slope lines still read as one line (a rounding margin)


def shaping_neurons(engine: BoundEngine, name: str, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor | None:
    """Flat indices of the neurons of ``name`` whose bounds shape some reader's relaxation, or None
    for all (also when every neuron does). A neuron on which every reader's relaxation is exact
    (lower and upper line equal up to rounding: a piecewise-linear op away from its kinks) keeps
    it exact on any narrower interval, so its bounds change nothing in CROWN; smooth ops and products
    need every neuron, and so does a reader whose output bounds, derived from these by interval steps, reach
    another relaxation."""
    readers = [n for n in engine.nodes if name in n.inputs and engine.rules[n.name].kind != "affine"]
    if not readers:
        return None
    needed = torch.zeros(lo[0].numel(), dtype=torch.bool, device=lo.device)
    for reader in readers:
        rule = engine.rules[reader.name]
        if (rule.kind != "elementwise" or rule.op.traits.kind != "piecewise_linear"
                or _interval_bounds_reach_a_relaxation(engine, reader)):
            return None  # smooth ops and products: every neuron shapes their relaxation
        with torch.no_grad():
            lines = engine.relax(rule.op, lo, hi)
        scale = 1.0 + lines.bias_lower.abs() + lines.slope_lower.abs() * torch.maximum(lo.abs(), hi.abs())
        exact = (lines.slope_lower == lines.slope_upper) & (
            (lines.bias_upper - lines.bias_lower).abs() <= LINEAR_SLACK * scale)  # one line up to rounding
        needed |= ~exact.reshape(exact.shape[0], -1).all(0)
    return None if bool(needed.all()) else torch.nonzero(needed).flatten()


def _crown_computed(engine: BoundEngine, node) -> bool:
    return node.name in engine.crown_targets and not engine._exact_by_ibp(node)


def _interval_bounds_reach_a_relaxation(engine: BoundEngine, node) -> bool:
    """Are the bounds of ``node`` (or of an affine descendant whose bounds interval steps derive
    from them) read by a nonlinear node? False when CROWN computes them itself."""
    if _crown_computed(engine, node):
        return False
    todo, seen = [node.name], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in engine.needs_bounds:
            return True
        todo += [c.name for c in engine.nodes if name in c.inputs and engine.rules[c.name].kind == "affine"
                 and not _crown_computed(engine, c)]
    return False


def _optimize_node(engine: BoundEngine, node, box: Box, bounds: Bounds, iterations: int, lr: float,
                   deadline: float | None, max_param_elements: float,
                   rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """Best ``[B, 2m]`` lower bounds of the rows ``+e_j`` / ``-e_j`` of ``node`` for the neurons
    ``rows`` (flat indices; None: all ``m = n``), None when skipped."""
    shape = engine.shapes[node.name]
    n = math.prod(shape)
    before = engine.index[node.name]
    per_row = param_elements(engine, before)
    m = n if rows is None else len(rows)
    if per_row == 0 or 2 * m * per_row * box.batch > max_param_elements:
        return None
    eye = torch.eye(n, dtype=engine.dtype, device=engine.device)
    if rows is not None:
        eye = eye[rows]
    A = torch.cat([eye, -eye]).reshape(1, 2 * m, *shape).expand(box.batch, -1, *shape)
    alpha = AlphaParams(engine, bounds, 2 * m, before=before)
    opt = torch.optim.Adam(alpha.tensors(), lr=lr)
    best = None
    for _ in range(iterations):
        if deadline is not None and time.monotonic() >= deadline:
            break
        lb = engine.bound_linear(node.name, A, box, bounds, alpha.params())
        best = lb.detach() if best is None else torch.maximum(best, lb.detach())
        if not lb.requires_grad:
            break
        opt.zero_grad()
        (-lb.clamp(min=-1e12).sum()).backward()
        opt.step()
        alpha.project()
    return best


@torch.no_grad()
def _refresh_after(engine: BoundEngine, index: int, bounds: Bounds) -> None:
    """Intersect the interval image of every node after ``index`` into its bounds (in place)."""
    for node in engine.nodes[index + 1:]:
        lo, hi = engine.interval_step(node, bounds)
        old_lo, old_hi = bounds[node.name]
        bounds[node.name] = (torch.maximum(lo, old_lo), torch.minimum(hi, old_hi))
