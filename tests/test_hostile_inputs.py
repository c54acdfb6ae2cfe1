"""Inputs a hostile user brings end in a clean error (a GenbabError, exit 2 on the command line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import genbab
from genbab.errors import ModelError, SpecError

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """Reading a FIFO would block until the deadline; it is refused as not a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        genbab.load_model(str(fifo))
    with pytest.raises(SpecError, match="not a regular file"):
        genbab.load_spec(str(fifo))


def test_a_model_onnxruntime_refuses_is_a_model_error(tmp_path: Path) -> None:
    """Opset 999 translates but onnxruntime cannot load it (no witness could be replayed): exit 2."""
    model = onnx.load(str(SPECS / "toy_mlp.onnx"))
    model.opset_import[0].version = 999
    path = tmp_path / "op999.onnx"
    onnx.save(model, str(path))
    proc = subprocess.run([sys.executable, "-m", "genbab.cli", "verify", str(path), str(SPECS / "toy_mlp_robust.vnnlib"),
                           "--timeout", "10", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "onnxruntime cannot load" in lines[0] and "Traceback" not in proc.stderr


def test_model_call_accepts_flat_samples_and_names_the_expected_shape() -> None:
    """An ONNX input ``[1, 2]`` fed ``[batch, 2]`` is unambiguous; ``[batch, 3]`` names the shape."""
    import torch

    model = genbab.load_model(str(SPECS / "toy_mlp.onnx"))
    x = torch.rand(5, *model.input_shape)
    assert torch.equal(model(x.reshape(5, -1)), model(x))
    with pytest.raises(ValueError, match=r"\[batch, 1, 2\]"):
        model(torch.zeros(5, 3))


def test_compute_bounds_in_row_chunks_matches_one_pass() -> None:
    """Every output as a row, bounded one row at a time: CROWN gives the same bounds as one pass,
    alpha-CROWN bounds that contain sampled outputs."""
    import torch

    model = genbab.load_model(str(SPECS / "toy_mlp.onnx"))
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    whole = genbab.compute_bounds(model, lo, hi, method="crown")
    chunked = genbab.compute_bounds(model, lo, hi, method="crown", row_chunk=1)
    assert torch.allclose(whole[0], chunked[0], rtol=0, atol=1e-12) and torch.allclose(whole[1], chunked[1], rtol=0, atol=1e-12)
    lb, ub = genbab.compute_bounds(model, lo, hi, method="alpha-crown", row_chunk=2)
    y = model.forward_flat(lo + (hi - lo) * torch.rand(4000, 2, dtype=torch.float64)).double()
    assert bool((y >= lb - 1e-9).all()) and bool((y <= ub + 1e-9).all())
