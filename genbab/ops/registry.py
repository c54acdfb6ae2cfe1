"""Which bound rule serves which graph node.

Three kinds of node, decided from the op type and *which inputs depend on the network input*:

- ``affine``: linear in its dependent inputs plus a constant (Gemm, Conv, MatMul/Mul/Div by a
  constant, Add/Sub, every shape op, BatchNorm, reductions...). Bound propagation needs no
  op-specific code for them: the backward step is the vector-Jacobian product and the interval
  image uses the exact Jacobian.
- ``elementwise``: a scalar nonlinearity ``h`` applied to one dependent input, relaxed by the
  op's :class:`~genbab.ops.relaxation.ElementwiseOp` (with ONNX attributes bound).
- ``bilinear``: a product of two dependent inputs (``Mul``, ``MatMul``), McCormick planes.

Anything else raises :class:`~genbab.errors.UnsupportedOpError` naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genbab.errors import UnsupportedOpError
from genbab.model.graph import InputRef, Node
from genbab.ops.relaxation import ElementwiseOp

# Affine whenever every dependent input sits in one of the listed argument positions
# (None: any position). E.g. Gemm is affine in its data input A (position 0) only.
AFFINE_POSITIONS: dict[str, tuple[int, ...] | None] = {
    "Gemm": (0,), "Conv": (0,), "ConvTranspose": (0,), "BatchNormalization": (0,),
    "Add": None, "Sub": None, "Sum": None, "Neg": None, "Identity": None, "Dropout": (0,),
    "Reshape": (0,), "Flatten": (0,), "Transpose": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
    "Concat": None, "Slice": (0,), "Gather": (0,), "Split": (0,), "Expand": (0,), "Tile": (0,),
    "Where": (1, 2), "ReduceSum": (0,), "ReduceMean": (0,), "Pad": (0,), "AveragePool": (0,),
    "GlobalAveragePool": (0,), "Upsample": (0,), "Resize": (0,), "SoftmaxDiff": (0,),
    "Cast": (0,), "Center": (0,), "Simplex": (0,), "CumSum": (0,),
    "GatherND": (0,), "GatherElements": (0,), "ScatterND": (0, 2), "ScatterElements": (0, 2),
}
# Affine when exactly one input depends on x (the other is a constant factor).
AFFINE_IF_ONE_DEPENDENT: dict[str, tuple[int, ...] | None] = {"Mul": None, "MatMul": None, "Div": (0,)}
BILINEAR = {"Mul", "MatMul"}
# ONNX element types a value may be cast to while the node stays affine (float to float is the
# identity up to rounding); a cast to an integer or bool type is a step function.
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Affine only for some attribute values: (predicate on the ONNX attributes, why not otherwise).
AFFINE_WHEN = {
    "Cast": (lambda attrs: int(attrs.get("to", 1)) in FLOAT_TYPES,
             "a cast to an integer or bool type is a step function"),
    "BatchNormalization": (lambda attrs: not int(attrs.get("training_mode", 0)),
                           "training mode normalises by the batch's own statistics"),
}



def _constant_unique_indices(node: Node) -> bool:
    """Scatter nodes: the indices (position 1) are a constant without repeated targets (with
    repeats ONNX leaves the result undefined, and the backward step would not be a selection)."""
    reduction = node.attrs.get("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
    if reduction not in ("none", "add") or len(node.args) < 2 or not isinstance(node.args[1], torch.Tensor):
        return False
    idx = node.args[1].long()
    if node.op_type == "ScatterND":
        rows = idx.reshape(-1, idx.shape[-1]) if idx.dim() else idx.reshape(1, 1)
        return len(torch.unique(rows, dim=0)) == len(rows)
    axis = int(node.attrs.get("axis", 0)) % max(1, idx.dim())
    others = torch.stack(torch.meshgrid(*[torch.arange(n) for n in idx.shape], indexing="ij"), -1)
    others[..., axis] = idx
    rows = others.reshape(-1, idx.dim())
    return len(torch.unique(rows, dim=0)) == len(rows)


def _gather_constant_indices(node: Node) -> bool:
    return len(node.args) >= 2 and isinstance(node.args[1], torch.Tensor)


# Affine only for some node forms: (predicate on the node, why not otherwise).
AFFINE_NODE_WHEN = {
    "ScatterND": (_constant_unique_indices, "indices must be constant, without repeated targets, reduction none or add"),
    "ScatterElements": (_constant_unique_indices, "indices must be constant, without repeated targets, reduction none or add"),
    "GatherND": (_gather_constant_indices, "indices must be constant"),
    "GatherElements": (_gather_constant_indices, "indices must be constant"),
}


@dataclass(frozen=True)
class NodeRule:
    """How bounds pass through one node: ``kind`` and, for elementwise nodes, the bound op."""

    kind: str  # "affine" | "elementwise" | "bilinear"
    op: ElementwiseOp | None = None


def dependent_positions(node: Node) -> list[int]:
    """Argument positions holding values that depend on the network input."""
    return [i for i, a in enumerate(node.args) if isinstance(a, InputRef)]


def elementwise_table() -> dict[str, ElementwiseOp]:
    """Every elementwise op, merged from the op-family modules' ``OPS`` tables."""
    from genbab.ops import activations, exp_log, gelu, piecewise, power, relu, s_shaped, step, trig

    table: dict[str, ElementwiseOp] = {}
    for module in (relu, s_shaped, trig, gelu, exp_log, power, activations, piecewise, step):
        table.update(module.OPS)
    return table


def rule_for(node: Node) -> NodeRule:
    """The bound rule of ``node``; raises UnsupportedOpError when there is none."""
    positions = dependent_positions(node)
    op = node.op_type
    if op in AFFINE_WHEN and positions and not AFFINE_WHEN[op][0](node.attrs):
        raise UnsupportedOpError(f"no bound rule for {op} node {node.onnx_name or node.name!r}: {AFFINE_WHEN[op][1]}")
    if op in AFFINE_NODE_WHEN and positions and not AFFINE_NODE_WHEN[op][0](node):
        raise UnsupportedOpError(f"no bound rule for {op} node {node.onnx_name or node.name!r}: {AFFINE_NODE_WHEN[op][1]}")
    if op in AFFINE_POSITIONS:
        allowed = AFFINE_POSITIONS[op]
        if allowed is None or all(p in allowed for p in positions):
            return NodeRule("affine")
    if op in AFFINE_IF_ONE_DEPENDENT and len(positions) == 1:
        allowed = AFFINE_IF_ONE_DEPENDENT[op]
        if allowed is None or positions[0] in allowed:
            return NodeRule("affine")
    if op in BILINEAR and len(positions) == 2:
        return NodeRule("bilinear")
    table = elementwise_table()
    if op in table and positions == [0]:
        return NodeRule("elementwise", bind_attributes(table[op], node))
    raise UnsupportedOpError(f"no bound rule for {op} node {node.onnx_name or node.name!r} "
                             f"(dependent inputs at positions {positions})")


# Float ONNX attributes bound as they are, with the ONNX defaults.
FLOAT_ATTRIBUTES: dict[str, dict[str, float]] = {
    "Elu": {"alpha": 1.0},
    "Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    "HardSigmoid": {"alpha": 0.2, "beta": 0.5},
}


def clip_bounds(node: Node) -> tuple[float, float]:
    """Constant ``(min, max)`` of a Clip node: attributes (opset < 11) or, from opset 11 on,
    the constant inputs, which onnx2torch folds into its module (``OnnxClip`` or, for
    ``[0, inf)`` / ``[0, 6]`` / no bounds, ``ReLU`` / ``ReLU6`` / ``Identity``)."""
    attrs, module = node.attrs, node.module
    if "min" in attrs or "max" in attrs:
        return float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    consts = list(node.args[1:3])
    if consts and not all(a is None or hasattr(a, "numel") for a in consts):
        raise UnsupportedOpError(f"Clip node {node.onnx_name!r}: min / max must be constants")
    if consts:
        vals = [None if a is None or a.numel() == 0 else float(a.reshape(-1)[0]) for a in consts]
        vals += [None] * (2 - len(vals))
    else:
        vals = [getattr(module, "min_val", None), getattr(module, "max_val", None)]
        if isinstance(module, torch.nn.ReLU6):
            vals = [0.0, 6.0]
        elif isinstance(module, torch.nn.ReLU):
            vals = [0.0, None]
    lo, hi = (v if v is not None else d for v, d in zip(vals, (-math.inf, math.inf)))
    return float(lo), float(hi)


def bind_attributes(op: ElementwiseOp, node: Node) -> ElementwiseOp:
    """Bind the ONNX attributes an elementwise op needs (LeakyRelu alpha, Pow exponent, Gelu
    form, the float attributes of :data:`FLOAT_ATTRIBUTES`, Clip's constant bounds)."""
    if node.op_type in FLOAT_ATTRIBUTES:
        return op.bind(**{k: float(node.attrs.get(k, d)) for k, d in FLOAT_ATTRIBUTES[node.op_type].items()})
    if node.op_type == "Clip":
        lo, hi = clip_bounds(node)
        return op.bind(min=lo, max=hi)
    if node.op_type == "LeakyRelu":
        return op.bind(alpha=float(node.attrs.get("alpha", 0.01)))
    if node.op_type == "Pow":
        exponent = node.args[1]
        value = float(exponent.reshape(-1)[0]) if hasattr(exponent, "reshape") else float(exponent)
        if hasattr(exponent, "numel") and exponent.numel() != 1:
            raise UnsupportedOpError(f"Pow node {node.onnx_name!r}: only a scalar constant exponent is supported")
        return op.bind(exponent=value)
    if node.op_type == "Gelu":
        approx = node.attrs.get("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        return op.bind(approximate=approx)
    return op
