"""Replace ONNX ``LSTM`` and ``GRU`` nodes by unrolled subgraphs of primitive ops.

onnx2torch cannot convert recurrent nodes, and bound propagation needs them as primitive
ops anyway. :func:`unroll_recurrent_ops` rewrites every ``LSTM``/``GRU`` node of the main
graph into ``Gather``, ``MatMul``, ``Add``, ``Sub``, ``Mul``, ``Sigmoid``/``Tanh``/``Relu``,
``Unsqueeze`` and ``Concat`` nodes, one step per time position; the sequence length must be
static. Weights become per-direction, per-gate constant matrices (transposed), so each gate
of each step is ``x_t @ W_g^T + h @ R_g^T + b_g``.

Equations (ONNX operator spec; ``f``, ``g``, ``h`` are the activations, default Sigmoid,
Tanh, Tanh; ``*`` is the elementwise product; ``Wb``/``Rb`` the input/recurrent biases, which
are summed into one bias wherever they are simply added)::

    LSTM (gate order in W, R, B: i, o, f, c; peepholes P: i, o, f)
        i_t = f(x_t W_i^T + h_{t-1} R_i^T + P_i * c_{t-1} + Wb_i + Rb_i)
        f_t = f(x_t W_f^T + h_{t-1} R_f^T + P_f * c_{t-1} + Wb_f + Rb_f)
        c~_t = g(x_t W_c^T + h_{t-1} R_c^T + Wb_c + Rb_c)
        c_t = f_t * c_{t-1} + i_t * c~_t
        o_t = f(x_t W_o^T + h_{t-1} R_o^T + P_o * c_t + Wb_o + Rb_o)
        h_t = o_t * h(c_t)

    GRU (gate order in W, R, B: z, r, h)
        z_t = f(x_t W_z^T + h_{t-1} R_z^T + Wb_z + Rb_z)
        r_t = f(x_t W_r^T + h_{t-1} R_r^T + Wb_r + Rb_r)
        h~_t = g(x_t W_h^T + (r_t * h_{t-1}) R_h^T + Wb_h + Rb_h)       linear_before_reset = 0
        h~_t = g(x_t W_h^T + r_t * (h_{t-1} R_h^T + Rb_h) + Wb_h)       linear_before_reset = 1
        h_t = (1 - z_t) * h~_t + z_t * h_{t-1}

A missing (or all-zero constant) initial state is treated as zero, and the terms it would
multiply are left out of the first step. ``reverse`` runs t = T-1 .. 0 and writes the state
computed from ``x_t`` to ``Y[t]``; ``Y_h``/``Y_c`` hold the last state each direction computed.
Supported: opsets 7-22 semantics, directions forward/reverse/bidirectional, layout 0 and 1,
optional B, P (peepholes), initial_h, initial_c, sequence_lens equal to the full length,
activations Sigmoid/Tanh/Relu. ``clip``, ``input_forget=1`` and other activations raise
:class:`~genbab.errors.UnsupportedOpError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from genbab.errors import UnsupportedOpError

RECURRENT_OPS = ("LSTM", "GRU")
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
_GATES = {"LSTM": ("input_gate", "output_gate", "forget_gate", "cell_gate"),
          "GRU": ("update_gate", "reset_gate", "hidden_gate")}
_PEEPHOLES = ("input_gate", "output_gate", "forget_gate")
_DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",),
               "bidirectional": ("forward", "reverse")}
_SUPPORTED_ATTRS = {"activations", "activation_alpha", "activation_beta", "direction",
                    "hidden_size", "layout", "linear_before_reset", "input_forget",
                    "output_sequence"}


# --------------------------------------------------------------------------- public entry


def unroll_recurrent_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` whose ``LSTM``/``GRU`` nodes are unrolled into primitive ops.

    Only the main graph is rewritten. Raises :class:`UnsupportedOpError` (message naming the
    node) when a node uses an unsupported feature or its sequence length is not static.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(_is_recurrent(n) for n in out.graph.node):
        return out
    graph = out.graph
    shapes = _inferred_shapes(out)
    consts = _constant_values(graph)
    scope = _NameScope(graph)
    opset = _default_opset(out)
    new_nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for index, node in enumerate(graph.node):
        if not _is_recurrent(node):
            new_nodes.append(node)
            continue
        cell = _parse_cell(node, index, consts, shapes)
        builder = _Builder(opset, scope, cell.name, cell.dtype)
        _unroll_cell(builder, cell)
        kept = _prune(builder.nodes, [o for o in node.output if o])
        read = {i for n in kept for i in n.input}
        new_nodes.extend(kept)
        _add_initializers(out, [t for t in builder.initializers if t.name in read])
        replaced.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_constants(graph, replaced)
    return out


# --------------------------------------------------------------------------- model helpers


def _is_recurrent(node: onnx.NodeProto) -> bool:
    return node.op_type in RECURRENT_OPS and node.domain in _DEFAULT_DOMAINS


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    raise UnsupportedOpError("model imports no default-domain ONNX opset")


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> shape (None for unknown dims) after ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort; fall back to declared shapes
        inferred = model
    g = inferred.graph
    shapes: dict[str, list[int | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in tt.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _add_initializers(model: onnx.ModelProto, tensors: list[onnx.TensorProto]) -> None:
    """Append initializers (IR < 4 requires every initializer to be a graph input too)."""
    model.graph.initializer.extend(tensors)
    if model.ir_version < 4:
        model.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors)


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and of ``Constant`` nodes holding a tensor."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node (subgraphs included) or exposed as graph output."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                used |= _used_names(sub)
    return used


def _drop_unused_constants(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove initializers / Constant nodes among ``candidates`` that nothing reads anymore."""
    dead = candidates - _used_names(graph)
    if not dead:
        return
    keep_init = [t for t in graph.initializer if t.name not in dead]
    keep_input = [i for i in graph.input if i.name not in dead or
                  not any(t.name == i.name for t in graph.initializer)]
    keep_nodes = [n for n in graph.node
                  if not (n.op_type == "Constant" and n.output[0] in dead)]
    keep_vi = [v for v in graph.value_info if v.name not in dead]
    for field_, kept in ((graph.initializer, keep_init), (graph.input, keep_input),
                         (graph.node, keep_nodes), (graph.value_info, keep_vi)):
        del field_[:]
        field_.extend(kept)


def _prune(nodes: list[onnx.NodeProto], needed: list[str]) -> list[onnx.NodeProto]:
    """Keep only the nodes that contribute to ``needed`` (order preserved)."""
    live = set(needed)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    return kept[::-1]


# --------------------------------------------------------------------------- node builder


class _NameScope:
    """Hands out names unused by any node, tensor or initializer of the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = set()
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            self.used.add(vi.name)
        self.used.update(t.name for t in graph.initializer)
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)

    def unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.used:
            candidate, k = f"{name}_{k}", k + 1
        self.used.add(candidate)
        return candidate


class _Builder:
    """Collects the nodes and initializers replacing one recurrent node."""

    def __init__(self, opset: int, scope: _NameScope, prefix: str, dtype: np.dtype) -> None:
        self.opset = opset
        self.scope = scope
        self.prefix = prefix
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._cache: dict[tuple, str] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer named ``<prefix>/<name>`` (made unique); return its name."""
        tname = self.scope.unique(f"{self.prefix}/{name}")
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), tname))
        return tname

    def shared_const(self, name: str, value: np.ndarray) -> str:
        """Like :meth:`const` but reuses one initializer per distinct small value."""
        key = (name, value.dtype.str, value.shape, value.tobytes())
        if key not in self._cache:
            self._cache[key] = self.const(name, value)
        return self._cache[key]

    def op(self, op_type: str, inputs: list[str], name: str, output: str | None = None,
           **attrs: object) -> str:
        """Add node ``<prefix>/<name>``; its output is ``output`` or the node's own name."""
        node_name = self.scope.unique(f"{self.prefix}/{name}")
        out = output if output is not None else node_name
        if output is None:
            self.scope.used.add(out)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out

    def unsqueeze(self, x: str, axis: int, name: str, output: str | None = None) -> str:
        if self.opset >= 13:
            axes = self.shared_const(f"axes_{axis}", np.array([axis], dtype=np.int64))
            return self.op("Unsqueeze", [x, axes], name, output)
        return self.op("Unsqueeze", [x], name, output, axes=[axis])

    def gather(self, x: str, index: int, axis: int, name: str) -> str:
        idx = self.shared_const(f"index_{index}", np.array(index, dtype=np.int64))
        return self.op("Gather", [x, idx], name, axis=axis)

    def stack(self, xs: list[str], axis: int, name: str, output: str | None = None) -> str:
        """Unsqueeze each of ``xs`` at ``axis`` and concatenate them there."""
        if len(xs) == 1:
            return self.unsqueeze(xs[0], axis, f"{name}/Unsqueeze", output)
        parts = [self.unsqueeze(x, axis, f"{name}/Unsqueeze") for x in xs]
        return self.op("Concat", parts, f"{name}/Concat", output, axis=axis)


# --------------------------------------------------------------------------- parsing


@dataclass
class _Direction:
    """Constant weights and initial state of one direction of a recurrent node."""

    reverse: bool
    tag: str                      # "" (single direction), "fwd/" or "bwd/"
    acts: tuple[str, ...]         # ONNX op types of f, g(, h)
    w: dict[str, str] = field(default_factory=dict)       # gate -> W_g^T initializer
    r: dict[str, str] = field(default_factory=dict)       # gate -> R_g^T initializer
    bias: dict[str, str | None] = field(default_factory=dict)
    peep: dict[str, str | None] = field(default_factory=dict)
    rb_hidden: str | None = None  # GRU linear_before_reset: Rb_h, kept inside r * (.)
    h0: str | None = None
    c0: str | None = None


@dataclass
class _Cell:
    """A parsed LSTM/GRU node."""

    op: str
    name: str
    node: onnx.NodeProto
    x: str
    seq_len: int
    hidden: int
    layout: int
    linear_before_reset: bool
    dirs: list[str]
    acts: list[tuple[str, ...]]
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None
    P: np.ndarray | None
    h0: str | None
    c0: str | None
    consts: dict[str, np.ndarray]

    @property
    def dtype(self) -> np.dtype:
        return self.W.dtype


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto, i: int) -> str | None:
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _parse_cell(node: onnx.NodeProto, index: int, consts: dict[str, np.ndarray],
                shapes: dict[str, list[int | None]]) -> _Cell:
    name = node.name or f"{node.op_type}_{index}"

    def fail(why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{node.op_type} node '{name}': {why}")

    attrs = _attrs(node)
    _check_attrs(node.op_type, attrs, fail)
    dirs = list(_DIRECTIONS.get(_text(attrs.get("direction", b"forward")), ()))
    if not dirs:
        raise fail(f"unknown direction {attrs.get('direction')!r}")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise fail(f"layout {layout} is not supported")
    W, R = (_weight(node, i, consts, label, fail) for i, label in ((1, "W"), (2, "R")))
    B = _weight(node, 3, consts, "B", fail) if _input(node, 3) else None
    P = _weight(node, 7, consts, "P", fail) if node.op_type == "LSTM" and _input(node, 7) else None
    hidden = int(attrs.get("hidden_size", R.shape[-1]))
    _check_weight_shapes(node.op_type, len(dirs), hidden, W, R, B, P, fail)
    seq_len = _sequence_length(node, layout, shapes, fail)
    _check_sequence_lens(node, seq_len, consts, fail)
    return _Cell(op=node.op_type, name=name, node=node, x=node.input[0], seq_len=seq_len,
                 hidden=hidden, layout=layout,
                 linear_before_reset=bool(attrs.get("linear_before_reset", 0)),
                 dirs=dirs, acts=_activations(node.op_type, attrs, len(dirs), fail),
                 W=W, R=R, B=B, P=P, h0=_input(node, 5),
                 c0=_input(node, 6) if node.op_type == "LSTM" else None, consts=consts)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_attrs(op: str, attrs: dict[str, object], fail) -> None:
    if "clip" in attrs:
        raise fail("attribute 'clip' is not supported")
    if op == "LSTM" and int(attrs.get("input_forget", 0)) != 0:
        raise fail("input_forget=1 is not supported")
    unknown = sorted(set(attrs) - _SUPPORTED_ATTRS)
    if unknown:
        raise fail(f"attribute(s) {', '.join(unknown)} not supported")


def _activations(op: str, attrs: dict[str, object], n_dirs: int, fail) -> list[tuple[str, ...]]:
    """Per direction, the ONNX op types of the activations (f, g[, h])."""
    per_dir = len(_DEFAULT_ACTIVATIONS[op])
    names = [_text(a) for a in attrs.get("activations", [])]
    if not names:
        names = list(_DEFAULT_ACTIVATIONS[op]) * n_dirs
    elif len(names) == per_dir and n_dirs == 2:
        names = names * 2
    if len(names) != per_dir * n_dirs:
        raise fail(f"expected {per_dir * n_dirs} activations, got {len(names)}")
    ops = []
    for a in names:
        if a.lower() not in _ACTIVATIONS:
            raise fail(f"activation '{a}' is not supported (only Sigmoid, Tanh, Relu)")
        ops.append(_ACTIVATIONS[a.lower()])
    return [tuple(ops[d * per_dir:(d + 1) * per_dir]) for d in range(n_dirs)]


def _weight(node: onnx.NodeProto, i: int, consts: dict[str, np.ndarray], label: str,
            fail) -> np.ndarray:
    name = _input(node, i)
    if name is None:
        raise fail(f"input {label} is missing")
    if name not in consts:
        raise fail(f"input {label} ('{name}') is not a constant")
    value = consts[name]
    if value.dtype not in (np.float32, np.float64, np.float16):
        raise fail(f"input {label} has unsupported dtype {value.dtype}")
    return value


def _check_weight_shapes(op: str, n_dirs: int, hidden: int, W: np.ndarray, R: np.ndarray,
                         B: np.ndarray | None, P: np.ndarray | None, fail) -> None:
    n = len(_GATES[op])
    expected = {"W": (W, (n_dirs, n * hidden, W.shape[-1])), "R": (R, (n_dirs, n * hidden, hidden)),
                "B": (B, (n_dirs, 2 * n * hidden)), "P": (P, (n_dirs, 3 * hidden))}
    for label, (value, shape) in expected.items():
        if value is not None and tuple(value.shape) != shape:
            raise fail(f"input {label} has shape {list(value.shape)}, expected {list(shape)}")


def _sequence_length(node: onnx.NodeProto, layout: int,
                     shapes: dict[str, list[int | None]], fail) -> int:
    shape = shapes.get(node.input[0])
    axis = 0 if layout == 0 else 1
    if shape is None or len(shape) != 3 or not shape[axis]:
        raise fail(f"sequence length of input '{node.input[0]}' is not static "
                   f"(shape {shape}); fix symbolic input dims first")
    return int(shape[axis])


def _check_sequence_lens(node: onnx.NodeProto, seq_len: int,
                         consts: dict[str, np.ndarray], fail) -> None:
    name = _input(node, 4)
    if name is None:
        return
    if name not in consts:
        raise fail(f"sequence_lens ('{name}') must be a constant")
    if consts[name].size and not np.all(consts[name] == seq_len):
        raise fail(f"sequence_lens {consts[name].tolist()} differ from the full length {seq_len}")


# --------------------------------------------------------------------------- constants


def _directions(b: _Builder, cell: _Cell) -> list[_Direction]:
    """Per-direction constant matrices/biases and initial states, as initializers."""
    out = []
    for d, direction in enumerate(cell.dirs):
        tag = "" if len(cell.dirs) == 1 else ("fwd/" if direction == "forward" else "bwd/")
        dr = _Direction(reverse=direction == "reverse", tag=tag, acts=cell.acts[d])
        _add_gate_weights(b, cell, d, dr)
        dr.h0 = _initial_state(b, cell, cell.h0, d, f"{tag}initial_h")
        dr.c0 = _initial_state(b, cell, cell.c0, d, f"{tag}initial_c")
        out.append(dr)
    return out


def _nonzero(value: np.ndarray | None) -> bool:
    return value is not None and bool(np.any(value != 0))


def _add_gate_weights(b: _Builder, cell: _Cell, d: int, dr: _Direction) -> None:
    H = cell.hidden
    gates = _GATES[cell.op]
    for g, gate in enumerate(gates):
        rows = slice(g * H, (g + 1) * H)
        dr.w[gate] = b.const(f"{dr.tag}W_{gate}_T", cell.W[d, rows, :].T)
        dr.r[gate] = b.const(f"{dr.tag}R_{gate}_T", cell.R[d, rows, :].T)
        wb = cell.B[d, rows] if cell.B is not None else None
        rb = cell.B[d, len(gates) * H + g * H:len(gates) * H + (g + 1) * H] \
            if cell.B is not None else None
        if cell.op == "GRU" and gate == "hidden_gate" and cell.linear_before_reset:
            dr.rb_hidden = b.const(f"{dr.tag}Rb_{gate}", rb) if _nonzero(rb) else None
            bias = wb
        else:
            bias = wb + rb if wb is not None else None
        dr.bias[gate] = b.const(f"{dr.tag}bias_{gate}", bias) if _nonzero(bias) else None
    for p, gate in enumerate(_PEEPHOLES if cell.P is not None else ()):
        peep = cell.P[d, p * H:(p + 1) * H]
        dr.peep[gate] = b.const(f"{dr.tag}P_{gate}", peep) if _nonzero(peep) else None


def _initial_state(b: _Builder, cell: _Cell, name: str | None, d: int, label: str) -> str | None:
    """``[batch, hidden]`` initial state of direction ``d``; None when absent or all zero."""
    if name is None:
        return None
    axis = 0 if cell.layout == 0 else 1
    if name in cell.consts:
        value = cell.consts[name]
        if not np.any(value != 0):
            return None
        return b.const(label, np.take(value, d, axis=axis).astype(cell.dtype))
    return b.gather(name, d, axis, f"{label}/Gather")


# --------------------------------------------------------------------------- unrolling


def _unroll_cell(b: _Builder, cell: _Cell) -> None:
    """Emit every step of every direction, then the requested outputs."""
    dirs = _directions(b, cell)
    time_axis = 0 if cell.layout == 0 else 1
    xs = [b.gather(cell.x, t, time_axis, f"x/t{t}/Gather") for t in range(cell.seq_len)]
    hs, last_h, last_c = [], [], []
    step = _lstm_step if cell.op == "LSTM" else _gru_step
    for dr in dirs:
        h, c = dr.h0, dr.c0
        h_seq: list[str] = [""] * cell.seq_len
        order = range(cell.seq_len - 1, -1, -1) if dr.reverse else range(cell.seq_len)
        for t in order:
            h, c = step(b, cell, dr, f"{dr.tag}t{t}", xs[t], h, c)
            h_seq[t] = h
        hs.append(h_seq)
        last_h.append(h)
        last_c.append(c)
    _emit_outputs(b, cell, [dr.tag for dr in dirs], hs, last_h, last_c)


def _emit_outputs(b: _Builder, cell: _Cell, tags: list[str], hs: list[list[str]],
                  last_h: list[str], last_c: list[str | None]) -> None:
    """Y: [T, D, B, H] (layout 1: [B, T, D, H]); Y_h, Y_c: [D, B, H] (layout 1: [B, D, H])."""
    outputs = list(cell.node.output) + [""] * 3
    y, y_h, y_c = outputs[:3]
    time_axis, dir_axis = (0, 1) if cell.layout == 0 else (1, 2)
    if y:
        per_dir = [b.stack(h_seq, time_axis, f"{dr}Y")
                   for h_seq, dr in zip(hs, tags)]
        b.stack(per_dir, dir_axis, "Y", output=y)
    state_axis = 0 if cell.layout == 0 else 1
    if y_h:
        b.stack(last_h, state_axis, "Y_h", output=y_h)
    if y_c and cell.op == "LSTM":
        b.stack([c for c in last_c if c is not None], state_axis, "Y_c", output=y_c)


def _gate(b: _Builder, scope: str, x_t: str, h: str | None, w: str, r: str,
          bias: str | None) -> str:
    """``x_t @ W^T (+ h @ R^T) (+ bias)``."""
    acc = b.op("MatMul", [x_t, w], f"{scope}/x_MatMul")
    if h is not None:
        acc = b.op("Add", [acc, b.op("MatMul", [h, r], f"{scope}/h_MatMul")], f"{scope}/Add")
    if bias is not None:
        acc = b.op("Add", [acc, bias], f"{scope}/bias_Add")
    return acc


def _peephole(b: _Builder, scope: str, acc: str, p: str | None, c: str | None) -> str:
    if p is None or c is None:
        return acc
    return b.op("Add", [acc, b.op("Mul", [p, c], f"{scope}/peephole_Mul")],
                f"{scope}/peephole_Add")


def _lstm_gate(b: _Builder, dr: _Direction, scope: str, gate: str, x_t: str, h: str | None,
               c: str | None, act: str) -> str:
    s = f"{scope}/{gate}"
    acc = _gate(b, s, x_t, h, dr.w[gate], dr.r[gate], dr.bias[gate])
    acc = _peephole(b, s, acc, dr.peep.get(gate), c)
    return b.op(act, [acc], f"{s}/{act}")


def _lstm_step(b: _Builder, cell: _Cell, dr: _Direction, scope: str, x_t: str,
               h: str | None, c: str | None) -> tuple[str, str]:
    f_act, g_act, h_act = dr.acts
    i = _lstm_gate(b, dr, scope, "input_gate", x_t, h, c, f_act)
    cand = _lstm_gate(b, dr, scope, "cell_gate", x_t, h, None, g_act)
    c_new = b.op("Mul", [i, cand], f"{scope}/cell/input_Mul")
    if c is not None:
        f = _lstm_gate(b, dr, scope, "forget_gate", x_t, h, c, f_act)
        kept = b.op("Mul", [f, c], f"{scope}/cell/forget_Mul")
        c_new = b.op("Add", [kept, c_new], f"{scope}/cell/Add")
    o = _lstm_gate(b, dr, scope, "output_gate", x_t, h, c_new, f_act)
    h_new = b.op("Mul", [o, b.op(h_act, [c_new], f"{scope}/hidden/{h_act}")],
                 f"{scope}/hidden/Mul")
    return h_new, c_new


def _gru_step(b: _Builder, cell: _Cell, dr: _Direction, scope: str, x_t: str,
              h: str | None, c: None) -> tuple[str, None]:
    f_act, g_act = dr.acts
    z_scope, r_scope = f"{scope}/update_gate", f"{scope}/reset_gate"
    z = b.op(f_act, [_gate(b, z_scope, x_t, h, dr.w["update_gate"], dr.r["update_gate"],
                           dr.bias["update_gate"])], f"{z_scope}/{f_act}")

    def reset() -> str:
        pre = _gate(b, r_scope, x_t, h, dr.w["reset_gate"], dr.r["reset_gate"],
                    dr.bias["reset_gate"])
        return b.op(f_act, [pre], f"{r_scope}/{f_act}")

    pre = _gru_hidden_pre(b, cell, dr, f"{scope}/hidden_gate", x_t, h, reset)
    cand = b.op(g_act, [pre], f"{scope}/hidden_gate/{g_act}")
    return _gru_mix(b, dr, f"{scope}/hidden", z, cand, h), None


def _gru_hidden_pre(b: _Builder, cell: _Cell, dr: _Direction, s: str, x_t: str,
                    h: str | None, reset) -> str:
    """Pre-activation of the GRU candidate state h~ (reset gate computed only if needed)."""
    w, r, bias = dr.w["hidden_gate"], dr.r["hidden_gate"], dr.bias["hidden_gate"]
    if not cell.linear_before_reset:
        rh = b.op("Mul", [reset(), h], f"{s}/reset_Mul") if h is not None else None
        return _gate(b, s, x_t, rh, w, r, bias)
    acc = _gate(b, s, x_t, None, w, r, bias)
    inner = b.op("MatMul", [h, r], f"{s}/h_MatMul") if h is not None else None
    if inner is not None and dr.rb_hidden is not None:
        inner = b.op("Add", [inner, dr.rb_hidden], f"{s}/recurrent_bias_Add")
    elif inner is None:
        inner = dr.rb_hidden
    if inner is None:
        return acc
    return b.op("Add", [acc, b.op("Mul", [reset(), inner], f"{s}/reset_Mul")], f"{s}/reset_Add")


def _gru_mix(b: _Builder, dr: _Direction, s: str, z: str, cand: str, h: str | None) -> str:
    """``(1 - z) * h~ + z * h`` (the last term dropped when h is zero)."""
    one = b.shared_const("one", np.array(1, dtype=b.dtype))
    new = b.op("Mul", [b.op("Sub", [one, z], f"{s}/one_minus_update_Sub"), cand],
               f"{s}/candidate_Mul")
    if h is None:
        return new
    return b.op("Add", [new, b.op("Mul", [z, h], f"{s}/previous_Mul")], f"{s}/Add")
