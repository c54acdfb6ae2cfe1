"""Reading ONNX files and preparing them for translation.

``read_onnx`` turns a path (plain or gzip, detected by magic bytes) into a ``ModelProto`` or a
one-line :class:`~genbab.errors.ModelError`. ``prepare_onnx`` then makes the graph static and
translatable: every symbolic input dimension is fixed to 1 (the per-sample shape VNN-LIB
indexes), node names are made unique identifiers, old opsets (< 11) are upgraded with
``onnx.version_converter``, and recurrent ops are unrolled into primitive ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from genbab.errors import ModelError
from genbab.model.files import GZIP_MAGIC, read_bytes  # noqa: F401  (re-exported)

MIN_TRANSLATABLE_OPSET = 11
MAX_INPUT_ELEMENTS = 2**27  # per sample; refused before a probe run tries to allocate it
UPGRADE_OPSET = 13


@dataclass(frozen=True)
class InputInfo:
    """The single real (non-initializer) input of a model: its name, per-sample shape and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX model file (``.onnx`` or ``.onnx.gz``)."""
    return parse_onnx(read_bytes(path), path)


def parse_onnx(data: bytes, path: str | Path = "model") -> onnx.ModelProto:
    """Parse the (gunzipped) bytes of an ONNX model read from ``path`` (named in errors)."""
    if not data:
        raise ModelError(f"{path}: empty model file")
    try:
        model = onnx.load_from_string(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a valid ONNX model ({type(err).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not a valid ONNX model (no graph)")
    check_structure(model, path)
    return model


MAX_OPSET_VERSION = 2**31 - 1  # onnx's schema lookups take a C int


def check_structure(model: onnx.ModelProto, path: str | Path = "model") -> None:
    """Refuse what no ONNX runtime accepts and later steps would trip over with an obscure error:
    operator-set versions outside a C int, a tensor defined twice, and a node input or graph output
    that nothing defines (the main graph only; subgraphs may read outer names)."""
    for imp in model.opset_import:
        if not 0 <= imp.version <= MAX_OPSET_VERSION:
            raise ModelError(f"{path}: not a valid ONNX model (operator set {imp.domain or 'ai.onnx'!r} has "
                             f"version {imp.version})")
    graph = model.graph
    texts = [imp.domain for imp in model.opset_import] + [v.name for v in (*graph.input, *graph.output)]
    texts += [i.name for i in graph.initializer]
    for node in graph.node:
        texts += [node.op_type, node.domain, node.name, *node.input, *node.output]
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:  # protobuf hands out a string field that is not valid UTF-8 as bytes
        raise ModelError(f"{path}: not a valid ONNX model (a name is not valid UTF-8: {bytes(bad)[:40]!r})")
    defined: set[str] = set()
    for name in [i.name for i in graph.initializer] + [o for n in graph.node for o in n.output if o]:
        if name in defined:
            raise ModelError(f"{path}: not a valid ONNX model (tensor {_short(name)} is defined twice)")
        defined.add(name)
    defined.update(i.name for i in graph.input)
    for idx, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in defined:
                raise ModelError(f"{path}: not a valid ONNX model (node {idx} ({_short(node.op_type)}) reads "
                                 f"tensor {_short(name)}, which nothing defines)")
    for out in graph.output:
        if out.name not in defined:
            raise ModelError(f"{path}: not a valid ONNX model (graph output {_short(out.name)} is not computed)")


def _short(name: str, limit: int = 60) -> str:
    """A printable one-line rendering of a (possibly hostile) tensor or op name."""
    return ascii(name[:limit]) + ("..." if len(name) > limit else "")


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
    size = int(np.prod(shape, dtype=object)) if shape else 1
    if size > MAX_INPUT_ELEMENTS:
        raise ModelError(f"model input {inputs[0].name!r} has {size} elements per sample (shape {list(shape)[:8]}), "
                         f"more than genbab handles ({MAX_INPUT_ELEMENTS})")
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
