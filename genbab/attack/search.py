"""Gradient-free falsification: a batched random local search over the input box.

For networks that are piecewise constant in the input (``Sign`` activations, ``ArgMax`` gates,
casts to integers) the gradient is zero almost everywhere and projected gradient descent keeps
its random starts; for a model genbab cannot translate there is no gradient at all (the margin
is evaluated by onnxruntime). Both minimise ``m(x) = max_j (C_k f(x) - d_k)_j`` over the box of
case ``k`` from evaluations only:

- each round starts ``b`` points: half uniform in the box, half from the best points seen (an
  elite pool), so progress carries over rounds;
- each step proposes, per point, one move of a random coordinate ``i``: to ``l_i``, to ``u_i``,
  or ``x_i + r w_i z`` (``z`` standard normal, clipped, ``r`` decaying from 0.5 to 0.005), and
  keeps it when the margin does not increase (ties are accepted, so plateaus of a piecewise
  constant margin are walked across rather than stopped at);
- every point with ``m <= 0`` is replayed on onnxruntime (:class:`~genbab.attack.witness.Replayer`)
  before it counts.

``evaluate(x, case)`` gives the margins ``[b]`` of flattened inputs ``x`` ``[b, n_in]`` (float64);
:func:`torch_margins` and :func:`onnxruntime_margins` build it for a translated model and for
an ONNX session.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from genbab.attack.witness import Replayer, Witness
from genbab.spec.spec import Spec

Evaluate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SearchAttack:
    """Random local search for a counterexample of ``spec``; counts in ``best_margin``/``points``."""

    def __init__(self, evaluate: Evaluate, spec: Spec, replayer: Replayer, seed: int = 0, batch: int = 256,
                 steps: int = 40, elite: int = 16, replays_per_step: int = 4):
        self.evaluate, self.spec, self.replayer = evaluate, spec, replayer
        self.generator = torch.Generator().manual_seed(seed)
        self.batch, self.steps, self.elite_size, self.replays = batch, steps, elite, replays_per_step
        self.lower, self.upper = spec.lower.double(), spec.upper.double()
        self.best_margin = math.inf
        self.points = 0
        self.rounds = 0
        self.elite_x = torch.empty(0, spec.n_inputs, dtype=torch.float64)
        self.elite_case = torch.empty(0, dtype=torch.long)
        self.elite_m = torch.empty(0, dtype=torch.float64)

    def run(self, deadline: float, max_rounds: int | None = None) -> Witness | None:
        """Rounds until a confirmed witness, the deadline, or ``max_rounds``."""
        while time.monotonic() < deadline and (max_rounds is None or self.rounds < max_rounds):
            witness = self.round(deadline)
            self.rounds += 1
            if witness is not None:
                return witness
        return None

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64)

    def _starts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Half from the elite pool (when it has points), the rest uniform in the cases' boxes."""
        n_cases = self.spec.n_cases
        n_elite = min(len(self.elite_x), self.batch // 2)
        pick = torch.randint(0, max(1, len(self.elite_x)), (n_elite,), generator=self.generator)
        n_new = self.batch - n_elite
        case = (torch.arange(n_new) + self.rounds * n_new) % n_cases
        lo, hi = self.lower[case], self.upper[case]
        fresh = lo + self._rand(n_new, self.spec.n_inputs) * (hi - lo)
        if self.rounds == 0:  # the centres and a corner of every box first
            k = min(n_new, 2 * n_cases)
            corner = (self._rand(k, self.spec.n_inputs) > 0.5).double()
            fresh[:k] = torch.where(torch.arange(k)[:, None] % 2 == 0, (lo[:k] + hi[:k]) / 2,
                                    lo[:k] + corner * (hi[:k] - lo[:k]))
        return torch.cat([self.elite_x[pick], fresh]), torch.cat([self.elite_case[pick], case])

    def round(self, deadline: float) -> Witness | None:
        """One batch of points moved for ``steps`` coordinate steps."""
        x, case = self._starts()
        lo, hi = self.lower[case], self.upper[case]
        m = self._margins(x, case)
        witness = self._check(x, m, case)
        b, n = x.shape
        rows = torch.arange(b)
        for step in range(self.steps):
            if witness is not None or time.monotonic() >= deadline:
                break
            r = 0.5 * (0.01 ** (step / max(1, self.steps - 1)))
            i = torch.randint(0, n, (b,), generator=self.generator)
            kind = torch.randint(0, 4, (b,), generator=self.generator)  # 0: lower, 1: upper, 2-3: a step
            width = (hi - lo)[rows, i]
            moved = x[rows, i] + r * width * torch.randn(b, generator=self.generator, dtype=torch.float64)
            value = torch.where(kind == 0, lo[rows, i], torch.where(kind == 1, hi[rows, i], moved))
            value = torch.minimum(torch.maximum(value, lo[rows, i]), hi[rows, i])
            proposal = x.clone()
            proposal[rows, i] = value
            m_new = self._margins(proposal, case)
            keep = m_new <= m
            x = torch.where(keep[:, None], proposal, x)
            m = torch.where(keep, m_new, m)
            witness = self._check(x, m, case)
        self._remember(x, case, m)
        return witness

    def _margins(self, x: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        self.points += len(x)
        with torch.no_grad():
            return self.evaluate(x, case).double().cpu().nan_to_num(nan=math.inf)

    def _remember(self, x: torch.Tensor, case: torch.Tensor, m: torch.Tensor) -> None:
        """Keep the ``elite`` lowest-margin points seen."""
        xs, cs, ms = torch.cat([self.elite_x, x]), torch.cat([self.elite_case, case]), torch.cat([self.elite_m, m])
        order = torch.argsort(ms)[: self.elite_size]
        self.elite_x, self.elite_case, self.elite_m = xs[order], cs[order], ms[order]

    def _check(self, x: torch.Tensor, m: torch.Tensor, case: torch.Tensor) -> Witness | None:
        """Track the best margin; replay the most violating points with ``m <= 0``."""
        self.best_margin = min(self.best_margin, float(m.min()))
        violating = torch.nonzero(m <= 0).flatten()
        for i in violating[torch.argsort(m[violating])][: self.replays].tolist():
            witness = self.replayer.confirm(x[i].numpy(), int(case[i]))
            if witness is not None:
                return witness
        return None


def torch_margins(model, spec: Spec) -> Evaluate:
    """Margins from the translated model's forward pass (its dtype and device)."""
    C, d = spec.C, spec.d

    def evaluate(x: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        y = model.forward_flat(x.to(model.device, model.dtype)).double().cpu()
        return (torch.einsum("brn,bn->br", C[case], y) - d[case]).amax(dim=-1)
    return evaluate


def onnxruntime_margins(replayer: Replayer) -> Evaluate:
    """Margins from onnxruntime, one sample per run (a model genbab cannot translate)."""
    C, d = torch.from_numpy(replayer.C), torch.from_numpy(replayer.d)

    def evaluate(x: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        ys = [replayer.run(row.numpy().astype(replayer.dtype)) for row in x]
        y = torch.from_numpy(np.stack(ys).astype(np.float64))
        return (torch.einsum("brn,bn->br", C[case], y) - d[case]).amax(dim=-1)
    return evaluate
