"""Attacks inside branch and bound: bound minimisers, and witnesses found from the worst domains."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import genbab
from genbab.attack.pgd import Attacker
from genbab.attack.witness import Replayer
from genbab.bab.domain_attack import bound_minimizers
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bounds import engine_for
from tests.test_bab import floor_spec

SPECS = Path(genbab.__file__).resolve().parent.parent / "specs"


def test_bound_minimizers_attain_the_minimum_of_each_line() -> None:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    A[0, 0, :3] = 0.0
    lower = torch.randn(5, 7, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(5, 7, generator=g, dtype=torch.float64)
    x = bound_minimizers(A, lower, upper)
    assert x.shape == (5, 3, 7)
    assert bool(((x >= lower.unsqueeze(1)) & (x <= upper.unsqueeze(1))).all())
    exact_min = torch.minimum(A * lower.unsqueeze(1), A * upper.unsqueeze(1)).sum(-1)
    torch.testing.assert_close((A * x).sum(-1), exact_min)
    samples = lower.unsqueeze(1) + torch.rand(5, 1000, 7, generator=g, dtype=torch.float64) * (upper - lower).unsqueeze(1)
    assert bool((torch.einsum("dsn,dpn->dsp", A, samples) >= exact_min.unsqueeze(-1) - 1e-12).all())


def violated_spec(tmp_path: Path, model: genbab.Model) -> tuple[genbab.Spec, float]:
    """``Y_2 <= floor`` over [-1, 1]^2 with ``floor`` a little above the sampled minimum of y2:
    the unsafe set is a small region around the minimiser."""
    xs = torch.rand(200_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        floor = float(model.forward_flat(xs.float())[:, 2].min()) + 0.002
    path = floor_spec(tmp_path, floor, "violated.vnnlib")
    return genbab.load_spec(path), floor


@pytest.mark.parametrize("input_split", [0, 32], ids=["neuron-splits", "input-splits"])
def test_bab_returns_a_replayed_witness_from_its_worst_domains(tmp_path: Path, input_split: int) -> None:
    model = genbab.load_model(SPECS / "toy_mlp.onnx")
    spec, floor = violated_spec(tmp_path, model)
    attacker = Attacker(model, spec, Replayer(model, spec))

    def attack(x, rows, lo, hi, until):
        return attacker.descend(x, torch.zeros(len(x), dtype=torch.int64), lo, hi, until, 10)

    bab = BranchAndBound(engine_for(model), spec.lower[0], spec.upper[0], spec.C[0], spec.d[0],
                         BabConfig(input_split_max_dims=input_split), attack=attack)
    result = bab.run(time.monotonic() + 30)
    assert result.status == "sat" and result.witness is not None
    x = np.asarray(result.witness.x, dtype=np.float64)
    assert np.all(x >= -1.0) and np.all(x <= 1.0)
    session = ort.InferenceSession((SPECS / "toy_mlp.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    y = session.run(None, {name: x.reshape(model.onnx_input_shape).astype(np.float32)})[0].reshape(-1)
    assert float(y[2]) <= floor


def test_bab_without_a_witness_stays_unsat(tmp_path: Path) -> None:
    """On a true property the attack hook runs and finds nothing; the search still proves it."""
    model = genbab.load_model(SPECS / "toy_mlp.onnx")
    spec, floor = violated_spec(tmp_path, model)
    d = torch.tensor([floor - 0.052], dtype=torch.float64)  # y2 > min - 0.05 holds everywhere
    calls = []

    def attack(x, rows, lo, hi, until):
        calls.append(len(x))
        return None

    bab = BranchAndBound(engine_for(model), spec.lower[0], spec.upper[0], spec.C[0], d, BabConfig(), attack=attack)
    assert bab.run(time.monotonic() + 60).status == "unsat"
    assert calls and all(n > 0 for n in calls)  # the open domains were attacked, in vain
