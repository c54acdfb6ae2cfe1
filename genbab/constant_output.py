"""Deciding a property on a model whose output ignores its input.

When nothing but shape queries reads the input, the output is one constant ``c`` and the
property (a disjunction over cases ``k`` of ``x in box_k and C_k y <= d_k``) is decided on ``c``
alone, without bounds. ``c`` is read from onnxruntime, the runtime every witness is replayed on,
at several points of the boxes (they must agree bit for bit). Each row margin
``m_kj = (C_k c - d_k)_j`` is evaluated exactly (rationals where float64 cannot tell its sign):

- ``sat``: a case whose rows are all ``< 0``; the witness is its box's centre, replayed on
  onnxruntime as every witness is;
- ``unsat``: every case has a row ``> slack_kj = SLACK_REL * sum_i |C_kji| (|c_i| + SLACK_ABS)``,
  so that another float evaluation of ``c`` (rounding differently) cannot flip the verdict;
- ``unknown`` otherwise (a margin within rounding, a non-finite ``c``, outputs that differ).
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from genbab.attack.witness import OnnxModel, Replayer
from genbab.errors import SpecError
from genbab.model.graph import ConstantOutputError
from genbab.result import Result
from genbab.spec import Spec

SLACK_REL = 2.0**-16  # relative rounding allowance on |C| |c| before trusting a positive margin
SLACK_ABS = 2.0**-20  # absolute allowance per output (a value computed as 0 may be tiny elsewhere)


def decide(err: ConstantOutputError, spec: Spec, started: float) -> Result:
    """The verdict on ``spec`` for the constant-output model described by ``err``."""
    n_inputs = int(np.prod(err.onnx_input_shape, dtype=np.int64))
    stats: dict = {"load_s": round(time.monotonic() - started, 4), "n_cases": spec.n_cases,
                   "n_inputs": spec.n_inputs, "n_outputs": spec.n_outputs}
    if spec.n_inputs != n_inputs:
        raise SpecError(f"property declares {spec.n_inputs} inputs but the model has {n_inputs} "
                        f"(input shape {list(err.onnx_input_shape)})")
    if spec.n_outputs != err.value.numel():
        raise SpecError(f"property declares {spec.n_outputs} outputs but the model has {err.value.numel()} "
                        f"(output shape {list(err.value.shape)})")
    if spec.n_cases == 0:
        return Result("unsat", None, time.monotonic() - started, {**stats, "reason": "the unsafe input set is empty"})
    # an input left unbounded is taken within 1 of 0 (or of its one finite bound): the output is
    # the same everywhere, and the probes and the witness need finite points of the box
    spec = spec.finite(1.0)
    model = OnnxModel(err.onnx_bytes, err.input_name, err.onnx_input_shape, np.dtype(err.np_dtype), err.source)
    replayer = Replayer(model, spec)
    status, witness, info = _verdict(replayer, spec)
    stats["constant_output"] = info
    return Result(status, witness, time.monotonic() - started, stats)


def _verdict(replayer: Replayer, spec: Spec):
    """``(status, witness, stats)`` from the onnxruntime value of the constant output."""
    c, reason = constant_value(replayer, spec)
    info: dict = {"values": None if c is None else [float(v) for v in c[:16]], "reason": reason}
    if c is None:
        return "unknown", None, info
    C, d = spec.C.numpy(), spec.d.numpy()
    signs = [[row_sign(C[k, j], c, float(d[k, j])) for j in range(C.shape[1])] for k in range(spec.n_cases)]
    for k, rows in enumerate(signs):
        if all(s < 0 for s in rows):
            witness = replayer.confirm((spec.lower[k].numpy() + spec.upper[k].numpy()) / 2, k)
            if witness is not None:
                info["reason"] = f"case {k}: every row of C c - d is negative"
                return "sat", witness, info
    slack = [[SLACK_REL * float(np.abs(C[k, j]) @ (np.abs(c) + SLACK_ABS)) for j in range(C.shape[1])]
             for k in range(spec.n_cases)]
    if all(any(s > 0 and exceeds(C[k, j], c, float(d[k, j]), slack[k][j]) for j, s in enumerate(rows))
           for k, rows in enumerate(signs)):
        info["reason"] = "every case has a row of C c - d above its rounding slack"
        return "unsat", None, info
    info["reason"] = "a margin of C c - d lies within rounding of 0 (or the witness did not replay)"
    return "unknown", None, info


def constant_value(replayer: Replayer, spec: Spec) -> tuple[np.ndarray | None, str]:
    """onnxruntime's output at the corners and centres of the boxes (a few), if all identical and finite."""
    points = []
    for k in range(min(spec.n_cases, 4)):
        lo, hi = spec.lower[k].numpy(), spec.upper[k].numpy()
        points += [lo, hi, (lo + hi) / 2]
    outputs = [replayer.output(np.clip(p, -1e30, 1e30)) for p in points]
    first = outputs[0]
    if any(o.shape != first.shape or not np.array_equal(o, first, equal_nan=True) for o in outputs[1:]):
        return None, "onnxruntime's outputs differ between inputs"
    if not np.all(np.isfinite(first)):
        return None, "the constant output is not finite"
    return first.astype(np.float64), "the model output does not depend on its input"


def row_sign(row: np.ndarray, c: np.ndarray, d: float) -> int:
    """The exact sign of ``row . c - d``."""
    return 1 if exceeds(row, c, d, 0.0) else (-1 if exceeds(-row, c, -d, 0.0) else 0)


def exceeds(row: np.ndarray, c: np.ndarray, d: float, t: float) -> bool:
    """Exactly whether ``row . c - d > t``: float64 when its error bound (``(n + 3) u`` times the
    sum of magnitudes) decides, else rationals."""
    value = float(row @ c) - d - t
    bound = (len(c) + 3) * 2.0**-52 * (float(np.abs(row) @ np.abs(c)) + abs(d) + abs(t))
    if abs(value) > bound:
        return value > 0
    return exact_margin(row, c, d) > Fraction(t)


def exact_margin(row: np.ndarray, c: np.ndarray, d: float) -> Fraction:
    """``row . c - d`` in exact rational arithmetic (over the nonzero coefficients)."""
    nonzero = np.nonzero(row)[0]
    return sum((Fraction(float(row[i])) * Fraction(float(c[i])) for i in nonzero), Fraction(0)) - Fraction(d)
