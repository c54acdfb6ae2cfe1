"""Reading ONNX files and preparing them for translation.

``read_onnx`` turns a path (plain or gzip, detected by magic bytes) into a ``ModelProto`` or a
one-line :class:`~genbab.errors.ModelError`. ``prepare_onnx`` then makes the graph static and
translatable: every symbolic input dimension is fixed to 1 (the per-sample shape VNN-LIB
indexes), node names are made unique identifiers, old opsets (< 11) are upgraded with
``onnx.version_converter``, and recurrent ops are unrolled into primitive ops.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from genbab.errors import ModelError

GZIP_MAGIC = b"\x1f\x8b"
MIN_TRANSLATABLE_OPSET = 11
UPGRADE_OPSET = 13


@dataclass(frozen=True)
class InputInfo:
    """The single real (non-initializer) input of a model: its name, per-sample shape and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def read_bytes(path: str | Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO or device would block the read until the deadline
        raise ModelError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read model file ({err.strerror or err})") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, ValueError) as err:
            raise ModelError(f"{path}: corrupt gzip data ({err})") from None
    return data


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX model file (``.onnx`` or ``.onnx.gz``)."""
    data = read_bytes(path)
    if not data:
        raise ModelError(f"{path}: empty model file")
    try:
        model = onnx.load_from_string(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a valid ONNX model ({type(err).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not a valid ONNX model (no graph)")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default (``ai.onnx``) operator set the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("model imports no ai.onnx operator set")


def model_input(model: onnx.ModelProto) -> InputInfo:
    """The one graph input that is not an initializer, with symbolic/zero dims fixed to 1."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"model must have exactly one input tensor, found {len(inputs)} ({names})")
    tt = inputs[0].type.tensor_type
    if not tt.HasField("shape"):
        raise ModelError(f"model input {inputs[0].name!r} has no shape")
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except Exception:
        raise ModelError(f"model input {inputs[0].name!r} has an unsupported element type") from None
    if dtype.kind != "f":
        raise ModelError(f"model input {inputs[0].name!r} must be floating point, got {dtype}")
    return InputInfo(inputs[0].name, shape, dtype)


def fix_input_shape(model: onnx.ModelProto, info: InputInfo) -> None:
    """Write the static per-sample shape into the model's input declaration (in place)."""
    for inp in model.graph.input:
        if inp.name == info.name:
            dims = inp.type.tensor_type.shape.dim
            for dim, size in zip(dims, info.shape):
                dim.Clear()
                dim.dim_value = size
    # Stale value_info from the exporter may carry symbolic batch dims; shape inference redoes it.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")


def name_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Give every node a unique identifier name ``n<index>_<OpType>``; return new -> original name."""
    original = {}
    for idx, node in enumerate(model.graph.node):
        new = f"n{idx}_{node.op_type}"
        original[new] = node.name or new
        node.name = new
    return original


def upgrade_opset(model: onnx.ModelProto, target: int = UPGRADE_OPSET) -> onnx.ModelProto:
    """Convert an old-opset model to ``target`` (Flatten-v1, Slice-v1, LSTM-v7 and the like)."""
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as err:
        raise ModelError(f"cannot upgrade model from opset {default_opset(model)} to {target}: {err}") from None


def annotate_shapes_by_running(model: onnx.ModelProto, info: InputInfo) -> onnx.ModelProto:
    """Record every intermediate tensor's static shape in ``value_info`` by running the model once.

    ONNX shape inference cannot follow some shape computations (``ReduceMean`` feeding a
    ``Reshape``...), while translators need ranks (e.g. BatchNormalization). With a fixed input
    shape every shape is static, so one onnxruntime run on a sample input gives them all.
    Returns the model unchanged when onnxruntime cannot run it.
    """
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o and o not in known]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sample = np.full(info.shape, 0.5, dtype=info.dtype)
        values = sess.run(names, {info.name: sample})
    except Exception:
        return model
    out = onnx.ModelProto.FromString(model.SerializeToString())
    del out.graph.value_info[:]
    for name, value in zip(names, values):
        if isinstance(value, np.ndarray):
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            out.graph.value_info.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
    return out
