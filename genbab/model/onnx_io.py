"""Reading ONNX files and preparing them for translation.

``read_onnx`` turns a path (plain or gzip, detected by magic bytes) into a ``ModelProto`` or a
one-line :class:`~genbab.errors.ModelError`. ``prepare_onnx`` then makes the graph static and
translatable: every symbolic input dimension is fixed to 1 (the per-sample shape VNN-LIB
indexes), node names are made unique identifiers, old opsets (< 11) are upgraded with
``onnx.version_converter``, and recurrent ops are unrolled into primitive ops.

``fold_constants`` replaces every tensor computed from constants only (a Conv weight made by
``Mul``/``Reshape``/``DequantizeLinear`` of initializers, a Clip bound made by ``Neg``...) by an
initializer, evaluated by onnxruntime; ``normalize_optional_inputs`` rewrites empty optional
inputs that the translator misreads into equivalent explicit forms; ``explicit_auto_pad`` turns
``SAME_UPPER``/``SAME_LOWER`` padding of convolutions and pools into explicit ``pads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

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


# Ops whose value is not a function of their inputs, and so never folded.
NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                  "Multinomial", "Bernoulli"})
MAX_FOLDED_ELEMENTS = 2**26  # in all; a larger constant computation is left to the translator


def _foldable(node: onnx.NodeProto, constant: set[str]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC_OPS:
        return False
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return False  # a subgraph may read outer (input-dependent) names
    return all(not name or name in constant for name in node.input)


def fold_constants(model: onnx.ModelProto, info: InputInfo) -> onnx.ModelProto:
    """Replace the tensors that structurally do not depend on the input (computed from
    initializers and ``Constant`` nodes only) and that input-dependent nodes read by initializers
    holding their onnxruntime values. Nodes producing a graph output are kept (an output that
    ignores the input is decided separately). Returns ``model`` unchanged when nothing folds or
    onnxruntime cannot evaluate the constant part."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    constant = {i.name for i in graph.initializer}
    folded: set[int] = set()
    for idx, node in enumerate(graph.node):
        if not outputs.intersection(node.output) and _foldable(node, constant):
            folded.add(idx)
            constant.update(o for o in node.output if o)
    if not folded:
        return model
    made = {o for idx in folded for o in graph.node[idx].output if o}
    kept = [n for idx, n in enumerate(graph.node) if idx not in folded]
    needed = sorted({i for n in kept for i in n.input if i in made})
    values = _evaluate_constants(model, [graph.node[idx] for idx in sorted(folded)], needed, info)
    if values is None:
        return model
    out = onnx.ModelProto.FromString(model.SerializeToString())
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in zip(needed, values))
    return out


def _evaluate_constants(model: onnx.ModelProto, nodes: list[onnx.NodeProto], names: list[str],
                        info: InputInfo) -> list[np.ndarray] | None:
    """The onnxruntime values of ``names`` computed by ``nodes`` from the initializers (None
    when onnxruntime refuses, or a value is not a plain numeric array or is too large)."""
    if not names:
        return []
    import onnxruntime as ort

    sub = onnx.ModelProto.FromString(model.SerializeToString())
    del sub.graph.node[:], sub.graph.output[:], sub.graph.value_info[:]
    sub.graph.node.extend(nodes)
    kept_inputs = [i for i in sub.graph.input if i.name != info.name]
    del sub.graph.input[:]
    sub.graph.input.extend(kept_inputs)
    sub.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        values = sess.run(names, {})
    except Exception:
        return None
    if not all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in values):
        return None
    if sum(v.size for v in values) > MAX_FOLDED_ELEMENTS:
        return None
    return values


def normalize_optional_inputs(model: onnx.ModelProto, info: InputInfo) -> None:
    """Rewrite (in place) empty optional inputs into equivalent forms the translator reads:
    ``Clip`` without min (max): ``-inf`` (``+inf``) or, trailing, dropped; ``Resize`` without roi
    or scales: an empty initializer; a ``Reduce*`` whose ``axes`` is an empty initializer: no
    ``axes`` (both mean every axis, or the identity with ``noop_with_empty_axes``)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    used = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}

    def new_initializer(stem: str, array: np.ndarray) -> str:
        name, k = stem, 0
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Clip":
            _normalize_clip(node, inits, info, new_initializer)
        elif node.op_type == "Resize":
            for pos in (1, 2):
                if pos < len(node.input) and not node.input[pos]:
                    node.input[pos] = new_initializer(f"{node.name or 'resize'}_empty", np.zeros(0, np.float32))
        elif node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1] in inits:
            if numpy_helper.to_array(inits[node.input[1]]).size == 0:
                del node.input[1:]
    _strip_trailing_empty(graph)


AUTO_PAD_OPS = frozenset({"Conv", "MaxPool", "AveragePool"})


def explicit_auto_pad(model: onnx.ModelProto, info: InputInfo) -> onnx.ModelProto:
    """Rewrite ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER`` of ``Conv``, ``MaxPool`` and
    ``AveragePool`` nodes (which onnx2torch refuses) into explicit ``pads`` and ``NOTSET``.

    Per spatial axis, with input size ``n`` (static: the input shape is fixed, the node's input
    shape read from an onnxruntime probe run), stride ``s`` and kernel ``k``, the ONNX definition
    pads ``total = max(0, (ceil(n / s) - 1) s + k - n)``: ``total // 2`` at the beginning and the
    rest at the end for ``SAME_UPPER``, the other way round for ``SAME_LOWER``. Left as they are
    (the translator refuses them): dilations other than 1 (the definition's ``(k - 1) d + 1``
    span, which onnxruntime refuses for Conv and ignores for pools), a pool with ``ceil_mode``
    whose explicit form would give another output size, a node whose shapes are unknown.
    Returns ``model`` itself when nothing is rewritten, else a rewritten copy."""
    def auto_pad(node: onnx.NodeProto) -> str:
        attr = next((a for a in node.attribute if a.name == "auto_pad"), None)
        return attr.s.decode() if attr is not None else "NOTSET"

    todo = [i for i, n in enumerate(model.graph.node) if n.domain in ("", "ai.onnx") and n.op_type in AUTO_PAD_OPS
            and auto_pad(n) in ("SAME_UPPER", "SAME_LOWER")]
    if not todo:
        return model
    shapes = _static_shapes(model, info)
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for index in todo:
        node = out.graph.node[index]
        pads = _same_pads(node, auto_pad(node), shapes)
        if pads is None:
            continue
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("pads", pads))
    return out


def _static_shapes(model: onnx.ModelProto, info: InputInfo) -> dict[str, tuple[int, ...]]:
    """Static shapes of the input, the initializers and (from one onnxruntime run) every node output."""
    shapes = {i.name: tuple(int(d) for d in i.dims) for i in model.graph.initializer}
    shapes[info.name] = tuple(info.shape)
    annotated = annotate_shapes_by_running(model, info)
    if annotated is not model:  # the probe ran: every value_info entry is a static shape
        for v in annotated.graph.value_info:
            shapes[v.name] = tuple(int(d.dim_value) for d in v.type.tensor_type.shape.dim)
    return shapes


def _same_pads(node: onnx.NodeProto, mode: str, shapes: dict[str, tuple[int, ...]]) -> list[int] | None:
    """The explicit ``pads`` (all beginnings, then all ends) of a SAME_* ``node``, or None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = shapes.get(node.input[0])
    if x is None or len(x) < 3:
        return None
    size = x[2:]
    n = len(size)
    kernel = attrs.get("kernel_shape")
    if kernel is None and node.op_type == "Conv" and len(node.input) > 1:
        w = shapes.get(node.input[1])
        kernel = None if w is None else w[2:]
    if kernel is None or len(kernel) != n:
        return None
    strides = list(attrs.get("strides") or [1] * n)
    if any(int(d) != 1 for d in attrs.get("dilations") or ()):
        return None  # onnxruntime, which replays every witness, refuses (Conv) or misreads (pools) these
    begin, end = [], []
    for i in range(n):
        span = int(kernel[i])
        total = max(0, (-(-size[i] // strides[i]) - 1) * strides[i] + span - size[i])
        if attrs.get("ceil_mode", 0) and (size[i] + total - span) % strides[i]:
            return None  # ceil_mode would add a window that SAME does not have
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin + end


def separate_multi_output_results(model: onnx.ModelProto) -> None:
    """Rewrite (in place) every graph output produced by a node with several outputs (``Split``,
    ``TopK``, ...) into ``Identity`` of a renamed result: onnx2torch returns such a node's whole
    tuple as the model output instead of the one element the graph names."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    used = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    used |= {i.name for i in graph.input}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if sum(1 for o in node.output if o) < 2:
            continue
        for pos, name in enumerate(node.output):
            if name not in outputs:
                continue
            inner, k = f"{name}__part", 0
            while inner in used:
                k += 1
                inner = f"{name}__part{k}"
            used.add(inner)
            node.output[pos] = inner
            for other in graph.node:
                for i, value in enumerate(other.input):
                    if value == name:
                        other.input[i] = inner
            nodes.append(onnx.helper.make_node("Identity", [inner], [name]))
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)


def _normalize_clip(node: onnx.NodeProto, inits: dict, info: InputInfo, new_initializer) -> None:
    names = list(node.input)
    while len(names) > 1 and not names[-1]:
        names.pop()
    if len(names) == 3 and not names[1]:
        dtype = numpy_helper.to_array(inits[names[2]]).dtype if names[2] in inits else info.dtype
        names[1] = new_initializer(f"{node.name or 'clip'}_min", np.array(-np.inf, dtype))
    del node.input[:]
    node.input.extend(names)


def _strip_trailing_empty(graph: onnx.GraphProto) -> None:
    """Drop empty trailing optional inputs (equivalent to absent ones)."""
    for node in graph.node:
        names = list(node.input)
        while names and not names[-1]:
            names.pop()
        if len(names) != len(node.input):
            del node.input[:]
            node.input.extend(names)
