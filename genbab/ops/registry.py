"""Which bound rule serves which graph node.

Three kinds of node, decided from the op type and *which inputs depend on the network input*:

- ``affine``: linear in its dependent inputs plus a constant (Gemm, Conv, MatMul/Mul/Div by a
  constant, Add/Sub, every shape op, BatchNorm, reductions...). Bound propagation needs no
  op-specific code for them: the backward step is the vector-Jacobian product and the interval
  image uses the exact Jacobian.
- ``elementwise``: a scalar nonlinearity ``h`` applied to one dependent input, relaxed by the
  op's :class:`~genbab.ops.relaxation.ElementwiseOp` (with ONNX attributes bound).
- ``bilinear``: a product of two dependent inputs (``Mul``, ``MatMul``), McCormick planes.

What generic code may read of an op is data here, never a comparison of op names elsewhere:
:class:`AffineTraits` per affine op (:data:`AFFINE_OPS`), the elementwise ops'
:class:`~genbab.ops.relaxation.OpTraits` (monotone, optimisable, splittable, split-point table,
relaxation kernel) and the product ops' :class:`~genbab.ops.bilinear.BilinearOp` fields.

Anything else raises :class:`~genbab.errors.UnsupportedOpError` naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from genbab.errors import UnsupportedOpError
from genbab.model.graph import InputRef, Node
from genbab.ops.bilinear import PRODUCT_OPS, BilinearOp
from genbab.ops.relaxation import ElementwiseOp

FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16: a cast among them is the identity


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _constant_unique_indices(node: Node) -> bool:
    """Scatter nodes: the indices (position 1) are a constant without repeated targets (with
    repeats ONNX leaves the result undefined, and the backward step would not be a selection)."""
    reduction = _text(node.attrs.get("reduction", "none"))
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


@dataclass(frozen=True)
class AffineTraits:
    """What generic bound code reads of an op that is affine in its dependent inputs.

    ``positions``: argument positions a dependent input may hold (None: any);
    ``one_dependent``: affine only with exactly one dependent input (the other a constant
    factor: Mul, MatMul, Div); ``valid``: ``(predicate on the node, why not)`` when only some
    forms are affine (attributes, constant indices).
    ``rounding``: how its arithmetic rounds (:mod:`genbab.bounds.rounding`): ``"exact"`` (data
    movement: image and backward step computed exactly), ``"elementwise"`` (a few roundings per
    element when the inputs broadcast to the output), ``"general"`` (sums over every input).
    ``signs``: +1/-1 per argument position where the op is increasing/decreasing in that
    argument (the last entry holds for later positions), None when not monotone;
    ``monotone_when``: a predicate on the attributes under which ``signs`` hold.
    ``one_to_one``: each output value is one input value (reshapes, transposes), so CROWN through
    it is never tighter than the interval image.
    ``backward``: names of the direct backward rules (``genbab.bounds.affine.FAST_RULES``) tried, in
    order, before the autograd product; ``interval``: the name of an exact interval image
    (``genbab.bounds.affine.INTERVALS``) used instead of the generic ones; ``sums_to_one``: the
    values lie in [0, 1] and sum to 1 over the last axis (backward coefficients are shifted per
    group); ``constant_factor``: scaled by a constant operand (its absolute value bounds ``|L|``).
    """

    positions: tuple[int, ...] | None = None
    one_dependent: bool = False
    valid: tuple[Callable[[Node], bool], str] | None = None
    rounding: str = "general"
    signs: tuple[int, ...] | None = None
    monotone_when: Callable[[dict], bool] | None = None
    one_to_one: bool = False
    backward: tuple[str, ...] = ()
    interval: str | None = None
    sums_to_one: bool = False
    constant_factor: bool = False


_FIRST = (0,)
_UP = (1,)
_MOVE = dict(rounding="exact", signs=_UP)  # data movement, increasing in every input
_RESHAPE = AffineTraits(_FIRST, one_to_one=True, backward=("reshape",), **_MOVE)
_SCATTER = AffineTraits((0, 2), valid=(_constant_unique_indices, "indices must be constant, without repeated "
                                                                  "targets, reduction none or add"))
_GATHER = AffineTraits(_FIRST, valid=(_gather_constant_indices, "indices must be constant"))
_INTERPOLATE = {"Resize": ("nearest", "linear"), "Upsample": ("nearest", "linear", "bilinear")}


def _interpolation(op: str) -> AffineTraits:
    """Resize/Upsample: increasing in nearest and (bi/tri)linear modes, whose weights are a positive
    combination of inputs; cubic weights are negative at the ends (still linear: the Jacobian rule)."""
    modes = _INTERPOLATE[op]
    return AffineTraits(_FIRST, signs=_UP, monotone_when=lambda attrs: _text(attrs.get("mode", "nearest")) in modes)


AFFINE_OPS: dict[str, AffineTraits] = {
    "Gemm": AffineTraits(_FIRST, backward=("linear",)),
    "Conv": AffineTraits(_FIRST), "ConvTranspose": AffineTraits(_FIRST),
    "BatchNormalization": AffineTraits(_FIRST, rounding="elementwise", backward=("diagonal",),
                                       valid=(lambda node: not int(node.attrs.get("training_mode", 0)),
                                              "training mode normalises by the batch's own statistics")),
    "Add": AffineTraits(rounding="elementwise", signs=_UP, backward=("diagonal", "sum")),
    "Sub": AffineTraits(rounding="elementwise", signs=(1, -1), backward=("diagonal", "sum")),
    "Sum": AffineTraits(rounding="elementwise", signs=_UP),
    "Neg": AffineTraits(rounding="exact", signs=(-1,), backward=("diagonal",)),
    "Identity": AffineTraits(one_to_one=True, backward=("reshape", "diagonal"), **_MOVE),
    "Dropout": AffineTraits(_FIRST, one_to_one=True, backward=("reshape", "diagonal"), **_MOVE),
    "Reshape": _RESHAPE, "Flatten": _RESHAPE, "Squeeze": _RESHAPE, "Unsqueeze": _RESHAPE,
    "Transpose": AffineTraits(_FIRST, one_to_one=True, backward=("transpose",), **_MOVE),
    "Concat": AffineTraits(**_MOVE), "Slice": AffineTraits(_FIRST, **_MOVE), "Split": AffineTraits(_FIRST, **_MOVE),
    "Gather": AffineTraits(_FIRST, signs=_UP), "Expand": AffineTraits(_FIRST, signs=_UP),
    "Tile": AffineTraits(_FIRST, signs=_UP), "Where": AffineTraits((1, 2), signs=_UP),
    "ReduceSum": AffineTraits(_FIRST, signs=_UP, backward=("reduce_sum",)),
    "ReduceMean": AffineTraits(_FIRST, signs=_UP, backward=("reduce_mean",)),
    "Pad": AffineTraits(_FIRST, signs=_UP), "AveragePool": AffineTraits(_FIRST, signs=_UP),
    "GlobalAveragePool": AffineTraits(_FIRST, signs=_UP), "CumSum": AffineTraits(_FIRST, signs=_UP),
    "Upsample": _interpolation("Upsample"), "Resize": _interpolation("Resize"),
    "Cast": AffineTraits(_FIRST, rounding="elementwise", signs=_UP,
                         valid=(lambda node: int(node.attrs.get("to", 1)) in FLOAT_TYPES,
                                "a cast to an integer or bool type is a step function")),
    # ops of genbab's own rewrites (genbab.model.simplify)
    "SoftmaxDiff": AffineTraits(_FIRST, backward=("pairwise_difference",), interval="pairwise_difference"),
    "Center": AffineTraits(_FIRST, backward=("center",), interval="center"),
    "Simplex": AffineTraits(_FIRST, rounding="exact", sums_to_one=True),
    "GatherND": _GATHER, "GatherElements": _GATHER, "ScatterND": _SCATTER, "ScatterElements": _SCATTER,
    # scaled by a constant when exactly one input depends on x (two: a product, see PRODUCT_OPS)
    "Mul": AffineTraits(one_dependent=True, rounding="elementwise", backward=("diagonal",), constant_factor=True),
    "Div": AffineTraits(_FIRST, one_dependent=True, rounding="elementwise", backward=("diagonal",),
                        constant_factor=True),
    "MatMul": AffineTraits(one_dependent=True, backward=("matmul_const",), constant_factor=True),
}
"""Graph op type of an affine node -> its traits (ops not listed: not affine)."""
GENERAL_AFFINE = AffineTraits()


def affine_traits(op_type: str) -> AffineTraits:
    """The traits of an affine op type (the plain general form for one not listed)."""
    return AFFINE_OPS.get(op_type, GENERAL_AFFINE)


@dataclass(frozen=True)
class NodeRule:
    """How bounds pass through one node: ``kind`` and the op's entry: ``affine`` traits,
    the elementwise ``op`` (attributes bound) or the ``product`` planes."""

    kind: str  # "affine" | "elementwise" | "bilinear"
    op: ElementwiseOp | None = None
    affine: AffineTraits | None = None
    product: BilinearOp | None = None


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
    traits = AFFINE_OPS.get(op)
    if traits is not None:
        if traits.valid is not None and positions and not traits.valid[0](node):
            raise UnsupportedOpError(f"no bound rule for {op} node {node.onnx_name or node.name!r}: {traits.valid[1]}")
        allowed = traits.positions
        if (not traits.one_dependent or len(positions) == 1) and (
                allowed is None or all(p in allowed for p in positions)):
            return NodeRule("affine", affine=traits)
    if op in PRODUCT_OPS and len(positions) == 2:
        return NodeRule("bilinear", product=PRODUCT_OPS[op])
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
