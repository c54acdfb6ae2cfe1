"""genbab: neural-network verification for general nonlinearities.

``genbab.load_model`` reads ONNX, ``genbab.load_spec`` reads VNN-LIB, ``genbab.verify`` answers
``sat`` (with a replayed witness), ``unsat``, ``timeout`` or ``unknown``.

The names below are imported on first use (PEP 562): ``import genbab`` (and so ``genbab --help``)
does not pay for torch, onnx or onnx2torch until a model or property is actually touched.
"""

from genbab.errors import GenbabError, ModelError, SpecError, UnsupportedOpError

__version__ = "0.1.0"

_LAZY = {"Model": "genbab.model.model", "load_model": "genbab.model.loading", "Result": "genbab.result",
         "Spec": "genbab.spec.spec", "load_spec": "genbab.spec"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genbab' has no attribute {name!r}")


def verify(*args, **kwargs):
    """See :func:`genbab.api.verify`."""
    from genbab.api import verify as _verify

    return _verify(*args, **kwargs)


def compute_bounds(*args, **kwargs):
    """See :func:`genbab.bounds.compute_bounds`."""
    from genbab.bounds import compute_bounds as _compute_bounds

    return _compute_bounds(*args, **kwargs)


__all__ = ["compute_bounds", "GenbabError", "Model", "ModelError", "Result", "Spec", "SpecError", "UnsupportedOpError",
           "load_model", "load_spec", "verify", "__version__"]
