"""Unrolling of ONNX LSTM/GRU nodes into primitive ops agrees with onnxruntime."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from conftest import BENCHMARKS, needs_benchmarks
from genbab.errors import UnsupportedOpError
from genbab.model.unroll_rnn import unroll_recurrent_ops

PRIMITIVE_OPS = {"MatMul", "Add", "Mul", "Sub", "Sigmoid", "Tanh", "Relu", "Slice", "Gather",
                 "Squeeze", "Unsqueeze", "Concat", "Reshape", "Transpose"}
N_GATES = {"LSTM": 4, "GRU": 3}


@dataclass(frozen=True)
class Case:
    """One synthetic recurrent model."""

    op: str = "LSTM"
    direction: str = "forward"
    seq: int = 4
    batch: int = 1
    inp: int = 5
    hidden: int = 3
    bias: bool = True
    initial: str = "none"           # none | input (graph inputs) | const (initializers)
    peephole: bool = False
    lbr: int = 0                    # GRU linear_before_reset
    opset: int = 13
    layout: int = 0
    outputs: tuple[bool, ...] = (True, True, True)   # which of Y, Y_h, Y_c are produced
    activations: tuple[str, ...] = ()
    seq_lens: bool = False
    seed: int = 0

    @property
    def dirs(self) -> int:
        return 2 if self.direction == "bidirectional" else 1


def _vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _layout_shape(case: Case, shape0: list[int]) -> list[int]:
    """Shape of X / initial states / outputs under ``case.layout`` given the layout-0 shape."""
    if case.layout == 0:
        return shape0
    if len(shape0) == 4:                       # Y: [T, D, B, H] -> [B, T, D, H]
        return [shape0[2], shape0[0], shape0[1], shape0[3]]
    return [shape0[1], shape0[0], shape0[2]]   # X [T,B,I] -> [B,T,I]; states [D,B,H] -> [B,D,H]


def _weights(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    n, D, H = N_GATES[case.op], case.dirs, case.hidden
    w = {"W": rng.normal(0, 0.6, (D, n * H, case.inp)), "R": rng.normal(0, 0.6, (D, n * H, H))}
    if case.bias:
        w["B"] = rng.normal(0, 0.5, (D, 2 * n * H))
    if case.peephole:
        w["P"] = rng.normal(0, 0.5, (D, 3 * H))
    if case.initial == "const":
        for name in ("initial_h", "initial_c"):
            state = rng.normal(0, 0.5, (D, case.batch, H))
            w[name] = state.transpose(1, 0, 2) if case.layout else state
    return {k: v.astype(np.float32) for k, v in w.items()}


def make_model(case: Case) -> onnx.ModelProto:
    """A model holding one LSTM/GRU node with random weights (initializers)."""
    weights = _weights(case)
    if case.op == "GRU":
        weights.pop("initial_c", None)
    state0 = [case.dirs, case.batch, case.hidden]
    names = ["X", "W", "R", "B" if case.bias else "", "seq_lens" if case.seq_lens else ""]
    names.append("initial_h" if case.initial != "none" else "")
    if case.op == "LSTM":
        names += ["initial_c" if case.initial != "none" else "", "P" if case.peephole else ""]
    while names and not names[-1]:
        names.pop()
    inputs = [_vi("X", _layout_shape(case, [case.seq, case.batch, case.inp]))]
    if case.initial == "input":
        inputs += [_vi(s, _layout_shape(case, state0))
                   for s in ("initial_h", "initial_c")[:2 if case.op == "LSTM" else 1]]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    if case.seq_lens:
        inits.append(numpy_helper.from_array(np.full(case.batch, case.seq, np.int32), "seq_lens"))
    out_shapes = {"Y": _layout_shape(case, [case.seq, case.dirs, case.batch, case.hidden]),
                  "Y_h": _layout_shape(case, state0), "Y_c": _layout_shape(case, state0)}
    out_names = [n if keep else "" for n, keep in zip(("Y", "Y_h", "Y_c"), case.outputs)]
    out_names = out_names[:3 if case.op == "LSTM" else 2]
    attrs: dict[str, object] = {"hidden_size": case.hidden, "direction": case.direction}
    if case.op == "GRU":
        attrs["linear_before_reset"] = case.lbr
    if case.layout:
        attrs["layout"] = case.layout
    if case.activations:
        attrs["activations"] = list(case.activations)
    node = helper.make_node(case.op, names, out_names, name="rnn", **attrs)
    outputs = [_vi(n, out_shapes[n]) for n in out_names if n]
    if case.opset < 9:   # IR 3: initializers must also be graph inputs
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph([node], "rnn_graph", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)],
                              ir_version=3 if case.opset < 9 else 8)
    onnx.checker.check_model(model)
    return model


def _as_layout0(case: Case) -> onnx.ModelProto:
    """onnxruntime runs only layout 0: the same weights in a layout-0 model."""
    return make_model(replace(case, layout=0))


def _random_feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _to_layout0(case: Case, value: np.ndarray) -> np.ndarray:
    if case.layout == 0:
        return value
    return value.transpose(1, 2, 0, 3) if value.ndim == 4 else value.transpose(1, 0, 2)


def _check_primitive(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"LSTM", "GRU"}
    assert ops <= PRIMITIVE_OPS, ops - PRIMITIVE_OPS
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names)) and all(names)


def assert_matches_onnxruntime(case: Case, n_inputs: int = 3) -> onnx.ModelProto:
    model = make_model(case)
    unrolled = unroll_recurrent_ops(model)
    _check_primitive(unrolled)
    reference = _as_layout0(case)
    rng = np.random.default_rng(case.seed + 100)
    for _ in range(n_inputs):
        feeds = _random_feeds(model, rng)
        got = _run(unrolled, feeds)
        ref_feeds = {k: _to_layout0(case, v) for k, v in feeds.items()}
        want = _run(reference, ref_feeds)
        assert set(got) == set(want)
        for name, value in got.items():
            np.testing.assert_allclose(_to_layout0(case, value), want[name],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{case} {name}")
    return unrolled


# --------------------------------------------------------------------------- synthetic models

DIRECTIONS = ["forward", "reverse", "bidirectional"]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("seq,batch", [(1, 1), (4, 1), (4, 3), (1, 3)])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_directions_lengths_batches(op: str, direction: str, seq: int, batch: int) -> None:
    assert_matches_onnxruntime(Case(op=op, direction=direction, seq=seq, batch=batch))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("initial", ["none", "input", "const"])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_bias_and_initial_state(op: str, bias: bool, initial: str) -> None:
    for direction in ("forward", "bidirectional"):
        assert_matches_onnxruntime(Case(op=op, direction=direction, bias=bias, initial=initial,
                                        batch=2, seed=3))


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("initial", ["none", "input"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_linear_before_reset(lbr: int, initial: str, direction: str) -> None:
    for bias in (True, False):
        assert_matches_onnxruntime(Case(op="GRU", lbr=lbr, initial=initial, bias=bias,
                                        direction=direction, batch=3, seed=7))


@pytest.mark.parametrize("opset", [7, 8, 13, 14, 22])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_opsets(op: str, opset: int) -> None:
    unrolled = assert_matches_onnxruntime(Case(op=op, opset=opset, direction="bidirectional",
                                               initial="input", batch=2))
    assert unrolled.opset_import[0].version == opset
    if opset < 9:   # initializers that fed only the recurrent node are gone from the inputs too
        assert not {"W", "R", "B"} & {i.name for i in unrolled.graph.input}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_peepholes(direction: str) -> None:
    for initial in ("none", "input"):
        assert_matches_onnxruntime(Case(direction=direction, peephole=True, initial=initial,
                                        batch=2, seed=11))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_layout_1(op: str, direction: str) -> None:
    for initial in ("none", "input", "const"):
        assert_matches_onnxruntime(Case(op=op, direction=direction, layout=1, opset=14,
                                        initial=initial, batch=3, seed=5))


@pytest.mark.parametrize("outputs", [(True, False, False), (False, True, False),
                                     (False, False, True), (False, True, True)])
def test_partial_outputs(outputs: tuple[bool, ...]) -> None:
    unrolled = assert_matches_onnxruntime(Case(outputs=outputs, direction="bidirectional",
                                               initial="input"))
    assert [o.name for o in unrolled.graph.output] == \
        [n for n, k in zip(("Y", "Y_h", "Y_c"), outputs) if k]


def test_other_activations_and_sequence_lens() -> None:
    assert_matches_onnxruntime(Case(activations=("Relu", "Tanh", "Sigmoid") * 2,
                                    direction="bidirectional", seq_lens=True, batch=2))
    assert_matches_onnxruntime(Case(op="GRU", activations=("Sigmoid", "Relu"), seq_lens=True,
                                    batch=2))


def test_node_names_are_descriptive() -> None:
    unrolled = unroll_recurrent_ops(make_model(Case(seq=4, initial="input")))
    names = {n.name for n in unrolled.graph.node}
    assert "rnn/t3/forget_gate/Sigmoid" in names
    assert "rnn/t0/hidden/Tanh" in names


def test_stacked_unnamed_nodes() -> None:
    """LSTM -> Transpose/Reshape -> GRU, both unnamed: names stay unique, outputs agree."""
    lstm = make_model(Case(seq=3, batch=2, hidden=4, direction="bidirectional"))
    gru = make_model(Case(op="GRU", seq=3, batch=2, inp=8, hidden=3, lbr=1, seed=1))
    nodes = [lstm.graph.node[0], gru.graph.node[0]]
    nodes[0].output[:] = ["Y1", "", ""]
    nodes[1].input[:] = ["X2"] + [f"g_{i}" if i else "" for i in nodes[1].input[1:]]
    nodes[1].output[:] = ["Y2", ""]
    for n in nodes:
        n.name = ""
    g_inits = [numpy_helper.from_array(numpy_helper.to_array(t), f"g_{t.name}")
               for t in gru.graph.initializer]
    # Y1 [T, D, B, H] = [3, 2, 2, 4] -> Transpose [T, B, D, H] -> Reshape [3, 2, 8]
    shape = numpy_helper.from_array(np.array([3, 2, 8], np.int64), "shape")
    graph = helper.make_graph(
        [nodes[0], helper.make_node("Transpose", ["Y1"], ["Y1t"], perm=[0, 2, 1, 3], name="tr"),
         helper.make_node("Reshape", ["Y1t", "shape"], ["X2"], name="reshape"), nodes[1]],
        "stacked", [lstm.graph.input[0]], [_vi("Y2", [3, 1, 2, 3])],
        list(lstm.graph.initializer) + g_inits + [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    unrolled = unroll_recurrent_ops(model)
    onnx.checker.check_model(unrolled, full_check=True)
    names = [n.name for n in unrolled.graph.node]
    assert len(names) == len(set(names))
    assert any(n.startswith("LSTM_0/fwd/t2/") for n in names)
    assert any(n.startswith("GRU_3/t2/") for n in names)
    feeds = _random_feeds(model, np.random.default_rng(0))
    np.testing.assert_allclose(_run(unrolled, feeds)["Y2"], _run(model, feeds)["Y2"],
                               rtol=1e-5, atol=1e-6)


def test_model_without_recurrent_nodes_is_unchanged() -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph([node], "g", [_vi("x", [2])], [_vi("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = unroll_recurrent_ops(model)
    assert out == model and out is not model


# --------------------------------------------------------------------------- unsupported


def _with_attr(model: onnx.ModelProto, **attrs: object) -> onnx.ModelProto:
    node = model.graph.node[0]
    for key, value in attrs.items():
        node.attribute.append(helper.make_attribute(key, value))
    return model


@pytest.mark.parametrize("op,attrs,why", [
    ("LSTM", {"clip": 3.0}, "clip"),
    ("GRU", {"clip": 3.0}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("LSTM", {"activations": ["Sigmoid", "Elu", "Tanh"]}, "Elu"),
])
def test_unsupported_attributes(op: str, attrs: dict, why: str) -> None:
    model = _with_attr(make_model(Case(op=op)), **attrs)
    with pytest.raises(UnsupportedOpError, match=f"'rnn'.*{why}"):
        unroll_recurrent_ops(model)


def test_unequal_sequence_lens_is_unsupported() -> None:
    model = make_model(Case(seq_lens=True, batch=2))
    seq_lens = next(t for t in model.graph.initializer if t.name == "seq_lens")
    seq_lens.CopyFrom(numpy_helper.from_array(np.array([4, 2], np.int32), "seq_lens"))
    with pytest.raises(UnsupportedOpError, match="'rnn'.*sequence_lens"):
        unroll_recurrent_ops(model)


def test_symbolic_sequence_length_is_unsupported() -> None:
    model = make_model(Case())
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    with pytest.raises(UnsupportedOpError, match="'rnn'.*sequence length") as err:
        unroll_recurrent_ops(model)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- shared benchmarks


def _lstm_benchmarks() -> list:
    if BENCHMARKS is None:
        return []
    return sorted((BENCHMARKS / "lstm" / "onnx").glob("*.onnx.gz"))


def _load_gz(path) -> onnx.ModelProto:
    with gzip.open(path, "rb") as fh:
        return onnx.load_from_string(fh.read())


@needs_benchmarks
@pytest.mark.parametrize("opset", [None, 13, 14])
@pytest.mark.parametrize("path", _lstm_benchmarks(), ids=lambda p: p.name)
def test_shared_lstm_models(path, opset: int | None) -> None:
    model = _load_gz(path)
    if opset is not None:
        model = onnx.version_converter.convert_version(model, opset)
    unrolled = unroll_recurrent_ops(model)
    onnx.checker.check_model(unrolled, full_check=True)
    assert not {n.op_type for n in unrolled.graph.node} & {"LSTM", "GRU"}
    input_name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, (20, 2, 1, 392)).astype(np.float32)
    original = ort.InferenceSession(model.SerializeToString())
    rewritten = ort.InferenceSession(unrolled.SerializeToString())
    torch_model = onnx2torch_convert(unrolled)
    for x in xs:
        want = original.run(None, {input_name: x})[0]
        got = rewritten.run(None, {input_name: x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            out = torch_model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, got, rtol=1e-4, atol=1e-6)


def onnx2torch_convert(model: onnx.ModelProto) -> torch.nn.Module:
    from onnx2torch import convert

    return convert(model).eval()
