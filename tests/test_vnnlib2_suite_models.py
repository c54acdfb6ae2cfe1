"""Every model of the vnnlib-satisfactory suite loads and matches onnxruntime on 100 points of its
property's box (issue 13, "Measured"). The suite's generator writes its ONNX/VNN-LIB pairs into a
temporary folder; queries over one network's one input and one output are checked here (the
others go through the composition of several networks, tests/test_vnnlib2_compose.py)."""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import genbab
from genbab.model.graph import ConstantOutputError

vnntest = pytest.importorskip("vnntest.core.generator", reason="vnnlib-satisfactory is not installed")


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("suite")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            entries = vnntest.generate_all_tests()
    finally:
        os.chdir(cwd)
    return folder / ".vnnlib-satisfactory" / "tests", entries


def test_every_suite_model_matches_onnxruntime(suite) -> None:
    from genbab.spec.vnnlib2 import QueryError, load_query

    tests, entries = suite
    checked, constant, failures = 0, 0, []
    for entry in entries:
        folder = tests / entry["category"]
        try:
            query = load_query(folder / entry["vnnlib"])
        except QueryError:  # the polynomial queries (POLY), which genbab does not claim
            continue
        if len(entry["networks"]) != 1 or not query.simple:
            continue
        path = folder / entry["onnx"]
        spec = query.spec.finite(1.0)
        if spec.n_cases == 0:
            continue
        lo, hi = spec.lower[0].numpy(), spec.upper[0].numpy()
        try:
            model = genbab.load_model(path, use_cache=False)
        except ConstantOutputError:
            constant += 1  # decided on its value: tests/test_cli.py, tests/test_vnnlib2_compose.py
            continue
        except genbab.GenbabError as err:
            failures.append(f"{entry['name']}: {err}")
            continue
        rng = np.random.default_rng(0)
        u = rng.random((100, lo.size))
        u[0], u[1] = 0.0, 1.0
        xs = (lo + u * (hi - lo)).astype(model.np_dtype)
        session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
        ref = np.stack([np.asarray(session.run(None, {model.input_name: x.reshape(model.onnx_input_shape)})[0],
                                   dtype=np.float64).reshape(-1) for x in xs])
        with torch.no_grad():
            ours = model.forward_flat(torch.from_numpy(xs)).double().numpy()
        scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
        if ours.shape != ref.shape or not np.allclose(ours, ref, rtol=1e-5, atol=1e-5 * scale, equal_nan=True):
            worst = np.nanmax(np.abs(ours - ref)) if ours.shape == ref.shape else math.nan
            failures.append(f"{entry['name']}: differs from onnxruntime (worst {worst:.3g})")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 150 and constant >= 4, (checked, constant)
