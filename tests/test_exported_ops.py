"""Small PyTorch models exported to ONNX (torch.onnx.export, opset 17), one per op given bound
rules on 2026-12-07: each loads, matches onnxruntime on sampled inputs, and its CROWN and
alpha-CROWN bounds contain every sampled output."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_activations import Lambda  # a module around a function

import genbab
from genbab.bounds import compute_bounds
from genbab.bounds.alpha import AlphaConfig


class Net(torch.nn.Module):
    """``x [1, 3] -> h = W x + b [1, 4] -> body(h) -> V . [1, 2]``."""

    def __init__(self, body):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.first = torch.nn.Linear(3, 4)
        self.last = torch.nn.Linear(4, 2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)
        self.body = body

    def forward(self, x):
        return self.last(self.body(self.first(x)))


BODIES = {
    "floor": lambda h: torch.floor(2 * h),
    "ceil": lambda h: torch.ceil(2 * h),
    "round": lambda h: torch.round(2 * h) + h,
    "equal": lambda h: (torch.round(h) == 1.0).float() * h + h,
    "cast-int": lambda h: (3 * h).long().float(),
    "cast-bool": lambda h: torch.relu(h).bool().float() + h,
    "pow-exponent": lambda h: torch.pow(1.5, h),
    "pow-both": lambda h: torch.pow(torch.sigmoid(h) + 0.5, h),
    "softmax-sum": lambda h: torch.softmax(h, dim=-1).cumsum(-1),
}


def export(name: str, path) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net(Lambda(BODIES[name])).eval(), (torch.zeros(1, 3),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("name", sorted(BODIES))
def test_exported_op_matches_onnxruntime_and_bounds_contain_samples(tmp_path, name) -> None:
    path = tmp_path / f"{name}.onnx"
    export(name, path)
    model = genbab.load_model(path)
    lower, upper = -torch.ones(3, dtype=torch.float64) * 0.8, torch.ones(3, dtype=torch.float64) * 0.6
    rng = np.random.default_rng(1)
    u = rng.random((5000, 3))
    u[:500] = u[:500] > 0.5
    xs = (lower.numpy() + u * (upper - lower).numpy()).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(None, {"x": xs[i:i + 1]})[0] for i in range(len(xs))]).astype(np.float64)
    with torch.no_grad():
        ours = model.forward_flat(torch.from_numpy(xs)).double().numpy()
    # staircases: a sample within rounding of a step may land on either side in float32 arithmetic
    close = np.isclose(ours, ref, rtol=1e-5, atol=1e-5).all(axis=1)
    assert close.mean() > 0.99, f"{(~close).sum()} of {len(xs)} samples differ from onnxruntime"
    tol = 1e-5 * (1 + np.abs(ref).max())
    for method in ("crown", "alpha-crown"):
        lb, ub = compute_bounds(model, lower, upper, method, alpha=AlphaConfig(iterations=5))
        assert np.all(lb[0].numpy() <= ref.min(axis=0) + tol), method
        assert np.all(ub[0].numpy() >= ref.max(axis=0) - tol), method
        assert np.all(np.isfinite(lb.numpy())) and np.all(np.isfinite(ub.numpy())), method
