"""The translation check: the graph that bounds are computed on must agree with the ONNX model.

Proofs are about the bound engine's graph (the onnx2torch translation, folded and rewritten
for bounding, in float64); the property is about the ONNX model as onnxruntime runs it. Before
any proof, both are run on points of the property's boxes: each box's centre, its lower and
upper corners, random corners and random interior points. Output ``y_t`` (engine) and
``y_o`` (onnxruntime, the model's own dtype) agree when, per sample,

    max_j |y_t,j - y_o,j| <= RTOL * (1 + max_j |y_o,j|)

``RTOL`` allows float32 evaluation in onnxruntime against float64 in the engine; a translation
mistake (a wrong Resize mode, a dropped op) shows as an error of the output's own size. A
mismatch means no ``unsat`` for the model: the attack still runs, and the report says why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch

RTOL = 1e-3
POINTS_PER_BOX = 8
MAX_BOXES = 4
MAX_SECONDS = 2.0  # onnxruntime time spent at most (the first box's centre and corners always run)


@dataclass(frozen=True)
class TranslationReport:
    """``ok`` unless some sampled point disagrees; ``worst`` is the largest scaled error seen."""

    ok: bool
    points: int
    worst: float
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def sample_points(lower: torch.Tensor, upper: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` flat points ``[count, n]`` of one box: centre, lower and upper corner, then
    alternately random corners and uniform interior points."""
    lower, upper = lower.double(), upper.double()
    points = [(lower + upper) / 2, lower, upper]
    while len(points) < count:
        if len(points) % 2:
            pick = torch.rand(lower.shape, generator=generator, dtype=torch.float64) < 0.5
            points.append(torch.where(pick, upper, lower))
        else:
            points.append(lower + (upper - lower) * torch.rand(lower.shape, generator=generator, dtype=torch.float64))
    return torch.stack(points[:count])


def _graph_device(graph) -> torch.device:
    """Where the graph's constants live (a bound engine's graph may be on a GPU)."""
    for node in graph.nodes:
        for a in (*node.args, *node.kwargs.values()):
            if isinstance(a, torch.Tensor):
                return a.device
        if isinstance(node.module, torch.nn.Module):
            for t in node.module.parameters():
                return t.device
    return torch.device("cpu")


def check_translation(model, graph, lower: torch.Tensor, upper: torch.Tensor, seed: int = 0) -> TranslationReport:
    """Compare ``graph`` (a per-sample :class:`~genbab.model.graph.Graph`, any dtype) with
    onnxruntime on ``model.onnx_bytes`` over the boxes ``lower``/``upper`` ``[n_boxes, n_inputs]``."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.onnx_bytes, opts, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.unique(torch.stack([lower, upper], dim=1), dim=0)[:MAX_BOXES]
    start, points, worst = time.monotonic(), 0, 0.0
    device = _graph_device(graph)
    for b, (lo, hi) in enumerate(boxes):
        for i, x in enumerate(sample_points(lo, hi, POINTS_PER_BOX, generator)):
            if points >= 3 and time.monotonic() - start > MAX_SECONDS:
                return TranslationReport(True, points, worst)
            x_model = x.numpy().astype(model.np_dtype)  # the exact input onnxruntime sees
            y_o = np.asarray(session.run(None, {model.input_name: x_model.reshape(model.onnx_input_shape)})[0],
                             dtype=np.float64).reshape(-1)
            with torch.no_grad():
                x_graph = torch.from_numpy(x_model.astype(np.float64)).to(device, graph.dtype)
                y_t = graph.forward_one(x_graph.reshape(graph.input_shape)).double().reshape(-1).cpu().numpy()
            points += 1
            if not (np.isfinite(y_o).all() and np.isfinite(y_t).all()):
                if np.array_equal(np.isnan(y_o), np.isnan(y_t)) and np.array_equal(y_o[~np.isfinite(y_o)],
                                                                                    y_t[~np.isfinite(y_t)]):
                    continue
                return TranslationReport(False, points, float("inf"),
                                         f"box {b}, point {i}: non-finite outputs differ between the translation "
                                         "and onnxruntime")
            error = float(np.max(np.abs(y_t - y_o), initial=0.0)) / (1.0 + float(np.max(np.abs(y_o), initial=0.0)))
            worst = max(worst, error)
            if error > RTOL:
                j = int(np.argmax(np.abs(y_t - y_o)))
                return TranslationReport(False, points, worst,
                                         f"box {b}, point {i}: output {j} is {y_t[j]:.6g} in the translated graph "
                                         f"but {y_o[j]:.6g} in onnxruntime (scaled error {error:.3g} > {RTOL})")
    return TranslationReport(True, points, worst)
