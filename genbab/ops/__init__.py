"""Elementwise ops of the bound engine: interval images and sound linear relaxations.

``OP_RELAXATIONS`` maps ONNX op names to :class:`~genbab.ops.relaxation.ElementwiseOp`
entries (ops with attributes are re-instantiated with ``entry.bind(...)``, e.g.
``OP_RELAXATIONS["Pow"].bind(exponent=3)``); ``BINARY_OPS`` holds the two-input ``Mul``.

Parameters (alpha) per op, all optional, any value sound (``relax`` projects):

* Relu, LeakyRelu (alpha <= 1): ``slope_lower`` in ``[alpha, 1]``; LeakyRelu alpha > 1:
  ``slope_upper`` in ``[1, alpha]``.  Sign: ``weight_lower``, ``weight_upper`` in ``[0, 1]``.
* Sigmoid, Tanh, Erf, Sin, Cos, Gelu, Reciprocal, odd Pow: ``tangent_lower``,
  ``tangent_upper`` (tangent points).  Exp, even / negative-even / convex fractional Pow:
  ``tangent_lower``; Log, Sqrt, concave fractional Pow: ``tangent_upper``.  Pow 0 / 1: none.
* Mul (bilinear): ``alpha_lower``, ``alpha_upper`` in ``[0, 1]``.
"""

from genbab.ops import exp_log, gelu, power, relu, s_shaped, trig
from genbab.ops.bilinear import BINARY_OPS
from genbab.ops.relaxation import ElementwiseOp, OpTraits, Relaxation

OP_RELAXATIONS: dict[str, ElementwiseOp] = {
    **relu.OPS, **s_shaped.OPS, **trig.OPS, **gelu.OPS, **exp_log.OPS, **power.OPS,
}

__all__ = ["OP_RELAXATIONS", "BINARY_OPS", "ElementwiseOp", "OpTraits", "Relaxation"]
