"""Bounds through affine nodes without op-specific code.

A node affine in its dependent inputs computes ``y = sum_i L_i x_i + c``. With ``c = f(0)`` and
the vector-Jacobian product ``v -> (v^T L_1, ..., v^T L_k)`` from ``torch.func.vjp``:

- backward step of a linear bound ``A y``: ``A y = sum_i (A L_i) x_i + A c``;
- interval image: for ops monotone in each input (shape ops, sums, positive pools) the image
  of the corner points; otherwise ``mid = f(centres)``, ``rad = sum_i |L_i| r_i`` with the
  explicit Jacobian ``L_i`` (computed once per node).
"""

from __future__ import annotations

import torch

from genbab.model.graph import InputRef, Node

INCREASING = frozenset({
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather", "Split",
    "Expand", "Tile", "Identity", "Dropout", "Upsample", "Resize", "Where", "Cast", "Add", "Sum",
    "ReduceSum", "ReduceMean", "AveragePool", "GlobalAveragePool", "Pad",
})


class AffineMap:
    """The affine map of one node, over per-sample inputs of the given shapes."""

    def __init__(self, node: Node, input_shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device):
        self.node = node
        self.input_shapes = input_shapes
        self._zeros = [torch.zeros(s, dtype=dtype, device=device, requires_grad=True) for s in input_shapes]
        with torch.enable_grad():
            self._out = self.forward(*self._zeros)
        self.const = self._out.detach()
        self._jacobians: list[torch.Tensor] | None = None

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
        bias = (A * self.const).reshape(B, S, -1).sum(-1)
        fast = self._fast_backward(A)
        if fast is not None:
            return [fast], bias
        grads = self._vjp_batched(A.reshape(B * S, *A.shape[2:]))
        return [g.reshape(B, S, *shape) for g, shape in zip(grads, self.input_shapes)], bias

    def _fast_backward(self, A: torch.Tensor) -> torch.Tensor | None:
        """Direct ``A L`` for the commonest maps (autograd's batched VJP costs far more):
        a Linear layer on the last axis (``A W``) and pure reshapes."""
        node, B, S = self.node, A.shape[0], A.shape[1]
        if len(node.inputs) != 1:
            return None
        if isinstance(node.module, torch.nn.Linear) and len(node.args) == 1:
            return A @ node.module.weight
        if node.op_type in RESHAPES:
            return A.reshape(B, S, *self.input_shapes[0])
        return None

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
        if self.node.op_type == "SoftmaxDiff":  # D_ij = x_j - x_i: [l_j - u_i, u_j - l_i], D_ii = 0
            (lo,), (hi,) = lows, highs
            d_lo, d_hi = lo.unsqueeze(-2) - hi.unsqueeze(-1), hi.unsqueeze(-2) - lo.unsqueeze(-1)
            d_lo.diagonal(dim1=-2, dim2=-1).zero_()
            d_hi.diagonal(dim1=-2, dim2=-1).zero_()
            return d_lo, d_hi
        signs = monotone_signs(self.node)
        if signs is not None:
            low_in = [lo if s > 0 else hi for s, lo, hi in zip(signs, lows, highs)]
            high_in = [hi if s > 0 else lo for s, lo, hi in zip(signs, lows, highs)]
            return self._batched(low_in), self._batched(high_in)
        lows = [lo.clamp(min=-HUGE) for lo in lows]  # centre/radius of unbounded intervals stay finite
        highs = [hi.clamp(max=HUGE) for hi in highs]
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
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
CONV_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
              torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def abs_copy(node: Node):
    """``r -> |L| r`` for single-input weighted ops of known form, else None (use the Jacobian).

    Linear/Conv modules: weights replaced by ``|W|``, bias dropped. BatchNorm (eval): ``|gamma|``,
    zero shift and mean. ``MatMul``/``Mul``/``Div`` by a constant: the constant's absolute value.
    """
    if len(node.inputs) != 1:
        return None
    module = node.module
    if node.op_type in ("MatMul", "Mul", "Div"):
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
    """+1/-1 per input when the node is increasing/decreasing in it, None when not monotone."""
    if node.op_type in INCREASING:
        return [1] * len(node.inputs)
    if node.op_type == "Neg":
        return [-1]
    if node.op_type == "Sub":
        signs: dict[int, int] = {}
        for position, arg in enumerate(node.args[:2]):
            if isinstance(arg, InputRef):
                sign = 1 if position == 0 else -1
                if signs.setdefault(arg.index, sign) != sign:
                    return None
        return [signs[i] for i in range(len(node.inputs))]
    return None
