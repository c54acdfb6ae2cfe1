"""Loading at any opset: the opset 18-21 forms of Split, Reduce*, Pad and Resize, weights computed
from constants, Clip / Selu forms onnx2torch refuses, and models whose output ignores the input.

Each form is a small exported model of its own; the loaded graph must equal onnxruntime (and,
for the affine ones, CROWN bounds must contain the sampled outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.errors import UnsupportedOpError
from genbab.model.graph import ConstantOutputError
from test_converters_opset18 import check_against_onnxruntime

OPSETS = [18, 19, 20, 21]
X_SHAPE = [1, 3, 4, 5]
RNG = np.random.default_rng(0)
W = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)


def write(tmp_path: Path, nodes, inits=(), opset: int = 18, x_shape=X_SHAPE, y_shape=None) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 9
    if y_shape is not None:
        onnx.checker.check_model(model)
    path = tmp_path / f"m{opset}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def floats(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.float32), name)


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def node(op: str, inputs, outputs=("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


# ------------------------------------------------------------------ Split, Reduce* at opsets 18-21

@pytest.mark.parametrize("opset", OPSETS)
def test_split_forms(tmp_path: Path, opset: int) -> None:
    """``num_outputs`` (uneven: 5 -> 3 + 2) and a ``split`` input, reordered by Concats."""
    nodes = [node("Split", ["x"], ["a", "b"], axis=3, num_outputs=2), node("Concat", ["b", "a"], ["ba"], axis=3),
             node("Split", ["ba", "s"], ["c", "e"], axis=1), node("Concat", ["e", "c"], axis=1)]
    model = check_against_onnxruntime(write(tmp_path, nodes, [ints("s", [1, 2])], opset))
    assert "Split" in model.graph.op_types()


@pytest.mark.parametrize("opset", OPSETS)
def test_reduce_forms(tmp_path: Path, opset: int) -> None:
    """``axes`` input, ``axes`` made by a Constant node, an empty ``axes`` initializer (every
    axis; onnx2torch crashed on it), ``noop_with_empty_axes`` with and without an empty ``axes``."""
    nodes = [node("ReduceMean", ["x", "ax"], ["m"], keepdims=1),
             node("Constant", [], ["ax2"], value=ints("v", [1])),
             node("ReduceSum", ["m", "ax2"], ["s"], keepdims=1),
             node("ReduceSum", ["x", "empty"], ["all"], keepdims=1),
             node("ReduceSum", ["x", "empty"], ["same"], keepdims=1, noop_with_empty_axes=1),
             node("ReduceMean", ["x"], ["same2"], keepdims=1, noop_with_empty_axes=1),
             node("Add", ["s", "all"], ["t"]), node("Add", ["same", "same2"], ["u"]), node("Add", ["t", "u"])]
    check_against_onnxruntime(write(tmp_path, nodes, [ints("ax", [2, -1]), ints("empty", [])], opset))


def test_reduce_sum_empty_axes_opset13(tmp_path: Path) -> None:
    nodes = [node("ReduceSum", ["x", "empty"], keepdims=0)]
    model = check_against_onnxruntime(write(tmp_path, nodes, [ints("empty", [])], 13))
    assert model.output_shape == ()


# ------------------------------------------------------------------ Pad

@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_axes_any_mode(tmp_path: Path, opset: int, mode: str) -> None:
    """``axes`` with no ``constant_value`` (an empty name), in every mode; crops (negative pads) too."""
    nodes = [node("Pad", ["x", "p", "", "ax"], mode=mode)]
    check_against_onnxruntime(write(tmp_path, nodes, [ints("p", [1, 0, 2, -1]), ints("ax", [2, -1])], opset))


@pytest.mark.parametrize("opset", [19, 21])
def test_pad_wrap(tmp_path: Path, opset: int) -> None:
    value = floats("v", 0.0)
    nodes = [node("Pad", ["x", "p"], ["a"], mode="wrap"), node("Pad", ["a", "p2", "v", "ax"], mode="wrap")]
    check_against_onnxruntime(write(tmp_path, nodes, [ints("p", [0, 0, 1, 2, 0, 0, 2, 1]), ints("p2", [1, 2]),
                                                      value, ints("ax", [3])], opset))


@pytest.mark.parametrize("opset", OPSETS)
def test_pad_constant_value(tmp_path: Path, opset: int) -> None:
    nodes = [node("Pad", ["x", "p", "v", "ax"], mode="constant")]
    check_against_onnxruntime(write(tmp_path, nodes, [ints("p", [1, 0, 2, 1]), floats("v", -1.5),
                                                      ints("ax", [1, 3])], opset))


# ------------------------------------------------------------------ Resize

@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_empty_roi(tmp_path: Path, opset: int, mode: str) -> None:
    """The exporters' form ``Resize(x, "", scales)``: onnx2torch read the empty name as a node."""
    nodes = [node("Resize", ["x", "", "s"], mode=mode)]
    check_against_onnxruntime(write(tmp_path, nodes, [floats("s", [1, 1, 2, 2])], opset))


@pytest.mark.parametrize("opset", OPSETS)
def test_resize_axes_attribute(tmp_path: Path, opset: int) -> None:
    nodes = [node("Resize", ["x", "", "s"], ["a"], mode="nearest", axes=[2, 3]),
             node("Resize", ["a", "", "", "sz"], mode="linear", axes=[-1])]
    model = check_against_onnxruntime(write(tmp_path, nodes, [floats("s", [2, 2]), ints("sz", [20])], opset))
    assert model.output_shape == (1, 3, 8, 20)


@pytest.mark.parametrize("policy, sizes, expected", [("not_larger", [8, 12], (1, 3, 8, 10)),
                                                     ("not_smaller", [6, 10], (1, 3, 8, 10))])
def test_resize_keep_aspect_ratio(tmp_path: Path, policy: str, sizes, expected) -> None:
    nodes = [node("Resize", ["x", "", "", "sz"], mode="nearest", axes=[2, 3], keep_aspect_ratio_policy=policy)]
    model = check_against_onnxruntime(write(tmp_path, nodes, [ints("sz", sizes)], 19))
    assert model.output_shape == expected


def test_resize_antialias_when_upscaling(tmp_path: Path) -> None:
    """antialias changes nothing when no axis shrinks: loaded; shrinking with it: refused."""
    nodes = [node("Resize", ["x", "", "s"], mode="linear", antialias=1)]
    check_against_onnxruntime(write(tmp_path, nodes, [floats("s", [1, 1, 2, 3])], 18))
    nodes = [node("Resize", ["x", "", "s"], mode="linear", antialias=1)]
    with pytest.raises(UnsupportedOpError, match="antialias"):
        genbab.load_model(write(tmp_path, nodes, [floats("s", [1, 1, 0.5, 0.5])], 19), use_cache=False)


# ------------------------------------------------------------------ weights computed from constants

WEIGHT_FORMS = {
    "mul": ([node("Mul", ["w", "two"], ["wc"])], [floats("w", W), floats("two", 2.0)]),
    "reshape": ([node("Reshape", ["wf", "shape"], ["wc"])], [floats("wf", W.reshape(-1)), ints("shape", W.shape)]),
    "transpose": ([node("Transpose", ["wt"], ["wc"], perm=[1, 0, 2, 3])], [floats("wt", W.transpose(1, 0, 2, 3))]),
    "constant_node": ([node("Constant", [], ["wc"], value=floats("v", W))], []),
    "dequantize": ([node("DequantizeLinear", ["wq", "scale"], ["wc"])],
                   [numpy_helper.from_array(RNG.integers(-100, 100, W.shape).astype(np.int8), "wq"),
                    floats("scale", 0.01)]),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("form", sorted(WEIGHT_FORMS))
def test_conv_weight_computed_from_constants(tmp_path: Path, opset: int, form: str) -> None:
    """The weight folds into a constant: a Conv node the bound rules read."""
    makers, inits = WEIGHT_FORMS[form]
    nodes = [*makers, node("Neg", ["b"], ["nb"]), node("Conv", ["x", "wc", "nb"], pads=[1, 1, 1, 1])]
    model = check_against_onnxruntime(write(tmp_path, nodes, [*inits, floats("b", [0.1, -0.2])], opset))
    assert model.graph.op_types() == ["Conv"]


@pytest.mark.parametrize("opset", OPSETS)
def test_gemm_with_computed_b(tmp_path: Path, opset: int) -> None:
    nodes = [node("Flatten", ["x"], ["f"], axis=1), node("Transpose", ["bt"], ["b"], perm=[1, 0]),
             node("Add", ["c", "c"], ["c2"]), node("Gemm", ["f", "b", "c2"])]
    inits = [floats("bt", RNG.standard_normal((4, 60))), floats("c", [1, 2, 3, 4])]
    model = check_against_onnxruntime(write(tmp_path, nodes, inits, opset))
    assert model.graph.op_types() == ["Flatten", "Gemm"]


# ------------------------------------------------------------------ Clip, Selu

CLIP_FORMS = {
    "computed": ([node("Neg", ["m"], ["lo"]), node("Clip", ["x", "lo", "m"])], [floats("m", 0.5)]),
    "empty_min": ([node("Clip", ["x", "", "m"])], [floats("m", 0.5)]),
    "empty_max": ([node("Clip", ["x", "m", ""])], [floats("m", -0.25)]),
    "constant_node": ([node("Constant", [], ["m"], value=floats("v", 0.3)), node("Clip", ["x", "", "m"])], []),
}


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
@pytest.mark.parametrize("form", sorted(CLIP_FORMS))
def test_clip_bounds_from_constants(tmp_path: Path, opset: int, form: str) -> None:
    """Clip whose min / max are computed constants or absent (empty names): onnx2torch refused."""
    nodes, inits = CLIP_FORMS[form]
    model = check_against_onnxruntime(write(tmp_path, nodes, inits, opset))
    assert model.graph.op_types() == ["Clip"]


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_selu_with_attributes(tmp_path: Path, opset: int) -> None:
    nodes = [node("Selu", ["x"], alpha=2.0, gamma=1.5)]
    model = check_against_onnxruntime(write(tmp_path, nodes, opset=opset))
    assert model.graph.op_types() == ["Selu"]
    x = torch.full((1, *X_SHAPE), -1.0)
    assert torch.allclose(model(x), torch.full_like(x, 1.5 * 2.0 * (np.exp(-1.0) - 1.0)))


# ------------------------------------------------------------------ outputs that ignore the input

BOX = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + "".join(
    f"(declare-const Y_{j} Real)\n" for j in range(2)) + \
    "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n"


def constant_model(tmp_path: Path, opset: int = 18, through_shape: bool = False) -> Path:
    """``y = a + b`` (= [1.5, -1]) from initializers; optionally plus ``0 * Shape(x)`` (a shape query)."""
    nodes = [node("Add", ["a", "b"], ["ab"] if through_shape else ["y"])]
    if through_shape:
        nodes += [node("Shape", ["x"], ["sh"]), node("Cast", ["sh"], ["shf"], to=TensorProto.FLOAT),
                  node("ReduceSum", ["shf"], ["n"], keepdims=1), node("Mul", ["n", "zero"], ["z"]),
                  node("Add", ["ab", "z"])]
    inits = [floats("a", [[1.0, 2.0]]), floats("b", [[0.5, -3.0]]), floats("zero", [0.0])]
    return write(tmp_path, nodes, inits, opset, x_shape=[1, 2], y_shape=[1, 2])


def spec_file(tmp_path: Path, assertion: str) -> Path:
    path = tmp_path / "p.vnnlib"
    path.write_text(BOX + assertion)
    return path


@pytest.mark.parametrize("opset", [13, 18, 21])
@pytest.mark.parametrize("through_shape", [False, True])
def test_constant_output_sat_with_replayed_witness(tmp_path: Path, opset: int, through_shape: bool) -> None:
    path = constant_model(tmp_path, opset, through_shape)
    with pytest.raises(ConstantOutputError, match="does not depend"):
        genbab.load_model(path, use_cache=False)
    result = genbab.verify(path, spec_file(tmp_path, "(assert (>= Y_0 Y_1))\n"), timeout=20)
    assert result.status == "sat"
    x = result.witness.x
    assert -1 <= x[0] <= 1 and 0 <= x[1] <= 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x.reshape(1, 2)})[0].reshape(-1), [1.5, -1.0])


@pytest.mark.parametrize("assertion, status", [
    ("(assert (<= Y_0 Y_1))\n", "unsat"),                                   # 1.5 <= -1: never
    ("(assert (or (and (<= Y_0 1.0)) (and (>= Y_1 0.0))))\n", "unsat"),     # neither disjunct holds
    ("(assert (or (and (<= Y_0 1.0)) (and (<= Y_1 0.0))))\n", "sat"),       # the second holds
    ("(assert (>= Y_0 1.5))\n", "unknown"),                                 # on the boundary: undecided
    ("(assert (>= Y_0 1.50000001))\n", "unknown"),                          # within rounding: undecided
])
def test_constant_output_decisions(tmp_path: Path, assertion: str, status: str) -> None:
    result = genbab.verify(constant_model(tmp_path), spec_file(tmp_path, assertion), timeout=20)
    assert result.status == status, result.stats
    assert result.stats["constant_output"]["values"] == [1.5, -1.0]


def test_constant_output_cli_and_wrong_dimensions(tmp_path: Path) -> None:
    """Through the CLI: the verdict (exit 0); a property with the wrong output count: one error line."""
    path, out = constant_model(tmp_path), tmp_path / "out.json"
    cli = [sys.executable, "-m", "genbab.cli", "verify", str(path)]
    proc = subprocess.run(cli + [str(spec_file(tmp_path, "(assert (<= Y_0 Y_1))\n")), "--timeout", "20",
                                 "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["status"] == "unsat"
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(BOX.replace("(declare-const Y_1 Real)\n", "") + "(assert (<= Y_0 0))\n")
    proc = subprocess.run(cli + [str(bad), "--timeout", "20"], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "outputs" in lines[0] and "Traceback" not in proc.stderr


def test_zero_times_input_is_not_constant(tmp_path: Path) -> None:
    """``0 * x`` reads the input: it stays a graph (NaN/inf inputs would not give 0), not a constant."""
    nodes = [node("Mul", ["x", "zero"], ["z"]), node("Add", ["z", "a"])]
    path = write(tmp_path, nodes, [floats("zero", [[0.0, 0.0]]), floats("a", [[1.0, 2.0]])], 18,
                 x_shape=[1, 2], y_shape=[1, 2])
    model = genbab.load_model(path, use_cache=False)
    assert model.graph.op_types() == ["Add", "Mul"]


# ------------------------------------------------------------------ a model exported by torch

class ExportedNet(torch.nn.Module):
    """Reflect Pad, nearest Resize, Conv, chunk (Slice), HardSwish, Selu, Clip with one bound, means and sums."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.lin = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(x, (1, 1, 2, 0), mode="reflect")
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        x = torch.cat([torch.nn.functional.hardswish(a), torch.nn.functional.selu(b)], 1).clamp(min=-0.5)
        return self.lin(x.mean(dim=(2, 3)) + x.sum(dim=(2, 3)) * 0.01)


@pytest.mark.parametrize("opset", [18, 21])
def test_torch_exported_model(tmp_path: Path, opset: int) -> None:
    path = tmp_path / f"exported{opset}.onnx"
    with torch.no_grad():
        torch.onnx.export(ExportedNet().eval(), torch.randn(1, 3, 6, 6), str(path), opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamo=False)
    assert onnx.load(str(path)).opset_import[0].version == opset
    model = check_against_onnxruntime(path)
    assert {"Pad", "Resize", "Conv", "Selu", "HardSwish", "Clip"} <= set(model.graph.op_types())
