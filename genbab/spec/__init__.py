"""VNN-LIB properties: parsing (:mod:`genbab.spec.vnnlib`) into a :class:`Spec` of tensors."""

from genbab.spec.spec import Spec

__all__ = ["Spec", "load_spec"]


def load_spec(path, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Parse a VNN-LIB file (plain or ``.gz``) into a :class:`Spec`: 1.0, or a 2.0 query
    (``(vnnlib-version <2...>)``, read with the ``vnnlib`` package).

    Strict output comparisons are sound as non-strict: witnesses must have a strictly negative
    margin anyway. Strict *input* bounds are refused, since a witness may sit on a box face."""
    from pathlib import Path

    from genbab.spec.vnnlib2 import is_vnnlib2, load_query
    from genbab.errors import SpecError
    from genbab.spec.vnnlib import parse_vnnlib_file

    if is_vnnlib2(Path(path)):
        query = load_query(Path(path))
        if bool(query.strict.lower.any() or query.strict.upper.any()):
            raise SpecError(f"{path}: strict input bounds are not supported by 'genbab verify' "
                            "(use 'genbab vnnlib2 verify', which checks them exactly)")
        return query.spec
    return parse_vnnlib_file(path, n_inputs=n_inputs, n_outputs=n_outputs)
