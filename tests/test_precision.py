"""Bound arithmetic in float32 and float64, both rigorous (genbab.bounds.rounding).

A backward pass whose sums round (``2^24 + 3 - 2^24`` is ``4`` in float32) must still report a
true lower bound; float32 bounds contain onnxruntime's outputs on every shared model and are never
tighter than the float64 ones beyond rounding; spec boxes and offsets are cast outward."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import genbab
from conftest import all_models, first_spec_for, needs_benchmarks
from genbab.bounds import rounding
from genbab.bounds.config import resolve_precision
from genbab.errors import GenbabError
from genbab.model.files import read_bytes

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "specs" / "toy_mlp.onnx"


def cancelling_model(tmp_path: Path, big: float, dtype: int) -> genbab.Model:
    """``y = ((-big x) + (big x)) + 3 x``, nodes in that order: the backward pass reaches ``x``
    from ``3 x`` first, then adds ``big`` (``big + 3`` rounds to ``big + 4``) and ``-big``: the
    coefficient of ``x`` comes out as ``4`` where it is exactly ``3``."""
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    consts = [helper.make_tensor(name, dtype, [1], np.array([v], dtype=np_dtype).tolist())
              for name, v in (("neg", -big), ("pos", big), ("three", 3.0))]
    nodes = [helper.make_node("Mul", ["x", "neg"], ["z3"]), helper.make_node("Mul", ["x", "pos"], ["z1"]),
             helper.make_node("Add", ["z3", "z1"], ["s"]), helper.make_node("Mul", ["x", "three"], ["z2"]),
             helper.make_node("Add", ["s", "z2"], ["y"])]
    graph = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", dtype, [1, 1])],
                              [helper.make_tensor_value_info("y", dtype, [1, 1])], consts)
    path = tmp_path / "cancel.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return genbab.load_model(path, use_cache=False)


@pytest.mark.parametrize("precision,big", [("float32", 2.0 ** 24), ("float64", 2.0 ** 53)])
def test_a_rounded_backward_sum_still_gives_a_true_lower_bound(tmp_path: Path, precision: str, big: float) -> None:
    """The coefficient sum of :func:`cancelling_model` rounds (``big + 3 - big = 4`` in that
    precision) while the exact minimum of ``y`` at ``x = 1`` is ``3``: a bound without the
    rounding ledger would claim ``y >= 4 - (concretisation allowance)``."""
    dtype = resolve_precision(precision)
    model = cancelling_model(tmp_path, big, TensorProto.FLOAT if precision == "float32" else TensorProto.DOUBLE)
    b = torch.tensor(big, dtype=dtype)
    assert float((b + 3) - b) == 4.0  # the rounding this test is about
    one = torch.ones(1, 1, dtype=torch.float64)
    C = torch.ones(1, 1, dtype=torch.float64)
    lb, ub = genbab.compute_bounds(model, one, one, method="crown", C=C, precision=precision)
    assert lb.dtype == dtype
    assert Fraction(lb.item()) <= 3 <= Fraction(ub.item())


def test_boxes_and_offsets_are_cast_outward() -> None:
    x = torch.tensor([0.1, -0.1, 1 / 3, 1e-40, 2.0], dtype=torch.float64)
    down, up = rounding.to_dtype_down(x, torch.float32), rounding.to_dtype_up(x, torch.float32)
    assert bool((down.double() <= x).all()) and bool((up.double() >= x).all())
    assert down[-1] == up[-1] == 2.0  # exact values stay
    assert rounding.exact_in(torch.tensor([1.0, -2.0, 0.5]), torch.float32)
    assert not rounding.exact_in(torch.tensor([0.1], dtype=torch.float64), torch.float32)


def test_inexact_coefficients_are_refused_in_float32(tmp_path: Path) -> None:
    model = genbab.load_model(TOY)
    C = torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="not exact"):
        genbab.compute_bounds(model, -torch.ones(2), torch.ones(2), method="crown", C=C, precision="float32")


def test_precision_choices() -> None:
    assert resolve_precision("auto") == torch.float64
    assert resolve_precision("float32") == torch.float32
    with pytest.raises(GenbabError):
        resolve_precision("float16")


def test_toy_model_in_both_precisions_on_the_cpu() -> None:
    model = genbab.load_model(TOY)
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    xs = torch.rand(10_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    session = ort.InferenceSession(str(TOY), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ys = np.concatenate([session.run(None, {name: xs[i:i + 1].numpy().astype(np.float32)})[0] for i in range(0, 2000)])
    for precision in ("float32", "float64"):
        lb, ub = genbab.compute_bounds(model, lo, hi, method="alpha-crown", device="cpu", precision=precision)
        assert bool((torch.from_numpy(ys).double() >= lb.double() - 1e-6).all())
        assert bool((torch.from_numpy(ys).double() <= ub.double() + 1e-6).all())
    v32 = genbab.verify(model, ROOT / "specs" / "toy_mlp_robust.vnnlib", timeout=30, precision="float32")
    assert v32.status == "unsat"


def _ort_outputs(model_path: Path, xs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(read_bytes(model_path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    out = [session.run(None, {inp.name: x.reshape(shape)})[0].reshape(-1) for x in xs]
    return np.stack(out)


@needs_benchmarks
@pytest.mark.parametrize("model_path", [m for m in all_models() if first_spec_for(m) is not None],
                         ids=lambda p: p.name)
def test_float32_bounds_contain_onnxruntime_and_are_not_tighter_than_float64(model_path: Path) -> None:
    model = genbab.load_model(model_path)
    spec = genbab.load_spec(first_spec_for(model_path), model.n_inputs, model.n_outputs)
    lo, hi = spec.lower[0], spec.upper[0]
    gen = torch.Generator().manual_seed(0)
    n = 10_000 if model.n_inputs * len(model.graph.nodes) < 50_000 else 1_000
    xs = lo + (hi - lo) * torch.rand(n, model.n_inputs, generator=gen, dtype=torch.float64)
    xs = torch.cat([xs, lo[None], hi[None]])
    np_dtype = model.np_dtype
    ys = torch.from_numpy(_ort_outputs(model_path, xs.numpy().astype(np_dtype)).astype(np.float64))
    C = spec.C[0]
    if not rounding.exact_in(C, torch.float32):
        pytest.skip("the property's coefficients are not exact in float32")
    method = "crown" if model.n_inputs * len(model.graph.nodes) < 200_000 else "ibp"
    lb32, ub32 = genbab.compute_bounds(model, lo[None], hi[None], method=method, C=C, precision="float32")
    lb64, ub64 = genbab.compute_bounds(model, lo[None], hi[None], method=method, C=C, precision="float64")
    values = ys @ C.T  # [n, rows]
    scale = 1 + values.abs().max(dim=0).values
    tol = 1e-5 * scale  # onnxruntime's own float32 evaluation error
    assert bool((values >= lb32.double() - tol).all()) and bool((values <= ub32.double() + tol).all())
    slack = 1e-6 * (scale + lb64.double().abs().nan_to_num(posinf=0, neginf=0))
    assert bool((lb32.double() <= lb64.double() + slack).all())
    assert bool((ub32.double() >= ub64.double() - slack).all())
