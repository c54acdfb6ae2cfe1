"""VNN-LIB properties: parsing (:mod:`genbab.spec.vnnlib`) into a :class:`Spec` of tensors."""

from genbab.spec.spec import Spec

__all__ = ["Spec", "load_spec"]


def load_spec(path, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Parse a VNN-LIB 1.0 file (plain or ``.gz``) into a :class:`Spec`."""
    from genbab.spec.vnnlib import parse_vnnlib_file

    return parse_vnnlib_file(path, n_inputs=n_inputs, n_outputs=n_outputs)
