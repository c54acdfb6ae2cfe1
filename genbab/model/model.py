"""A loaded network: the folded :class:`~genbab.model.graph.Graph` plus batching and metadata.

``Model(x)`` takes ``x`` of shape ``[batch, *input_shape]`` (``input_shape`` is the ONNX input
shape with symbolic dims set to 1) and returns ``[batch, *output_shape]``. The per-sample graph
is batched with ``torch.func.vmap``, which keeps ONNX semantics exact (a ``Reshape`` to a
constant ``[1, 784]`` stays per sample); models whose ops have no vmap rule fall back to a loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from genbab.model.graph import Graph


@dataclass
class Model:
    """A verification-ready network. ``onnx_bytes`` is the original (unmodified) model, for replay."""

    graph: Graph
    onnx_bytes: bytes
    input_name: str
    onnx_input_shape: tuple[int, ...]
    np_dtype: np.dtype
    source: str = ""
    original_names: dict[str, str] = field(default_factory=dict)
    _use_vmap: bool = True

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.graph.output_shape

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return math.prod(self.output_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.graph.dtype

    @property
    def device(self) -> torch.device:
        for node in self.graph.nodes:
            for a in node.args:
                if isinstance(a, torch.Tensor):
                    return a.device
        return torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``[batch, *output_shape]`` for inputs ``[batch, *input_shape]``; any input of
        shape ``[batch, ...]`` holding ``n_inputs`` values per sample is read as that (so ``[batch, 6]``
        serves an ONNX input ``[1, 6]``). Other shapes: a ValueError naming the expected one."""
        x = self._batched_input(x).to(self.dtype)
        if self._use_vmap:
            return torch.func.vmap(self.graph.forward_one)(x)
        return torch.stack([self.graph.forward_one(xi) for xi in x])

    def _batched_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) == tuple(self.input_shape):
            return x
        if x.dim() >= 2 and math.prod(x.shape[1:]) == self.n_inputs:
            return x.reshape(x.shape[0], *self.input_shape)
        raise ValueError(f"model input must be [batch, {', '.join(map(str, self.input_shape))}] "
                         f"({self.n_inputs} values per sample), got {list(x.shape)}")

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened I/O as VNN-LIB indexes it: ``[batch, n_inputs] -> [batch, n_outputs]``."""
        y = self(x.reshape(x.shape[0], *self.input_shape))
        return y.reshape(x.shape[0], -1)

    def to(self, device: torch.device | str) -> "Model":
        self.graph.to(device)
        return self

    def check_batching(self) -> None:
        """Use vmap when it reproduces the per-sample loop on a small batch, else fall back to the loop.

        The comparison only has to catch batching mistakes (gross errors): float32 models with
        cancellations differ by ~1e-5 relative between the two evaluation orders.
        """
        x = torch.rand(2, *self.input_shape, dtype=self.dtype)
        with torch.no_grad():
            looped = torch.stack([self.graph.forward_one(xi) for xi in x])
            try:
                mapped = torch.func.vmap(self.graph.forward_one)(x)
                scale = 1.0 + float(looped.abs().nan_to_num().max())
                self._use_vmap = bool(torch.allclose(mapped, looped, rtol=1e-4, atol=1e-4 * scale, equal_nan=True))
            except Exception:
                self._use_vmap = False
