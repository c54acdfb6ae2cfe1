"""Forward symbolic-interval bounds (:mod:`genbab.bounds.forward`) and CROWN rows for wide
neurons only: every node's bounds contain dense samples, in float64 and float32, on small
models of every op kind and on the shared models' first boxes with a few free coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper

import genbab
from genbab.bounds import compute_bounds, engine_for
from genbab.bounds.config import EngineConfig
from genbab.bounds.engine import NARROW
from conftest import all_models, first_spec_for, needs_benchmarks
from test_bounds import tensor, write_model

pytestmark = pytest.mark.usefixtures("one_thread")


def node_values(engine, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value ``[N, *shape]`` on the samples ``xs`` ``[N, n_in]`` (float64 graph)."""
    graph = engine.graph
    env = {graph.input_name: xs.reshape(len(xs), *graph.input_shape[1:]) if graph.input_shape[0] == 1
           else xs.reshape(len(xs), *graph.input_shape)}

    def run(x):
        values = {graph.input_name: x}
        for node in graph.nodes:
            values[node.name] = node.call([values[i] for i in node.inputs])
        return values

    if graph.input_shape[0] == 1:
        return torch.func.vmap(lambda x: run(x.unsqueeze(0)))(env[graph.input_name])
    out: dict[str, list] = {}
    for x in env[graph.input_name]:
        for k, v in run(x).items():
            out.setdefault(k, []).append(v)
    return {k: torch.stack(v) for k, v in out.items()}


def samples(lower: torch.Tensor, upper: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` points of the box: its corners along the free coordinates first, then uniform ones."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, lower.numel(), generator=gen, dtype=torch.float64)
    t[: n // 4] = t[: n // 4].round()  # corners
    return torch.minimum(torch.maximum(lower + t * (upper - lower), lower), upper)


def assert_contains(engine, bounds, values, slack: float = 0.0) -> None:
    for name, (lo, hi) in bounds.items():
        v = values[name].to(torch.float64).reshape(len(values[name]), -1)
        lo, hi = lo.to(torch.float64).reshape(1, -1), hi.to(torch.float64).reshape(1, -1)
        scale = slack * (1 + v.abs())
        assert bool((v >= lo - scale).all()), f"{name}: a sample below the forward lower bound"
        assert bool((v <= hi + scale).all()), f"{name}: a sample above the forward upper bound"


def every_op_model(tmp_path: Path) -> genbab.Model:
    """x [1, 4] -> MatMul (two neurons ignore x1) -> ReLU, Sigmoid, Tanh, Sin; products of two variables, a quotient,
    a product with a fixed input coordinate (a constant factor), ReduceSum: one output [1, 3]."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    w1[1, :2] = 0  # neurons 0, 1 of the first layer ignore x1
    w2 = rng.standard_normal((6, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
             numpy_helper.from_array(np.array([3], np.int64), "i3"),
             numpy_helper.from_array(np.array([2.5], np.float32), "two")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Sigmoid", ["a"], ["s"]),
             helper.make_node("Tanh", ["r"], ["t"]), helper.make_node("Mul", ["s", "t"], ["p"]),
             helper.make_node("Sin", ["a"], ["sn"]), helper.make_node("Add", ["s", "two"], ["den"]),
             helper.make_node("Div", ["sn", "den"], ["q"]), helper.make_node("Add", ["p", "q"], ["pq"]),
             helper.make_node("Gather", ["x", "i3"], ["c"], axis=1), helper.make_node("Mul", ["pq", "c"], ["pc"]),
             helper.make_node("MatMul", ["pc", "w2"], ["y0"]), helper.make_node("Sigmoid", ["y0"], ["y1"]),
             helper.make_node("Mul", ["y1", "y0"], ["y"])]
    return genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [1, 4])], [tensor("y", [1, 3])], inits))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_bounds_contain_samples_on_every_op_kind(tmp_path: Path, dtype: torch.dtype) -> None:
    model = every_op_model(tmp_path)
    engine = engine_for(model, EngineConfig.resolve("cpu", "torch", dtype))
    reference = engine_for(model)
    lower = torch.tensor([[-1.0, 0.2, -0.3, 0.7], [-0.1, 0.0, 0.0, -1.5], [0.3, -2.0, 1.0, 0.25]], dtype=torch.float64)
    upper = torch.tensor([[0.5, 0.9, -0.3, 0.7], [0.2, 0.0, 0.1, -1.5], [0.3, 1.0, 1.0, 0.25]], dtype=torch.float64)
    box = engine.box(lower, upper)
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "forward")
        ibp = engine.interval_bounds(box)
    for b in range(len(lower)):
        xs = samples(lower[b], upper[b], 4000, seed=b)
        values = node_values(reference, xs)
        assert_contains(engine, {k: (lo[b:b + 1], hi[b:b + 1]) for k, (lo, hi) in bounds.items()}, values)
    out = engine.graph.output_name
    width = lambda bd: float((bd[out][1] - bd[out][0]).sum())  # noqa: E731
    assert width(bounds) < 0.9 * width(ibp)  # the symbolic form pays off, not only the intersection


def test_forward_output_bounds_are_sound_and_tighter_than_ibp(tmp_path: Path) -> None:
    model = every_op_model(tmp_path)
    lower, upper = torch.tensor([-1.0, 0.2, -0.3, 0.7]), torch.tensor([-0.6, 0.5, -0.1, 0.7])
    xs = samples(lower.double(), upper.double(), 4000, seed=9)
    ys = node_values(engine_for(model), xs)[engine_for(model).graph.output_name].reshape(len(xs), -1)
    lb, ub = compute_bounds(model, lower, upper, "forward")
    ilb, iub = compute_bounds(model, lower, upper, "ibp")
    assert bool((lb[0] <= ys.min(0).values).all() and (ub[0] >= ys.max(0).values).all())
    assert float((ub - lb).sum()) < float((iub - ilb).sum())


def test_crown_rows_only_for_wide_neurons_agree_with_all_rows(tmp_path: Path) -> None:
    """Neurons of zero width keep their interval bounds; the others get the full CROWN bounds."""
    model = every_op_model(tmp_path)
    engine = engine_for(model)
    lower = torch.tensor([[-1.0, 0.2, -0.3, 0.7]], dtype=torch.float64)
    upper = torch.tensor([[-1.0, 0.9, -0.3, 0.7]], dtype=torch.float64)
    box = engine.box(lower, upper)
    checked = 0
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown")
        for name in engine.crown_targets:
            full = engine.crown_node(name, box, bounds)
            lo, hi = engine.interval_step(engine.nodes[engine.index[name]], bounds)
            part = engine.crown_node(name, box, bounds, current=(lo, hi))
            wide = ((hi - lo) > NARROW * (1 + torch.maximum(lo.abs(), hi.abs()))).reshape(-1)
            for f, p in zip(full, part):
                assert torch.equal(f.reshape(-1)[wide], p.reshape(-1)[wide])
                assert bool(torch.isinf(p.reshape(-1)[~wide]).all())
            checked += int(wide.sum()) > 0 and int((~wide).sum()) > 0
    assert checked  # some node has both kinds of neurons


def few_free_box(spec, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first case's box with all but ``k`` coordinates fixed at random points of it."""
    lower, upper = spec.lower[0].clone(), spec.upper[0].clone()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(lower.numel(), generator=gen)
    order = order[torch.argsort((upper[order] <= lower[order]).to(torch.int8), stable=True)]  # wide ones first
    fixed = order[k:]
    point = lower + torch.rand(lower.numel(), generator=gen, dtype=torch.float64) * (upper - lower)
    lower[fixed] = upper[fixed] = point[fixed]
    return lower, upper


SHARED = [p for p in all_models() if first_spec_for(p) is not None]


@needs_benchmarks
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", SHARED, ids=[p.name for p in SHARED])
def test_forward_bounds_contain_samples_on_shared_models(path: Path, dtype: torch.dtype) -> None:
    model = genbab.load_model(path)
    spec = genbab.load_spec(first_spec_for(path))
    engine = engine_for(model, EngineConfig.resolve("cpu", "torch", dtype))
    lower, upper = few_free_box(spec, k=min(3, spec.n_inputs), seed=1)
    box = engine.box(lower.reshape(1, -1), upper.reshape(1, -1))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "forward")
    values = node_values(engine_for(model), samples(lower, upper, 300, seed=2))
    assert_contains(engine, bounds, values, slack=1e-12)
