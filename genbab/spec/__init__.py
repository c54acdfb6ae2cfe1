"""VNN-LIB properties: parsing (:mod:`genbab.spec.vnnlib`) into a :class:`Spec` of tensors."""

from genbab.spec.spec import Spec

__all__ = ["Spec", "load_spec", "load_model_and_spec"]


def load_spec(path, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Parse a VNN-LIB file (plain or ``.gz``) into a :class:`Spec`: 1.0, or a 2.0 query
    (``(vnnlib-version <2...>)``, read with the ``vnnlib`` package) over one network's one input
    and one output (other 2.0 queries need their model: :func:`load_model_and_spec`).

    Strict output comparisons are sound as non-strict: witnesses must have a strictly negative
    margin anyway. Strict *input* bounds are refused, since a witness may sit on a box face."""
    from pathlib import Path

    from genbab.errors import SpecError
    from genbab.spec.vnnlib import parse_vnnlib_file
    from genbab.spec.vnnlib2 import is_vnnlib2

    if is_vnnlib2(Path(path)):
        query = _load_query_for_verify(Path(path))
        if not query.simple:
            raise SpecError(f"{Path(path).name}: this VNN-LIB 2.0 query (several inputs, outputs or networks, hidden "
                            "nodes or linear input constraints) needs its model: use 'genbab verify MODEL SPEC' or "
                            "genbab.spec.load_model_and_spec")
        return query.spec
    return parse_vnnlib_file(path, n_inputs=n_inputs, n_outputs=n_outputs)


def _load_query_for_verify(path):
    from genbab.errors import SpecError
    from genbab.spec.vnnlib2 import load_query

    query = load_query(path)
    if bool(query.strict.lower.any() or query.strict.upper.any()):
        raise SpecError(f"{path}: strict input bounds are not supported by 'genbab verify' "
                        "(use 'genbab vnnlib2 verify', which checks them exactly)")
    return query


def load_model_and_spec(model, spec):
    """``(model, spec)`` for :func:`genbab.verify` from a model path and a property path.

    VNN-LIB 1.0 files and 2.0 queries over one network's one input and one output come back as
    given (the spec parsed for 2.0). Any other 2.0 query whose networks all use the one model
    (one network, or others ``equal-to`` it) becomes the composed model of
    :func:`genbab.model.compose.compose_query` (input ``X_all``, output ``Y_all``) and its spec."""
    from pathlib import Path

    from genbab.errors import SpecError
    from genbab.spec.vnnlib2 import is_vnnlib2

    if not is_vnnlib2(Path(spec)):
        return model, spec
    query = _load_query_for_verify(Path(spec))
    if query.simple:
        return model, query.spec
    wanted = query.model_networks()
    if len(wanted) != 1:
        raise SpecError(f"{Path(spec).name}: the query declares networks {', '.join(wanted)}; 'genbab verify' takes "
                        "one model: use 'genbab vnnlib2 verify QUERY --network NAME=MODEL ...'")
    from genbab.model.compose import compose_query
    from genbab.model.loading import translate_model
    from genbab.model.onnx_io import read_onnx

    composed = compose_query(query, {wanted[0]: read_onnx(model)})
    return translate_model(composed.SerializeToString(), f"{model} (composed for {Path(spec).name})"), query.spec
