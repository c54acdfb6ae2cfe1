"""Graph rewrites that make every node boundable by the rules of :mod:`genbab.ops.registry`.

Each rewrite keeps the function the graph computes (tests compare forward passes):

- ``Softmax`` over the last axis: ``softmax(x)_i = 1 / sum_j exp(x_j - x_i)``, as the affine
  ``SoftmaxDiff`` (``D[..., i, j] = x_j - x_i``), ``Exp``, ``ReduceSum`` over ``j``, ``Reciprocal``.
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
        return nodes + [_unary(out, "Reciprocal", f"{out}/sum", torch.reciprocal, shape, onnx_name)]
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
        else:
            new = [node]
        for n in new:
            shapes[n.name] = n.out_shape
        nodes.extend(new)
    return replace(graph, nodes=nodes)
