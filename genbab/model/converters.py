"""onnx2torch converters of our own, for ONNX ops the library does not translate.

- ``Upsample`` (opsets 7, 9, 10; deprecated in favour of ``Resize``): nearest-neighbour
  upsampling ``out[i_1..i_k] = in[floor(i_1 / s_1), ..., floor(i_k / s_k)]``, implemented as
  index selections with indices fixed at load time, so it is exact and works under ``vmap``.

- opset 18 moved ``axes`` of the reductions (``ReduceMean``, ``ReduceMax``... ``ReduceSum`` already
  in 13) and ``Pad`` into an optional input, and gave ``Split`` a ``num_outputs`` attribute
  (uneven splits: chunks of ``ceil(n / num_outputs)``, the last one shorter); onnx2torch stops at
  opset 13 for these. ``Pad`` with ``axes`` (any mode, ``wrap`` too) is :class:`PadAxes`. ``Resize`` 18/19 is
  Resize 13, wrapped in :class:`ResizeAxes` for ``axes`` / ``keep_aspect_ratio_policy`` /
  ``antialias`` (where it is a no-op). The ops whose later versions only admit new element
  types (Cast 19, Reshape 19/21...) reuse the older translator when the new attributes keep
  their old meaning, and are refused otherwise.

- ``Selu`` with non-default ``alpha`` / ``gamma`` (onnx2torch takes only the defaults).

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


def _pad_axis(x: torch.Tensor, axis: int, begin: int, end: int, mode: str, fill: float) -> torch.Tensor:
    """Pad (negative: crop) one axis: ``constant`` with ``fill``, ``edge`` repeating the border,
    ``reflect`` mirroring without repeating it, ``wrap`` cyclically."""
    n = x.shape[axis]
    if begin < 0 or end < 0:
        start, stop = max(0, -begin), n - max(0, -end)
        x, n, begin, end = x.narrow(axis, start, max(0, stop - start)), max(0, stop - start), max(0, begin), max(0, end)
    if begin == 0 and end == 0:
        return x
    if mode == "constant":
        def block(k: int) -> torch.Tensor:
            return torch.full((*x.shape[:axis], k, *x.shape[axis + 1:]), fill, dtype=x.dtype, device=x.device)
        return torch.cat([block(begin), x, block(end)], dim=axis)
    if n == 0:
        raise UnsupportedOpError(f"Pad: mode {mode!r} on an empty axis")
    index = torch.arange(-begin, n + end, device=x.device)
    if mode == "edge":
        index = index.clamp(0, n - 1)
    elif mode == "wrap":
        index = index % n
    elif n == 1:  # reflect of a single element repeats it
        index = torch.zeros_like(index)
    else:
        period = 2 * (n - 1)
        index = index.abs() % period
        index = torch.where(index >= n, period - index, index)
    return torch.index_select(x, axis, index)


class PadAxes(torch.nn.Module):
    """ONNX ``Pad`` 18+ with an ``axes`` input: ``pads`` [begins..., ends...] of those axes only
    (negative values crop), in mode ``constant`` (fill ``constant_value``, default 0), ``edge``,
    ``reflect`` or ``wrap``. Exact data movement (a constant fill is the only bias)."""

    def __init__(self, mode: str = "constant"):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        rank, pads_list = x.dim(), [int(p) for p in pads.reshape(-1)]
        axes_list = list(range(rank)) if axes is None else [int(a) % rank for a in axes.reshape(-1)]
        if len(pads_list) != 2 * len(axes_list):
            raise UnsupportedOpError(f"Pad: {len(pads_list)} pads for {len(axes_list)} axes")
        fill = 0.0 if value is None or value.numel() == 0 else float(value.reshape(-1)[0])
        for k, a in enumerate(axes_list):
            x = _pad_axis(x, a, pads_list[k], pads_list[k + len(axes_list)], self.mode, fill)
        return x


PAD_MODES = ("constant", "edge", "reflect", "wrap")


def convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Pad 18+: without ``axes`` (and not ``wrap``) exactly Pad 13; otherwise :class:`PadAxes`."""
    mode = node.attributes.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in PAD_MODES:
        raise UnsupportedOpError(f"Pad node {node.name!r}: mode {mode!r} is not supported")
    if not _has_input(node, 3) and mode != "wrap":
        return get_converter("Pad", 13)(node, graph)
    values = list(node.input_values)
    inputs = values[:2] + [values[k] if _has_input(node, k) else None for k in (2, 3)]
    mapping = OnnxMapping(inputs=tuple(v for v in inputs if v), outputs=node.output_values)
    if all(inputs[2:]) or not inputs[3]:
        return OperationConverterResult(torch_module=PadAxes(mode), onnx_mapping=mapping)
    return OperationConverterResult(torch_module=_PadAxesNoValue(mode), onnx_mapping=mapping)


class _PadAxesNoValue(PadAxes):
    """:class:`PadAxes` called as ``(x, pads, axes)`` (no ``constant_value`` input)."""

    def forward(self, x: torch.Tensor, pads: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, pads, None, axes)


def _text_attr(node: OnnxNode, name: str, default: str) -> str:
    value = node.attributes.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


class ResizeAxes(torch.nn.Module):
    """ONNX ``Resize`` 18/19 options on top of the Resize 13 module ``inner``: ``axes`` (the scales
    or sizes of those axes only; the others keep their size), ``keep_aspect_ratio_policy``
    (``not_larger`` / ``not_smaller``: one scale ``min`` / ``max`` of ``sizes[i] / in[i]`` over the
    axes, sizes ``floor(scale in[i] + 1/2)``; refused unless those are exactly ``scale in[i]``,
    where the coordinate maps agree) and ``antialias`` (refused where a linear or cubic resize
    shrinks an axis, the only place it changes the result)."""

    def __init__(self, inner: torch.nn.Module, mode: str, axes: list[int] | None, policy: str, antialias: bool):
        super().__init__()
        self.inner, self.mode, self.policy, self.antialias = inner, mode, policy, bool(antialias)
        self.axes = None if axes is None else [int(a) for a in axes]

    def forward(self, x: torch.Tensor, roi: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                sizes: torch.Tensor | None = None) -> torch.Tensor:
        rank, shape = x.dim(), list(x.shape)
        axes = list(range(rank)) if self.axes is None else [a % rank for a in self.axes]
        factors = [1.0] * rank
        if scales is not None and scales.numel():
            for a, f in zip(axes, scales.reshape(-1).tolist()):
                factors[a] = float(f)
            scales = torch.tensor(factors, dtype=scales.dtype)
        if sizes is not None and sizes.numel():
            wanted, out = [int(v) for v in sizes.reshape(-1)], list(shape)
            if self.policy != "stretch":
                pick = min if self.policy == "not_larger" else max
                scale = pick(w / shape[a] for w, a in zip(wanted, axes))
                wanted = [int(scale * shape[a] + 0.5) for a in axes]
                if any(w != scale * shape[a] for w, a in zip(wanted, axes)):
                    raise UnsupportedOpError("Resize: keep_aspect_ratio_policy with a scale that does not give "
                                             "whole sizes is not supported")
            for a, w in zip(axes, wanted):
                out[a] = w
            factors = [o / i if i else 1.0 for o, i in zip(out, shape)]
            sizes = torch.tensor(out, dtype=torch.int64)
        if self.antialias and self.mode != "nearest" and any(f < 1.0 for f in factors):
            raise UnsupportedOpError("Resize: antialias when shrinking an axis is not supported")
        return self.inner(x, roi, scales, sizes)


def convert_resize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Resize 18/19: the Resize 13 module, wrapped in :class:`ResizeAxes` when ``axes``,
    ``keep_aspect_ratio_policy`` or ``antialias`` is set."""
    attrs = node.attributes
    policy = _text_attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise UnsupportedOpError(f"Resize node {node.name!r}: keep_aspect_ratio_policy {policy!r} is not supported")
    result = get_converter("Resize", 13)(node, graph)
    if not attrs.get("antialias", 0) and "axes" not in attrs and policy == "stretch":
        return result
    module = ResizeAxes(result.torch_module, _text_attr(node, "mode", "nearest"), attrs.get("axes"), policy,
                        attrs.get("antialias", 0))
    return OperationConverterResult(torch_module=module, onnx_mapping=result.onnx_mapping)


class Selu(torch.nn.Module):
    """ONNX ``Selu``: ``gamma x`` for ``x > 0``, ``gamma alpha (e^x - 1)`` otherwise."""

    def __init__(self, alpha: float, gamma: float):
        super().__init__()
        self.alpha, self.gamma = float(alpha), float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.where(x > 0, x, self.alpha * torch.expm1(x))


def convert_selu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Selu with any ``alpha`` / ``gamma`` (onnx2torch's translator takes only the defaults)."""
    module = Selu(node.attributes.get("alpha", 1.67326319217681884765625),
                  node.attributes.get("gamma", 1.05070102214813232421875))
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))


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


# (op, version) -> our converter, used where onnx2torch's own refuses a valid node.
FALLBACKS = {("Selu", 6): convert_selu}


def convert_cumsum(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """``CumSum`` with the ONNX defaults (``exclusive`` 0, ``reverse`` 0): onnx2torch 1.5 reads a
    missing ``reverse`` as 1 and so sums from the end."""
    from onnx2torch.node_converters.cumsum import OnnxCumSum
    from onnx2torch.utils.common import onnx_mapping_from_node

    attrs = node.attributes
    return OperationConverterResult(torch_module=OnnxCumSum(bool(attrs.get("exclusive", 0)),
                                                            bool(attrs.get("reverse", 0))),
                                    onnx_mapping=onnx_mapping_from_node(node))


REPLACEMENTS = {("CumSum", 11): convert_cumsum, ("CumSum", 14): convert_cumsum}
"""onnx2torch converters replaced outright (they translate wrongly)."""


def register_converters() -> None:
    """Add our converters to onnx2torch's registry (idempotent). onnx2torch's own stay first:
    those of :data:`FALLBACKS` are only tried when it refuses the node; those of
    :data:`REPLACEMENTS` replace its own."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    for (op, version), convert in REPLACEMENTS.items():
        _CONVERTER_REGISTRY[OperationDescription(domain="", operation_type=op, version=version)] = convert

    table = {("Upsample", v): convert_upsample for v in (7, 9, 10)}
    table.update(_opset18_table())
    for (op, version), convert in table.items():
        if not _registered(op, version):
            add_converter(operation_type=op, version=version)(convert)
    for (op, version), convert in FALLBACKS.items():
        key = OperationDescription(domain="", operation_type=op, version=version)
        original = _CONVERTER_REGISTRY.get(key)
        if original is None:
            _CONVERTER_REGISTRY[key] = convert
        elif getattr(original, "genbab_fallback", None) is None:
            _CONVERTER_REGISTRY[key] = _with_fallback(original, convert)


def _with_fallback(first, second):
    """A converter trying ``first`` and, when it refuses the node (ValueError, NotImplementedError), ``second``."""
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        try:
            return first(node, graph)
        except (ValueError, NotImplementedError):
            return second(node, graph)
    convert.genbab_fallback = second
    return convert


def _registered(op: str, version: int) -> bool:
    """Is a converter registered for exactly this ``(op, version)``?"""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    return OperationDescription(domain="", operation_type=op, version=version) in _CONVERTER_REGISTRY
