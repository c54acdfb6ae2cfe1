"""Graph rewrites that make every node boundable by the rules of :mod:`genbab.ops.registry`.

Each rewrite keeps the function the graph computes (tests compare forward passes):

- ``Softmax`` over the last axis: ``softmax(x)_i = 1 / sum_j exp(x_j - x_i)``, as the affine
  ``SoftmaxDiff`` (``D[..., i, j] = x_j - x_i``), ``Exp``, ``ReduceSum`` over ``j``, ``Reciprocal``.
  No product of two bounded quantities appears, so the relaxation stays tight.
- ``Div(x, y)`` with ``y`` depending on the input: ``Mul(x, Reciprocal(y))``
  (``Div(c, y)`` becomes an affine ``Mul`` by the constant ``c``).
"""

from __future__ import annotations

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


def _unary(name: str, op_type: str, source: str, fn, out_shape, onnx_name: str) -> Node:
    return Node(name, op_type, (source,), (InputRef(0),), {}, fn, tuple(out_shape), {}, onnx_name)


def rewrite_softmax(node: Node) -> list[Node]:
    """Softmax over the last axis as SoftmaxDiff -> Exp -> ReduceSum -> Reciprocal."""
    axis = int(node.attrs.get("axis", -1))
    rank = len(node.out_shape)
    if axis % rank != rank - 1:
        raise UnsupportedOpError(f"Softmax node {node.onnx_name!r}: only the last axis is supported (axis={axis})")
    n = node.out_shape[-1]
    pairs = (*node.out_shape, n)
    base, src = node.name, node.inputs[0]
    return [
        _unary(f"{base}/diff", "SoftmaxDiff", src, softmax_diff, pairs, node.onnx_name),
        _unary(f"{base}/exp", "Exp", f"{base}/diff", torch.exp, pairs, node.onnx_name),
        _unary(f"{base}/sum", "ReduceSum", f"{base}/exp", reduce_last, node.out_shape, node.onnx_name),
        _unary(base, "Reciprocal", f"{base}/sum", torch.reciprocal, node.out_shape, node.onnx_name),
    ]


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
        if node.op_type == "Softmax":
            new = rewrite_softmax(node)
        elif node.op_type == "Div" and len(node.args) > 1 and isinstance(node.args[1], InputRef):
            new = rewrite_div(node, shapes)
        else:
            new = [node]
        for n in new:
            shapes[n.name] = n.out_shape
        nodes.extend(new)
    return replace(graph, nodes=nodes)
