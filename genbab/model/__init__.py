"""Model loading: ONNX (plain or gz) -> prepared ONNX -> onnx2torch -> folded :class:`Graph`.

Names are imported on first use, so that reading a cached graph never imports onnx.
"""

_LAZY = {"Graph": "genbab.model.graph", "InputRef": "genbab.model.graph", "Node": "genbab.model.graph",
         "Model": "genbab.model.model", "load_model": "genbab.model.loading"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genbab.model' has no attribute {name!r}")


__all__ = ["Graph", "InputRef", "Model", "Node", "load_model"]
