"""Bounds through affine nodes without op-specific code.

A node affine in its dependent inputs computes ``y = sum_i L_i x_i + c``. With ``c = f(0)`` and
the vector-Jacobian product ``v -> (v^T L_1, ..., v^T L_k)`` from ``torch.func.vjp``:

- backward step of a linear bound ``A y``: ``A y = sum_i (A L_i) x_i + A c``;
- interval image: for ops monotone in each input (shape ops, sums, positive pools) the image
  of the corner points; otherwise ``mid = f(centres)``, ``rad = sum_i |L_i| r_i`` with the
  explicit Jacobian ``L_i`` (computed once per node).
"""

from __future__ import annotations

import math

import torch

from genbab.bounds.rounding import broadcast_shape
from genbab.model.graph import InputRef, Node
from genbab.ops.registry import affine_traits

# How an affine node's arithmetic rounds (genbab.bounds.rounding) is its ``rounding`` trait
# (genbab.ops.registry.AffineTraits): pure data movement computes its image and its backward step
# (a permutation, selection or zero fill of coefficients) exactly; an elementwise op over inputs
# broadcast to its output rounds a few times per element (forward) and its backward sums over each
# input's broadcast copies. Everything else: any sum over all inputs.


def rounding_terms(node: Node, input_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(forward, backward)``: bounds on the number of rounded operations behind one output value
    of the node's interval image, and behind one input coefficient of its backward step (the
    ``n`` of ``gamma_n``); ``(0, 0)`` for exact data movement."""
    kind = affine_traits(node.op_type).rounding
    if kind == "exact":
        return 0, 0
    out_n = math.prod(out_shape)
    sizes = [math.prod(s) for s in input_shapes]
    if kind == "elementwise" and all(
            broadcast_shape(s, out_shape) == tuple(out_shape) for s in input_shapes):
        return len(sizes) + 8, max(out_n // max(1, n) for n in sizes) + 8
    return sum(sizes) + 4, out_n + 4


class AffineMap:
    """The affine map of one node, over per-sample inputs of the given shapes."""

    def __init__(self, node: Node, input_shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device):
        self.node = node
        self.input_shapes = input_shapes
        self._zeros = [torch.zeros(s, dtype=dtype, device=device, requires_grad=True) for s in input_shapes]
        with torch.enable_grad():
            self._out = self.forward(*self._zeros)
        self.const = self._out.detach()
        self._const_flat = self.const.reshape(-1)
        self._const_zero = not bool(self._const_flat.any())
        self._jacobians: list[torch.Tensor] | None = None
        self._fast = fast_rule(node, input_shapes, self)

    def _vjp_batched(self, cotangents: torch.Tensor) -> list[torch.Tensor]:
        """``v -> v^T L_i`` for a batch of cotangents ``[N, *out]`` (differentiable in ``v``).

        Plain autograd with batched gradients (torch.func.vjp cannot run ops that read
        constants through numpy, as onnx2torch's Slice does)."""
        with torch.enable_grad():
            grads = torch.autograd.grad(self._out, self._zeros, grad_outputs=cotangents, retain_graph=True,
                                        create_graph=cotangents.requires_grad, allow_unused=True,
                                        is_grads_batched=True)
        return [torch.zeros(len(cotangents), *z.shape, dtype=z.dtype, device=z.device) if g is None else g
                for g, z in zip(grads, self._zeros)]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """The node on one sample."""
        return self.node.call(list(xs))

    def backward(self, A: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``A`` ``[B, S, *out]`` -> coefficients per input ``[B, S, *in_i]`` and bias ``[B, S]``."""
        B, S = A.shape[:2]
        bias = self.bias_of(A)
        if self._fast is not None:
            return self._fast(A), bias
        return self.vjp_rows(A), bias

    def bias_of(self, A: torch.Tensor) -> torch.Tensor:
        """``A c`` per row ``[B, S]`` (``c = f(0)``); zero without a pass over ``A`` when ``c = 0``."""
        B, S = A.shape[:2]
        if self._const_zero:
            return torch.zeros(B, S, dtype=A.dtype, device=A.device)
        return A.reshape(B, S, -1) @ self._const_flat.to(A.dtype)

    def vjp_rows(self, A: torch.Tensor) -> list[torch.Tensor]:
        """``A L_i`` for every input by autograd (the general path)."""
        B, S = A.shape[:2]
        grads = self._vjp_batched(A.reshape(B * S, *A.shape[2:]))
        return [g.reshape(B, S, *shape) for g, shape in zip(grads, self.input_shapes)]

    def jacobians(self) -> list[torch.Tensor]:
        """``L_i`` as ``[n_out, n_in_i]`` matrices (cached)."""
        if self._jacobians is None:
            n_out = self.const.numel()
            eye = torch.eye(n_out, dtype=self.const.dtype, device=self.const.device).reshape(n_out, *self.const.shape)
            grads = self._vjp_batched(eye)
            self._jacobians = [g.reshape(n_out, -1) for g in grads]
        return self._jacobians

    def interval(self, lows: list[torch.Tensor], highs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval image for batched input intervals ``[B, *in_i]`` -> ``[B, *out]``."""
        traits = affine_traits(self.node.op_type)
        if traits.interval is not None:
            return INTERVALS[traits.interval](self.node, self._batched, lows[0], highs[0])
        if traits.sums_to_one:  # values in [0, 1]: exact clamps
            return lows[0].clamp(min=0.0), highs[0].clamp(max=1.0)
        signs = monotone_signs(self.node)
        if signs is not None:
            low_in = [lo if s > 0 else hi for s, lo, hi in zip(signs, lows, highs)]
            high_in = [hi if s > 0 else lo for s, lo, hi in zip(signs, lows, highs)]
            return self._batched(low_in), self._batched(high_in)
        lows = [lo.clamp(min=-huge(lo.dtype)) for lo in lows]  # centre/radius of unbounded intervals stay finite
        highs = [hi.clamp(max=huge(hi.dtype)) for hi in highs]
        mid = self._batched([(lo + hi) / 2 for lo, hi in zip(lows, highs)])
        absolute = self._absolute()
        if absolute is not None:
            radius = (highs[0] - lows[0]) / 2
            rad = torch.func.vmap(absolute)(radius) - absolute(torch.zeros_like(radius[0]))
            return mid - rad, mid + rad
        rad = torch.zeros_like(mid).reshape(mid.shape[0], -1)
        for J, lo, hi in zip(self.jacobians(), lows, highs):
            r = ((hi - lo) / 2).reshape(lo.shape[0], -1)
            rad = rad + r @ J.abs().T
        rad = rad.reshape(mid.shape)
        return mid - rad, mid + rad

    def _absolute(self):
        """The cached ``abs_copy`` of the node (False when there is none)."""
        if not hasattr(self, "_abs"):
            self._abs = abs_copy(self.node)
        return self._abs

    def _batched(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.func.vmap(self.forward)(*xs)




HUGE = 1e300


def huge(dtype: torch.dtype) -> float:
    """The finite stand-in for an infinite bound: ``HUGE`` in float64, ``1e-8`` of the largest
    finite value in narrower dtypes (so ``hi - lo`` and the centre stay finite)."""
    return min(HUGE, torch.finfo(dtype).max * 1e-8)
CONV_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
              torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


# --------------------------------------------------------------------------- fast backward rules
# Each rule maps ``A`` ``[B, S, *out]`` to the coefficient(s) ``A L_i`` directly. A rule is only
# used after it reproduced the autograd VJP on random rows (see :func:`fast_rule`).

def fast_rule(node: Node, input_shapes: list[tuple[int, ...]], affine: "AffineMap"):
    """The first of the node's direct rules (its ``backward`` trait) that reads its form, checked
    against autograd; None for the general path."""
    for name in affine_traits(node.op_type).backward:
        make = FAST_RULES[name]
        try:
            rule = make(node, input_shapes, affine)
        except Exception:  # a rule that cannot read this node's form does not apply
            rule = None
        if rule is not None:
            return rule if _agrees(rule, affine) else None
    return None


def _agrees(rule, affine: "AffineMap") -> bool:
    """Does ``rule`` give the autograd coefficients on three random rows (float64 round-off aside)?"""
    const = affine.const
    A = torch.randn(1, 3, *const.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A = A.to(device=const.device, dtype=const.dtype)
    try:
        ours, ref = rule(A), affine.vjp_rows(A)
    except Exception:
        return False
    if len(ours) != len(ref):
        return False
    for a, b in zip(ours, ref):
        scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-9, atol=1e-9 * scale):
            return False
    return True


def _lead(A: torch.Tensor) -> tuple[int, int]:
    return A.shape[0], A.shape[1]


def _linear_rule(node, shapes, affine):
    """``y = x W^T + b``: ``A W``."""
    if len(node.inputs) == 1 and len(node.args) == 1 and isinstance(node.module, torch.nn.Linear):
        weight = node.module.weight.detach()
        return lambda A: [A @ weight]
    return None


def _reshape_rule(node, shapes, affine):
    """Pure reshapes keep the element order: the coefficients are ``A`` reshaped."""
    if len(node.inputs) == 1:
        return lambda A: [A.reshape(*_lead(A), *shapes[0])]
    return None


def _transpose_rule(node, shapes, affine):
    """``y = x.permute(p)``: ``A`` permuted by the inverse of ``p``."""
    if len(node.inputs) != 1:
        return None
    perm = getattr(node.module, "perm", None) or node.attrs.get("perm") or list(range(len(shapes[0])))[::-1]
    inverse = [list(perm).index(axis) for axis in range(len(perm))]
    return lambda A: [A.permute(0, 1, *(2 + k for k in inverse))]


def _softmax_diff_rule(node, shapes, affine):
    """``D_ij = x_j - x_i``: ``sum_ij A_ij D_ij = sum_k x_k (sum_i A_ik - sum_j A_kj)``."""
    if len(node.inputs) == 1:
        return lambda A: [A.sum(-2) - A.sum(-1)]
    return None


def _center_rule(node, shapes, affine):
    """``c = x - mean(x)`` has the symmetric Jacobian ``I - 11^T / n``: ``A - mean(A)``."""
    if len(node.inputs) == 1:
        axes = [2 + a for a in node.module.axes]
        return lambda A: [A - A.mean(dim=axes, keepdim=True)]
    return None


def center_interval(node: Node, batched, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact interval of ``c_i = (1 - 1/n) x_i - (1/n) sum_{j != i} x_j`` over a box:
    centre ``c(mid)``, radius ``(1 - 2/n) r_i + mean(r)`` (``n`` elements per group)."""
    axes = [1 + a for a in node.module.axes]
    n = math.prod(lo.shape[a] for a in axes)
    lo, hi = lo.clamp(min=-huge(lo.dtype)), hi.clamp(max=huge(hi.dtype))
    mid, rad = batched([(lo + hi) / 2]), (hi - lo) / 2
    rad = (1 - 2 / n) * rad + rad.mean(dim=axes, keepdim=True)
    return mid - rad, mid + rad


def _reduce_rule(node, shapes, affine, mean: bool = False):
    """Sum (``mean``: mean) over ``axes``: ``A`` broadcast back over the reduced axes (divided by their size)."""
    if len(node.inputs) != 1:
        return None
    axes, keepdims = reduce_axes(node, len(shapes[0]))
    if axes is None:
        return None
    in_shape = shapes[0]
    count = math.prod(in_shape[a] for a in axes)

    def rule(A):
        if not keepdims:
            for a in sorted(axes):
                A = A.unsqueeze(2 + a)
        A = A.expand(*_lead(A), *in_shape)
        return [A / count if mean else A]
    return rule


def pairwise_difference_interval(node: Node, batched, lo: torch.Tensor, hi: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact interval of ``D_ij = x_j - x_i`` over a box: ``[l_j - u_i, u_j - l_i]``, ``D_ii = 0``."""
    d_lo, d_hi = lo.unsqueeze(-2) - hi.unsqueeze(-1), hi.unsqueeze(-2) - lo.unsqueeze(-1)
    d_lo.diagonal(dim1=-2, dim2=-1).zero_()
    d_hi.diagonal(dim1=-2, dim2=-1).zero_()
    return d_lo, d_hi


INTERVALS = {"pairwise_difference": pairwise_difference_interval, "center": center_interval}
"""Exact interval images named by the ``interval`` trait: ``(node, batched forward, lo, hi) -> (lo, hi)``."""


def reduce_axes(node: Node, rank: int) -> tuple[list[int] | None, bool]:
    """``(axes, keepdims)`` of a reduction node with static axes (ours or onnx2torch's), else ``(None, _)``."""
    module = node.module
    if getattr(module, "__name__", "") == "reduce_last":
        return [rank - 1], False
    axes = getattr(module, "axes", getattr(module, "_axes", None))
    keep = getattr(module, "keepdims", getattr(module, "_keepdims", None))
    if not axes or keep is None:  # None or empty: onnx2torch reduces over every axis
        return None, True
    return sorted(int(a) % rank for a in axes), bool(keep)


def _diagonal_rule(node, shapes, affine):
    """Elementwise affine maps of one input (BatchNorm, scaling, shifts): ``A * diag(L)``."""
    if len(node.inputs) != 1 or tuple(shapes[0]) != tuple(affine.const.shape):
        return None
    ones = torch.ones(1, 1, *affine.const.shape, dtype=affine.const.dtype, device=affine.const.device)
    diag = affine.vjp_rows(ones)[0][0, 0].detach()
    if bool((diag == 1).all()):
        return lambda A: [A]
    return lambda A: [A * diag]


def _sum_rule(node, shapes, affine):
    """``Add``/``Sub`` of distinct dependent inputs: ``+-A`` summed over each input's broadcast axes."""
    refs = [a for a in node.args[:2] if isinstance(a, InputRef)]
    if len(refs) != 2 or len(node.inputs) != 2 or refs[0] == refs[1]:
        return None
    by_position = affine_traits(node.op_type).signs or (1,)
    signs = {refs[0].index: float(by_position[0]), refs[1].index: float(by_position[min(1, len(by_position) - 1)])}
    out_rank = affine.const.dim()

    def rule(A):
        out = []
        for i, shape in enumerate(shapes):
            padded = (*_lead(A), *([1] * (out_rank - len(shape))), *shape)
            coeff = A.sum_to_size(padded).reshape(*_lead(A), *shape)
            out.append(coeff if signs[i] > 0 else -coeff)
        return out
    return rule


def _matmul_const_rule(node, shapes, affine):
    """``x @ W`` -> ``A W^T``; ``W @ x`` -> ``W^T A`` (``A W`` for a vector ``x``); ``W`` a constant matrix."""
    if len(node.inputs) != 1 or len(node.args) != 2:
        return None
    (first, second), rank = node.args, len(shapes[0])
    if isinstance(first, InputRef) and isinstance(second, torch.Tensor) and second.dim() == 2:
        weight_t = second.detach().T
        return lambda A: [A @ weight_t]
    if isinstance(second, InputRef) and isinstance(first, torch.Tensor) and first.dim() == 2:
        weight = first.detach()
        if rank == 1:
            return lambda A: [A @ weight]
        weight_t = weight.T
        return lambda A: [weight_t @ A]
    return None


FAST_RULES = {
    "linear": _linear_rule, "reshape": _reshape_rule, "transpose": _transpose_rule,
    "pairwise_difference": _softmax_diff_rule, "center": _center_rule, "reduce_sum": _reduce_rule,
    "reduce_mean": lambda node, shapes, affine: _reduce_rule(node, shapes, affine, mean=True),
    "diagonal": _diagonal_rule, "sum": _sum_rule, "matmul_const": _matmul_const_rule,
}
"""Direct backward rules named by the ``backward`` trait: ``(node, input shapes, AffineMap)`` -> a
function ``A -> [A L_i]``, or None when the rule cannot read the node's form."""


def simplex_backward(A: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward step through values ``y`` that sum to 1 over the last axis (``A`` ``[B, S, *shape]``,
    ``m`` ``[B, 1, *shape]`` a bound of ``|y|``): ``A y = (A - t) y + sum_groups t`` for any ``t``
    per group; ``t`` = the group's median coefficient, so equal coefficients (a sum of softmax
    outputs) leave nothing to relax. Returns the coefficients, the bias ``[B, S]`` and a bound of
    the rounding of both (the subtraction errs by ``u |A - t|`` per element, the sum of ``t``
    over ``G`` groups by ``gamma_G sum |t|``)."""
    from genbab.bounds import rounding

    t = A.median(dim=-1, keepdim=True).values
    shifted = A - t
    groups = t.reshape(*A.shape[:2], -1)
    bias = groups.sum(-1)
    dt = A.dtype
    err = (rounding.unit_roundoff(dt) * rounding.SAFETY) * (shifted.detach().abs() * m).reshape(*A.shape[:2], -1).sum(-1)
    err = err + rounding.gamma(groups.shape[-1] + 2, dt) * groups.detach().abs().sum(-1)
    return shifted, bias, err + rounding.tiny_term(math.prod(A.shape[2:]), dt)


def abs_copy(node: Node):
    """``r -> |L| r`` for single-input weighted ops of known form, else None (use the Jacobian).

    Linear/Conv modules: weights replaced by ``|W|``, bias dropped. BatchNorm (eval): ``|gamma|``,
    zero shift and mean. ``MatMul``/``Mul``/``Div`` by a constant: the constant's absolute value.
    """
    if len(node.inputs) != 1:
        return None
    module = node.module
    if affine_traits(node.op_type).constant_factor:
        args = tuple(a.abs() if isinstance(a, torch.Tensor) else a for a in node.args)
        return lambda r: module(*[r if isinstance(a, InputRef) else a for a in args])
    if isinstance(module, CONV_TYPES):
        copy = _clone(module)
        copy.weight.data = module.weight.detach().abs()
        copy.bias = None
        return copy
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not module.training:
        copy = _clone(module)
        if copy.weight is not None:
            copy.weight.data = module.weight.detach().abs()
            copy.bias.data = torch.zeros_like(module.bias)
        copy.running_mean = torch.zeros_like(module.running_mean)
        return copy
    return None


def _clone(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).requires_grad_(False)


def monotone_signs(node: Node) -> list[int] | None:
    """+1/-1 per input when the node is increasing/decreasing in it (its ``signs`` trait, by
    argument position), None when not monotone (or an input sits at positions of both signs)."""
    traits = affine_traits(node.op_type)
    if traits.signs is None or (traits.monotone_when is not None and not traits.monotone_when(node.attrs)):
        return None
    if len(set(traits.signs)) == 1:  # the same sign at every position
        return [traits.signs[0]] * len(node.inputs)
    signs: dict[int, int] = {}
    for position, arg in enumerate(node.args[:len(traits.signs)]):
        if isinstance(arg, InputRef):
            if signs.setdefault(arg.index, traits.signs[position]) != traits.signs[position]:
                return None
    return [signs[i] for i in range(len(node.inputs))]
