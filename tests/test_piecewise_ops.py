"""Max / Min, MaxPool, comparisons + Where, GatherND / ScatterND and the step ops.

* Step relaxations (``StepPositive`` = ``[z > 0]``, ``StepNonNegative`` = ``[z >= 0]``): dense
  sampling soundness (0 itself sampled) with default, projected and raw random parameters,
  float32 and float64; exact image; stable boxes give the constant; the split point is 0.
* Each op in a small ``onnx.helper`` model: genbab's loaded graph and its bound graph (after
  :func:`genbab.model.simplify.simplify_for_bounds`) match onnxruntime on random inputs, and
  CROWN bounds contain 10^4 onnxruntime outputs of the input box (corners included).
* Forms without a rule are refused with an UnsupportedOpError naming the node.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.model.simplify import simplify_for_bounds
from genbab.ops.registry import elementwise_table, rule_for
from genbab.ops.step import OPS as STEPS

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # many small tensor ops: one thread (conftest)


# ----------------------------------------------------------------------------- step relaxations


def step_intervals(dtype: torch.dtype, seed: int = 0, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Straddling, one-sided, touching 0 from either side, degenerate, tiny and huge boxes."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=F64) * torch.tensor([0.01, 1.0, 100.0], dtype=F64).repeat(n // 3 + 1)[:n]
    b = a + torch.rand(n, generator=g, dtype=F64) * torch.tensor([0.02, 3.0, 50.0], dtype=F64).repeat(n // 3 + 1)[:n]
    special = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [-2.0, 3.0], [-1e-30, 1e-30], [0.0, 1e-30],
                            [-1e-30, 0.0], [2.0, 2.0], [-3.0, -3.0], [-1e6, 1e-6], [-1e-6, 1e6]], dtype=F64)
    l = torch.cat([a, special[:, 0]]).to(dtype)
    u = torch.cat([b, special[:, 1]]).to(dtype)
    return torch.minimum(l, u), torch.maximum(l, u)


def samples(l: torch.Tensor, u: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """``[m + 5, n]``: both ends, 0 and its float neighbours when inside, random points."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(m, *l.shape, generator=g, dtype=F64)
    pts = l.to(F64) + t * (u.to(F64) - l.to(F64))
    tiny = torch.finfo(l.dtype).tiny
    extra = [l.to(F64), u.to(F64)] + [torch.full_like(l, v, dtype=F64) for v in (0.0, tiny, -tiny)]
    pts = torch.cat([torch.stack(extra), pts]).to(l.dtype)
    return torch.minimum(torch.maximum(pts, l), u)


def random_step_params(l: torch.Tensor, seed: int, raw: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale, shift = (6.0, -2.5) if raw else (1.0, 0.0)  # raw: mostly outside [0, 1]
    return {k: (torch.rand(l.shape, generator=g, dtype=F64) * scale + shift).to(l.dtype)
            for k in ("weight_lower", "weight_upper")}


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("params", ["default", "projected", "raw"])
def test_step_relaxation_sound(name, dtype, params):
    op = STEPS[name]
    l, u = step_intervals(dtype)
    p = None if params == "default" else random_step_params(l, 1, raw=params == "raw")
    r = op.relax(l, u, p)
    z = samples(l, u, 600, 2)
    f = op.forward(z.to(F64))
    lo, hi = op.interval(l, u)
    for t in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper, lo, hi):
        assert t.dtype == dtype and bool(torch.isfinite(t).all())
    lower = r.slope_lower.to(F64) * z.to(F64) + r.bias_lower.to(F64)
    upper = r.slope_upper.to(F64) * z.to(F64) + r.bias_upper.to(F64)
    assert bool((lower <= f).all()), "lower line above the step"
    assert bool((upper >= f).all()), "upper line below the step"
    assert bool((lo.to(F64) <= f).all() and (hi.to(F64) >= f).all())


@pytest.mark.parametrize("name, at_zero", [("StepPositive", 0.0), ("StepNonNegative", 1.0)])
def test_step_values_lines_and_split_point(name, at_zero):
    from genbab.bab.branch_points import split_point

    op = elementwise_table()[name]
    z = torch.tensor([-1.0, 0.0, 1e-300, 2.0], dtype=F64)
    assert op.forward(z).tolist() == [0.0, at_zero, 1.0, 1.0]
    # the default lines on [-2, 1]: upper z/2 + 1 (weight 1, since l + u < 0), lower 0
    r = op.relax(torch.tensor([-2.0], dtype=F64), torch.tensor([1.0], dtype=F64))
    assert float(r.slope_upper) == pytest.approx(0.5) and float(r.bias_upper) == pytest.approx(1.0, abs=1e-12)
    assert float(r.slope_lower) == 0.0 and float(r.bias_lower) == pytest.approx(0.0, abs=1e-12)
    # stable boxes: the constant, exactly
    for l, u, value in ((-3.0, -1.0, 0.0), (1.0, 4.0, 1.0), ((0.0, 2.0, 1.0) if at_zero else (-2.0, 0.0, 0.0))):
        r = op.relax(torch.tensor([l], dtype=F64), torch.tensor([u], dtype=F64))
        assert (float(r.slope_lower), float(r.bias_lower), float(r.slope_upper), float(r.bias_upper)) == (0, value, 0, value)
    assert op.traits.split_point == 0.0 and op.traits.kind == "piecewise_linear"
    p = split_point(op, torch.tensor([-2.0, -0.5, 0.5]), torch.tensor([1.0, 3.0, 2.0]))
    assert p.tolist()[:2] == [0.0, 0.0] and 0.5 < p.tolist()[2] < 2.0


def test_step_gradients_flow():
    op = STEPS["StepPositive"]
    l, u = torch.tensor([-1.0, -2.0], dtype=F64), torch.tensor([2.0, 1.0], dtype=F64)
    w = {"weight_lower": torch.full((2,), 0.5, dtype=F64, requires_grad=True),
         "weight_upper": torch.full((2,), 0.5, dtype=F64, requires_grad=True)}
    r = op.relax(l, u, w)
    (r.slope_lower.sum() + r.slope_upper.sum()).backward()
    assert bool((w["weight_lower"].grad != 0).all() and (w["weight_upper"].grad != 0).all())


# ----------------------------------------------------------------------------- ONNX models

RNG = np.random.default_rng(7)
W1, W2 = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal((4, 3)).astype(np.float32)
W3 = RNG.standard_normal((2, 4)).astype(np.float32)
WS = RNG.standard_normal((1, 3)).astype(np.float32)
CONSTS = {
    "W1": W1, "W2": W2, "W3": W3, "WS": WS,
    "c": np.float32([0.3, -0.2, 0.5, 0.0]), "c2": np.float32([-0.1, 0.4, 0.0, 0.2]), "zero": np.float32(0.0),
    "k": np.float32([1.5, -1.0, 0.25, 2.0]),
}


def gemm_model(path, core: list, extra_inits: dict | None = None, final: str = "a", out_dim: int = 2,
               opset: int = 13):
    """``x [1, 3] -> h = W1 x, g = W2 x, s = WS x -> core nodes (output 'a') -> y = W3 a`` (out_dim 2)."""
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1),
             helper.make_node("Gemm", ["x", "W2"], ["g"], transB=1),
             helper.make_node("Gemm", ["x", "WS"], ["s"], transB=1), *core]
    if final == "a":
        nodes.append(helper.make_node("Gemm", ["a", "W3"], ["y"], transB=1))
        out_shape = [1, out_dim]
    else:
        nodes.append(helper.make_node("Identity", [final], ["y"]))
        out_shape = [out_dim]
    inits = {**CONSTS, **(extra_inits or {})}
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items() if k in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def pool_model(path, pool: dict, op_type: str = "MaxPool"):
    """``x [1, 1, 6, 6] -> Conv (2 channels, 3x3, pad 1) -> pool -> Flatten -> Gemm [1, 2]``."""
    rng = np.random.default_rng(3)
    conv_w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    probe = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw"], ["h"], pads=[1, 1, 1, 1]), helper.make_node(op_type, ["h"], ["p"], **pool)],
        "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], [numpy_helper.from_array(conv_w, "cw")])
    pm = helper.make_model(probe, opset_imports=[helper.make_opsetid("", 13)])
    pm.ir_version = 8
    n_flat = ort.InferenceSession(pm.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, 1, 6, 6), np.float32)})[0].size
    wf = rng.standard_normal((2, n_flat)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "cw"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["h"], ["p"], **pool),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(wf, "wf")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def ort_run(path, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, shape = sess.get_inputs()[0].name, sess.get_inputs()[0].shape
    return np.stack([sess.run(None, {name: x.reshape(shape).astype(np.float32)})[0].reshape(-1) for x in xs])


def box_samples(lower: np.ndarray, upper: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.random((n, lower.size))
    t[: n // 10] = t[: n // 10] > 0.5  # corners
    return (lower + t * (upper - lower)).astype(np.float32).astype(np.float64)


def check_model(path, op_types: set[str], lower: np.ndarray, upper: np.ndarray, n: int = 10_000,
                width_factor: float = 100.0, rewrites: bool = True) -> None:
    """Forward (loaded and bound graph) matches onnxruntime; CROWN bounds contain ``n`` samples."""
    model = genbab.load_model(path)
    assert op_types <= {node.op_type for node in model.graph.nodes}
    xs = box_samples(lower, upper, 200, 1)
    ref = ort_run(path, xs).astype(np.float64)
    x_t = torch.from_numpy(xs).reshape(len(xs), *model.graph.input_shape)
    with torch.no_grad():
        ours = model(x_t.to(model.graph.dtype)).reshape(len(xs), -1).double().numpy()
        bound_graph = simplify_for_bounds(model.graph)
        rewritten = torch.stack([bound_graph.forward_one(x.to(model.graph.dtype)) for x in x_t])
    if rewrites:  # the bound graph holds only ops with rules
        assert not (op_types & {node.op_type for node in bound_graph.nodes if node.op_type != "Gather"})
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rewritten.reshape(len(xs), -1).double().numpy(), ref, rtol=1e-5, atol=1e-5)
    ys = ort_run(path, box_samples(lower, upper, n, 2)).astype(np.float64)
    lb, ub = genbab.compute_bounds(model, torch.tensor(lower), torch.tensor(upper), "crown")
    lb, ub = lb[0].numpy(), ub[0].numpy()
    tol = 1e-5 * (1.0 + np.abs(ys).max(axis=0))
    assert np.all(lb <= ys.min(axis=0) + tol), "CROWN lower bound above an onnxruntime output"
    assert np.all(ub >= ys.max(axis=0) - tol), "CROWN upper bound below an onnxruntime output"
    assert np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))
    assert np.all(ub - lb < width_factor * (1 + ys.max(axis=0) - ys.min(axis=0)))  # not vacuous


LOWER3, UPPER3 = np.array([-1.0, -0.5, -1.5]), np.array([1.0, 1.5, 0.5])
N = helper.make_node
MAX_MIN = {
    "max2": [N("Max", ["h", "g"], ["a"])],
    "min2": [N("Min", ["h", "g"], ["a"])],
    "max3-const": [N("Max", ["h", "g", "c"], ["a"])],
    "min3": [N("Min", ["g", "h", "c2", "c"], ["a"])],
    "max-const": [N("Max", ["h", "c"], ["a"])],
    "min-const-first": [N("Min", ["c", "h"], ["a"])],
    "max-scalar-const": [N("Max", ["h", "zero"], ["a"])],
    "max-broadcast": [N("Max", ["h", "s"], ["a"])],
    "min-broadcast": [N("Min", ["s", "g"], ["a"])],
    "max-same": [N("Max", ["h", "h"], ["a"])],
}


@pytest.mark.parametrize("case", sorted(MAX_MIN))
def test_max_min_models(tmp_path, case):
    path = gemm_model(tmp_path / f"{case}.onnx", MAX_MIN[case])
    check_model(path, {"Max" if "max" in case else "Min"}, LOWER3, UPPER3)


def test_max_rewrite_splits_at_the_switch(tmp_path):
    """max(h, g) becomes g + relu(h - g): the Relu reads ``h - g``, so its split point 0 is the
    switch ``h = g``."""
    from genbab.bounds import engine_for

    model = genbab.load_model(gemm_model(tmp_path / "m.onnx", MAX_MIN["max2"]))
    engine = engine_for(model)
    relus = [n for n in engine.nodes if n.op_type == "Relu"]
    assert len(relus) == 1 and engine.rules[relus[0].name].op.traits.split_point == 0.0
    diff = next(n for n in engine.nodes if n.name == relus[0].inputs[0])
    assert diff.op_type == "Sub"
    x = torch.randn(3, dtype=engine.dtype)
    env = {engine.graph.input_name: x}
    for n in engine.nodes:
        env[n.name] = n.call([env[i] for i in n.inputs])
    h, g = diff.inputs
    assert torch.allclose(env[diff.name], env[h] - env[g])


POOLS = {
    "k2s2": {"kernel_shape": [2, 2], "strides": [2, 2]},
    "k3s2-pad1": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "k3s1-asym": {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [0, 1, 1, 0]},
    "k3s2-ceil": {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    "k2-dilated": {"kernel_shape": [2, 2], "strides": [1, 1], "dilations": [2, 2]},
    "k3x1": {"kernel_shape": [3, 1], "strides": [3, 1]},
    "k3s2-same-upper": {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},  # explicit pads at load
    "k2-same-lower": {"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER"},
}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_max_pool_models(tmp_path, case):
    path = pool_model(tmp_path / f"{case}.onnx", POOLS[case])
    lower, upper = -np.ones(36), np.ones(36)
    check_model(path, {"MaxPool"}, lower, upper)


def test_untranslated_pools_are_refused_by_name(tmp_path):
    """Not translated yet (onnx2torch has no GlobalMaxPool converter): one clear error naming the
    op, never a traceback."""
    gmp = pool_model(tmp_path / "gmp.onnx", {}, op_type="GlobalMaxPool")
    with pytest.raises(genbab.UnsupportedOpError, match="GlobalMaxPool"):
        genbab.load_model(gmp)


WHERE = {
    "greater-const": [N("Greater", ["h", "c"], ["b"]), N("Where", ["b", "h", "g"], ["a"])],
    "less-vars": [N("Less", ["h", "g"], ["b"]), N("Where", ["b", "k", "g"], ["a"])],
    "ge-zero-leaky": [N("GreaterOrEqual", ["h", "zero"], ["b"]), N("Mul", ["h", "c"], ["hc"]),
                      N("Where", ["b", "h", "hc"], ["a"])],
    "le-const-both-const": [N("LessOrEqual", ["c", "h"], ["b"]), N("Where", ["b", "k", "c2"], ["a"])],
    "greater-broadcast": [N("Greater", ["s", "zero"], ["b"]), N("Where", ["b", "h", "g"], ["a"])],
}


@pytest.mark.parametrize("case", sorted(WHERE))
def test_comparison_where_models(tmp_path, case):
    path = gemm_model(tmp_path / f"{case}.onnx", WHERE[case])
    ops = {n.op_type for n in WHERE[case]} & {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Where"}
    check_model(path, ops, LOWER3, UPPER3)


def test_where_step_is_split_at_the_switch(tmp_path):
    """Where(Greater(h, c), h, g): the step reads ``h - c``, its split point is 0."""
    from genbab.bounds import engine_for

    engine = engine_for(genbab.load_model(gemm_model(tmp_path / "w.onnx", WHERE["greater-const"])))
    steps = [n for n in engine.nodes if n.op_type == "StepPositive"]
    assert len(steps) == 1
    rule = engine.rules[steps[0].name]
    assert rule.kind == "elementwise" and rule.op.traits.split_point == 0.0
    assert engine.rules[next(n.name for n in engine.nodes if n.op_type == "Mul")].kind == "bilinear"


def test_cast_comparison_model(tmp_path):
    """A comparison cast to float and used arithmetically (``h * [h > c]``)."""
    core = [N("Greater", ["h", "c"], ["b"]), N("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), N("Mul", ["h", "bf"], ["a"])]
    check_model(gemm_model(tmp_path / "cast.onnx", core), {"Greater"}, LOWER3, UPPER3)


STEP_CASTS = {
    "equal-const": ([N("Equal", ["h", "c"], ["b"]), N("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
                     N("Mul", ["h", "bf"], ["hb"]), N("Add", ["hb", "g"], ["a"])], {"StepPositive", "StepNonNegative"}),
    "equal-zero-first": ([N("Equal", ["zero", "s"], ["b"]), N("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
                          N("Add", ["h", "bf"], ["a"])], {"StepPositive", "StepNonNegative"}),
    "cast-bool": ([N("Cast", ["h"], ["b"], to=TensorProto.BOOL), N("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
                   N("Mul", ["g", "bf"], ["a"])], {"StepPositive"}),
    "cast-int64": ([N("Mul", ["h", "k"], ["hk"]), N("Cast", ["hk"], ["t"], to=TensorProto.INT64),
                    N("Cast", ["t"], ["a"], to=TensorProto.FLOAT)], {"Trunc"}),
    "cast-int32": ([N("Cast", ["g"], ["t"], to=TensorProto.INT32), N("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
                    N("Add", ["tf", "h"], ["a"])], {"Trunc"}),
    "floor": ([N("Mul", ["h", "k"], ["hk"]), N("Floor", ["hk"], ["a"])], {"Floor"}),
    "ceil": ([N("Mul", ["h", "k"], ["hk"]), N("Ceil", ["hk"], ["a"])], {"Ceil"}),
    "round": ([N("Mul", ["h", "k"], ["hk"]), N("Round", ["hk"], ["r"]), N("Add", ["r", "g"], ["a"])], {"Round"}),
}


@pytest.mark.parametrize("case", sorted(STEP_CASTS))
def test_equal_and_step_cast_models(tmp_path, case):
    """``Equal`` and casts to bool / wide integers: rewritten into steps and ``Trunc``, the bound
    graph matches onnxruntime and its CROWN bounds contain 10k onnxruntime samples."""
    from genbab.bounds import engine_for

    core, steps = STEP_CASTS[case]
    path = gemm_model(tmp_path / f"{case}.onnx", core)
    check_model(path, set(), LOWER3 * 2, UPPER3 * 2, rewrites=False)
    ops = {n.op_type for n in engine_for(genbab.load_model(path)).nodes}
    assert steps <= ops and "Equal" not in ops


def test_pow_with_variable_exponent(tmp_path):
    """``b ** h`` for positive constant bases (one below 1): ``Exp(h log b)`` in the bound graph,
    matching onnxruntime, CROWN bounds containing 10k samples; a non-positive base is refused."""
    from genbab.bounds import engine_for

    bases = {"pb": np.float32([1.5, 0.5, 2.0, 1.0])}
    path = gemm_model(tmp_path / "pow.onnx", [N("Pow", ["pb", "h"], ["a"])], bases)
    check_model(path, set(), LOWER3, UPPER3, rewrites=False)
    assert "Exp" in {n.op_type for n in engine_for(genbab.load_model(path)).nodes}
    bad = gemm_model(tmp_path / "bad.onnx", [N("Pow", ["pb", "h"], ["a"])], {"pb": np.float32([1.5, -0.5, 2.0, 1.0])})
    with pytest.raises(genbab.UnsupportedOpError, match="positive constant base"):
        engine_for(genbab.load_model(bad))


def test_pow_with_variable_base_and_exponent(tmp_path):
    """``x ** y`` for a dependent positive base (``x = sigmoid(h) + 0.5``): ``Exp(y LogPositive(x))``,
    matching onnxruntime, CROWN bounds containing 10k samples; where the base may reach 0 or below
    no bound is computed at all (a ValueError, so no proof), never a clamped one."""
    from genbab.bounds import compute_bounds, engine_for
    from genbab.ops.exp_log import NonPositiveBase

    core = [N("Sigmoid", ["h"], ["sh"]), N("Add", ["sh", "half"], ["base"]), N("Pow", ["base", "g"], ["a"])]
    path = gemm_model(tmp_path / "powxy.onnx", core, {"half": np.float32(0.5)})
    check_model(path, set(), LOWER3, UPPER3, rewrites=False)
    assert "LogPositive" in {n.op_type for n in engine_for(genbab.load_model(path)).nodes}
    signed = gemm_model(tmp_path / "signed.onnx", [N("Pow", ["h", "g"], ["a"])])
    model = genbab.load_model(signed)
    with pytest.raises(NonPositiveBase):
        compute_bounds(model, torch.tensor(LOWER3), torch.tensor(UPPER3), "crown")


def test_trunc_interval_and_lines_are_exact_on_flat_stairs():
    op = STEPS["Trunc"]
    l, u = torch.tensor([2.1, -3.7, -0.5, 0.0], dtype=F64), torch.tensor([2.4, -3.1, 0.9, 7.5], dtype=F64)
    lo, hi = op.interval(l, u)
    assert lo.tolist() == [2.0, -3.0, 0.0, 0.0] and hi.tolist() == [2.0, -3.0, 0.0, 7.0]
    r = op.relax(l, u)
    assert r.slope_lower[:3].tolist() == [0.0] * 3 and r.bias_lower[:3].tolist() == [2.0, -3.0, 0.0]
    assert r.bias_upper[:3].tolist() == [2.0, -3.0, 0.0]
    assert float(r.slope_lower[3]) == 1.0 and float(r.slope_upper[3]) == 1.0  # a long stair: z -+ 1


def test_gather_nd_model(tmp_path):
    core = [N("GatherND", ["h", "gidx"], ["a"])]
    extra = {"gidx": np.array([[0, 1], [0, 3], [0, 1]], np.int64)}
    path = gemm_model(tmp_path / "gnd.onnx", core, extra, final="a", out_dim=2)
    # GatherND of h [1, 4] -> [3]; reshape to [1, 3] before the final Gemm
    model = onnx.load(str(path))
    core = [N("GatherND", ["h", "gidx"], ["gv"]), N("Reshape", ["gv", "shape13"], ["gr"]),
            N("Gemm", ["gr", "W3b"], ["gm"], transB=1), N("Max", ["gm", "zero"], ["a"])]
    extra = {**extra, "shape13": np.array([1, 3], np.int64), "W3b": RNG.standard_normal((4, 3)).astype(np.float32)}
    del model
    path = gemm_model(tmp_path / "gnd.onnx", core, extra)
    check_model(path, {"GatherND"}, LOWER3, UPPER3, rewrites=False)


def test_scatter_nd_model(tmp_path):
    core = [N("Reshape", ["g", "shape4"], ["gf"]), N("Slice", ["gf", "st", "en"], ["upd"]),
            N("ScatterND", ["h", "sidx", "upd"], ["a"])]
    extra = {"shape4": np.array([4], np.int64), "st": np.array([1], np.int64), "en": np.array([3], np.int64),
             "sidx": np.array([[0, 2], [0, 0]], np.int64)}
    check_model(gemm_model(tmp_path / "snd.onnx", core, extra), {"ScatterND"}, LOWER3, UPPER3, rewrites=False)


def test_refusals_name_the_node(tmp_path):
    """Forms without a rule fail with an UnsupportedOpError naming the op and the node."""
    from genbab.bounds import engine_for

    cases = {
        "cast-int8": [N("Cast", ["h"], ["b"], to=TensorProto.INT8, name="i8_node"),
                      N("Cast", ["b"], ["a"], to=TensorProto.FLOAT)],
        "scatter-dup": [N("Reshape", ["g", "shape4"], ["gf"]), N("Slice", ["gf", "st", "en"], ["upd"]),
                        N("ScatterND", ["h", "sidx", "upd"], ["a"], name="dup_node")],
    }
    extra = {"shape4": np.array([4], np.int64), "st": np.array([1], np.int64), "en": np.array([3], np.int64),
             "sidx": np.array([[0, 2], [0, 2]], np.int64)}
    for case, core in cases.items():
        path = gemm_model(tmp_path / f"{case}.onnx", core, extra)
        try:
            model = genbab.load_model(path)
        except genbab.UnsupportedOpError as err:  # refused at loading: fine if named
            assert ("Cast" in str(err)) or ("ScatterND" in str(err))
            continue
        with pytest.raises(genbab.UnsupportedOpError, match="Cast|ScatterND") as info:
            engine_for(model)
        assert "i8_node" in str(info.value) or "dup_node" in str(info.value)
