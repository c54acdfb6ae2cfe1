"""The computation graph that bound propagation walks.

A :class:`Graph` is a list of :class:`Node` in topological order. Every node computes one
tensor from the graph input and earlier nodes; everything that does not depend on the input
(initializers, ``Constant`` nodes, and the shape arithmetic ``Shape -> Gather -> Concat ->
Reshape`` that only reads static per-sample shapes) is folded into constant arguments at load
time. Shapes are *per sample*: the ONNX shape with symbolic dimensions fixed to 1; batching is
added on top (see :class:`genbab.model.model.Model`).

A node's call is ``module(*args, **kwargs)`` where each argument is either an :class:`InputRef`
(the value of ``node.inputs[index]``) or a constant tensor/value.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx

from genbab.errors import ModelError

SHAPE_OPS = frozenset({"Shape", "Size"})


class ConstantOutputError(ModelError):
    """The model output does not depend on its input (nothing but shape queries reads it):
    ``value`` is that constant output (one sample). The loader adds what replaying the model on
    onnxruntime needs: ``onnx_bytes``, ``input_name``, ``onnx_input_shape``, ``np_dtype``, ``source``."""

    def __init__(self, message: str, value: torch.Tensor, onnx_bytes: bytes = b"", input_name: str = "",
                 onnx_input_shape: tuple[int, ...] = (), np_dtype: Any = None, source: str = ""):
        super().__init__(message)
        self.value, self.onnx_bytes, self.input_name = value, onnx_bytes, input_name
        self.onnx_input_shape, self.np_dtype, self.source = tuple(onnx_input_shape), np_dtype, source


@dataclass(frozen=True)
class InputRef:
    """Placeholder in a node's arguments for the value of ``node.inputs[index]``."""

    index: int


@dataclass(frozen=True)
class Node:
    """One op of the graph: ``value = module(*args, **kwargs)`` with refs resolved to input values.

    ``op_type`` is the ONNX operator type (``"Gemm"``, ``"Sigmoid"``...); ``attrs`` its ONNX
    attributes; ``out_shape`` the per-sample output shape; ``output_index`` selects one output
    of a multi-output op (``Split``), else ``None``.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    module: Callable[..., Any]
    out_shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    onnx_name: str = ""
    output_index: int | None = None

    def constants(self) -> list[Any]:
        """The constant (non-input) positional arguments, in order."""
        return [a for a in self.args if not isinstance(a, InputRef)]

    def call(self, values: list[Any]) -> Any:
        """Evaluate the node given the values of ``self.inputs`` (per sample or batched by vmap)."""
        args = [values[a.index] if isinstance(a, InputRef) else a for a in self.args]
        kwargs = {k: values[v.index] if isinstance(v, InputRef) else v for k, v in self.kwargs.items()}
        out = self.module(*args, **kwargs)
        return out if self.output_index is None else out[self.output_index]


@dataclass
class Graph:
    """Nodes in topological order from one input to one output, with per-sample shapes."""

    input_name: str
    input_shape: tuple[int, ...]
    dtype: torch.dtype
    nodes: list[Node]
    output_name: str
    output_shape: tuple[int, ...]

    def forward_one(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the graph on one sample ``x`` of shape ``input_shape``."""
        env: dict[str, Any] = {self.input_name: x}
        for node in self.nodes:
            env[node.name] = node.call([env[i] for i in node.inputs])
        return env[self.output_name]

    def op_types(self) -> list[str]:
        return sorted({n.op_type for n in self.nodes})

    def to(self, device: torch.device | str) -> "Graph":
        """Move constants and modules to ``device`` (in place); returns self."""
        moved = []
        for node in self.nodes:
            if isinstance(node.module, torch.nn.Module):
                node.module.to(device)
            args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in node.args)
            kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in node.kwargs.items()}
            moved.append(Node(**{**node.__dict__, "args": args, "kwargs": kwargs}))
        self.nodes = moved
        return self


class _FoldState:
    """Values and input-dependence of fx nodes while folding a traced graph."""

    def __init__(self) -> None:
        self.value: dict[str, Any] = {}
        self.dependent: set[str] = set()
        self.pending: dict[str, Node] = {}

    def resolve(self, arg: Any, inputs: list[str]) -> Any:
        """Map an fx argument to an InputRef (dependent) or its constant value."""
        if isinstance(arg, torch.fx.Node):
            if arg.name in self.dependent:
                if arg.name not in inputs:
                    inputs.append(arg.name)
                return InputRef(inputs.index(arg.name))
            return self.value[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.resolve(a, inputs) for a in arg)
        return arg

    def concrete(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.value[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.concrete(a) for a in arg)
        return arg


def _depends(state: _FoldState, fx_node: torch.fx.Node) -> bool:
    return any(a.name in state.dependent for a in fx_node.all_input_nodes)


def build_graph(gm: torch.fx.GraphModule, input_shape: tuple[int, ...], dtype: torch.dtype,
                op_types: dict[str, str], attrs: dict[str, dict], onnx_names: dict[str, str]) -> Graph:
    """Fold the onnx2torch graph ``gm`` into a :class:`Graph`.

    Runs ``gm`` once on a sample input, recording each value; nodes that depend on the input
    (through anything but a shape query) become :class:`Node` objects, the rest constants.
    ``op_types``/``attrs``/``onnx_names`` are keyed by module name (the ONNX node name).
    """
    state, nodes, output = _FoldState(), [], None
    modules = dict(gm.named_modules())
    sample = torch.full(input_shape, 0.5, dtype=dtype)
    input_name = None
    for fx_node in gm.graph.nodes:
        if fx_node.op == "placeholder":
            input_name = fx_node.name
            state.value[fx_node.name] = sample
            state.dependent.add(fx_node.name)
        elif fx_node.op == "get_attr":
            state.value[fx_node.name] = _fetch_attr(gm, fx_node.target)
        elif fx_node.op == "output":
            output = fx_node.args[0]
        else:
            _fold_call(fx_node, state, modules, nodes, op_types, attrs, onnx_names)
    if not isinstance(output, torch.fx.Node):
        raise ModelError("model has several outputs; genbab verifies single-output models")
    if output.name not in state.dependent:
        value = state.value[output.name]
        raise ConstantOutputError("model output does not depend on its input",
                                  value.detach().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value))
    nodes = _prune(nodes, output.name)
    out_shape = tuple(state.value[output.name].shape)
    return Graph(input_name, tuple(input_shape), dtype, nodes, output.name, out_shape)


def _fold_call(fx_node, state, modules, nodes, op_types, attrs, onnx_names) -> None:
    """Evaluate one call node; if it depends on the input, append its Node (or per-output Nodes)."""
    if fx_node.op == "call_module":
        fn, key = modules[fx_node.target], str(fx_node.target)
        op_type = op_types.get(key, type(fn).__name__)
    else:
        fn, key = fx_node.target, fx_node.name
        op_type = getattr(fn, "__name__", str(fn))
    args, kwargs = state.concrete(fx_node.args), state.concrete(fx_node.kwargs)
    value = fn(*args, **kwargs)
    state.value[fx_node.name] = value
    if not _depends(state, fx_node) or op_type in SHAPE_OPS:
        return
    state.dependent.add(fx_node.name)
    if fx_node.op == "call_function" and fn is operator.getitem and fx_node.args[0].name in state.pending:
        parent, index = state.pending[fx_node.args[0].name], int(fx_node.args[1])
        nodes.append(Node(**{**parent.__dict__, "name": fx_node.name, "output_index": index,
                             "out_shape": tuple(value.shape)}))
        return
    inputs: list[str] = []
    ref_args = state.resolve(fx_node.args, inputs)
    ref_kwargs = {k: state.resolve(v, inputs) for k, v in fx_node.kwargs.items()}
    node = Node(fx_node.name, op_type, tuple(inputs), tuple(ref_args), ref_kwargs, fn,
                tuple(value.shape) if isinstance(value, torch.Tensor) else (), attrs.get(key, {}),
                onnx_names.get(key, key))
    if isinstance(value, (tuple, list)):
        state.pending[fx_node.name] = node  # multi-output op: one Node per getitem that reads it
    else:
        nodes.append(node)


def _fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _prune(nodes: list[Node], output: str) -> list[Node]:
    """Drop nodes the output does not depend on."""
    needed = {output}
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    return [n for n in nodes if n.name in needed]
