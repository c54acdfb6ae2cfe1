"""The translation check: a translated graph that disagrees with onnxruntime never yields ``unsat``."""

from __future__ import annotations

from pathlib import Path

import torch

import genbab
from genbab.bounds import engine_for
from genbab.translation_check import check_translation, sample_points

SPECS = Path(__file__).resolve().parent.parent / "specs"


def test_the_bundled_model_agrees_and_is_proved() -> None:
    result = genbab.verify(str(SPECS / "toy_mlp.onnx"), str(SPECS / "toy_mlp_robust.vnnlib"), timeout=30)
    assert result.status == "unsat"
    check = result.stats["translation_check"]
    assert check["ok"] is True and check["points"] >= 3 and check["worst"] < 1e-4


def tampered(spec_name: str):
    """The toy model with its bound engine's graph changed as a translation bug would change it:
    the last layer's bias of ``Y_2`` raised by 1 (the property, ``Y_2 <= 0`` unsafe, gets easier)."""
    model = genbab.load_model(str(SPECS / "toy_mlp.onnx"))
    spec = genbab.load_spec(str(SPECS / spec_name))
    layers = [n.module for n in engine_for(model).graph.nodes if isinstance(getattr(n.module, "bias", None), torch.Tensor)]
    with torch.no_grad():
        layers[-1].bias[2] += 1.0
    return model, spec


def test_a_wrong_translation_is_caught_and_blocks_the_proof(monkeypatch) -> None:
    """The check names the disagreeing output and no proof is reported; without the check the
    tampered graph would have been "proved" (so the check is what stops it)."""
    model, spec = tampered("toy_mlp_robust.vnnlib")
    report = check_translation(model, engine_for(model).graph, spec.lower, spec.upper)
    assert not report.ok and "output 2" in report.reason
    result = genbab.verify(model, spec, timeout=6)
    assert result.status != "unsat"
    assert result.stats["translation_check"]["ok"] is False
    assert "disagrees" in result.stats["no_proof_reason"]
    assert "bounds" not in result.stats
    model, spec = tampered("toy_mlp_robust.vnnlib")
    monkeypatch.setattr(genbab.api, "translation_agrees", lambda *args: True)
    assert genbab.verify(model, spec, timeout=6).status == "unsat"


def test_sample_points_cover_centre_and_corners() -> None:
    lo, hi = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 0.5, 3.0])
    pts = sample_points(lo, hi, 8, torch.Generator().manual_seed(0))
    assert pts.shape == (8, 3)
    assert torch.equal(pts[0], (lo + hi).double() / 2) and torch.equal(pts[1], lo.double()) and torch.equal(pts[2], hi.double())
    assert bool(((pts >= lo.double()) & (pts <= hi.double())).all())
