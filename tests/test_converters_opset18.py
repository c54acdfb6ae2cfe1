"""Our onnx2torch converters for opset 18+ (axes as inputs, Split num_outputs, Pad axes...):
the translated model equals onnxruntime, and the affine ones bound soundly."""

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
from genbab.errors import UnsupportedOpError

X_SHAPE = [1, 3, 4, 5]


def write(tmp_path: Path, nodes, y_shape, inits=(), opset: int = 18, x_shape=X_SHAPE) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def check_against_onnxruntime(path: Path, bound: bool = True) -> genbab.Model:
    """Translated outputs equal onnxruntime's on random inputs; for affine models (``bound``),
    CROWN bounds over a box contain those of sampled inputs."""
    model = genbab.load_model(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(0).standard_normal((8, *model.onnx_input_shape)).astype(np.float32)
    ref = np.stack([sess.run(None, {"x": x})[0] for x in xs])
    with torch.no_grad():
        ours = model(torch.from_numpy(xs)).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    if bound:
        lower, upper = torch.from_numpy(xs.min(0)).double().reshape(-1), torch.from_numpy(xs.max(0)).double().reshape(-1)
        lb, ub = compute_bounds(model, lower, upper, "crown")
        assert bool((lb[0] <= torch.from_numpy(ref.reshape(8, -1)).double().min(0).values + 1e-5).all())
        assert bool((ub[0] >= torch.from_numpy(ref.reshape(8, -1)).double().max(0).values - 1e-5).all())
    return model


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_axes_input(tmp_path: Path, keepdims: int) -> None:
    shape = [1, 3, 1, 1] if keepdims else [1, 3]
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)]
    check_against_onnxruntime(write(tmp_path, nodes, shape, [ints("axes", [2, -1])]))


def test_reduce_mean_axes_from_constant_node(tmp_path: Path) -> None:
    """``axes`` made by a Constant node (not an initializer): the dynamic module, folded at load."""
    nodes = [helper.make_node("Constant", [], ["axes"], value=ints("v", [1])),
             helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 4, 5]))


def test_reduce_without_axes(tmp_path: Path) -> None:
    """No axes: every axis; with ``noop_with_empty_axes`` the identity."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1, noop_with_empty_axes=1),
             helper.make_node("Add", ["m", "s"], ["y"])]
    check_against_onnxruntime(write(tmp_path, nodes, X_SHAPE))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                                "ReduceLogSumExp", "ReduceProd"])
def test_other_reductions_translate(tmp_path: Path, op: str) -> None:
    """Not boundable (no rule), but translated exactly."""
    nodes = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 4], [ints("axes", [1, 3])]), bound=False)


def test_reduce_sum_opset18_bounds(tmp_path: Path) -> None:
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 3, 5], [ints("axes", [2])]))


def test_split_num_outputs_uneven(tmp_path: Path) -> None:
    """Split 18 of 5 into 2 outputs is [3, 2] (ceil), reordered by a Concat."""
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=3, num_outputs=2),
             helper.make_node("Concat", ["b", "a"], ["y"], axis=3)]
    check_against_onnxruntime(write(tmp_path, nodes, X_SHAPE))


def test_split_sizes_input(tmp_path: Path) -> None:
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=2),
             helper.make_node("Concat", ["c", "a", "b"], ["y"], axis=2)]
    check_against_onnxruntime(write(tmp_path, nodes, X_SHAPE, [ints("sizes", [1, 2, 1])]))


def test_split_output_is_one_of_its_results(tmp_path: Path) -> None:
    """A graph output that is one result of a multi-output node (the other unused, or read by a
    later node) is that result, not the node's whole tuple."""
    nodes = [helper.make_node("Split", ["x", "sizes"], ["y", "rest"], axis=3)]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 3, 4, 2], [ints("sizes", [2, 3])]))
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "y"], axis=3),
             helper.make_node("Relu", ["a"], ["unused"])]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 3, 4, 3], [ints("sizes", [2, 3])]))


@pytest.mark.parametrize("attrs", [{}, {"reverse": 1}, {"exclusive": 1}, {"reverse": 1, "exclusive": 1}])
def test_cumsum_attributes(tmp_path: Path, attrs: dict) -> None:
    """CumSum with ONNX's defaults (onnx2torch 1.5 read a missing ``reverse`` as 1) and each attribute."""
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)]
    check_against_onnxruntime(write(tmp_path, nodes, X_SHAPE, [ints("axis", -1)]))


def test_pad_with_axes(tmp_path: Path) -> None:
    value = numpy_helper.from_array(np.array(0.5, np.float32), "value")
    nodes = [helper.make_node("Pad", ["x", "pads", "value", "axes"], ["y"], mode="constant")]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 3, 7, 6], [ints("pads", [1, 0, 2, 1]), value,
                                                                    ints("axes", [2, -1])]))


def test_pad_without_axes(tmp_path: Path) -> None:
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], mode="constant")]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 3, 5, 7], [ints("pads", [0, 0, 1, 1, 0, 0, 0, 1])]))


def test_resize_opset18_nearest(tmp_path: Path) -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.array([], np.float32), "roi")  # an empty name: tests/test_opset_loading.py
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="nearest")]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 3, 8, 10], [scales, roi]))


def test_resize_antialias_is_refused(tmp_path: Path) -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1)]
    with pytest.raises(UnsupportedOpError):
        genbab.load_model(write(tmp_path, nodes, [1, 3, 2, 2], [scales]))


def test_opset21_type_only_versions(tmp_path: Path) -> None:
    """Reshape/Transpose/Flatten/Cast at opset 21 translate with their older converters."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("Cast", ["r"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["c"], ["y"], axis=1)]
    check_against_onnxruntime(write(tmp_path, nodes, [1, 60], [ints("shape", [1, 4, 15])], opset=21))


SAME_PADS = {  # kernel, strides over X_SHAPE's 4 x 5 image: even and odd totals, strides
    "k3": ([3, 3], [1, 1]),
    "k2": ([2, 2], [1, 1]),
    "k3-s2": ([3, 3], [2, 2]),
    "k2x4-s3x2": ([2, 4], [3, 2]),
}


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("case", sorted(SAME_PADS))
def test_conv_and_pools_with_same_auto_pad(tmp_path: Path, mode: str, case: str) -> None:
    """``auto_pad`` SAME_UPPER/SAME_LOWER (refused by onnx2torch) become explicit ``pads`` at
    load: MaxPool and Conv equal onnxruntime, the odd cell of padding on the side ``mode`` names."""
    from genbab.model import onnx_io

    kernel, strides = SAME_PADS[case]
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((2, 3, *kernel)).astype(np.float32), "w")
    out = [1, 2, *(-(-n // s) for n, s in zip(X_SHAPE[2:], strides))]  # ceil(n / s)
    pool = helper.make_node("MaxPool", ["x"], ["y"], auto_pad=mode, kernel_shape=kernel, strides=strides)
    path = write(tmp_path, [pool], [1, 3, *out[2:]])
    check_against_onnxruntime(path, bound=False)
    rewritten = onnx_io.explicit_auto_pad(onnx.load(str(path)), onnx_io.model_input(onnx.load(str(path))))
    attrs = {a.name: helper.get_attribute_value(a) for a in rewritten.graph.node[0].attribute}
    assert "auto_pad" not in attrs and len(attrs["pads"]) == 4
    begin, end = attrs["pads"][:2], attrs["pads"][2:]
    assert all((e - b) in ((0, 1) if mode == "SAME_UPPER" else (0, -1)) for b, e in zip(begin, end))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=mode, strides=strides)
    check_against_onnxruntime(write(tmp_path, [conv], out, [w]))


def test_dilated_same_auto_pad_stays_refused(tmp_path: Path) -> None:
    """onnxruntime (the replay) refuses a dilated SAME Conv and pads a dilated SAME MaxPool as if
    undilated: such nodes are left to the translator, which refuses them by name."""
    pool = helper.make_node("MaxPool", ["x"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[2, 2], dilations=[2, 2])
    with pytest.raises(UnsupportedOpError, match="auto_pad"):
        genbab.load_model(write(tmp_path, [pool], X_SHAPE))


def test_average_pool_with_same_auto_pad(tmp_path: Path) -> None:
    """Symmetric SAME padding of an AveragePool (odd total asymmetric padding stays refused by
    onnx2torch); the padded cells are not counted, as in onnxruntime."""
    pool = helper.make_node("AveragePool", ["x"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[3, 3])
    check_against_onnxruntime(write(tmp_path, [pool], X_SHAPE))
