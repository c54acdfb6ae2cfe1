"""Independent check of a ``sat`` witness: parse the results file, run the model on onnxruntime.

The witness passes when its input lies (exactly, in the model's input dtype) in some case's box
of the property and onnxruntime's output for it satisfies that case's ``C y <= d`` (the unsafe
set), and the outputs written in the file agree with onnxruntime's (rtol 1e-3, atol 1e-4).
Only the property parser and the model's original bytes come from genbab; the inference is
onnxruntime's alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSIGNMENT = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
Y_RTOL, Y_ATOL = 1e-3, 1e-4


@dataclass(frozen=True)
class ReplayCheck:
    """``ok`` when the witness is a genuine counterexample; ``reason`` says why not."""

    ok: bool
    reason: str = ""
    case: int | None = None
    margin: float | None = None


def parse_witness(text: str) -> tuple[dict[int, float], dict[int, float]]:
    """``({i: X_i}, {j: Y_j})`` from a results file's text (the verdict line is ignored)."""
    xs: dict[int, float] = {}
    ys: dict[int, float] = {}
    for name, index, value in ASSIGNMENT.findall(text):
        (xs if name == "X" else ys)[int(index)] = float(value)
    return xs, ys


def dense(values: dict[int, float], n: int, name: str) -> np.ndarray:
    """The values as an array of length ``n``; ValueError when an index is missing or extra."""
    if sorted(values) != list(range(n)):
        raise ValueError(f"witness gives {len(values)} {name} values, the instance has {n}")
    return np.array([values[i] for i in range(n)], dtype=np.float64)


@lru_cache(maxsize=4)
def ort_session(onnx_path: str):
    """An onnxruntime CPU session on the model's original bytes, with its input name, shape and dtype."""
    import onnxruntime as ort

    import genbab

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(genbab.load_model(onnx_path).onnx_bytes, opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inp.shape)
    return session, inp.name, shape, ORT_DTYPES.get(inp.type, np.float32)


@lru_cache(maxsize=8)
def load_property(vnnlib_path: str):
    import genbab

    return genbab.load_spec(vnnlib_path)


def replay_witness(onnx_path: Path | str, vnnlib_path: Path | str, results_text: str) -> ReplayCheck:
    """Check the witness in ``results_text`` against the instance; never raises."""
    try:
        return _replay(str(onnx_path), str(vnnlib_path), results_text)
    except Exception as err:  # an unreadable witness or model is a failed replay
        return ReplayCheck(False, f"{type(err).__name__}: {err}")


def _replay(onnx_path: str, vnnlib_path: str, results_text: str) -> ReplayCheck:
    spec = load_property(vnnlib_path)
    xs, ys = parse_witness(results_text)
    if not xs:
        return ReplayCheck(False, "no witness in the results file")
    session, name, shape, dtype = ort_session(onnx_path)
    x = dense(xs, spec.n_inputs, "X").astype(dtype)
    wide = x.astype(np.float64)
    lower, upper = spec.lower.numpy(), spec.upper.numpy()
    inside = np.all((wide >= lower) & (wide <= upper), axis=1)
    if not inside.any():
        return ReplayCheck(False, "the input lies in no case's box")
    y = np.asarray(session.run(None, {name: x.reshape(shape)})[0], dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(y)):
        return ReplayCheck(False, "onnxruntime's output is not finite")
    if ys:
        stated = dense(ys, spec.n_outputs, "Y")
        if not np.allclose(stated, y, rtol=Y_RTOL, atol=Y_ATOL):
            worst = float(np.max(np.abs(stated - y)))
            return ReplayCheck(False, f"the stated outputs differ from onnxruntime's (by up to {worst:.3g})")
    C, d = spec.C.numpy(), spec.d.numpy()
    margins = np.max(np.einsum("krn,n->kr", C, y) - d, axis=1)
    margins[~inside] = np.inf
    case = int(np.argmin(margins))
    if margins[case] <= 0.0:
        return ReplayCheck(True, "", case, float(margins[case]))
    return ReplayCheck(False, f"the output does not violate the property (margin {margins[case]:.3g} > 0)",
                       case, float(margins[case]))
