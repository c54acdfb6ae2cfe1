"""Affine and monotone rules hold for the attribute values they are used with.

``Resize`` is monotone (its interval image is the image of the box's corners) only in nearest
and linear modes; cubic weights are negative at the ends. ``Cast`` is affine only from float to
float; to an integer type it is a step function, never an affine map: the bound graph has it as
``Trunc`` (:mod:`genbab.ops.step`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.bounds.box import Box
from genbab.bounds.engine import BoundEngine
from genbab.errors import UnsupportedOpError
from genbab.model.loading import load_model
from genbab.ops.registry import rule_for


def save(tmp_path: Path, name: str, nodes, inits, in_shape, out_shape, opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def resize_model(tmp_path: Path, mode: str) -> Path:
    """x [1, 1, 4, 4] -> Resize(mode, scale 2) -> y [1, 1, 8, 8]."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    roi = numpy_helper.from_array(np.array([], dtype=np.float32), "roi")
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode=mode)
    return save(tmp_path, f"resize_{mode}", [node], [roi, scales], [1, 1, 4, 4], [1, 1, 8, 8])


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_interval_contains_sampled_outputs(tmp_path: Path, mode: str) -> None:
    """IBP bounds of every Resize mode contain the outputs of 2,000 points of the box (a corner
    image would miss them in cubic mode, where outputs overshoot the inputs' range)."""
    model = load_model(resize_model(tmp_path, mode))
    engine = BoundEngine(model.graph)
    g = torch.Generator().manual_seed(0)
    shape = tuple(model.input_shape)
    centre = torch.randn(1, *shape, generator=g, dtype=torch.float64) * 3
    lo, hi = centre - 1.0, centre + 1.0
    bounds = engine.interval_bounds(Box(lo, hi))
    out_lo, out_hi = bounds[engine.graph.output_name]
    x = lo + (hi - lo) * torch.randint(0, 2, (2000, *shape), generator=g).double()  # corners: extremes of a linear map
    y = torch.stack([engine.graph.forward_one(xi) for xi in x[:200]])  # float64 evaluation
    y = torch.cat([y, torch.func.vmap(engine.graph.forward_one)(x[200:])])
    slack = 1e-9 * (1 + y.abs())
    assert bool((y >= out_lo - slack).all()) and bool((y <= out_hi + slack).all())


def cast_model(tmp_path: Path) -> Path:
    """y = float(int64(3 x)): a step function of x (0 on [0.1, 0.3])."""
    three = numpy_helper.from_array(np.array([3.0], dtype=np.float32), "three")
    nodes = [helper.make_node("Mul", ["x", "three"], ["t"]),
             helper.make_node("Cast", ["t"], ["i"], to=TensorProto.INT64),
             helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]
    return save(tmp_path, "cast_int", nodes, [three], [1, 1], [1, 1])


def test_cast_to_an_integer_type_has_no_affine_rule(tmp_path: Path) -> None:
    model = load_model(cast_model(tmp_path))
    casts = [n for n in model.graph.nodes if n.op_type == "Cast" and int(n.attrs.get("to", 1)) == TensorProto.INT64]
    if not casts:
        pytest.skip("the integer Cast was folded away by the translation")
    with pytest.raises(UnsupportedOpError, match="step function"):
        rule_for(casts[0])


def test_cast_to_integer_is_bounded_as_trunc(tmp_path: Path) -> None:
    """On [0.1, 0.3], int64(3 x) is 0: the bound graph's Trunc bounds y to [0, 0] exactly."""
    from genbab.bounds import compute_bounds

    model = load_model(cast_model(tmp_path))
    for method in ("ibp", "crown", "alpha-crown"):
        lb, ub = compute_bounds(model, torch.tensor([[0.1]], dtype=torch.float64),
                                torch.tensor([[0.3]], dtype=torch.float64), method)
        assert float(lb) == 0.0 and float(ub) == 0.0, method
        lb, ub = compute_bounds(model, torch.tensor([[0.1]], dtype=torch.float64),
                                torch.tensor([[1.0]], dtype=torch.float64), method)
        assert float(lb) == 0.0 and float(ub) == 3.0, method


def test_cast_to_integer_never_proves_and_finds_the_counterexample(tmp_path: Path) -> None:
    """Treated as the identity, the cast would bound y to [0.3, 0.9] and "prove" y > 0.1; the real
    output is 0, so the answer must be ``sat`` with a witness that really violates."""
    model_path = cast_model(tmp_path)
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (>= X_0 0.1))\n(assert (<= X_0 0.3))\n(assert (<= Y_0 0.1))\n")
    result = genbab.verify(str(model_path), str(spec), timeout=20)
    assert result.status == "sat"
    x = float(result.witness.x.reshape(-1)[0]) if hasattr(result.witness, "x") else None
    if x is not None:
        assert 0.1 <= x <= 0.3
