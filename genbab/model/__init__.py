"""Model loading: ONNX (plain or gz) -> prepared ONNX -> onnx2torch -> folded :class:`Graph`."""

from genbab.model.graph import Graph, InputRef, Node
from genbab.model.loading import load_model
from genbab.model.model import Model

__all__ = ["Graph", "InputRef", "Model", "Node", "load_model"]
