"""onnx2torch converters of our own, for ONNX ops the library does not translate.

- ``Upsample`` (opsets 7, 9, 10; deprecated in favour of ``Resize``): nearest-neighbour
  upsampling ``out[i_1..i_k] = in[floor(i_1 / s_1), ..., floor(i_k / s_k)]``, implemented as
  index selections with indices fixed at load time, so it is exact and works under ``vmap``.

Recurrent ops (LSTM, GRU) are not translated here: :mod:`genbab.model.unroll_rnn` rewrites them
into primitive ONNX ops before translation.
"""

from __future__ import annotations

import numpy as np
import torch
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


def register_converters() -> None:
    """Add our converters to onnx2torch's registry (idempotent)."""
    for version in (7, 9, 10):
        try:
            get_converter("Upsample", version)
        except NotImplementedError:
            add_converter(operation_type="Upsample", version=version)(convert_upsample)
