"""The attack alone, on onnxruntime, for a model genbab cannot translate.

When onnx2torch (or genbab's own converters) cannot turn an ONNX file into a graph, no bound and
no gradient exist, but onnxruntime may still run it: the gradient-free search of
:mod:`genbab.attack.search` then looks for a counterexample with onnxruntime's outputs, and every
hit is replayed like any witness. The verdict is ``sat`` (with the witness) or ``unknown`` with
the translation error as the reason: never ``unsat``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from genbab.attack.witness import OnnxModel
from genbab.errors import SpecError
from genbab.result import Result


def onnx_only(path: str | Path) -> OnnxModel | None:
    """The file's bytes and single input, or None when onnx cannot parse it."""
    from genbab.errors import GenbabError
    from genbab.model import onnx_io
    from genbab.model.files import read_bytes

    try:
        raw = read_bytes(path)
        info = onnx_io.model_input(onnx_io.parse_onnx(raw, path))
    except GenbabError:
        return None
    return OnnxModel(raw, info.name, tuple(info.shape), np.dtype(info.dtype), str(path))


def attack_untranslated(path: str | Path, spec, error: Exception, start: float, deadline: float,
                        seed: int = 0) -> Result | None:
    """``sat`` or ``unknown`` from a search on onnxruntime; None when onnxruntime cannot run the
    file either (the caller reports ``error``). ``spec``: a loaded :class:`~genbab.spec.Spec`."""
    from genbab.attack.search import SearchAttack, onnxruntime_margins
    from genbab.attack.witness import Replayer
    from genbab.errors import ModelError

    model = onnx_only(path)
    if model is None:
        return None
    try:
        replayer = Replayer(model, spec)
    except ModelError:
        return None
    n_inputs = math.prod(model.onnx_input_shape)
    if spec.n_inputs != n_inputs:
        raise SpecError(f"property declares {spec.n_inputs} inputs but the model has {n_inputs} "
                        f"(input shape {list(model.onnx_input_shape)})")
    finite = spec.finite(1.0) if bool(spec.unbounded().any()) else spec
    probe = np.clip(np.zeros(n_inputs), finite.lower[0].numpy(), finite.upper[0].numpy())
    try:
        n_outputs = replayer.run(probe.astype(model.np_dtype)).size
    except Exception as err:  # noqa: BLE001 (onnxruntime's own error types): nothing can run
        raise ModelError(f"{error}; onnxruntime cannot run it either ({type(err).__name__})") from None
    if spec.n_outputs != n_outputs:
        raise SpecError(f"property declares {spec.n_outputs} outputs but the model has {n_outputs}")
    search = SearchAttack(onnxruntime_margins(replayer), finite, replayer, seed=seed, batch=64)
    witness = search.run(deadline)
    stats = {"reason": f"the model could not be translated ({error}): only a gradient-free attack on "
                       "onnxruntime was run", "attack_onnxruntime": {
                 "rounds": search.rounds, "points": search.points, "replays": replayer.replays,
                 "best_margin": search.best_margin if math.isfinite(search.best_margin) else None}}
    return Result("sat" if witness is not None else "unknown", witness, time.monotonic() - start, stats)
