"""Products of two variables as first-class nodes: optimisable McCormick weights (alpha) and
branching on product factors (scores, split points), sound for every parameter value."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.bab.branch_points import factor_split_point
from genbab.bab.branching import BranchingContext, neuron_scores
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bounds import compute_bounds, engine_for
from genbab.bounds.alpha import AlphaConfig, AlphaParams, optimize_rows
from genbab.ops.bilinear import PRODUCT_OPS, product_gap

F64, F32 = torch.float64, torch.float32


# ----------------------------------------------------------------------------- relaxations


def _random_box(shape, dtype, gen):
    c = (torch.rand(shape, generator=gen, dtype=F64) * 20 - 10) * torch.where(
        torch.rand(shape, generator=gen) < 0.3, 0.01, 1.0).to(F64)
    w = torch.rand(shape, generator=gen, dtype=F64) * 3 * (torch.rand(shape, generator=gen) > 0.1)
    return (c - w).to(dtype), (c + w).to(dtype)


def _sample(lo, hi, t):
    """Points ``lo + t (hi - lo)`` rounded to the bounds' dtype and clamped into ``[lo, hi]`` (float64)."""
    lo64, hi64 = lo.to(F64), hi.to(F64)
    v = (lo64 + (hi64 - lo64) * t).to(lo.dtype).to(F64)
    return torch.minimum(torch.maximum(v, lo64), hi64)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("op_type", ["Mul", "MatMul"])
def test_projected_random_parameters_give_sound_planes(dtype, op_type) -> None:
    """Random (also far out of range) alpha values, projected: every plane stays below / above
    ``x y`` at dense samples of each product's box (corners included)."""
    gen = torch.Generator().manual_seed(11 + (dtype == F64))
    op = PRODUCT_OPS[op_type]
    B, S = 2, 3
    x_shape, y_shape = ((B, 1, 7, 5), (B, 1, 7, 5)) if op_type == "Mul" else ((B, 1, 4, 3), (B, 1, 3, 5))
    lx, ux = _random_box(x_shape, dtype, gen)
    ly, uy = _random_box(y_shape, dtype, gen)
    operands = op.expand(lx, ux, ly, uy)
    init = op.init_params(*operands)
    shape = (B, S, *init["alpha_lower"].shape[2:])
    raw = {k: (torch.rand(shape, generator=gen, dtype=F64) * 3 - 1).to(dtype) for k in init}
    params = op.project_params(raw, *operands)
    assert all(((v >= 0) & (v <= 1)).all() for v in params.values())
    r = op.relax(*operands, params)
    (axl, ayl, bl), (axu, ayu, bu) = ([t.to(F64) for t in p] for p in (r.lower, r.upper))
    full = torch.broadcast_shapes(axl.shape, *(o.shape for o in operands))
    m = 300
    t = torch.rand((2, m, *full), generator=gen, dtype=F64)
    t[:, :4] = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]], dtype=F64).reshape(2, 4, *([1] * len(full)))
    ox = [o.expand(full) for o in operands]
    x, y = _sample(ox[0], ox[1], t[0]), _sample(ox[2], ox[3], t[1])
    z = x * y
    assert (axl * x + ayl * y + bl <= z).all()
    assert (axu * x + ayu * y + bu >= z).all()
    gap = product_gap(r, *operands)
    assert (gap >= (axu * x + ayu * y + bu - axl * x - ayl * y - bl).amax(0) - 1e-9 * (1 + gap.abs())).all()


def test_weights_change_the_planes_and_default_gap_is_half_the_area() -> None:
    """On ``[0, 1]^2`` the default planes have gap ``wx wy / 2``; weights 0 / 1 pick the corner planes."""
    one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    op = PRODUCT_OPS["Mul"]
    r = op.relax(zero, one, zero, 2 * one)
    assert float(product_gap(r, zero, one, zero, 2 * one)) == pytest.approx(1.0, abs=1e-9)
    r = op.relax(zero, one, zero, one, {"alpha_lower": one, "alpha_upper": zero})
    np.testing.assert_allclose([float(v) for v in r.lower], [0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose([float(v) for v in r.upper], [0.0, 1.0, 0.0], atol=1e-12)


# ----------------------------------------------------------------------------- models


def _write(tmp_path: Path, nodes, n_in: int, n_out: int, inits, name: str = "m.onnx") -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _const(name: str, a: np.ndarray):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def product_model(tmp_path: Path, matmul: bool) -> Path:
    """``y = W3 vec(tanh(W1 x) (*) sigmoid(W2 x))``: ``(*)`` elementwise (``Mul``, 6 products)
    or ``[3, 4] @ [4, 2]`` (``MatMul``); 10 inputs."""
    rng = np.random.default_rng(5)
    n_a, n_b = (6, 6) if not matmul else (12, 8)
    inits = [_const("w1", rng.standard_normal((10, n_a))), _const("w2", rng.standard_normal((10, n_b))),
             _const("b1", rng.standard_normal(n_a) * 0.5), _const("w3", rng.standard_normal((6, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Add", ["h1", "b1"], ["z1"]),
             helper.make_node("Tanh", ["z1"], ["a"]),
             helper.make_node("MatMul", ["x", "w2"], ["z2"]), helper.make_node("Sigmoid", ["z2"], ["b"])]
    if matmul:
        inits += [numpy_helper.from_array(np.array([1, 3, 4], np.int64), "sa"),
                  numpy_helper.from_array(np.array([1, 4, 2], np.int64), "sb"),
                  numpy_helper.from_array(np.array([1, 6], np.int64), "sp")]
        nodes += [helper.make_node("Reshape", ["a", "sa"], ["a3"]), helper.make_node("Reshape", ["b", "sb"], ["b3"]),
                  helper.make_node("MatMul", ["a3", "b3"], ["p3"]), helper.make_node("Reshape", ["p3", "sp"], ["p"])]
    else:
        nodes += [helper.make_node("Mul", ["a", "b"], ["p"])]
    nodes += [helper.make_node("MatMul", ["p", "w3"], ["y"])]
    return _write(tmp_path, nodes, 10, 3, inits, "mm.onnx" if matmul else "mul.onnx")


def ort_outputs(path: Path, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[None].astype(np.float32)})[0] for x in xs])


@pytest.mark.parametrize("matmul", [False, True], ids=["Mul", "MatMul"])
def test_alpha_on_products_is_tighter_and_sound(tmp_path: Path, matmul: bool) -> None:
    """Optimised McCormick weights: every row bound at least the fixed-plane alpha-CROWN one, strictly
    better somewhere, and below (above) every onnxruntime sample."""
    path = product_model(tmp_path, matmul)
    model = genbab.load_model(path)
    lower, upper = -0.4 * torch.ones(10, dtype=F64), 0.4 * torch.ones(10, dtype=F64)
    C = torch.cat([torch.eye(3), -torch.eye(3)]).to(F64)
    fixed = AlphaConfig(iterations=30, stop_when_positive=False, products=False)
    free = AlphaConfig(iterations=30, stop_when_positive=False, products=True)
    lb_fixed, _ = compute_bounds(model, lower, upper, "alpha-crown", C, fixed)
    lb_free, _ = compute_bounds(model, lower, upper, "alpha-crown", C, free)
    assert (lb_free >= lb_fixed - 1e-9).all()
    assert (lb_free > lb_fixed + 1e-4).any()
    xs = np.random.default_rng(0).uniform(-0.4, 0.4, (3000, 10))
    xs[:64] = np.sign(xs[:64]) * 0.4  # corners
    values = ort_outputs(path, xs).astype(np.float64) @ C.numpy().T
    assert (lb_free.numpy()[0] <= values.min(axis=0) + 1e-4).all()


def test_alpha_creates_product_parameters_with_product_shapes(tmp_path: Path) -> None:
    """``[B, S, *products]`` per product node (MatMul: ``p_ijk``), warm-started by the same keys."""
    model = genbab.load_model(product_model(tmp_path, True))
    engine = engine_for(model)
    box = engine.box(-0.4 * torch.ones(1, 10, dtype=F64), 0.4 * torch.ones(1, 10, dtype=F64))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown")
    mm = [n.name for n in engine.nodes if engine.rules[n.name].kind == "bilinear"]
    assert len(mm) == 1
    alpha = AlphaParams(engine, bounds, 5)
    prods = (1, 3, 4, 2)  # [1, 3, 4] @ [1, 4, 2]: p_ijk (ONNX's batch dim of 1 kept)
    assert {k: tuple(v.shape) for k, v in alpha.free[mm[0]].items()} == {
        "alpha_lower": (1, 5, *prods), "alpha_upper": (1, 5, *prods)}
    assert mm[0] not in AlphaParams(engine, bounds, 5, products=False).free
    record: dict = {}
    C = torch.eye(3, dtype=F64).unsqueeze(0)
    optimize_rows(engine, C, box, bounds, AlphaConfig(iterations=3, stop_when_positive=False), record=record)
    key = f"alpha/{mm[0]}/alpha_lower"
    assert record["warm"][key].shape == (1, 3, *prods)
    warm = {key: torch.full((1, 3, *prods), 7.0, dtype=F64)}  # out of range: projected to 1
    again = AlphaParams(engine, bounds, 3, warm=warm)
    assert torch.equal(again.params()[mm[0]]["alpha_lower"], torch.ones(1, 3, *prods, dtype=F64))


# ----------------------------------------------------------------------------- branching


def test_factor_split_point_is_inside_and_follows_the_table() -> None:
    gen = torch.Generator().manual_seed(2)
    lx, ux = _random_box((5000,), F64, gen)
    ly, uy = _random_box((5000,), F64, gen)
    for mode in ("opt", "uniform"):
        p = factor_split_point(lx, ux, ly, uy, mode)
        wide = ux > lx
        assert ((p > lx) & (p < ux))[wide].all()
    mid = factor_split_point(lx, ux, ly, uy, "uniform")
    torch.testing.assert_close(mid, (lx + ux) / 2)
    assert not torch.equal(factor_split_point(lx, ux, ly, uy, "opt")[wide], mid[wide])  # the table is read


def anticorrelated_model(tmp_path: Path, n_in: int = 40) -> Path:
    """``y = relu(s) relu(1 - s)`` with ``s = mean(x)``: ``y <= 1/4`` on any box, while McCormick on
    the factors' boxes stays loose even when both ReLUs are stable."""
    w = np.full((n_in, 1), 1.0 / n_in)
    inits = [_const("w", w), _const("nw", -w), _const("one", np.ones(1))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("MatMul", ["x", "nw"], ["ns"]),
             helper.make_node("Add", ["ns", "one"], ["t"]), helper.make_node("Relu", ["s"], ["a"]),
             helper.make_node("Relu", ["t"], ["b"]), helper.make_node("Mul", ["a", "b"], ["y"])]
    return _write(tmp_path, nodes, n_in, 1, inits, "anti.onnx")


def test_product_factor_scores_are_positive_and_vanish_without_products(tmp_path: Path) -> None:
    model = genbab.load_model(anticorrelated_model(tmp_path))
    engine = engine_for(model)
    box = engine.box(-torch.ones(1, 40, dtype=F64), torch.ones(1, 40, dtype=F64))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown")
    record: dict = {}
    C = -torch.ones(1, 1, 1, dtype=F64)
    with torch.no_grad():
        engine.bound_rows(C, box, bounds, record=record)
    mul = next(n for n in engine.nodes if engine.rules[n.name].kind == "bilinear")
    best = torch.zeros(1, dtype=torch.int64)
    for factor in mul.inputs:
        on = neuron_scores(engine, factor, [mul], bounds, record, best)
        off = neuron_scores(engine, factor, [mul], bounds, record, best, products=False)
        lam = float(record[mul.name].abs().sum())
        (la, ua), (lb, ub) = (bounds[i] for i in mul.inputs)
        expected = lam * float((ua - la) * (ub - lb)) / 4  # default planes: gap wx wy / 2, halved
        assert float(on) == pytest.approx(expected, rel=1e-6) and float(off) == 0.0


@pytest.mark.parametrize("products", [True, False])
def test_bab_proves_by_splitting_product_factors(tmp_path: Path, monkeypatch, products: bool) -> None:
    """``relu(s) relu(1 - s) < 0.3`` over ``[-1, 1]^40``: provable only by splits that the product's
    gap asks for (here of ``s`` and ``1 - s``, whose monotone ReLUs pass the factors' scores on);
    with activation scores alone (the old behaviour, ``products=False``) both ReLUs become stable
    after one split each and the search is stuck."""
    model = genbab.load_model(anticorrelated_model(tmp_path))
    engine = engine_for(model)
    lower, upper = -torch.ones(40, dtype=F64), torch.ones(40, dtype=F64)
    C, d = -torch.ones(1, 1, dtype=F64), torch.tensor([-0.3], dtype=F64)
    lb, _ = compute_bounds(model, lower, upper, "alpha-crown", C)
    assert float(lb) <= -0.3  # alpha-CROWN alone cannot show -y >= -0.3
    if not products:
        import genbab.bab.loop as loop_module

        base = loop_module.BranchingContext
        monkeypatch.setattr(loop_module, "BranchingContext", lambda *a, **k: base(*a, **{**k, "products": False}))
    bab = BranchAndBound(engine, lower, upper, C, d, BabConfig(batch_size=16))
    assert not bab.input_mode
    chosen = []
    original = bab.bound

    def bound(domains, deadline):
        out = original(domains, deadline)
        chosen.extend(bab.candidates[i] for i in out.split_node.tolist() if i >= 0)
        return out

    bab.bound = bound
    result = bab.run(time.monotonic() + 60)
    if products:
        assert result.status == "unsat", result
        assert len(chosen) > 2  # beyond the two ReLU kinks: splits the product's gap asked for
    else:  # both ReLUs stable, no neuron left with a gap: stuck
        assert result.status == "unknown" and len(chosen) <= 2, (result, chosen)


def affine_product_model(tmp_path: Path, n_in: int = 40) -> Path:
    """``y = w3 . ((x W1) (*) (x W2))``: a product of two affine functions of the input (3 products)."""
    rng = np.random.default_rng(8)
    inits = [_const("w1", rng.standard_normal((n_in, 3)) / 8), _const("w2", rng.standard_normal((n_in, 3)) / 8),
             _const("c1", rng.standard_normal(3)), _const("w3", rng.standard_normal((3, 1)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "c1"], ["u"]),
             helper.make_node("MatMul", ["x", "w2"], ["v"]), helper.make_node("Mul", ["u", "v"], ["p"]),
             helper.make_node("MatMul", ["p", "w3"], ["y"])]
    return _write(tmp_path, nodes, n_in, 1, inits, "affine_product.onnx")


def test_bbps_product_estimate_is_exact_for_affine_factors(tmp_path: Path) -> None:
    """Factors affine in the input: the shortcuts are exact, so BBPS's worst-child gain of splitting
    a factor neuron equals the children's real (CROWN) bounds minus the parent's."""
    from genbab.bab.bbps import product_node_scores, root_shortcuts

    model = genbab.load_model(affine_product_model(tmp_path))
    engine = engine_for(model)
    box = engine.box(-torch.ones(1, 40, dtype=F64), torch.ones(1, 40, dtype=F64))
    with torch.no_grad():
        bounds = engine.intermediate_bounds(box, "crown")
        mul = next(n for n in engine.nodes if engine.rules[n.name].kind == "bilinear")
        x_name, y_name = mul.inputs
        C = torch.ones(1, 1, 1, dtype=F64)
        record: dict = {}
        parent = float(engine.bound_rows(C, box, bounds, record=record, interval=False))
        shortcuts = root_shortcuts(engine, [x_name, y_name], box, bounds)
        lam = record[mul.name][:, 0].reshape(1, -1)
        for split_x, name in ((True, x_name), (False, y_name)):
            lo, hi = (b.reshape(1, -1) for b in bounds[name])
            points = lo + 0.3 * (hi - lo)
            bx, by = ((b.reshape(1, -1) for b in bounds[n]) for n in (x_name, y_name))
            gains = product_node_scores(engine, mul, split_x, (shortcuts[x_name], shortcuts[y_name]), lam,
                                        tuple(bx), tuple(by), points, box)
            for j in range(lo.shape[1]):
                children = []
                for side in (0, 1):
                    c_lo, c_hi = lo.clone(), hi.clone()
                    (c_hi if side == 0 else c_lo)[0, j] = points[0, j]
                    shape = bounds[name][0].shape
                    clamps = {name: (c_lo.reshape(shape), c_hi.reshape(shape))}
                    child = engine.intermediate_bounds(box, "ibp", clamps=clamps, base=bounds)
                    children.append(float(engine.bound_rows(C, box, child, interval=False)) - parent)
                assert float(gains[0, j]) == pytest.approx(min(children), abs=1e-9)
                assert min(children) > 1e-6  # the test says something: a split helps


def difference_of_squares_model(tmp_path: Path, n_in: int = 40) -> Path:
    """``y = sum_j (x_2j + x_2j+1) (x_2j - x_2j+1)`` for ``j < 2`` (the other inputs unused): min ``-2``."""
    w1, w2 = np.zeros((n_in, 2)), np.zeros((n_in, 2))
    for j in range(2):
        w1[2 * j, j] = w1[2 * j + 1, j] = w2[2 * j, j] = 1.0
        w2[2 * j + 1, j] = -1.0
    inits = [_const("w1", w1), _const("w2", w2), _const("w3", np.ones((2, 1)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["u"]), helper.make_node("MatMul", ["x", "w2"], ["v"]),
             helper.make_node("Mul", ["u", "v"], ["p"]), helper.make_node("MatMul", ["p", "w3"], ["y"])]
    return _write(tmp_path, nodes, n_in, 1, inits, "squares.onnx")


@pytest.mark.parametrize("products", [True, False])
def test_bab_splits_affine_factors(tmp_path: Path, monkeypatch, products: bool) -> None:
    """``sum (a + b)(a - b) > -2.2`` over ``[-1, 1]^40`` (min ``-2``): beyond alpha-CROWN, proved by
    BBPS-scored factor splits; the old behaviour (``products=False``) has nothing to split."""
    model = genbab.load_model(difference_of_squares_model(tmp_path))
    engine = engine_for(model)
    lower, upper = -torch.ones(40, dtype=F64), torch.ones(40, dtype=F64)
    C, d = torch.ones(1, 1, dtype=F64), torch.tensor([-2.2], dtype=F64)
    lb, _ = compute_bounds(model, lower, upper, "alpha-crown", C)
    assert float(lb) < -2.2
    if not products:
        import genbab.bab.loop as loop_module

        base = loop_module.BranchingContext
        monkeypatch.setattr(loop_module, "BranchingContext", lambda *a, **k: base(*a, **{**k, "products": False}))
    bab = BranchAndBound(engine, lower, upper, C, d, BabConfig(batch_size=32, branching="bbps"))
    result = bab.run(time.monotonic() + 60)
    if products:
        assert result.status == "unsat" and result.visited > 1, result
    else:
        assert result.status == "unknown" and result.visited == 1, result
