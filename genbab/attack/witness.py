"""Counterexample replay and the VNN-COMP witness format.

A candidate input is only reported ``sat`` after :class:`Replayer` has
1. rounded it to the model's dtype and moved it inside its case's box *in that dtype* (a float32
   value rounded from a float64 bound can fall just outside the box), and
2. run the original ONNX model with onnxruntime on the CPU and found ``max_j (C y - d)_j < 0``
   for the replayed output ``y`` (computed in float64, no tolerance), with a *strict* ``< 0``: the
   parser reads strict comparisons as non-strict, so a point exactly on the boundary is never
   reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from genbab.errors import ModelError
from genbab.model.model import Model
from genbab.spec.spec import Spec


@dataclass(frozen=True)
class Witness:
    """A confirmed counterexample: flattened input ``x`` (model dtype), ORT output ``y``, the case it violates."""

    x: np.ndarray
    y: np.ndarray
    case: int
    margin: float  # max_j (C y - d)_j of the replayed output, < 0

    def to_vnncomp(self) -> str:
        """``((X_0 v)\\n (X_1 v) ... (Y_0 v))``: shortest decimals that round-trip exactly."""
        items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.x)]
        items += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.y)]
        return "(" + "\n ".join(items) + ")"


def snap_into_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast ``x`` to ``dtype`` and nudge each entry by one ulp until ``lower <= x <= upper`` holds exactly."""
    x = np.clip(np.asarray(x, dtype=np.float64), lower, upper).astype(dtype)
    low_bad = x.astype(np.float64) < lower
    x[low_bad] = np.nextafter(x[low_bad], np.array(np.inf, dtype=dtype))
    high_bad = x.astype(np.float64) > upper
    x[high_bad] = np.nextafter(x[high_bad], np.array(-np.inf, dtype=dtype))
    return x


@dataclass(frozen=True)
class OnnxModel:
    """What :class:`Replayer` reads of a model: the ONNX bytes and input (for a model that is not
    translated: a constant output, or one no converter reads)."""

    onnx_bytes: bytes
    input_name: str
    onnx_input_shape: tuple[int, ...]
    np_dtype: np.dtype
    source: str = ""


class Replayer:
    """Runs the original ONNX model in onnxruntime (CPU) to confirm counterexamples."""

    def __init__(self, model: Model, spec: Spec):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # no replay means no witness can ever be confirmed: the model is unusable
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"{model.source or 'model'}: onnxruntime cannot load it ({first[:300]})") from None
        self.input_name = model.input_name
        self.input_shape = model.onnx_input_shape
        self.dtype = model.np_dtype
        self.C = spec.C.numpy()
        self.d = spec.d.numpy()
        self.lower = spec.lower.numpy()
        self.upper = spec.upper.numpy()
        self.replays = 0

    def output(self, x: np.ndarray) -> np.ndarray:
        """Flattened ORT output for one flattened input (a replay)."""
        self.replays += 1
        return self.run(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Flattened ORT output for one flattened input (an evaluation, not counted as a replay)."""
        feed = {self.input_name: x.reshape(self.input_shape).astype(self.dtype)}
        return np.asarray(self.session.run(None, feed)[0]).reshape(-1)

    def confirm(self, x: np.ndarray, case: int) -> Witness | None:
        """The witness for ``x`` in ``case`` if ORT agrees it violates the property, else None."""
        x = snap_into_box(x, self.lower[case], self.upper[case], self.dtype)
        wide = x.astype(np.float64)
        if np.any(wide < self.lower[case]) or np.any(wide > self.upper[case]):
            return None  # the box holds no value of the model's dtype in some coordinate
        y = self.output(x)
        margin = float(np.max(self.C[case] @ y.astype(np.float64) - self.d[case]))
        if margin < 0.0 and np.all(np.isfinite(y)):
            return Witness(x, y, case, margin)
        return None
