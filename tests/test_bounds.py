"""Bound propagation: soundness on every shared model, exactness on toy graphs, rewrites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.bounds import compute_bounds
from genbab.bounds.alpha import AlphaConfig
from genbab.model.simplify import simplify_for_bounds
from conftest import all_models, first_spec_for, needs_benchmarks

N_SAMPLES = 10_000


def sample_box(lower: np.ndarray, upper: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform points, random corners (a tenth) and the centre of the box (float64, inside it)."""
    lower, upper = lower.astype(np.float64), upper.astype(np.float64)
    u = rng.random((n, lower.size))
    u[: n // 10] = u[: n // 10] > 0.5
    u[-1] = 0.5
    return np.clip(lower + u * (upper - lower), lower, upper)


def ort_outputs(model: genbab.Model, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    xs = xs.astype(model.np_dtype)
    return np.stack([sess.run(None, {model.input_name: x.reshape(model.onnx_input_shape)})[0].reshape(-1) for x in xs])


MODELS_WITH_SPECS = [p for p in all_models() if first_spec_for(p) is not None]
# CROWN on this 3-layer vision transformer takes over 10 minutes on a 2-core CPU (a known
# performance gap, see the README); its soundness test checks IBP only to keep CI short.
IBP_ONLY = {"ibp_3_3_8.onnx.gz"}


@needs_benchmarks
@pytest.mark.parametrize("path", MODELS_WITH_SPECS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_bounds_contain_onnxruntime_outputs(path: Path) -> None:
    """For the first property's first case: every method's bounds on its rows C y contain the
    onnxruntime outputs of 10^4 sampled inputs; alpha-CROWN is never looser than CROWN."""
    model = genbab.load_model(path)
    spec = genbab.load_spec(first_spec_for(path))
    lower, upper, C = spec.lower[0], spec.upper[0], spec.C[0]
    xs = sample_box(lower.numpy(), upper.numpy(), N_SAMPLES, np.random.default_rng(0))
    values = ort_outputs(model, xs).astype(np.float64) @ C.numpy().T
    scale = 1e-4 * (1.0 + np.abs(values).max(axis=0))  # float32 evaluation error of onnxruntime
    results = {}
    methods = ("ibp",) if path.name in IBP_ONLY else ("ibp", "crown", "alpha-crown")
    for method in methods:
        lb, ub = compute_bounds(model, lower, upper, method, C, AlphaConfig(iterations=10, stop_when_positive=False))
        lb, ub = lb[0].numpy(), ub[0].numpy()
        assert np.all(lb <= values.min(axis=0) + scale), f"{method} lower bound above a sampled output"
        assert np.all(ub >= values.max(axis=0) - scale), f"{method} upper bound below a sampled output"
        results[method] = (lb, ub)
    if "crown" in results:
        assert np.all(results["alpha-crown"][0] >= results["crown"][0] - 1e-9)
        assert np.all(results["alpha-crown"][1] <= results["crown"][1] + 1e-9)


def write_model(tmp_path: Path, nodes, inputs, outputs, inits=(), opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_affine_network_bounds_are_exact(tmp_path: Path) -> None:
    """For y = W2 (W1 x + b1) + b2 every method but IBP is exact: the extremes over box corners."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.ones(4, np.float32), "b1")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["y"])]
    model = genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [1, 3])], [tensor("y", [1, 2])], inits))
    lower, upper = -torch.ones(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    corners = torch.tensor(np.array(np.meshgrid(*[[0, 1]] * 3)).reshape(3, -1).T, dtype=torch.float64)
    ys = (lower + corners * (upper - lower)) @ torch.from_numpy(w1).double() + 1.0
    ys = ys @ torch.from_numpy(w2).double()
    for method in ("crown", "alpha-crown"):
        lb, ub = compute_bounds(model, lower, upper, method)
        torch.testing.assert_close(lb[0], ys.min(0).values, rtol=0, atol=1e-9)
        torch.testing.assert_close(ub[0], ys.max(0).values, rtol=0, atol=1e-9)


def test_sigmoid_on_monotone_chain_gives_exact_interval(tmp_path: Path) -> None:
    """sigmoid(2x - 1) on x in [-1, 3]: IBP is exact, [sigmoid(-3), sigmoid(5)]."""
    inits = [numpy_helper.from_array(np.array([[2.0]], np.float32), "w"), numpy_helper.from_array(np.array([-1.0], np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])]
    model = genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [1, 1])], [tensor("y", [1, 1])], inits))
    lb, ub = compute_bounds(model, torch.tensor([-1.0]), torch.tensor([3.0]), "ibp")
    assert abs(float(lb) - 1 / (1 + np.exp(3))) < 1e-6 and abs(float(ub) - 1 / (1 + np.exp(-5))) < 1e-6


def test_rewrites_keep_the_function(tmp_path: Path) -> None:
    """Softmax and Div by a variable are rewritten for bounding; the forward pass is unchanged."""
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1), helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("Div", ["s", "e"], ["y"])]
    model = genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [2, 5])], [tensor("y", [2, 5])]))
    rewritten = simplify_for_bounds(model.graph)
    assert {n.op_type for n in rewritten.nodes} >= {"SoftmaxDiff", "Reciprocal", "Mul"}
    for x in torch.randn(20, 2, 5) * 3:
        torch.testing.assert_close(rewritten.forward_one(x), model.graph.forward_one(x), rtol=1e-5, atol=1e-6)


def test_products_and_quotients_are_bounded_soundly(tmp_path: Path) -> None:
    """y = sin(x0) * x1 / (2 + cos(x1)): bounds contain dense samples for every method."""
    inits = [numpy_helper.from_array(np.array([0], np.int64), "i0"), numpy_helper.from_array(np.array([1], np.int64), "i1"),
             numpy_helper.from_array(np.array([2.0], np.float32), "two")]
    nodes = [helper.make_node("Gather", ["x", "i0"], ["a"], axis=1), helper.make_node("Gather", ["x", "i1"], ["b"], axis=1),
             helper.make_node("Sin", ["a"], ["sa"]), helper.make_node("Mul", ["sa", "b"], ["p"]),
             helper.make_node("Cos", ["b"], ["cb"]), helper.make_node("Add", ["cb", "two"], ["den"]),
             helper.make_node("Div", ["p", "den"], ["y"])]
    model = genbab.load_model(write_model(tmp_path, nodes, [tensor("x", [1, 2])], [tensor("y", [1, 1])], inits))
    lower, upper = torch.tensor([-0.5, 0.3]), torch.tensor([1.5, 2.0])
    xs = torch.from_numpy(sample_box(lower.numpy(), upper.numpy(), 20000, np.random.default_rng(1)))
    ys = torch.sin(xs[:, 0]) * xs[:, 1] / (2 + torch.cos(xs[:, 1]))
    for method in ("ibp", "crown", "alpha-crown"):
        lb, ub = compute_bounds(model, lower, upper, method)
        assert float(lb) <= float(ys.min()) + 1e-9 and float(ub) >= float(ys.max()) - 1e-9
        assert float(ub - lb) < 10  # and not vacuous
