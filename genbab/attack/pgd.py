"""Falsification: random sampling, then projected gradient descent with many random restarts
(and, where the gradient vanishes, a gradient-free search: :mod:`genbab.attack.search`).

For case ``k`` of the spec (box ``[l_k, u_k]``, unsafe set ``C_k y <= d_k``) we minimise the
margin ``m_k(x) = max_j (C_k f(x) - d_k)_j`` over the box; ``m_k(x) <= 0`` is a counterexample.
Each step is a signed-gradient step ``x <- clip(x - s_t * (u - l) * sign(g), l, u)`` with a
cosine-decaying relative step ``s_t`` and heavy-ball momentum on ``g``. Starting points are
drawn uniformly (plus box centres and corners) for all cases at once, batched. Every candidate
with ``m <= 0`` is replayed by :class:`~genbab.attack.witness.Replayer` before it counts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from genbab.attack.witness import Replayer, Witness
from genbab.model.model import Model
from genbab.spec.spec import Spec


@dataclass(frozen=True)
class AttackConfig:
    """Knobs of the attack; defaults suit the VNN-COMP benchmarks on a CPU."""

    steps: int = 60
    initial_step: float = 0.25
    final_step: float = 0.002
    momentum: float = 0.75
    points_per_case: int = 32
    max_batch: int = 2048
    activation_budget: float = 1.5e8  # floats of activations (and their gradients) per batch
    replays_per_step: int = 4


@dataclass
class AttackStats:
    rounds: int = 0
    points: int = 0
    steps: int = 0
    replays: int = 0
    best_margin: float = math.inf
    history: list[tuple[float, float]] = field(default_factory=list)  # (seconds, best margin)


class Attacker:
    """Searches for a counterexample of ``spec`` on ``model`` until a deadline."""

    def __init__(self, model: Model, spec: Spec, replayer: Replayer, config: AttackConfig = AttackConfig(),
                 seed: int = 0, device: str | torch.device = "cpu"):
        self.model, self.spec, self.replayer, self.config = model, spec, replayer, config
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.dtype = model.dtype
        self.lower = spec.lower.to(self.device, self.dtype)
        self.upper = spec.upper.to(self.device, self.dtype)
        self.C = spec.C.to(self.device, self.dtype)
        self.d = spec.d.to(self.device, self.dtype)
        self.stats = AttackStats()
        self.batch = self._batch_size()
        self.start = time.monotonic()
        self.seed = seed
        self.flat = 0.0  # share of the last round's starts with a zero gradient
        self.search = None  # the gradient-free search, made when the gradients vanish

    def _batch_size(self) -> int:
        """Points per batch so that activations and gradients stay within the budget."""
        per_point = sum(math.prod(n.out_shape) for n in self.model.graph.nodes) + self.model.n_inputs
        return int(max(1, min(self.config.max_batch, self.config.activation_budget // (3 * per_point))))

    def margin(self, x: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        """``max_j (C_case f(x) - d_case)_j`` for a batch of flattened inputs ``x`` ``[b, n_in]``."""
        y = self.model.forward_flat(x)
        return (torch.einsum("brn,bn->br", self.C[case], y) - self.d[case]).amax(dim=-1)

    def run(self, deadline: float, on_progress: Callable[[AttackStats], None] | None = None,
            stall_rounds: int | None = None) -> Witness | None:
        """Sample, then PGD rounds with fresh restarts, until a confirmed witness or the deadline.

        With ``stall_rounds``, also give up after that many rounds in a row that do not improve
        the best margin by more than 0.1% (the attack has converged; bounds may do better)."""
        witness = self._sample_round(deadline)
        stalled = 0
        while witness is None and time.monotonic() < deadline:
            before = self.stats.best_margin
            witness = self._pgd_round(deadline)
            if witness is None and self.flat >= 0.5:  # piecewise constant here: search without gradients
                witness = self._search_round(deadline)
            self.stats.rounds += 1
            if on_progress is not None:
                on_progress(self.stats)
            improved = before - self.stats.best_margin > 1e-3 * max(1.0, abs(before))
            stalled = 0 if improved else stalled + 1
            if stall_rounds is not None and stalled >= stall_rounds:
                break
        self.stats.replays = self.replayer.replays
        return witness

    def _cases_for_round(self, n_points: int) -> torch.Tensor:
        """Case index of each starting point: every case in turn, rotating across rounds."""
        n_cases = self.spec.n_cases
        offset = (self.stats.rounds * n_points) % n_cases
        return (torch.arange(n_points) + offset) % n_cases

    def _starts(self, case: torch.Tensor, kind: str) -> torch.Tensor:
        """Starting points in the boxes of ``case``: uniform, centres, or random corners."""
        lo, hi = self.lower[case], self.upper[case]
        if kind == "centre":
            return (lo + hi) / 2
        u = torch.rand(lo.shape, generator=self.generator, dtype=self.dtype).to(self.device)
        if kind == "corner":
            u = (u > 0.5).to(self.dtype)
        return lo + u * (hi - lo)

    def _sample_round(self, deadline: float) -> Witness | None:
        """Evaluate centres, corners and uniform points of every case without gradients."""
        n = min(self.batch, max(self.spec.n_cases * 4, 64))
        case = self._cases_for_round(n)
        kinds = ["centre"] if n <= self.spec.n_cases else ["centre", "corner", "uniform", "uniform"]
        for kind in kinds:
            if time.monotonic() >= deadline:
                return None
            x = self._starts(case, kind)
            with torch.no_grad():
                m = self.margin(x, case)
            self.stats.points += len(x)
            witness = self._check(x, m, case)
            if witness is not None:
                return witness
        return None

    def _pgd_round(self, deadline: float) -> Witness | None:
        """One batch of restarts optimised for ``config.steps`` signed-gradient steps."""
        n = min(self.batch, self.spec.n_cases * self.config.points_per_case)
        case = self._cases_for_round(n)
        x = self._starts(case, "uniform")
        self.stats.points += n
        return self.descend(x, case, self.lower[case], self.upper[case], deadline, self.config.steps)

    def _search_round(self, deadline: float) -> Witness | None:
        """One round of :class:`~genbab.attack.search.SearchAttack` on the translated model."""
        from genbab.attack.search import SearchAttack, torch_margins

        if self.search is None:
            self.search = SearchAttack(torch_margins(self.model, self.spec), self.spec, self.replayer,
                                       seed=self.seed, batch=min(self.batch, 512))
        before = self.search.points
        witness = self.search.run(deadline, max_rounds=self.search.rounds + 1)
        self.stats.points += self.search.points - before
        if self.search.best_margin < self.stats.best_margin:
            self.stats.best_margin = self.search.best_margin
            self.stats.history.append((time.monotonic() - self.start, self.search.best_margin))
        return witness

    def descend(self, x: torch.Tensor, case: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, deadline: float,
                steps: int) -> Witness | None:
        """``steps`` signed-gradient steps on the margins of ``case`` from ``x`` ``[b, n_in]``, each
        point kept in its own box ``[lo, hi]`` (inside its case's box); the first confirmed witness."""
        cfg = self.config
        x, lo, hi = (t.to(self.device, self.dtype) for t in (x, lo, hi))
        width = hi - lo
        velocity = torch.zeros_like(x)
        for step in range(steps):
            if time.monotonic() >= deadline:
                return None
            x.requires_grad_(True)
            m = self.margin(x, case)
            grad = self._gradient(m, x)
            if step == 0:
                self.flat = float((grad.abs().amax(dim=1) == 0).double().mean()) if len(grad) else 0.0
            witness = self._check(x.detach(), m.detach(), case)
            if witness is not None:
                return witness
            velocity = cfg.momentum * velocity + grad / grad.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
            frac = 0.5 * (1 + math.cos(math.pi * step / max(steps - 1, 1)))
            size = cfg.final_step + (cfg.initial_step - cfg.final_step) * frac
            x = torch.minimum(torch.maximum(x.detach() - size * width * velocity.sign(), lo), hi)
            self.stats.steps += 1
        with torch.no_grad():
            return self._check(x, self.margin(x, case), case)

    @staticmethod
    def _gradient(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``d sum(m) / dx``; zero where the output has no gradient path to the input (the
        steps then keep the random start, and the round is plain random sampling)."""
        if not m.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(m.sum(), x, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad.nan_to_num(nan=0.0)

    def _check(self, x: torch.Tensor, m: torch.Tensor, case: torch.Tensor) -> Witness | None:
        """Track the best margin; replay the most violating points with ``m <= 0``."""
        m = m.double().nan_to_num(nan=math.inf)
        best = float(m.min())
        if best < self.stats.best_margin:
            self.stats.best_margin = best
            self.stats.history.append((time.monotonic() - self.start, best))
        violating = torch.nonzero(m <= 0).flatten()
        if len(violating) == 0:
            return None
        order = violating[torch.argsort(m[violating])][: self.config.replays_per_step]
        for i in order.tolist():
            witness = self.replayer.confirm(x[i].detach().cpu().double().numpy(), int(case[i]))
            if witness is not None:
                return witness
        return None
