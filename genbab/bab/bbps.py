"""BBPS: branching scores from bound propagation with shortcuts.

For a candidate node ``z`` read by an elementwise node ``h``, the last backward pass left the
coefficient ``Lambda`` of the domain's best row at ``h(z)``. Through ``h``'s lines
``s_l z + b_l <= h(z) <= s_u z + b_u`` it becomes the coefficient ``a = Lambda+ s_l + Lambda- s_u``
on ``z`` and the bias ``beta = Lambda+ b_l + Lambda- b_u``. Instead of propagating ``a`` further
back, the *shortcut* replaces ``z`` by its root linear bounds in the input,
``W_l x + c_l <= z <= W_u x + c_u``:

    estimate = min_x  (a+ W_l + a- W_u) x + a+ c_l + a- c_u + sum(beta)
             = G x0 - |G| eps + g + sum(beta).

Splitting neuron ``j`` at ``p`` rebuilds ``h``'s lines on ``[l_j, p]`` and ``[p, u_j]``; only
``a_j`` and ``beta_j`` change, so each child's estimate needs one rank-one update of ``G``:
``G' = G + (a'_j+ - a_j+) W_l[j] + (a'_j- - a_j-) W_u[j]``. The score of ``j`` is the worse
child's gain ``min_c (estimate_c - estimate)``; every neuron and both children are scored in
one batched computation per node (chunked over neurons to bound memory). The scores only
steer the search; soundness never depends on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine, Bounds
from genbab.model.graph import Node

MAX_SHORTCUT_BYTES = 256e6  # per node: [2, n, n_inputs] float64
CHUNK_ELEMENTS = 4e6


@dataclass(frozen=True)
class Shortcut:
    """Root linear bounds of one node: ``W_l x + c_l <= z <= W_u x + c_u`` (flat ``[n, n_in]``, ``[n]``)."""

    W_l: torch.Tensor
    c_l: torch.Tensor
    W_u: torch.Tensor
    c_u: torch.Tensor


def root_shortcuts(engine: BoundEngine, names: list[str], box: Box, bounds: Bounds,
                   deadline: float | None = None) -> dict[str, Shortcut]:
    """CROWN linear bounds (rows ``+e_j`` and ``-e_j``) of every named node over the root box
    (``box.batch == 1``), skipping nodes whose shortcut would exceed ``MAX_SHORTCUT_BYTES``."""
    n_in = math.prod(engine.graph.input_shape)
    out = {}
    for name in names:
        shape = engine.shapes[name]
        n = math.prod(shape)
        if 2 * n * n_in * 8 > MAX_SHORTCUT_BYTES or name == engine.graph.input_name:
            continue
        eye = torch.eye(n, dtype=engine.dtype, device=engine.device)
        A = torch.cat([eye, -eye]).reshape(1, 2 * n, *shape)
        with torch.no_grad():
            A_in, bias = engine.backward(name, A, bounds)
        if A_in is None:
            continue
        A_in = A_in.reshape(2 * n, n_in)
        bias = bias.reshape(2 * n)
        out[name] = Shortcut(A_in[:n], bias[:n], -A_in[n:], -bias[n:])
    return out


def _concretize(G: torch.Tensor, center: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``min_x G x`` over the box: ``G x0 - |G| eps`` (sum over the last axis)."""
    return (G * center).sum(-1) - (G.abs() * radius).sum(-1)


def node_scores(engine: BoundEngine, reader: Node, shortcut: Shortcut, lam: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor, points: torch.Tensor, box: Box) -> torch.Tensor:
    """``[D, n]`` worst-child estimated gains of splitting each neuron of ``reader``'s input at ``points``.

    ``lam``: ``[D, n]`` coefficient of the best row at ``reader``'s output; ``lo``/``hi``/``points``: ``[D, n]``."""
    op = engine.rules[reader.name].op
    D, n = lam.shape
    lam_p, lam_n = lam.clamp(min=0), lam.clamp(max=0)

    def coeffs(l, u):
        """(a, beta): coefficient on z and per-neuron bias of ``Lambda h(z)`` with lines on [l, u]."""
        lines = op.relax(l, u)
        a = lam_p * lines.slope_lower + lam_n * lines.slope_upper
        beta = lam_p * lines.bias_lower + lam_n * lines.bias_upper
        return a, torch.where(lam == 0, torch.zeros_like(beta), beta)

    a, beta = coeffs(lo, hi)
    a_p, a_n = a.clamp(min=0), a.clamp(max=0)
    G = a_p @ shortcut.W_l + a_n @ shortcut.W_u  # [D, n_in]
    center = box.center.reshape(D, -1).to(G.dtype)
    radius = box.radius.reshape(D, -1).to(G.dtype)
    base = _concretize(G, center, radius)
    score = torch.full((D, n), torch.inf, dtype=G.dtype)
    for c_lo, c_hi in ((lo, points), (points, hi)):
        a_c, beta_c = coeffs(c_lo, c_hi)
        d_p, d_n = a_c.clamp(min=0) - a_p, a_c.clamp(max=0) - a_n  # [D, n]
        d_const = d_p * shortcut.c_l + d_n * shortcut.c_u + (beta_c - beta)
        d_const = torch.nan_to_num(d_const, nan=-torch.inf)
        chunk = max(1, int(CHUNK_ELEMENTS // max(1, D * G.shape[1])))
        gains = []
        for s in range(0, n, chunk):
            e = slice(s, s + chunk)
            G_new = (G.unsqueeze(1) + d_p[:, e, None] * shortcut.W_l[e] + d_n[:, e, None] * shortcut.W_u[e])
            gains.append(_concretize(G_new, center.unsqueeze(1), radius.unsqueeze(1)) - base.unsqueeze(1))
        gain = torch.cat(gains, dim=1) + d_const
        score = torch.minimum(score, gain.nan_to_num(nan=-torch.inf))
    return score
