"""Graph rewrites that make every node boundable by the rules of :mod:`genbab.ops.registry`.

Each rewrite keeps the function the graph computes (tests compare forward passes):

- ``Softmax`` over the last axis: ``softmax(x)_i = 1 / sum_j exp(x_j - x_i)``, as the affine
  ``SoftmaxDiff`` (``D[..., i, j] = x_j - x_i``), ``Exp``, ``ReduceSum`` over ``j``, ``Reciprocal``,
  then ``Simplex`` (the identity, whose bound rule knows the values lie in ``[0, 1]`` and sum to 1).
  No product of two bounded quantities appears, so the relaxation stays tight. ``LogSoftmax``:
  ``log softmax(x)_i = -log sum_j exp(x_j - x_i)`` (``Log`` and ``Neg`` instead of ``Reciprocal``).
  Other axes (opset 13: one axis; opsets 1-11: the axes from ``axis`` on, flattened into one) are
  first moved last by a ``Transpose`` and merged by a ``Reshape``, and moved back afterwards.
- ``LayerNormalization`` over the axes ``a..rank-1`` (``n`` elements):
  ``c = x - mean(x)`` (affine ``Center``), ``v = mean(c^2)`` (``Pow`` 2, ``ReduceMean``),
  ``r = 1 / sqrt(v + eps)`` (``Add``, ``Sqrt``, ``Reciprocal``), ``y = (c * r) * scale + bias``
  (a product of two variables, then affine).
- ``Div(x, y)`` with ``y`` depending on the input: ``Mul(x, Reciprocal(y))``
  (``Div(c, y)`` becomes an affine ``Mul`` by the constant ``c``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from genbab.errors import UnsupportedOpError
from genbab.model.graph import Graph, InputRef, Node


def softmax_diff(x: torch.Tensor) -> torch.Tensor:
    """``D[..., i, j] = x[..., j] - x[..., i]`` (shape ``[..., n, n]``)."""
    return x.unsqueeze(-2) - x.unsqueeze(-1)


def reduce_last(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis."""
    return x.sum(dim=-1)


def multiply(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * y


class Permute:
    """``x.permute(perm)`` (per sample); ``perm`` is read by the affine fast path."""

    def __init__(self, perm: list[int]):
        self.perm = list(perm)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.perm)


class ReshapeTo:
    """``x.reshape(shape)`` (per sample)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.shape)


class Reduce:
    """Sum or mean over ``axes`` with ``keepdims``; ``axes``/``keepdims`` are read by the affine fast path."""

    def __init__(self, axes: list[int], keepdims: bool, mean: bool):
        self.axes, self.keepdims, self.mean = list(axes), bool(keepdims), bool(mean)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fn = torch.mean if self.mean else torch.sum
        return fn(x, dim=self.axes, keepdim=self.keepdims)


class Center:
    """``x - mean(x)`` over ``axes`` (kept): affine, Jacobian ``I - 11^T / n`` per group."""

    def __init__(self, axes: list[int]):
        self.axes = list(axes)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=self.axes, keepdim=True)


def simplex(x: torch.Tensor) -> torch.Tensor:
    """The identity, on values known to lie in ``[0, 1]`` and to sum to 1 over the last axis
    (softmax outputs): the bound rule of the ``Simplex`` node uses both facts."""
    return x


def _unary(name: str, op_type: str, source: str, fn, out_shape, onnx_name: str) -> Node:
    return Node(name, op_type, (source,), (InputRef(0),), {}, fn, tuple(out_shape), {}, onnx_name)


def _with_constant(name: str, op_type: str, source: str, fn, constant, out_shape, onnx_name: str) -> Node:
    """``fn(value(source), constant)`` (an ``Add``/``Mul`` by a constant, ``Pow`` by an exponent)."""
    return Node(name, op_type, (source,), (InputRef(0), constant), {}, fn, tuple(out_shape), {}, onnx_name)


def softmax_axes(node: Node) -> list[int]:
    """The (per-sample) axes a Softmax/LogSoftmax node normalises over, ascending.

    opset >= 13 (``torch.nn.Softmax``/``LogSoftmax``): the single axis ``dim``; opsets 1-11
    (onnx2torch's ``OnnxSoftmaxV1V11``): the input is coerced to 2-D at ``axis``, i.e. the
    axes ``axis..rank-1`` together."""
    rank, module = len(node.out_shape), node.module
    if isinstance(module, (torch.nn.Softmax, torch.nn.LogSoftmax)):
        return [int(module.dim if module.dim is not None else -1) % rank]
    if hasattr(module, "axis") and hasattr(module, "is_log"):
        return list(range(int(module.axis) % rank, rank))
    return [int(node.attrs.get("axis", -1)) % rank]


def _is_log_softmax(node: Node) -> bool:
    return node.op_type == "LogSoftmax" or bool(getattr(node.module, "is_log", False))


def _softmax_last(out: str, src: str, shape: tuple[int, ...], log: bool, onnx_name: str) -> list[Node]:
    """(Log)softmax over the last axis of ``src`` (shape ``shape``) as a node chain ending in ``out``."""
    pairs = (*shape, shape[-1])
    nodes = [
        _unary(f"{out}/diff", "SoftmaxDiff", src, softmax_diff, pairs, onnx_name),
        _unary(f"{out}/exp", "Exp", f"{out}/diff", torch.exp, pairs, onnx_name),
        _unary(f"{out}/sum", "ReduceSum", f"{out}/exp", reduce_last, shape, onnx_name),
    ]
    if not log:
        return nodes + [_unary(f"{out}/recip", "Reciprocal", f"{out}/sum", torch.reciprocal, shape, onnx_name),
                        _unary(out, "Simplex", f"{out}/recip", simplex, shape, onnx_name)]
    return nodes + [_unary(f"{out}/log", "Log", f"{out}/sum", torch.log, shape, onnx_name),
                    _unary(out, "Neg", f"{out}/log", torch.neg, shape, onnx_name)]


def rewrite_softmax(node: Node) -> list[Node]:
    """Softmax/LogSoftmax over any axes: move them last (Transpose), merge them (Reshape), apply
    the last-axis chain, and undo the Reshape and the Transpose."""
    shape, axes, log = tuple(node.out_shape), softmax_axes(node), _is_log_softmax(node)
    rank, base, src = len(shape), node.name, node.inputs[0]
    if axes == [rank - 1]:
        return _softmax_last(base, src, shape, log, node.onnx_name)
    perm = [a for a in range(rank) if a not in axes] + axes
    moved = tuple(shape[a] for a in perm)
    flat = (*moved[: rank - len(axes)], math.prod(moved[rank - len(axes):]))
    inverse = [perm.index(a) for a in range(rank)]
    nodes, current = [], src
    if perm != list(range(rank)):
        nodes.append(_unary(f"{base}/to_last", "Transpose", current, Permute(perm), moved, node.onnx_name))
        current = f"{base}/to_last"
    nodes.append(_unary(f"{base}/merge", "Reshape", current, ReshapeTo(flat), flat, node.onnx_name))
    nodes += _softmax_last(f"{base}/last", f"{base}/merge", flat, log, node.onnx_name)
    if perm == list(range(rank)):
        return nodes + [_unary(base, "Reshape", f"{base}/last", ReshapeTo(shape), shape, node.onnx_name)]
    nodes.append(_unary(f"{base}/split", "Reshape", f"{base}/last", ReshapeTo(moved), moved, node.onnx_name))
    return nodes + [_unary(base, "Transpose", f"{base}/split", Permute(inverse), shape, node.onnx_name)]


def layer_norm_parameters(node: Node) -> tuple[list[int], float, torch.Tensor | None, torch.Tensor | None]:
    """``(axes, eps, scale, bias)`` of a LayerNormalization node (``torch.nn.LayerNorm`` or
    onnx2torch's ``OnnxLayerNorm`` with constant scale/bias); raises for a dependent scale/bias."""
    rank, module = len(node.out_shape), node.module
    if isinstance(module, torch.nn.LayerNorm):
        axes = list(range(rank - len(module.normalized_shape), rank))
        weight = None if module.weight is None else module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        return axes, float(module.eps), weight, bias
    extra = list(node.args[1:]) + [None] * (3 - len(node.args))
    if any(isinstance(a, InputRef) for a in extra) or len(node.inputs) != 1:
        raise UnsupportedOpError(f"LayerNormalization node {node.onnx_name!r}: scale and bias must be constants")
    axis = int(getattr(module, "axis", node.attrs.get("axis", -1))) % rank
    eps = float(getattr(module, "epsilon", node.attrs.get("epsilon", 1e-5)))
    return list(range(axis, rank)), eps, extra[0], extra[1]


def rewrite_layer_norm(node: Node) -> list[Node]:
    """LayerNormalization as Center -> Pow 2 -> ReduceMean -> Add eps -> Sqrt -> Reciprocal ->
    Mul (c * r) -> Mul scale -> Add bias."""
    axes, eps, scale, bias = layer_norm_parameters(node)
    shape, base, name = tuple(node.out_shape), node.name, node.onnx_name
    kept = tuple(1 if a in axes else d for a, d in enumerate(shape))
    two = torch.tensor(2.0, dtype=torch.float64)
    nodes = [
        _unary(f"{base}/center", "Center", node.inputs[0], Center(axes), shape, name),
        _with_constant(f"{base}/square", "Pow", f"{base}/center", torch.pow, two, shape, name),
        _unary(f"{base}/var", "ReduceMean", f"{base}/square", Reduce(axes, True, True), kept, name),
        _with_constant(f"{base}/var_eps", "Add", f"{base}/var", torch.add, torch.tensor(eps, dtype=torch.float64), kept, name),
        _unary(f"{base}/std", "Sqrt", f"{base}/var_eps", torch.sqrt, kept, name),
        _unary(f"{base}/inv_std", "Reciprocal", f"{base}/std", torch.reciprocal, kept, name),
    ]
    steps = [(c, op, fn) for c, op, fn in ((scale, "Mul", torch.mul), (bias, "Add", torch.add)) if c is not None]
    last = f"{base}/normed" if steps else base
    nodes.append(Node(last, "Mul", (f"{base}/center", f"{base}/inv_std"), (InputRef(0), InputRef(1)), {},
                      multiply, shape, {}, name))
    for i, (constant, op, fn) in enumerate(steps):
        out = base if i == len(steps) - 1 else f"{base}/scaled"
        nodes.append(_with_constant(out, op, last, fn, constant, shape, name))
        last = out
    return nodes


def rewrite_div(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """``x / y`` with a dependent ``y``: ``Reciprocal(y)`` then a product with ``x``."""
    num, den = node.args[0], node.args[1]
    den_name = node.inputs[den.index]
    recip = _unary(f"{node.name}/recip", "Reciprocal", den_name, torch.reciprocal, shapes[den_name], node.onnx_name)
    if isinstance(num, InputRef):
        inputs = (node.inputs[num.index], recip.name)
        args = (InputRef(0), InputRef(1))
    else:
        inputs, args = (recip.name,), (num, InputRef(0))
    mul = Node(node.name, "Mul", inputs, args, {}, multiply, node.out_shape, {}, node.onnx_name)
    return [recip, mul]


def simplify_for_bounds(graph: Graph) -> Graph:
    """A new Graph with the rewrites above applied (the original is left untouched)."""
    shapes = {graph.input_name: graph.input_shape}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op_type in ("Softmax", "LogSoftmax"):
            new = rewrite_softmax(node)
        elif node.op_type == "LayerNormalization":
            new = rewrite_layer_norm(node)
        elif node.op_type == "Div" and len(node.args) > 1 and isinstance(node.args[1], InputRef):
            new = rewrite_div(node, shapes)
        elif needs_rewrite(node):
            new = NEW_REWRITES[node.op_type](node, shapes)
        else:
            new = [node]
        for n in new:
            shapes[n.name] = n.out_shape
        nodes.extend(new)
    return replace(graph, nodes=nodes)


# ----------------------------------------------------------------------------- max, min, pools, comparisons
# - ``Max`` / ``Min`` (n-ary, broadcasting, constants folded into one): a chain of
#   ``max(a, b) = b + relu(a - b)``, ``min(a, b) = a - relu(a - b)`` (exact in real arithmetic).
# - ``MaxPool`` / ``GlobalMaxPool``: one ``Gather`` of the ``K`` window elements of every output,
#   ``[*lead, K, *out]``, then ``ceil(log2 K)`` halving levels of the pairwise max (``Slice``s of the
#   window axis, a ``Concat`` for an odd count). A padded (``-inf``) window slot takes one of the
#   window's real elements instead, which leaves its max unchanged.
# - ``Greater(a, b)`` / ``GreaterOrEqual``: ``StepPositive(a - b)`` / ``StepNonNegative(a - b)``
#   (:mod:`genbab.ops.step`, 0/1 floats); ``Less`` / ``LessOrEqual`` with ``b - a``.
# - ``Equal(a, b)``: ``StepNonNegative(a - b) - StepPositive(a - b)``; ``Cast`` to bool:
#   ``StepPositive(x) + StepPositive(-x)``; to INT32/INT64: ``Trunc(x)``; to a float type: ``Identity``.
# - ``Pow(b, y)`` with a dependent exponent: ``Exp(y * log b)`` for a positive constant base,
#   ``Exp(y * LogPositive(x))`` for a dependent base (no bound where ``x`` may be <= 0).
# - ``Where(cond, a, b)`` with a dependent condition: ``b + cond * (a - b)``.

Operand = "str | torch.Tensor"  # a node name (dependent value) or a constant


def _node(name: str, op_type: str, operands: list, fn, out_shape, onnx_name: str) -> Node:
    """``fn(*operands)``: names become InputRefs (one input per distinct name), tensors stay constants."""
    inputs: list[str] = []
    args = []
    for op in operands:
        if isinstance(op, str):
            if op not in inputs:
                inputs.append(op)
            args.append(InputRef(inputs.index(op)))
        else:
            args.append(op)
    return Node(name, op_type, tuple(inputs), tuple(args), {}, fn, tuple(out_shape), {}, onnx_name)


def _shape_of(op, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(shapes[op]) if isinstance(op, str) else tuple(op.shape)


def pairwise_extreme(out: str, a, b, shapes: dict, onnx_name: str, minimum: bool) -> list[Node]:
    """``max(a, b) = b + relu(a - b)`` (``min(a, b) = a - relu(a - b)``) as Sub -> Relu -> Add/Sub."""
    shape = tuple(torch.broadcast_shapes(_shape_of(a, shapes), _shape_of(b, shapes)))
    nodes = [_node(f"{out}/diff", "Sub", [a, b], torch.sub, shape, onnx_name),
             _node(f"{out}/relu", "Relu", [f"{out}/diff"], torch.relu, shape, onnx_name)]
    last = _node(out, "Sub", [a, f"{out}/relu"], torch.sub, shape, onnx_name) if minimum else \
        _node(out, "Add", [b, f"{out}/relu"], torch.add, shape, onnx_name)
    for n in nodes + [last]:
        shapes[n.name] = n.out_shape
    return nodes + [last]


def _finite_constant(node: Node, value: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(value).all()):
        raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name or node.name!r}: non-finite constant operand")
    return value


def rewrite_max_min(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """n-ary ``Max`` / ``Min``: constants folded into one, then a chain of pairwise steps."""
    minimum = node.op_type == "Min"
    names = [node.inputs[a.index] for a in node.args if isinstance(a, InputRef)]
    names = list(dict.fromkeys(names))  # max(x, x) = x
    consts = [torch.as_tensor(a) for a in node.args if not isinstance(a, InputRef)]
    operands: list = list(names)
    if consts:
        folded = consts[0]
        for c in consts[1:]:
            folded = torch.minimum(folded, c) if minimum else torch.maximum(folded, c)
        operands.append(_finite_constant(node, folded))
    if len(operands) == 1:
        return [_node(node.name, "Expand", operands, ExpandTo(node.out_shape), node.out_shape, node.onnx_name)]
    nodes, acc = [], operands[0]
    for i, nxt in enumerate(operands[1:]):
        out = node.name if i == len(operands) - 2 else f"{node.name}/m{i}"
        nodes += pairwise_extreme(out, acc, nxt, shapes, node.onnx_name, minimum)
        acc = out
    if tuple(shapes[node.name]) != tuple(node.out_shape):
        raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: unexpected output shape")
    return nodes


class ExpandTo(torch.nn.Module):
    """``x.expand(shape)`` (per sample)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.shape)


class WindowGather(torch.nn.Module):
    """``y[*lead, k, *out] = x[*lead, index[k, flat(out)]]`` over the flattened spatial axes.

    ``index``: ``[K, prod(out)]`` flat spatial positions (a buffer, so it moves with the graph)."""

    def __init__(self, index: torch.Tensor, lead: tuple[int, ...], out: tuple[int, ...]):
        super().__init__()
        self.register_buffer("index", index.reshape(-1).long())
        self.lead, self.out, self.k = tuple(lead), tuple(out), int(index.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*self.lead, -1)
        return torch.index_select(flat, len(self.lead), self.index).reshape(*self.lead, self.k, *self.out)


class Narrow(torch.nn.Module):
    """``x.narrow(axis, start, length)`` (per sample)."""

    def __init__(self, axis: int, start: int, length: int):
        super().__init__()
        self.axis, self.start, self.length = axis, start, length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.narrow(self.axis, self.start, self.length)


class ConcatAxis(torch.nn.Module):
    """``torch.cat(xs, axis)`` (per sample)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.axis)


def _ints(value, n: int, default: int) -> list[int]:
    return [int(v) for v in value] if value is not None and len(value) else [default] * n


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pool_window_positions(node: Node, in_sp: tuple[int, ...], out_sp: tuple[int, ...]) -> list[list[list[int]]]:
    """Per spatial axis and output position, the ``k`` input positions of its window, each padded
    slot replaced by the window's first real position (raises when a window has none)."""
    n = len(in_sp)
    attrs = node.attrs
    if node.op_type == "GlobalMaxPool":
        return [[list(range(i))] for i in in_sp]
    kernel = _ints(attrs.get("kernel_shape"), n, 1)
    strides, dil = _ints(attrs.get("strides"), n, 1), _ints(attrs.get("dilations"), n, 1)
    pads, auto = _ints(attrs.get("pads"), 2 * n, 0), _text(attrs.get("auto_pad", "NOTSET"))
    axes = []
    for a in range(n):
        k, s, d, size, out = kernel[a], strides[a], dil[a], in_sp[a], out_sp[a]
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        begin = {"VALID": 0, "SAME_UPPER": total // 2, "SAME_LOWER": total - total // 2}.get(auto, pads[a])
        windows = []
        for o in range(out):
            pos = [o * s - begin + j * d for j in range(k)]
            real = [p for p in pos if 0 <= p < size]
            if not real:
                raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: a window holds only padding")
            windows.append([p if 0 <= p < size else real[0] for p in pos])
        axes.append(windows)
    return axes


def window_index(axes: list[list[list[int]]], in_sp: tuple[int, ...]) -> torch.Tensor:
    """``[K, prod(out)]`` flat input positions: window offsets (row-major) by output positions."""
    per_axis = [torch.tensor(w, dtype=torch.long).T for w in axes]  # [k_a, out_a]
    index = torch.zeros((1, 1), dtype=torch.long)
    for a, pos in enumerate(per_axis):
        stride = math.prod(in_sp[a + 1:])
        index = (index[:, None, :, None] + stride * pos[None, :, None, :]).reshape(
            index.shape[0] * pos.shape[0], index.shape[1] * pos.shape[1])
    return index


def rewrite_max_pool(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """MaxPool / GlobalMaxPool as a window Gather and halving levels of pairwise maxima."""
    if node.output_index not in (None, 0):
        raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: the Indices output is not supported")
    src = node.inputs[0]
    in_shape, out_shape = tuple(shapes[src]), tuple(node.out_shape)
    n = len(_ints(node.attrs.get("kernel_shape"), 0, 1)) if node.op_type == "MaxPool" else len(in_shape) - 2
    lead, in_sp, out_sp = in_shape[:-n], in_shape[-n:], out_shape[-n:]
    if out_shape[:-n] != lead:
        raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: unexpected output shape {out_shape}")
    index = window_index(pool_window_positions(node, in_sp, out_sp), in_sp)
    base, name, axis = node.name, node.onnx_name, len(lead)
    k = index.shape[0]
    nodes = [_node(f"{base}/window", "Gather", [src], WindowGather(index, lead, out_sp),
                   (*lead, k, *out_sp), name)]
    shapes[nodes[0].name] = nodes[0].out_shape
    current, level = nodes[0].name, 0
    while k > 1:
        half, odd, halved = k // 2, k % 2, current
        a, b, m = f"{base}/l{level}a", f"{base}/l{level}b", f"{base}/l{level}max"
        part = (*lead, half, *out_sp)
        for nm, start in ((a, 0), (b, half)):
            nodes.append(_node(nm, "Slice", [current], Narrow(axis, start, half), part, name))
            shapes[nm] = part
        nodes += pairwise_extreme(m, a, b, shapes, name, minimum=False)
        current = m
        if odd:
            rest, joined = f"{base}/l{level}rest", f"{base}/l{level}join"
            nodes.append(_node(rest, "Slice", [halved], Narrow(axis, 2 * half, 1), (*lead, 1, *out_sp), name))
            nodes.append(_node(joined, "Concat", [m, rest], ConcatAxis(axis), (*lead, half + 1, *out_sp), name))
            shapes[rest], shapes[joined] = (*lead, 1, *out_sp), (*lead, half + 1, *out_sp)
            current = joined
        k, level = half + odd, level + 1
    nodes.append(_node(base, "Reshape", [current], ReshapeTo(out_shape), out_shape, name))
    check_rewrite(node, nodes, shapes[src])
    return nodes


def check_rewrite(node: Node, nodes: list[Node], in_shape: tuple[int, ...], trials: int = 2) -> None:
    """Raise unless the chain ``nodes`` reproduces ``node`` (one input) on random inputs."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(trials):
        x = torch.randn(in_shape, generator=gen, dtype=torch.float64)
        env = {node.inputs[0]: x}
        for n in nodes:
            env[n.name] = n.call([env[i] for i in n.inputs])
        ref = node.call([x]).to(torch.float64)
        if env[node.name].shape != ref.shape or not torch.allclose(env[node.name], ref, rtol=1e-5, atol=1e-5):
            raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: attributes not understood "
                                     f"(the rewrite does not reproduce it)")


COMPARISONS = {"Greater": ("StepPositive", False), "GreaterOrEqual": ("StepNonNegative", False),
               "Less": ("StepPositive", True), "LessOrEqual": ("StepNonNegative", True)}


def _operands(node: Node) -> list:
    return [node.inputs[a.index] if isinstance(a, InputRef) else torch.as_tensor(a) for a in node.args]


def rewrite_comparison(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """``a > b`` as ``StepPositive(a - b)`` (>=: StepNonNegative; <, <=: ``b - a``), a 0/1 float."""
    from genbab.ops.step import OPS as STEPS

    step_type, swap = COMPARISONS[node.op_type]
    a, b = _operands(node)[:2]
    if swap:
        a, b = b, a
    for c in (a, b):
        if not isinstance(c, str):
            _finite_constant(node, c)
            if not c.is_floating_point():
                raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: integer comparisons are not supported")
    shape = tuple(node.out_shape)
    nodes, diff = _difference(node.name, a, b, shape, shapes, node.onnx_name)
    return nodes + [_node(node.name, step_type, [diff], STEPS[step_type].forward, shape, node.onnx_name)]


def _difference(base: str, a, b, shape, shapes: dict, onnx_name: str) -> tuple[list[Node], str]:
    """``a - b`` as a node ``base/diff``, or ``a`` itself when ``b`` is a zero constant of no larger
    shape (an exact difference: no rounding widens the switch of a comparison with 0)."""
    if isinstance(a, str) and not isinstance(b, str) and not bool(b.any()) and tuple(shapes[a]) == tuple(shape):
        return [], a
    return [_node(f"{base}/diff", "Sub", [a, b], torch.sub, shape, onnx_name)], f"{base}/diff"


def rewrite_equal(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """``a == b`` as ``StepNonNegative(a - b) - StepPositive(a - b)`` (1 exactly where ``a - b = 0``)."""
    from genbab.ops.step import OPS as STEPS

    a, b = _operands(node)[:2]
    for c in (a, b):
        if not isinstance(c, str):
            _finite_constant(node, c)
            if not c.is_floating_point():
                raise UnsupportedOpError(f"{node.op_type} node {node.onnx_name!r}: integer comparisons are not supported")
    base, name, shape = node.name, node.onnx_name, tuple(node.out_shape)
    if not isinstance(a, str):
        a, b = b, a
    nodes, diff = _difference(base, a, b, shape, shapes, name)
    return nodes + [
        _node(f"{base}/ge", "StepNonNegative", [diff], STEPS["StepNonNegative"].forward, shape, name),
        _node(f"{base}/gt", "StepPositive", [diff], STEPS["StepPositive"].forward, shape, name),
        _node(base, "Sub", [f"{base}/ge", f"{base}/gt"], torch.sub, shape, name)]


BOOL = 9
SIGNED_WIDE_INTS = (6, 7)  # INT32, INT64: a cast truncates toward zero (narrower types would wrap)


FLOATS = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def cast_is_rewritten(node: Node) -> bool:
    """A ``Cast`` of a dependent value to a float, bool or wide signed integer type."""
    return node.op_type == "Cast" and int(node.attrs.get("to", 1)) in (*FLOATS, BOOL, *SIGNED_WIDE_INTS)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def rewrite_cast(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """Cast to a float type: the identity (bounds are of the real-valued function, in the engine's
    dtype); to bool: ``x != 0`` as ``StepPositive(x) + StepPositive(-x)``; to INT32/INT64:
    ``Trunc(x)`` (values as floats)."""
    from genbab.ops.step import OPS as STEPS

    base, name, shape, src = node.name, node.onnx_name, tuple(node.out_shape), node.inputs[0]
    to = int(node.attrs.get("to", 1))
    if to in FLOATS:
        return [_node(base, "Identity", [src], identity, shape, name)]
    if to != BOOL:
        return [_node(base, "Trunc", [src], STEPS["Trunc"].forward, shape, name)]
    positive = STEPS["StepPositive"].forward
    return [_node(f"{base}/pos", "StepPositive", [src], positive, shape, name),
            _node(f"{base}/neg", "Neg", [src], torch.neg, shape, name),
            _node(f"{base}/negpos", "StepPositive", [f"{base}/neg"], positive, shape, name),
            _node(base, "Add", [f"{base}/pos", f"{base}/negpos"], torch.add, shape, name)]


def scale_in_dtype(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``x * c`` in ``x``'s dtype (a float64 constant does not promote a float32 graph)."""
    return x * c.to(x.dtype)


def rewrite_pow_exponent(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """``b ** y`` for a dependent exponent ``y``: with a positive constant base ``b``,
    ``exp(y * log b)`` (an affine ``Mul`` by the constant ``log b``, then ``Exp``); with a
    dependent base ``x``, ``exp(y * LogPositive(x))`` (a product of two variables), bounded only on
    boxes where ``x > 0`` (elsewhere the bound step raises: no proof)."""
    base_value, exponent = node.args[0], node.args[1]
    if isinstance(base_value, InputRef):  # exp(y log x): LogPositive gives no bound where x may be <= 0
        from genbab.ops.exp_log import OPS as EXP_LOG

        name, shape = node.name, tuple(node.out_shape)
        x, y = node.inputs[base_value.index], node.inputs[exponent.index]
        return [_node(f"{name}/log", "LogPositive", [x], EXP_LOG["LogPositive"].forward, shapes[x], node.onnx_name),
                _node(f"{name}/scaled", "Mul", [y, f"{name}/log"], multiply, shape, node.onnx_name),
                _node(name, "Exp", [f"{name}/scaled"], torch.exp, shape, node.onnx_name)]
    base_value = torch.as_tensor(base_value, dtype=torch.float64)
    if not bool((base_value > 0).all() and torch.isfinite(base_value).all()):
        raise UnsupportedOpError(f"Pow node {node.onnx_name!r}: a variable exponent needs a positive constant base")
    name, shape, src = node.name, tuple(node.out_shape), node.inputs[exponent.index]
    scaled_shape = tuple(torch.broadcast_shapes(tuple(shapes[src]), tuple(base_value.shape)))
    return [_node(f"{name}/scaled", "Mul", [src, torch.log(base_value)], scale_in_dtype, scaled_shape, node.onnx_name),
            _node(name, "Exp", [f"{name}/scaled"], torch.exp, shape, node.onnx_name)]


def where_blend(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``b + cond * (a - b)`` for a 0/1 ``cond``: the Where of a rewritten comparison."""
    return b + cond * (a - b)


def rewrite_where(node: Node, shapes: dict[str, tuple[int, ...]]) -> list[Node]:
    """``Where(cond, a, b)`` with a dependent ``cond`` (a rewritten comparison, values 0/1):
    ``diff = a - b``, ``prod = cond * diff`` (a product of two variables unless ``diff`` is
    constant), ``y = b + prod``."""
    cond, a, b = _operands(node)[:3]
    for c in (a, b):
        if not isinstance(c, str):
            _finite_constant(node, c.to(torch.float64) if not c.is_floating_point() else c)
    base, name, shape = node.name, node.onnx_name, tuple(node.out_shape)
    if isinstance(a, str) or isinstance(b, str):
        diff_shape = tuple(torch.broadcast_shapes(_shape_of(a, shapes), _shape_of(b, shapes)))
        diff = _node(f"{base}/diff", "Sub", [a, b], torch.sub, diff_shape, name)
        nodes, factor = [diff], diff.name
        shapes[diff.name] = diff_shape
    else:
        nodes, factor = [], a - b
    prod_shape = tuple(torch.broadcast_shapes(shapes[cond], _shape_of(factor, shapes)))
    nodes.append(_node(f"{base}/select", "Mul", [cond, factor], multiply, prod_shape, name))
    nodes.append(_node(base, "Add", [b, f"{base}/select"], torch.add, shape, name))
    return nodes


NEW_REWRITES = {
    "Max": rewrite_max_min, "Min": rewrite_max_min, "MaxPool": rewrite_max_pool, "GlobalMaxPool": rewrite_max_pool,
    **{op: rewrite_comparison for op in COMPARISONS}, "Where": rewrite_where, "Equal": rewrite_equal,
    "Cast": rewrite_cast, "Pow": rewrite_pow_exponent,
}


def needs_rewrite(node: Node) -> bool:
    """Max/Min/pools/comparisons with a dependent input; Where with a dependent condition."""
    if node.op_type == "Where":
        return len(node.args) > 0 and isinstance(node.args[0], InputRef)
    if node.op_type == "Cast" and not cast_is_rewritten(node):
        return False
    if node.op_type == "Pow":  # the exponent (position 1) depends on the input
        return len(node.args) > 1 and isinstance(node.args[1], InputRef)
    return node.op_type in NEW_REWRITES and any(isinstance(a, InputRef) for a in node.args)
