"""genbab: neural-network verification for general nonlinearities.

``genbab.load_model`` reads ONNX, ``genbab.load_spec`` reads VNN-LIB, ``genbab.verify`` answers
``sat`` (with a replayed witness), ``unsat``, ``timeout`` or ``unknown``.
"""

from genbab.errors import GenbabError, ModelError, SpecError, UnsupportedOpError
from genbab.model import Model, load_model
from genbab.result import Result
from genbab.spec import Spec, load_spec

__version__ = "0.1.0"


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
