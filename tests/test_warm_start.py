"""Warm-started alpha/beta in branch and bound: children inherit their parent's values, and no
starting value whatsoever can make a bound unsound (they are projected before use)."""

from __future__ import annotations

import time

import torch

from genbab.bab.domains import root_domains, split
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bounds import engine_for
from genbab.bounds.alpha import AlphaConfig, optimize_rows
from tests.test_bab import BOX, C_Y2, sampled_min_y2, toy
from tests.test_bab_heuristics import node_values


def root_batch(bab: BranchAndBound):
    shapes = {c: bab.engine.shapes[c] for c in bab.candidates}
    return bab.bound(root_domains(shapes, bab.engine.dtype), time.monotonic() + 30)


def test_children_start_from_their_parents_values() -> None:
    model = toy()
    floor = sampled_min_y2(model) - 0.05
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64),
                         BabConfig(input_split_max_dims=0))
    parent = root_batch(bab)
    assert parent.params and all(k.startswith(("alpha/", "beta/")) for k in parent.params)
    assert all(v.shape[:2] == (1, 1) for v in parent.params.values())
    children = split(parent, bab.candidates)
    assert len(children) == 2
    for key, value in parent.params.items():
        assert torch.equal(children.params[key][0], value[0]) and torch.equal(children.params[key][1], value[0])
    grandchildren = bab.bound(children, time.monotonic() + 30)
    assert any(k.startswith("beta/") for k in grandchildren.params)  # the new split got multipliers


def test_any_warm_values_give_sound_bounds() -> None:
    """Random, huge and NaN starting values for every parameter and multiplier, on a domain with a
    split constraint: the bound stays below every sampled output satisfying that constraint."""
    model = toy()
    engine = engine_for(model)
    bab = BranchAndBound(engine, *BOX, C_Y2, torch.zeros(1, dtype=torch.float64), BabConfig(input_split_max_dims=0))
    parent = root_batch(bab)
    node = bab.candidates[0]
    shape = engine.shapes[node]
    upper = torch.full((1, *shape), torch.inf, dtype=torch.float64)
    upper.view(1, -1)[0, 0] = 0.0  # split: the first neuron of the first candidate node <= 0
    lower = torch.full_like(upper, -torch.inf)
    box = engine.box(BOX[0].reshape(1, -1), BOX[1].reshape(1, -1))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown", clamps={node: (lower, upper)})
    xs = torch.rand(20_000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    values = node_values(engine, xs)
    keep = values[node].reshape(len(xs), -1)[:, 0] <= 0
    with torch.no_grad():
        ys = model.forward_flat(xs[keep].float()).double()[:, 2]
    gen = torch.Generator().manual_seed(4)
    keys = list(parent.params) + [f"beta/{node}/lower", f"beta/{node}/upper"]
    for trial in range(4):
        warm = {}
        for key in keys:
            ref = parent.params.get(key, torch.zeros(1, 1, *shape, dtype=torch.float64))
            v = torch.randn(ref.shape, generator=gen, dtype=torch.float64) * 10 ** trial
            v[..., :1] = torch.nan if trial == 3 else v[..., :1]
            warm[key] = v
        lb = optimize_rows(engine, C_Y2.reshape(1, 1, -1), box, bounds, AlphaConfig(iterations=3),
                           splits={node: (lower.reshape(1, -1), upper.reshape(1, -1))}, warm=warm)
        assert float(lb) <= float(ys.min()) + 1e-6, f"trial {trial}"


def test_warm_values_are_projected_into_the_valid_set() -> None:
    """Whatever the starting values, the parameters in use are already projected (projecting
    again changes nothing) and every multiplier is >= 0: the invariant behind soundness."""
    from genbab.bounds.alpha import AlphaParams, BetaParams

    model = toy()
    engine = engine_for(model)
    box = engine.box(BOX[0].reshape(1, -1), BOX[1].reshape(1, -1))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown")
    plain = AlphaParams(engine, bounds, 2)
    assert plain.free, "the toy model has optimisable relaxations"
    gen = torch.Generator().manual_seed(5)
    warm = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) * 50 for k, v in plain.state().items()}
    alpha = AlphaParams(engine, bounds, 2, warm=warm)
    before = alpha.state()
    assert any(not torch.equal(before[k], plain.state()[k]) for k in before)  # the warm values were used
    alpha.project()
    for k, v in alpha.state().items():
        torch.testing.assert_close(v, before[k])
    from genbab.bab.branching import consumers

    hidden = sorted(n for n in engine.needs_bounds if n != engine.graph.input_name)
    readers = consumers(engine, hidden)
    node = next(n for n in hidden if any(engine.rules[r.name].kind == "elementwise" for r in readers[n]))
    assert node != engine.graph.input_name  # an activation split, on a nonlinearity's input
    lo, hi = bounds[node]
    splits = {node: (torch.zeros_like(lo), torch.zeros_like(hi))}
    beta_warm = {f"beta/{node}/{s}": torch.randn(1, 2, *lo.shape[1:], generator=gen, dtype=torch.float64)
                 for s in ("lower", "upper")}
    beta = BetaParams(splits, 2, torch.float64, warm=beta_warm)
    assert all(bool((t >= 0).all()) for t in beta.tensors())
    assert any(bool((t > 0).any()) for t in beta.tensors())
