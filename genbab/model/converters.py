"""onnx2torch converters of our own, for ONNX ops the library does not translate.

- ``Upsample`` (opsets 7, 9, 10; deprecated in favour of ``Resize``): nearest-neighbour
  upsampling ``out[i_1..i_k] = in[floor(i_1 / s_1), ..., floor(i_k / s_k)]``, implemented as
  index selections with indices fixed at load time, so it is exact and works under ``vmap``.

- opset 18 moved ``axes`` of the reductions (``ReduceMean``, ``ReduceMax``... ``ReduceSum`` already
  in 13) and ``Pad`` into an optional input, and gave ``Split`` a ``num_outputs`` attribute
  (uneven splits: chunks of ``ceil(n / num_outputs)``, the last one shorter); onnx2torch stops at
  opset 13 for these. ``Resize`` 18/19 and the ops whose later versions only admit new element
  types (Cast 19, Reshape 19/21...) reuse the older translator when the new attributes keep
  their old meaning, and are refused otherwise.

Recurrent ops (LSTM, GRU) are not translated here: :mod:`genbab.model.unroll_rnn` rewrites them
into primitive ONNX ops before translation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from genbab.errors import UnsupportedOpError


class NearestUpsample(torch.nn.Module):
    """``y = x`` gathered along every axis with the index maps ``floor(i / scale)``."""

    def __init__(self, scales: list[float]):
        super().__init__()
        self.scales = [float(s) for s in scales]

    def forward(self, x: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
        for axis, scale in enumerate(self.scales):
            if scale == 1.0:
                continue
            size_in = x.shape[axis]
            size_out = int(np.floor(size_in * scale))
            index = torch.div(torch.arange(size_out, device=x.device), scale, rounding_mode="floor").long()
            x = torch.index_select(x, axis, index.clamp_(max=size_in - 1))
        return x


def _upsample_scales(node: OnnxNode, graph: OnnxGraph) -> list[float]:
    """The scales of an Upsample node: attribute (v7) or constant second input (v9+)."""
    if "scales" in node.attributes:
        return list(node.attributes["scales"])
    if len(node.input_values) > 1 and node.input_values[1] in graph.initializers:
        return graph.initializers[node.input_values[1]].to_torch().tolist()
    raise UnsupportedOpError(f"Upsample node {node.name!r}: scales must be a constant")


def convert_upsample(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Translate Upsample with ``mode='nearest'``; other modes are rejected."""
    mode = node.attributes.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        raise UnsupportedOpError(f"Upsample node {node.name!r}: mode {mode!r} is not supported (only 'nearest')")
    module = NearestUpsample(_upsample_scales(node, graph))
    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))


# ----------------------------------------------------------------------------- opset 18+


REDUCTIONS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp")
_REDUCE_FN = {
    "ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceProd": lambda x, dim, keepdim: _fold(torch.prod, x, dim, keepdim),
    "ReduceMax": torch.amax, "ReduceMin": torch.amin,
    "ReduceSumSquare": lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim),
    "ReduceL1": lambda x, dim, keepdim: torch.sum(x.abs(), dim=dim, keepdim=keepdim),
    "ReduceL2": lambda x, dim, keepdim: torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim)),
    "ReduceLogSum": lambda x, dim, keepdim: torch.log(torch.sum(x, dim=dim, keepdim=keepdim)),
    "ReduceLogSumExp": torch.logsumexp,
}


def _fold(fn, x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """``fn`` (one axis at a time) over several axes, highest first."""
    for d in sorted(dims, reverse=True):
        x = fn(x, dim=d, keepdim=keepdim)
    return x


class Reduction(torch.nn.Module):
    """ONNX ``Reduce*`` (opset 18): over ``axes`` (all when empty, or none with
    ``noop_with_empty_axes``); ``axes`` is a constant attribute here or a (folded) second input."""

    def __init__(self, op_type: str, keepdims: bool, noop_with_empty_axes: bool, axes: list[int] | None = None):
        super().__init__()
        self.operation_type, self.keepdims, self.noop = op_type, bool(keepdims), bool(noop_with_empty_axes)
        self.axes = None if axes is None else sorted(int(a) for a in axes)

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.axes if self.axes is not None else ([] if axes is None else [int(a) for a in axes.reshape(-1)])
        if not dims:
            if self.noop:
                return x
            dims = list(range(x.dim()))
        dims = sorted(d % x.dim() for d in dims)
        return _REDUCE_FN[self.operation_type](x, dim=dims, keepdim=self.keepdims)


def _constant_input(node: OnnxNode, graph: OnnxGraph, position: int) -> torch.Tensor | None:
    """The initializer feeding input ``position`` (None when absent, empty-named or computed)."""
    values = node.input_values
    if position >= len(values) or not values[position] or values[position] not in graph.initializers:
        return None
    return graph.initializers[values[position]].to_torch()


def _has_input(node: OnnxNode, position: int) -> bool:
    return position < len(node.input_values) and bool(node.input_values[position])


def convert_reduction(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Reductions with ``axes`` as an optional input (static when it is an initializer)."""
    keepdims = node.attributes.get("keepdims", 1)
    noop = node.attributes.get("noop_with_empty_axes", 0)
    axes = _constant_input(node, graph, 1)
    if axes is not None or not _has_input(node, 1):  # static: the fast bound rules read module.axes
        module = Reduction(node.operation_type, keepdims, noop, [] if axes is None else axes.tolist())
        return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))
    module = Reduction(node.operation_type, keepdims, noop)
    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=node.input_values[:2], outputs=node.output_values))


class SplitChunks(torch.nn.Module):
    """ONNX ``Split`` 18: sizes from the (folded) ``split`` input, else ``num_outputs`` chunks of
    ``ceil(n / num_outputs)`` (the last one shorter)."""

    def __init__(self, axis: int, num_outputs: int):
        super().__init__()
        self.axis, self.num_outputs = int(axis), int(num_outputs)

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if split is not None:
            return torch.split(x, [int(s) for s in split.reshape(-1)], dim=self.axis)
        size = math.ceil(x.shape[self.axis] / self.num_outputs)
        return torch.split(x, size, dim=self.axis)


def convert_split(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    num_outputs = node.attributes.get("num_outputs", len(node.output_values))
    module = SplitChunks(node.attributes.get("axis", 0), num_outputs)
    inputs = node.input_values[:2] if _has_input(node, 1) else node.input_values[:1]
    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs=inputs, outputs=node.output_values))


class ConstantPadAxes(torch.nn.Module):
    """ONNX ``Pad`` (constant mode) with an ``axes`` input: ``pads`` [begins..., ends...] of
    those axes only, widened to every axis before padding."""

    def forward(self, x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        rank, pads = x.dim(), [int(p) for p in pads.reshape(-1)]
        axes_list = list(range(rank)) if axes is None else [int(a) % rank for a in axes.reshape(-1)]
        begin, end = [0] * rank, [0] * rank
        for k, a in enumerate(axes_list):
            begin[a], end[a] = pads[k], pads[k + len(axes_list)]
        torch_pads = [p for a in reversed(range(rank)) for p in (begin[a], end[a])]
        fill = 0.0 if value is None or value.numel() == 0 else float(value.reshape(-1)[0])
        return F.pad(x, torch_pads, mode="constant", value=fill)


def convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Pad 18+: without ``axes`` exactly Pad 13; with ``axes`` only the constant mode."""
    mode = node.attributes.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "wrap":
        raise UnsupportedOpError(f"Pad node {node.name!r}: mode 'wrap' is not supported")
    if not _has_input(node, 3):
        return get_converter("Pad", 13)(node, graph)
    if mode != "constant":
        raise UnsupportedOpError(f"Pad node {node.name!r}: 'axes' is only supported with mode 'constant'")
    values = list(node.input_values)
    if not values[2]:
        raise UnsupportedOpError(f"Pad node {node.name!r}: 'axes' without 'constant_value' is not supported")
    return OperationConverterResult(torch_module=ConstantPadAxes(), onnx_mapping=OnnxMapping(inputs=values[:4], outputs=node.output_values))


def convert_resize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Resize 18/19 with its new options at their defaults is Resize 13."""
    attrs = node.attributes
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if attrs.get("antialias", 0) or _has_input(node, 4) or policy != "stretch" or len(node.input_values) > 4:
        raise UnsupportedOpError(f"Resize node {node.name!r}: antialias, axes and keep_aspect_ratio_policy are not supported")
    return get_converter("Resize", 13)(node, graph)


class Compare(torch.nn.Module):
    """``GreaterOrEqual`` / ``LessOrEqual``."""

    def __init__(self, greater: bool):
        super().__init__()
        self.greater = greater

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ge(a, b) if self.greater else torch.le(a, b)


def _compare_converter(greater: bool):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return OperationConverterResult(torch_module=Compare(greater),
                                        onnx_mapping=OnnxMapping(inputs=node.input_values, outputs=node.output_values))
    return convert


class Elementwise(torch.nn.Module):
    """A unary ONNX op that is one torch function (``torch.sinh``, ``torch.nn.functional.mish``...)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = getattr(torch, name, None) or getattr(F, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _elementwise_converter(name: str):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return OperationConverterResult(torch_module=Elementwise(name),
                                        onnx_mapping=OnnxMapping(inputs=node.input_values, outputs=node.output_values))
    return convert


def _same_as(op_type: str, version: int, refuse=None):
    """The translator of an older version (whose semantics the new one keeps for real tensors);
    ``refuse(node)`` may name an attribute value the old translator would ignore."""
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        reason = None if refuse is None else refuse(node)
        if reason:
            raise UnsupportedOpError(f"{op_type} node {node.name!r}: {reason} is not supported")
        return get_converter(op_type, version)(node, graph)
    return convert


def _dilated(node: OnnxNode) -> str | None:
    return "dilations != 1" if any(d != 1 for d in node.attributes.get("dilations", [])) else None


# (op, new version) -> converter; only registered where onnx2torch has none.
def _opset18_table() -> dict[tuple[str, int], object]:
    table: dict[tuple[str, int], object] = {(op, 18): convert_reduction for op in REDUCTIONS}
    table.update({("ReduceMax", 20): convert_reduction, ("ReduceMin", 20): convert_reduction,
                  ("Split", 18): convert_split, ("Pad", 18): convert_pad, ("Pad", 19): convert_pad, ("Pad", 21): convert_pad,
                  ("Resize", 18): convert_resize, ("Resize", 19): convert_resize,
                  ("GreaterOrEqual", 12): _compare_converter(True), ("GreaterOrEqual", 16): _compare_converter(True),
                  ("LessOrEqual", 12): _compare_converter(False), ("LessOrEqual", 16): _compare_converter(False),
                  ("AveragePool", 19): _same_as("AveragePool", 11, _dilated),
                  ("Sinh", 9): _elementwise_converter("sinh"), ("Cosh", 9): _elementwise_converter("cosh"),
                  ("Mish", 18): _elementwise_converter("mish")})
    for op, old, new in (("Cast", 13, 19), ("Cast", 13, 21), ("Constant", 13, 19), ("Constant", 13, 21),
                         ("Equal", 13, 19), ("Identity", 16, 19), ("Identity", 16, 21), ("Reshape", 14, 19),
                         ("Reshape", 14, 21), ("Shape", 15, 19), ("Shape", 15, 21), ("ConstantOfShape", 9, 20),
                         ("ConstantOfShape", 9, 21), ("Flatten", 13, 21), ("Transpose", 13, 21),
                         ("Unsqueeze", 13, 21), ("IsInf", 10, 20), ("IsNaN", 13, 20)):
        table[(op, new)] = _same_as(op, old)
    return table


def register_converters() -> None:
    """Add our converters to onnx2torch's registry (idempotent; never replaces onnx2torch's own)."""
    table = {("Upsample", v): convert_upsample for v in (7, 9, 10)}
    table.update(_opset18_table())
    for (op, version), convert in table.items():
        if not _registered(op, version):
            add_converter(operation_type=op, version=version)(convert)


def _registered(op: str, version: int) -> bool:
    """Is a converter registered for exactly this ``(op, version)``?"""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    return OperationDescription(domain="", operation_type=op, version=version) in _CONVERTER_REGISTRY
