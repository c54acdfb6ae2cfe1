"""LayerNormalization and Softmax over any axis: the bound rewrites keep the function (against
onnxruntime) and every bound method contains sampled outputs."""

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
from conftest import BENCHMARKS, needs_benchmarks

METHODS = ("ibp", "crown", "alpha-crown")


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def write_model(tmp_path: Path, nodes, x_shape, y_shape, inits=(), opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "g", [tensor("x", x_shape)], [tensor("y", y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def ort_run(path: Path, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: x})[0] for x in xs.astype(np.float32)])


def check_rewrite_matches_onnxruntime(path: Path, shape, expected_ops: set[str], scale: float = 2.0) -> genbab.Model:
    """The rewritten graph (the one the bound engine walks) equals onnxruntime on random inputs."""
    model = genbab.load_model(path)
    rewritten = simplify_for_bounds(model.graph)
    assert expected_ops <= {n.op_type for n in rewritten.nodes}
    xs = np.random.default_rng(0).standard_normal((30, *shape)).astype(np.float32) * scale
    with torch.no_grad():
        ours = torch.stack([rewritten.forward_one(torch.from_numpy(x)) for x in xs]).numpy()
    ref = ort_run(path, xs)
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)
    return model


def check_bounds_contain_samples(model: genbab.Model, lower: torch.Tensor, upper: torch.Tensor) -> None:
    """IBP, CROWN and alpha-CROWN bounds on every output contain the outputs of sampled inputs."""
    rng = np.random.default_rng(1)
    u = rng.random((4000, lower.numel()))
    u[:400] = u[:400] > 0.5  # corners
    xs = torch.from_numpy(lower.numpy() + u * (upper - lower).numpy())
    with torch.no_grad():
        ys = model.forward_flat(xs).double()
    slack = 1e-5 * (1 + ys.abs().max())
    for method in METHODS:
        lb, ub = compute_bounds(model, lower, upper, method, alpha=AlphaConfig(iterations=5, stop_when_positive=False))
        assert bool(torch.isfinite(lb).all() and torch.isfinite(ub).all()), method
        assert bool((lb[0] <= ys.min(0).values + slack).all()), f"{method} lower bound above a sample"
        assert bool((ub[0] >= ys.max(0).values - slack).all()), f"{method} upper bound below a sample"


def layer_norm_model(tmp_path: Path, axis: int, with_bias: bool = True) -> Path:
    """y = LayerNormalization(x W, scale, bias) on x [1, 3, 4] (opset 17)."""
    rng = np.random.default_rng(2)
    shape = [1, 3, 5]
    normed = shape[axis:]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w"),
             numpy_helper.from_array((1 + rng.random(normed)).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(normed).astype(np.float32), "bias")]
    inputs = ["h", "scale", "bias"] if with_bias else ["h", "scale"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("LayerNormalization", inputs, ["y"], axis=axis, epsilon=1e-3)]
    return write_model(tmp_path, nodes, [1, 3, 4], shape, inits if with_bias else inits[:2], opset=17)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_rewrite_and_bounds(tmp_path: Path, axis: int) -> None:
    model = check_rewrite_matches_onnxruntime(layer_norm_model(tmp_path, axis), (1, 3, 4),
                                              {"Center", "Pow", "ReduceMean", "Sqrt", "Reciprocal", "Mul"})
    assert "LayerNormalization" in model.graph.op_types()
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.1, x0 + 0.1)


def test_layer_norm_without_bias(tmp_path: Path) -> None:
    model = check_rewrite_matches_onnxruntime(layer_norm_model(tmp_path, -1, with_bias=False), (1, 3, 4), {"Center"})
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.05, x0 + 0.05)


def test_layer_norm_with_scale_from_constant_node(tmp_path: Path) -> None:
    """A scale made by a Constant node (onnx2torch's OnnxLayerNorm, not torch's LayerNorm)."""
    scale = helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(np.arange(1, 6, dtype=np.float32)))
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), "w")
    nodes = [scale, helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "scale"], ["y"], axis=-1)]
    path = write_model(tmp_path, nodes, [1, 3, 4], [1, 3, 5], [w], opset=17)
    model = check_rewrite_matches_onnxruntime(path, (1, 3, 4), {"Center"})
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.05, x0 + 0.05)


def test_center_interval_is_exact() -> None:
    """The interval of x - mean(x) is attained at box corners (it is the exact image)."""
    from genbab.bounds.affine import center_interval
    from genbab.model.graph import InputRef, Node
    from genbab.model.simplify import Center

    node = Node("c", "Center", ("x",), (InputRef(0),), {}, Center([1]), (2, 3))
    lo = torch.tensor([[[0.0, -1.0, 2.0], [1.0, 1.0, -3.0]]], dtype=torch.float64)
    hi = lo + torch.tensor([[[1.0, 0.5, 2.0], [0.0, 3.0, 1.0]]], dtype=torch.float64)
    c_lo, c_hi = center_interval(node, lambda xs: torch.func.vmap(node.module)(*xs), lo, hi)
    corners = torch.tensor(np.array(np.meshgrid(*[[0, 1]] * 6)).reshape(6, -1).T, dtype=torch.float64)
    xs = (lo.reshape(-1) + corners * (hi - lo).reshape(-1)).reshape(-1, 2, 3)
    cs = xs - xs.mean(dim=2, keepdim=True)  # per-sample axis 1
    torch.testing.assert_close(c_lo[0], cs.min(0).values, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_hi[0], cs.max(0).values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("opset", [13, 18])
def test_decomposed_layer_norm_as_exported(tmp_path: Path, opset: int) -> None:
    """The primitive-op LayerNorm exporters emit (ReduceMean, Sub, Pow, Sqrt, Div) also bounds
    (opset 18: ReduceMean takes its axes as an input)."""
    inits = [numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        mean = lambda src, out: helper.make_node("ReduceMean", [src, "axes"], [out])
    else:
        mean = lambda src, out: helper.make_node("ReduceMean", [src], [out], axes=[-1])
    nodes = [mean("x", "m"), helper.make_node("Sub", ["x", "m"], ["c"]),
             helper.make_node("Pow", ["c", "two"], ["c2"]), mean("c2", "v"),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["c", "s"], ["y"])]
    model = check_rewrite_matches_onnxruntime(write_model(tmp_path, nodes, [1, 2, 4], [1, 2, 4], inits, opset=opset),
                                              (1, 2, 4), {"Reciprocal", "Mul"})
    x0 = torch.linspace(-1, 1, 8, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.05, x0 + 0.05)


def softmax_model(tmp_path: Path, op: str, axis: int, opset: int) -> Path:
    """y = Softmax(x W) on x [1, 3, 4] with W [4, 4]."""
    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node(op, ["h"], ["y"], axis=axis)]
    return write_model(tmp_path, nodes, [1, 3, 4], [1, 3, 4], [w], opset=opset)


@pytest.mark.parametrize("op, axis, opset", [
    ("Softmax", 1, 13), ("Softmax", 0, 13), ("Softmax", -1, 13),  # one axis (opset 13)
    ("Softmax", 1, 11), ("Softmax", 2, 11), ("Softmax", 0, 11),  # axes axis.. flattened (opset < 13)
    ("LogSoftmax", 1, 13), ("LogSoftmax", 1, 11),
])
def test_softmax_any_axis(tmp_path: Path, op: str, axis: int, opset: int) -> None:
    model = check_rewrite_matches_onnxruntime(softmax_model(tmp_path, op, axis, opset), (1, 3, 4), {"SoftmaxDiff"})
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.2, x0 + 0.2)


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_rows_use_sum_to_one(tmp_path: Path, axis: int) -> None:
    """Linear functions of softmax outputs (Simplex: coefficients shifted by their group's median):
    CROWN and alpha-CROWN bounds contain dense samples for random rows, and a row summing one
    softmax group (``sum_i y_i = 1``) is bounded to 1 within rounding, from both sides."""
    model = genbab.load_model(softmax_model(tmp_path, "Softmax", axis, 13))
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    lower, upper = x0 - 1.5, x0 + 1.5
    rng = np.random.default_rng(4)
    group = np.zeros((3, 4))
    if axis == 2:
        group[1, :] = 1.0
    else:
        group[:, 2] = 1.0
    C = torch.from_numpy(np.concatenate([rng.standard_normal((6, 12)), rng.integers(-1, 2, (6, 12)),
                                         group.reshape(1, 12), -group.reshape(1, 12)]))
    u = torch.from_numpy(rng.random((20000, 12)))
    u[:2000] = (u[:2000] > 0.5).double()
    with torch.no_grad():
        values = model.forward_flat(lower + u * (upper - lower)).double() @ C.T
    for method in ("crown", "alpha-crown"):
        lb, ub = compute_bounds(model, lower, upper, method, C=C, alpha=AlphaConfig(iterations=10))
        assert bool((lb[0] <= values.min(0).values + 1e-6).all()), method
        assert bool((ub[0] >= values.max(0).values - 1e-6).all()), method
        assert abs(float(lb[0, -2]) - 1.0) < 1e-9 and abs(float(ub[0, -2]) - 1.0) < 1e-9, method
        assert abs(float(lb[0, -1]) + 1.0) < 1e-9, method


@needs_benchmarks
def test_units_self_attention_bounds() -> None:
    """The Marabou self-attention unit model (Softmax over axis 2 of 4) is boundable and sound."""
    path = BENCHMARKS / "units" / "onnx" / "self-attention-mnist-pgd-medium-sim.onnx.gz"
    model = genbab.load_model(path)
    x0 = torch.full((model.n_inputs,), 0.5, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.01, x0 + 0.01)


def test_fast_affine_rules_match_autograd(tmp_path: Path) -> None:
    """Transpose, BatchNorm, MatMul by constants (both sides), broadcast Add/Sub of two variables,
    ReduceMean, Center and SoftmaxDiff take direct backward rules, each checked against autograd
    when built (a rule that disagrees is dropped); CROWN stays exact on this affine network."""
    from genbab.bounds import engine_for

    rng = np.random.default_rng(4)
    arr = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    inits = [arr("w", 4, 4), arr("v", 3, 3), numpy_helper.from_array((1 + rng.random(3)).astype(np.float32), "s"),
             arr("b", 3), arr("m", 3), numpy_helper.from_array((1 + rng.random(3)).astype(np.float32), "var"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),                       # [1, 3, 4]
             helper.make_node("MatMul", ["v", "h"], ["g"]),                       # constant on the left
             helper.make_node("BatchNormalization", ["g", "s", "b", "m", "var"], ["n"]),
             helper.make_node("Transpose", ["n"], ["t"], perm=[0, 2, 1]),         # [1, 4, 3]
             helper.make_node("ReduceMean", ["t", "axes"], ["r"], keepdims=1),   # [1, 4, 1]
             helper.make_node("Sub", ["t", "r"], ["d"]),                          # broadcast, two variables
             helper.make_node("Softmax", ["d"], ["p"], axis=-1),
             helper.make_node("LayerNormalization", ["t", "s", "b"], ["l"], axis=-1),
             helper.make_node("Add", ["p", "l"], ["y"])]
    path = write_model(tmp_path, nodes, [1, 3, 4], [1, 4, 3], inits, opset=18)
    model = check_rewrite_matches_onnxruntime(path, (1, 3, 4), {"Center", "SoftmaxDiff"})
    engine = engine_for(model)
    fast = {n.op_type for n in engine.nodes if engine.rules[n.name].kind == "affine" and engine.affine(n)._fast is not None}
    assert fast >= {"MatMul", "BatchNormalization", "Transpose", "ReduceMean", "Sub", "SoftmaxDiff", "Center", "ReduceSum"}
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    check_bounds_contain_samples(model, x0 - 0.1, x0 + 0.1)
