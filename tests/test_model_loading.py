"""Model loading: every shared model translates and matches onnxruntime; bad files fail cleanly."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.errors import ModelError, UnsupportedOpError
from conftest import all_models, first_spec_for, needs_benchmarks

# Relative tolerance max|ours - ort| / max|ort|. pensieve_big_parallel sums ~10^2 terms with
# cancellation: float32 onnxruntime itself is 3.5e-5 away from the float64 value there.
LOOSE = {"pensieve_big_parallel.onnx.gz": 1e-4}


def ort_outputs(model: genbab.Model, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {model.input_name: x.reshape(model.onnx_input_shape)})[0].reshape(-1) for x in xs]
    return np.stack(outs)


def sample_box(model: genbab.Model, path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of the first property's first input box (units models: [-1, 1]), corners included."""
    spec_path = first_spec_for(path)
    if spec_path is None:
        lo, hi = -np.ones(model.n_inputs), np.ones(model.n_inputs)
    else:
        spec = genbab.load_spec(spec_path)
        lo, hi = spec.lower[0].numpy(), spec.upper[0].numpy()
    u = rng.random((n, model.n_inputs))
    u[0], u[1] = 0.0, 1.0  # the two extreme corners
    return (lo + u * (hi - lo)).astype(model.np_dtype)


@needs_benchmarks
@pytest.mark.parametrize("path", all_models(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_shared_model_matches_onnxruntime(path: Path) -> None:
    model = genbab.load_model(path)
    xs = sample_box(model, path, 100, np.random.default_rng(0))
    with torch.no_grad():
        ours = model.forward_flat(torch.from_numpy(xs)).double().numpy()
    ref = ort_outputs(model, xs).astype(np.float64)
    tol = 1e-4 if path.parent.parent.name == "lstm" else LOOSE.get(path.name, 1e-5)
    rel = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert ours.shape == ref.shape
    assert rel <= tol, f"relative error {rel:.3g} > {tol}"


def test_bundled_example_loads() -> None:
    root = Path(genbab.__file__).resolve().parent.parent / "specs"
    model = genbab.load_model(root / "toy_mlp.onnx")
    assert model.input_shape == (1, 2) and model.output_shape == (1, 3)
    assert model.graph.op_types() == ["Gemm", "Sigmoid", "Tanh"]
    x = torch.rand(7, 1, 2)
    assert model(x).shape == (7, 1, 3)


def save(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def make_model(nodes, inputs, outputs, inits=(), opset: int = 13, ir: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def assert_matches_ort(path: Path, shape: tuple[int, ...]) -> genbab.Model:
    model = genbab.load_model(path)
    xs = np.random.default_rng(1).standard_normal((5, *shape)).astype(np.float32).reshape(5, -1)
    with torch.no_grad():
        ours = model.forward_flat(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(ours, ort_outputs(model, xs), rtol=1e-5, atol=1e-6)
    return model


def test_gzip_and_plain_give_the_same_model(tmp_path: Path) -> None:
    m = make_model([helper.make_node("Sigmoid", ["x"], ["y"])], [tensor("x", [1, 3])], [tensor("y", [1, 3])])
    plain = save(tmp_path, m)
    gz = tmp_path / "m.onnx.gz"
    gz.write_bytes(gzip.compress(m.SerializeToString()))
    x = torch.randn(4, 1, 3)
    assert torch.equal(genbab.load_model(plain)(x), genbab.load_model(gz)(x))


def test_symbolic_batch_dimension_is_fixed_to_one(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32), "w")
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
                   [tensor("x", ["N", 4])], [tensor("y", ["N", 2])], [w])
    model = assert_matches_ort(save(tmp_path, m), (1, 4))
    assert model.input_shape == (1, 4)


def test_old_opset_flatten_and_slice_v1(tmp_path: Path) -> None:
    nodes = [helper.make_node("Slice", ["x"], ["s"], starts=[1], ends=[5], axes=[3]),
             helper.make_node("Flatten", ["s"], ["f"], axis=1),
             helper.make_node("Sigmoid", ["f"], ["y"])]
    m = make_model(nodes, [tensor("x", [1, 1, 2, 6])], [tensor("y", [1, 8])], opset=7, ir=3)
    assert_matches_ort(save(tmp_path, m), (1, 1, 2, 6))


@pytest.mark.parametrize("opset", [7, 9])
def test_upsample_nearest(tmp_path: Path, opset: int) -> None:
    scales = [1.0, 1.0, 2.0, 3.0]
    if opset == 7:
        node, inits = helper.make_node("Upsample", ["x"], ["y"], mode="nearest", scales=scales), []
    else:
        inits = [numpy_helper.from_array(np.array(scales, dtype=np.float32), "scales")]
        node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    m = make_model([node], [tensor("x", [1, 2, 3, 2])], [tensor("y", [1, 2, 6, 6])], inits, opset=opset, ir=4)
    assert_matches_ort(save(tmp_path, m), (1, 2, 3, 2))


def test_unsupported_ops_listed_in_one_error(tmp_path: Path) -> None:
    nodes = [helper.make_node("Det", ["x"], ["d"], name="determinant"),
             helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             helper.make_node("Add", ["d", "d"], ["y"])]
    m = make_model(nodes, [tensor("x", [2, 2])], [tensor("y", [])])
    with pytest.raises(UnsupportedOpError) as err:
        genbab.load_model(save(tmp_path, m))
    msg = str(err.value)
    assert "Det" in msg and "determinant" in msg and "Unique" in msg and "\n" not in msg


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage that is not protobuf \xff\xfe" * 10, b"\x1f\x8b\x08\x00junk"],
                         ids=["empty", "garbage", "corrupt-gzip"])
def test_unreadable_files_raise_model_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        genbab.load_model(path)
    assert "\n" not in str(err.value)


def test_truncated_model_raises_model_error(tmp_path: Path) -> None:
    good = (Path(genbab.__file__).resolve().parent.parent / "specs" / "toy_mlp.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError):
        genbab.load_model(path)


def test_missing_file_and_two_inputs(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        genbab.load_model(tmp_path / "nope.onnx")
    m = make_model([helper.make_node("Add", ["a", "b"], ["y"])], [tensor("a", [2]), tensor("b", [2])], [tensor("y", [2])])
    with pytest.raises(ModelError, match="exactly one input"):
        genbab.load_model(save(tmp_path, m))
