"""One ONNX model for a VNN-LIB 2.0 query over several networks, inputs, outputs and hidden nodes.

:func:`compose_query` builds a model with one input ``X_all`` of shape ``[1, n_slots]`` and one
output ``Y_all`` of shape ``[1, n_outputs]``, laid out as :class:`genbab.spec.vnnlib2.Layout`
says, so the single-network pipeline verifies the query unchanged:

- every declared network gets its own copy of its model's graph, every value, node and
  initializer name prefixed with ``<network>__`` (``equal-to`` networks copy the model of the
  network they name);
- each declared input is fed from ``X_all`` by ``Slice`` (its slots contiguous) or ``Gather``
  (shared slots), then ``Reshape`` to the model input's shape and ``Cast`` to its element type;
- ``Y_all = Concat(Cast(Reshape(v, [1, -1])) for v in outputs then hidden nodes, network by network)``,
  followed by ``X_all`` itself when the layout copies the input (linear input constraints).

Declared inputs and outputs map to the model's graph inputs (initializers excluded) and outputs
by position, or by ONNX name when every declaration of that kind in the network names one;
hidden nodes always by name. :func:`evaluate_query` recomputes every declared variable from an
``X_all`` point on the original models with onnxruntime (hidden nodes exposed as extra outputs):
the exact check of a witness, independent of the composed graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from genbab.spec.vnnlib2 import NetworkDecl, Query, QueryError

INPUT_NAME = "X_all"
OUTPUT_NAME = "Y_all"
FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class Binding:
    """A declared network tied to its model: ONNX input names and static shapes in declaration
    order, and the ONNX values of its outputs then hidden nodes (the ``Y_all`` order)."""

    network: NetworkDecl
    model: onnx.ModelProto
    inputs: tuple[tuple[str, tuple[int, ...], int], ...]  # (onnx name, shape, elem type)
    values: tuple[str, ...]


def network_models(query: Query, models: dict[str, onnx.ModelProto]) -> dict[str, onnx.ModelProto]:
    """The model of every declared network: its own, or for ``equal-to`` the one it names (chains followed)."""
    decls = {n.name: n for n in query.networks}
    out = {}
    for net in query.networks:
        seen, name = set(), net.name
        while decls[name].equal_to is not None:
            if name in seen:
                raise QueryError(f"network {net.name}: equal-to declarations form a cycle")
            seen.add(name)
            name = decls[name].equal_to
        if name not in models:
            raise QueryError(f"no model given for network {name}")
        out[net.name] = models[name]
    return out


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    """The value's shape, symbolic or unknown dimensions read as 1 (the per-sample shape)."""
    dims = value.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def pick(decls, values: list[str], kind: str, network: str) -> list[str]:
    """The ONNX names the declarations map to: by name when all give one, else by position."""
    if decls and all(d.onnx_name for d in decls):
        missing = [d.onnx_name for d in decls if d.onnx_name not in values]
        if missing:
            raise QueryError(f"network {network}: the model has no {kind} named {missing[0]!r}")
        return [d.onnx_name for d in decls]
    if len(decls) != len(values):
        raise QueryError(f"network {network} declares {len(decls)} {kind}s, its model has {len(values)}")
    return list(values)


def bind(net: NetworkDecl, model: onnx.ModelProto) -> Binding:
    """Map the declarations of ``net`` onto ``model`` (checks counts, names and input sizes)."""
    graph = model.graph
    inputs = {i.name: i for i in real_inputs(graph)}
    names = pick(net.inputs, list(inputs), "input", net.name)
    bound = []
    for decl, name in zip(net.inputs, names):
        shape = static_shape(inputs[name])
        elem = inputs[name].type.tensor_type.elem_type
        if math.prod(shape) != decl.size:
            raise QueryError(f"network {net.name}: input {decl.name} declares {decl.size} elements, the model's "
                             f"input {name!r} has shape {list(shape)}")
        if elem not in FLOAT_TYPES:
            raise QueryError(f"network {net.name}: model input {name!r} is not float32 or float64")
        bound.append((name, shape, elem))
    outputs = pick(net.outputs, [o.name for o in graph.output], "output", net.name)
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    for decl in net.hidden:
        if decl.onnx_name not in known:
            raise QueryError(f"network {net.name}: hidden node {decl.name} names {decl.onnx_name!r}, "
                             "which the model does not compute")
    return Binding(net, model, tuple(bound), tuple(outputs) + tuple(d.onnx_name for d in net.hidden))


def bindings(query: Query, models: dict[str, onnx.ModelProto]) -> list[Binding]:
    chosen = network_models(query, models)
    return [bind(net, chosen[net.name]) for net in query.networks]


def default_opset(model: onnx.ModelProto) -> int:
    return next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 1)


MIN_OPSET = 13  # the glue (Slice with inputs, Reshape, Gather, Cast) and genbab's own upgrade target


def aligned(models: list[onnx.ModelProto]) -> tuple[list[onnx.ModelProto], int]:
    """The models with local functions inlined and converted to one default opset (the highest, at least 13)."""
    from onnx import inliner, version_converter

    target = max([MIN_OPSET, *map(default_opset, models)])
    out = []
    for model in models:
        if model.functions:
            model = inliner.inline_local_functions(model)
        if default_opset(model) != target:
            try:
                model = version_converter.convert_version(model, target)
            except Exception as err:
                raise QueryError(f"cannot bring a network to opset {target} to compose the query "
                                 f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
        out.append(model)
    return out, target


def prefix_graph(graph: onnx.GraphProto, prefix: str) -> None:
    """Prefix every value, node and initializer name of ``graph`` and its subgraphs (in place)."""
    def ren(name: str) -> str:
        return prefix + name if name else name

    for node in graph.node:
        node.name = ren(node.name)
        node.input[:] = [ren(n) for n in node.input]
        node.output[:] = [ren(n) for n in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                prefix_graph(attr.g, prefix)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    prefix_graph(g, prefix)
    for seq in (graph.initializer,):
        for t in seq:
            t.name = ren(t.name)
    for s in graph.sparse_initializer:
        s.values.name = ren(s.values.name)
        s.indices.name = ren(s.indices.name)
    for seq in (graph.input, graph.output, graph.value_info):
        for v in seq:
            v.name = ren(v.name)


def compose_query(query: Query, models: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """One model ``X_all [1, n_slots] -> Y_all [1, n_outputs]`` computing the query's variables
    (module docstring); checked with ``onnx.checker`` and on a probe point against
    :func:`evaluate_query` (raises :class:`QueryError`)."""
    binds = bindings(query, models)
    protos, opset = aligned([b.model for b in binds])
    layout = query.layout
    dtype = TensorProto.DOUBLE if all(e == TensorProto.DOUBLE for b in binds for _, _, e in b.inputs) else TensorProto.FLOAT
    nodes, inits, value_info, pieces = [], [], [], []
    domains: dict[str, int] = {"": opset}

    def const(name: str, values, np_type) -> str:
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np_type), name))
        return name

    for b, proto in zip(binds, protos):
        prefix = f"{b.network.name}__"
        graph = onnx.GraphProto()
        graph.CopyFrom(proto.graph)
        prefix_graph(graph, prefix)
        for imp in proto.opset_import:
            if imp.domain not in ("", "ai.onnx"):
                if domains.setdefault(imp.domain, imp.version) != imp.version:
                    raise QueryError(f"the networks import operator set {imp.domain!r} at different versions")
        for decl, (name, shape, elem) in zip(b.network.inputs, b.inputs):
            slots = layout.slots[decl.name]
            tag = f"{prefix}{decl.name}__glue"
            if list(slots) == list(range(slots[0], slots[0] + len(slots))):
                args = [INPUT_NAME, const(f"{tag}_start", [slots[0]], np.int64),
                        const(f"{tag}_end", [slots[0] + len(slots)], np.int64), const(f"{tag}_axis", [1], np.int64)]
                nodes.append(helper.make_node("Slice", args, [f"{tag}_flat"], name=f"{tag}_slice"))
            else:
                args = [INPUT_NAME, const(f"{tag}_index", list(slots), np.int64)]
                nodes.append(helper.make_node("Gather", args, [f"{tag}_flat"], name=f"{tag}_gather", axis=1))
            shaped = f"{tag}_shaped" if elem != dtype else prefix + name
            nodes.append(helper.make_node("Reshape", [f"{tag}_flat", const(f"{tag}_shape", list(shape), np.int64)],
                                          [shaped], name=f"{tag}_reshape"))
            if elem != dtype:
                nodes.append(helper.make_node("Cast", [shaped], [prefix + name], name=f"{tag}_cast", to=elem))
        nodes.extend(graph.node)
        inits.extend(graph.initializer)
        value_info.extend(v for v in graph.value_info)
        for k, value in enumerate(b.values):
            tag = f"{prefix}value{k}__glue"
            row = const(f"{tag}_row", [1, -1], np.int64)  # Flatten(axis=0); onnx2torch misreads that Flatten
            nodes.append(helper.make_node("Reshape", [prefix + value, row], [f"{tag}_flat"], name=f"{tag}_flatten"))
            nodes.append(helper.make_node("Cast", [f"{tag}_flat"], [f"{tag}_cast"], name=f"{tag}_cast", to=dtype))
            pieces.append(f"{tag}_cast")
    if layout.copies_input:
        pieces.append(INPUT_NAME)
    nodes.append(helper.make_node("Concat", pieces, [OUTPUT_NAME], name="Y_all__concat", axis=1))
    graph = helper.make_graph(nodes, "vnnlib2_query", [helper.make_tensor_value_info(INPUT_NAME, dtype, [1, layout.n_slots])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, dtype, [1, layout.n_outputs])], inits,
                              value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()],
                              producer_name="genbab.compose")
    model.ir_version = max(p.ir_version for p in protos)
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise QueryError(f"the composed model of the query is not valid ONNX ({str(err).splitlines()[0][:300]})") from None
    check_against_originals(model, query, binds)
    return model


def check_against_originals(model: onnx.ModelProto, query: Query, binds: list[Binding]) -> None:
    """Run the composed model and the original networks at the box centre of the first case
    (or zeros): sizes and values must agree, else the composition or the declarations are wrong."""
    layout = query.layout
    spec = query.spec.finite(1.0)  # an unbounded input: a point within 1 of 0 (or of its one bound)
    x = ((spec.lower[0] + spec.upper[0]) / 2).numpy() if spec.n_cases else np.zeros(layout.n_slots)
    np_type = FLOAT_TYPES[model.graph.input[0].type.tensor_type.elem_type]
    x = x.astype(np_type)
    y_ref, _ = evaluate_bindings(binds, query, x)
    y = run(model, {INPUT_NAME: x.reshape(1, -1)}, [OUTPUT_NAME])[0].reshape(-1).astype(np.float64)
    if y.shape != y_ref.shape or not np.allclose(y, y_ref, rtol=1e-5, atol=1e-6, equal_nan=True):
        raise QueryError("the composed model of the query disagrees with its networks on onnxruntime")


def run(model: onnx.ModelProto, feed: dict, outputs: list[str]) -> list[np.ndarray]:
    """onnxruntime (CPU, one thread) on ``model``; its failures as one-line :class:`QueryError`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return [np.asarray(v) for v in session.run(outputs, feed)]
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise QueryError(f"onnxruntime cannot run a network of the query ({first[:300]})") from None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the values ``names`` (hidden nodes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(helper.ValueInfoProto(name=name))
            have.add(name)
    return out


def evaluate_query(query: Query, models: dict[str, onnx.ModelProto], x_all) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(Y_all, values)`` at the point ``x_all`` (``[n_slots]``), from the original networks on
    onnxruntime: ``Y_all`` flat float64 (the copy of ``x_all`` included), ``values`` every declared
    variable by name, in its declared shape and the values its network read or computed."""
    return evaluate_bindings(bindings(query, models), query, np.asarray(x_all).reshape(-1))


def evaluate_bindings(binds: list[Binding], query: Query, x_all: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    layout = query.layout
    y = np.zeros(layout.n_outputs, dtype=np.float64)
    values: dict[str, np.ndarray] = {}
    for b in binds:
        feed = {}
        for decl, (name, shape, elem) in zip(b.network.inputs, b.inputs):
            part = x_all[list(layout.slots[decl.name])].astype(FLOAT_TYPES[elem])
            feed[name] = part.reshape(shape)
            values[decl.name] = part.reshape(decl.shape)
        hidden = [d.onnx_name for d in b.network.hidden]
        results = run(with_outputs(b.model, hidden) if hidden else b.model, feed, list(b.values))
        for decl, value in zip((*b.network.outputs, *b.network.hidden), results):
            flat = value.reshape(-1)
            if flat.size != decl.size:
                raise QueryError(f"network {b.network.name}: {decl.name} declares {decl.size} elements, the model "
                                 f"computes {flat.size}")
            values[decl.name] = flat.reshape(decl.shape)
            y[layout.offsets[decl.name]:layout.offsets[decl.name] + decl.size] = flat.astype(np.float64)
    if layout.copies_input:
        y[layout.n_values:] = x_all.astype(np.float64)
    return y, values
