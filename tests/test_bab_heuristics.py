"""Branch-and-bound heuristics: input-box clipping, BBPS scores, tightened root bounds, and the
loop under every branching option (proves a true property, never a false one)."""

from __future__ import annotations

import time

import pytest
import torch

from genbab.bab.bbps import node_scores, root_shortcuts
from genbab.bab.branching import consumers
from genbab.bab.clipping import clip_box
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bounds import compute_bounds, engine_for
from genbab.bounds.alpha import tighten_intermediates
from tests.test_bab import BOX, C_Y2, assert_replayed_counterexample, run_with_domain_attack, sampled_min_y2, toy


def test_clipping_keeps_every_counterexample_and_shrinks() -> None:
    """Points of the box where every row's linear bound is <= 0 stay inside the clipped box."""
    gen = torch.Generator().manual_seed(1)
    D, S, n = 64, 3, 4
    lower = -torch.rand(D, n, generator=gen, dtype=torch.float64)
    upper = torch.rand(D, n, generator=gen, dtype=torch.float64)
    A = torch.randn(D, S, n, generator=gen, dtype=torch.float64)
    A[:, :, 0] = 0.0  # a coordinate no row depends on is left alone
    c = torch.randn(D, S, generator=gen, dtype=torch.float64) * 0.3
    rows = c + torch.minimum(A * lower.unsqueeze(1), A * upper.unsqueeze(1)).sum(-1)  # exact box minima
    lo, hi = clip_box(lower, upper, A, rows)
    x = lower.unsqueeze(1) + (upper - lower).unsqueeze(1) * torch.rand(D, 20_000, n, generator=gen,
                                                                           dtype=torch.float64)
    violating = ((x @ A.transpose(1, 2)) + c.unsqueeze(1) <= 0).all(dim=-1)  # [D, N]
    inside = ((x >= lo.unsqueeze(1)) & (x <= hi.unsqueeze(1))).all(dim=-1)
    assert bool(inside[violating].all())
    assert torch.equal(lo[:, 0], lower[:, 0]) and torch.equal(hi[:, 0], upper[:, 0])
    assert bool(((hi - lo) < (upper - lower) - 1e-9).any())  # some boxes really shrink
    assert bool((lo >= lower).all() and (hi <= upper).all())


def node_values(engine, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value on each sample of ``xs`` (the engine's float64 graph, one sample at a time)."""
    graph = engine.graph
    out: dict[str, list] = {}
    for x in xs:
        env = {graph.input_name: x.reshape(graph.input_shape)}
        for node in graph.nodes:
            env[node.name] = node.call([env[i] for i in node.inputs])
        for k, v in env.items():
            out.setdefault(k, []).append(v)
    return {k: torch.stack(v) for k, v in out.items()}


def test_tightened_intermediate_bounds_are_sound_and_tighter() -> None:
    """Tightened bounds contain sampled node values, are strictly tighter somewhere, and the output
    bound built from them is at least CROWN's and below the sampled minimum."""
    model = toy()
    engine = engine_for(model)
    box = engine.box(BOX[0].reshape(1, -1), BOX[1].reshape(1, -1))
    with torch.no_grad():
        crown = engine.intermediate_bounds(box, "crown")
    tight = tighten_intermediates(engine, box, crown, iterations=6)
    xs = torch.rand(2_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    values = node_values(engine, xs)
    gained = 0.0
    for name, (lo, hi) in tight.items():
        c_lo, c_hi = crown[name]
        assert bool((lo >= c_lo - 1e-12).all() and (hi <= c_hi + 1e-12).all())
        gained += float(((c_hi - c_lo) - (hi - lo)).sum())
        if name in values:
            v = values[name].reshape(len(xs), -1)
            assert bool((v >= lo.reshape(1, -1) - 1e-9).all() and (v <= hi.reshape(1, -1) + 1e-9).all())
    assert gained > 0
    # the output row bound computed FROM the tightened bounds: no looser than from CROWN's, and
    # still below every sampled output
    C = C_Y2.reshape(1, 1, -1)
    with torch.no_grad():
        from_crown = float(engine.bound_rows(C, box, crown).reshape(-1)[0])
        from_tight = float(engine.bound_rows(C, box, {**crown, **tight}).reshape(-1)[0])
    assert from_tight >= from_crown - 1e-12
    assert from_tight <= float(values[engine.graph.output_name].reshape(len(xs), -1)[:, 2].min())
    assert from_tight <= sampled_min_y2(model)


def test_bbps_scores_estimate_gains_for_every_neuron() -> None:
    model = toy()
    engine = engine_for(model)
    box = engine.box(BOX[0].reshape(1, -1), BOX[1].reshape(1, -1))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown")
    candidates = sorted(n for n in engine.needs_bounds if n != engine.graph.input_name)
    shortcuts = root_shortcuts(engine, candidates, box, bounds)
    assert shortcuts, "every small node gets a shortcut"
    readers = consumers(engine, candidates)
    record: dict = {}
    engine.bound_rows(C_Y2.reshape(1, 1, -1), box, bounds, record=record)
    scored = 0
    for name, sc in shortcuts.items():
        reader = readers[name][0]
        if engine.rules[reader.name].kind != "elementwise" or reader.name not in record:
            continue
        lo, hi = (b.reshape(1, -1) for b in bounds[name])
        lam = record[reader.name][:, 0].reshape(1, -1)
        scores = node_scores(engine, reader, sc, lam, lo, hi, (lo + hi) / 2, box)
        assert scores.shape == lo.shape and not bool(scores.isnan().any())
        # a neuron the bound does not depend on cannot gain anything
        assert bool((scores[lam == 0] <= 1e-12).all())
        # pruned scoring: the top-k neurons by the cheap upper bound get their exact scores
        k = max(1, lo.shape[1] // 3)
        pruned = node_scores(engine, reader, sc, lam, lo, hi, (lo + hi) / 2, box, top_k=k)
        kept = torch.isfinite(pruned)
        assert int(kept.sum()) == k
        torch.testing.assert_close(pruned[kept], scores[kept])
        scored += 1
    assert scored > 0


def test_bbps_score_upper_bounds_hold() -> None:
    """The cheap bound used to prune BBPS scoring is above every exact worst-child gain."""
    from genbab.bab.bbps import Shortcut, _exact_scores, _score_upper_bounds

    gen = torch.Generator().manual_seed(7)
    D, n, n_in = 5, 12, 9
    sc = Shortcut(torch.randn(n, n_in, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64),
                  torch.randn(n, n_in, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64))
    G = torch.randn(D, n_in, generator=gen, dtype=torch.float64)
    center = torch.randn(D, n_in, generator=gen, dtype=torch.float64)
    radius = torch.rand(D, n_in, generator=gen, dtype=torch.float64)
    base = (G * center).sum(-1) - (G.abs() * radius).sum(-1)
    children = [tuple(torch.randn(D, n, generator=gen, dtype=torch.float64) for _ in range(3)) for _ in range(2)]
    children = [(d_p.abs(), -d_n.abs(), c) for d_p, d_n, c in children]
    exact = _exact_scores(sc, children, G, base, center, radius, None)
    bound = _score_upper_bounds(sc, children, center, radius)
    assert bool((bound >= exact - 1e-9).all())
    assert bool((bound - exact > 1e-6).any())  # a real bound, not the exact value


def _bab(model, floor: float, config: BabConfig, seconds: float) -> str:
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64), config)
    return bab.run(time.monotonic() + seconds).status


@pytest.mark.parametrize("config", [BabConfig(input_split_max_dims=0),  # activation splits, BBPS, table points
                                    BabConfig()])  # two inputs: input splits with clipping
def test_bab_proves_half_the_gap_alpha_crown_leaves(config) -> None:
    """Floor halfway between alpha-CROWN's bound and the sampled minimum: proved (the intercept
    score with midpoints needs over 10^4 domains here; BBPS with table points about 25)."""
    model = toy()
    lb, _ = compute_bounds(model, *BOX, "alpha-crown", C_Y2)
    floor = float(lb) + 0.5 * (sampled_min_y2(model) - float(lb))
    assert _bab(model, floor, config, 60) == "unsat"


@pytest.mark.parametrize("branching,points,input_dims", [
    ("bbps", "opt", 0), ("babsr", "uniform", 0), ("bbps", "uniform", 0), ("babsr", "opt", 32)])
def test_bab_options_never_prove_a_false_property(branching, points, input_dims) -> None:
    """A false property under every branching option: ``sat`` with a replayed witness."""
    model = toy()
    config = BabConfig(branching=branching, branching_points=points, input_split_max_dims=input_dims)
    floor = sampled_min_y2(model) + 0.01
    assert_replayed_counterexample(model, run_with_domain_attack(model, floor, config, 20), floor)


def test_memory_budget_stops_the_search_with_unknown() -> None:
    """A tiny memory budget caps the open domains: the search ends ``unknown``, not by timeout."""
    model = toy()
    lb, _ = compute_bounds(model, *BOX, "alpha-crown", C_Y2)
    floor = float(lb) + 0.5 * (sampled_min_y2(model) - float(lb))
    config = BabConfig(input_split_max_dims=0, branching="babsr", branching_points="uniform", memory_bytes=2e5)
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64), config)
    result = bab.run(time.monotonic() + 60)
    assert result.status == "unknown" and result.open > bab.max_domains > 0


def test_input_scores_floor_the_coefficients_and_fall_back_to_relative_width() -> None:
    """An input with coefficient 0 (one entering through an even function) is still split when it
    is wide enough; a domain whose coefficients are all 0 is split along its relatively widest input."""
    from genbab.bab.branching import input_scores

    A = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    width = torch.tensor([[1.0, 50.0, 1.0], [1.0, 3.0, 2.0]], dtype=torch.float64)
    no_floor = input_scores(A[:1], width[:1], 0.0)
    assert no_floor.tolist() == [[0.5, 0.0, 1.0]]  # the zero-coefficient input is never chosen
    floored = input_scores(A, width, 0.1, scale=torch.tensor([1.0, 10.0, 1.0], dtype=torch.float64))
    assert floored[0].tolist() == pytest.approx([0.5, 0.2 * 50 / 2, 1.0])
    assert int(floored[0].argmax()) == 1  # 0.1 * max|A| * 50 / 2 = 5 beats |A| w / 2 = 1
    assert floored[1].tolist() == pytest.approx([1.0, 0.3, 2.0])  # all zero: width / root width
    assert int(floored[1].argmax()) == 2


def _relu_chain(tmp_path, second: str):
    """``y = W3 second(W2 relu(W1 x + b1)) `` with 6 inputs, 12 and 8 hidden neurons; ``b1`` shifts a
    third of the first layer's neurons far up so they stay active on the box."""
    import numpy as np
    from onnx import helper, numpy_helper
    from test_bounds import tensor, write_model

    import genbab

    rng = np.random.default_rng(4)
    b1 = np.zeros(12, np.float32)
    b1[:4] = 50.0
    inits = [numpy_helper.from_array(rng.standard_normal((6, 12)).astype(np.float32), "w1"),
             numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(rng.standard_normal((12, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "w3")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Add", ["h1", "b1"], ["z1"]),
             helper.make_node("Relu", ["z1"], ["a1"]), helper.make_node("MatMul", ["a1", "w2"], ["z2"]),
             helper.make_node(second, ["z2"], ["a2"]), helper.make_node("MatMul", ["a2", "w3"], ["y"])]
    return genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [1, 6])], [tensor("y", [1, 2])], inits))


@pytest.mark.parametrize("second", ["Relu", "Sigmoid"])
def test_tightening_only_unstable_neurons_is_sound_and_skips_stable_ones(tmp_path, second: str) -> None:
    """``shaping_neurons``: a ReLU's input neurons whose interval straddles 0, all neurons of a
    sigmoid's input (None); tightening only those keeps the stable neurons' CROWN bounds, tightens
    the others like the full run does at most, and stays sound on samples."""
    from genbab.bounds.alpha import shaping_neurons

    engine = engine_for(_relu_chain(tmp_path, second))
    box = engine.box(-torch.ones(1, 6, dtype=torch.float64), torch.ones(1, 6, dtype=torch.float64))
    with torch.no_grad():
        crown = engine.intermediate_bounds(box, "crown")
    z1 = next(n.inputs[0] for n in engine.nodes if n.op_type == "Relu")
    lo, hi = crown[z1]
    rows = shaping_neurons(engine, z1, lo, hi)
    straddling = torch.nonzero(((lo < 0) & (hi > 0)).reshape(-1)).flatten()
    assert rows is not None and torch.equal(rows, straddling) and 0 < len(rows) <= 8
    z2 = next(n.inputs[0] for n in engine.nodes if n.op_type == second and n.inputs[0] != z1)
    rows2 = shaping_neurons(engine, z2, *crown[z2])
    full = tighten_intermediates(engine, box, crown, iterations=6)
    some = tighten_intermediates(engine, box, crown, iterations=6, only_unstable=True)
    if second == "Sigmoid":  # every neuron shapes the sigmoid's relaxation: the same run
        assert rows2 is None
        assert all(torch.equal(some[k][0], full[k][0]) and torch.equal(some[k][1], full[k][1]) for k in full)
    else:
        lo2, hi2 = crown[z2]
        assert torch.equal(rows2, torch.nonzero(((lo2 < 0) & (hi2 > 0)).reshape(-1)).flatten())
        assert 0 < len(rows2) < lo2.numel()
        stable = torch.ones(lo2.numel(), dtype=torch.bool)
        stable[rows2] = False
        l_, h_ = some[z2]
        assert torch.equal(l_.reshape(-1)[stable], lo2.reshape(-1)[stable])
        assert torch.equal(h_.reshape(-1)[stable], hi2.reshape(-1)[stable])
        assert float((h_ - l_).reshape(-1)[rows2].sum()) < float((hi2 - lo2).reshape(-1)[rows2].sum())
    xs = torch.rand(3_000, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    values = node_values(engine, xs)
    for name, (l_, h_) in some.items():
        if name in values:
            v = values[name].reshape(len(xs), -1)
            assert bool((v >= l_.reshape(1, -1) - 1e-9).all() and (v <= h_.reshape(1, -1) + 1e-9).all()), name
    assert full.keys() == some.keys()


def test_shaping_neurons_of_a_two_kink_reader_include_both_kinks(tmp_path) -> None:
    """``Clip(z, 0, 1)`` is linear away from 0 and 1: the neurons whose interval straddles either
    kink are the ones to tighten, those inside ``[0, 1]`` or outside it are not."""
    import numpy as np
    from onnx import helper, numpy_helper
    from test_bounds import tensor, write_model

    import genbab
    from genbab.bounds.alpha import shaping_neurons

    w = np.eye(4, dtype=np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(1.0), "hi"), numpy_helper.from_array(w, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Clip", ["z", "lo", "hi"], ["c"]),
             helper.make_node("MatMul", ["c", "w2"], ["y"])]
    engine = engine_for(genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])],
                                                      inits)))
    z = next(n.inputs[0] for n in engine.nodes if engine.rules[n.name].kind == "elementwise")
    lo = torch.tensor([[-0.5, 0.2, 0.5, 2.0]], dtype=torch.float64)
    hi = torch.tensor([[0.5, 0.8, 1.5, 3.0]], dtype=torch.float64)
    lo, hi = lo.reshape(1, *engine.shapes[z]), hi.reshape(1, *engine.shapes[z])
    assert shaping_neurons(engine, z, lo, hi).tolist() == [0, 2]
