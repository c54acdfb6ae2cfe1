"""The smooth and kinked activations of :mod:`genbab.ops.activations` / :mod:`genbab.ops.piecewise`.

* Relaxations: dense sampling soundness of the lines and the interval image on many intervals
  (narrow, wide, one-sided, degenerate, straddling every kink / inflection / extremum, at the
  domain edges), with the default, random projected and random raw parameters, float32 and
  float64, for several attribute values per op; huge and unbounded boxes stay finite / NaN-free;
  the initial parameters are fixed points of the projection; gradients flow; toy lines.
* Loading and bounds: a ``Gemm -> op -> Gemm`` network per op, exported by ``torch.onnx.export``
  when the exporter emits the op (else built with ``onnx.helper``), matches onnxruntime, and its
  CROWN / alpha-CROWN bounds contain 2,000 onnxruntime outputs of the box; ``verify`` proves a
  property that holds and falsifies (replayed witness) one that does not.  Ops onnx2torch does
  not translate must fail to load with an UnsupportedOpError naming them.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import genbab
from genbab.ops.activations import MISH
from genbab.ops.registry import elementwise_table
from test_relaxations import random_params  # the same random (unprojected) parameters

F64 = torch.float64
DTYPES = [torch.float32, torch.float64]
T = elementwise_table()
INF = math.inf


pytestmark = pytest.mark.usefixtures("one_thread")  # many small tensor ops: one thread (conftest)


# (id, op, domain of the sampled intervals, points where something happens)
MISH_PTS = [MISH.c1, MISH.c2, MISH.x_min]
CASES = [
    ("Softplus", T["Softplus"], (-100.0, 100.0), [0.0]),
    ("Elu", T["Elu"], (-100.0, 100.0), [0.0]),
    ("Elu-0.3", T["Elu"].bind(alpha=0.3), (-100.0, 100.0), [0.0]),
    ("Elu-2", T["Elu"].bind(alpha=2.0), (-100.0, 100.0), [0.0]),
    ("Elu-neg", T["Elu"].bind(alpha=-0.5), (-100.0, 100.0), [0.0]),
    ("Elu-0", T["Elu"].bind(alpha=0.0), (-100.0, 100.0), [0.0]),
    ("Selu", T["Selu"], (-100.0, 100.0), [0.0]),
    ("Selu-convex", T["Selu"].bind(alpha=0.5, gamma=1.5), (-100.0, 100.0), [0.0]),
    ("Selu-neg", T["Selu"].bind(alpha=-1.0, gamma=2.0), (-100.0, 100.0), [0.0]),
    ("HardSigmoid", T["HardSigmoid"], (-100.0, 100.0), [-2.5, 2.5]),
    ("HardSigmoid-torch", T["HardSigmoid"].bind(alpha=1 / 6), (-100.0, 100.0), [-3.0, 3.0]),
    ("HardSigmoid-neg", T["HardSigmoid"].bind(alpha=-0.3, beta=0.2), (-100.0, 100.0), [2 / 3, -8 / 3]),
    ("HardSigmoid-flat", T["HardSigmoid"].bind(alpha=0.0, beta=1.5), (-100.0, 100.0), [0.0]),
    ("HardSwish", T["HardSwish"], (-100.0, 100.0), [-3.0, -1.5, 3.0]),
    ("Atan", T["Atan"], (-100.0, 100.0), [0.0]),
    ("Sinh", T["Sinh"], (-100.0, 100.0), [0.0]),
    ("Cosh", T["Cosh"], (-100.0, 100.0), [0.0]),
    ("Abs", T["Abs"], (-100.0, 100.0), [0.0]),
    ("Clip", T["Clip"].bind(min=-1.0, max=2.0), (-100.0, 100.0), [-1.0, 2.0]),
    ("Clip-relu", T["Clip"].bind(min=0.0), (-100.0, 100.0), [0.0]),
    ("Clip-max", T["Clip"].bind(max=6.0), (-100.0, 100.0), [6.0]),
    ("Clip-none", T["Clip"], (-100.0, 100.0), [0.0]),
    ("Clip-point", T["Clip"].bind(min=0.5, max=0.5), (-100.0, 100.0), [0.5]),
    ("Clip-empty", T["Clip"].bind(min=3.0, max=1.0), (-100.0, 100.0), [1.0, 3.0]),
    ("Mish", T["Mish"], (-100.0, 100.0), MISH_PTS),
    ("Softsign", T["Softsign"], (-100.0, 100.0), [0.0]),
]
CASE_IDS = [c[0] for c in CASES]
NAMES = ["Softplus", "Elu", "Selu", "HardSigmoid", "HardSwish", "Atan", "Sinh", "Cosh", "Abs", "Clip",
         "Mish", "Softsign"]


def make_intervals(seed: int, domain: tuple[float, float], crit: list[float], n: int = 288):
    """``n`` float64 intervals in ``domain``: nine kinds, the last straddling or touching the
    critical points (kinks, inflections, extrema)."""
    rng = np.random.default_rng(seed)
    lo, hi = domain
    k, span = n // 9, hi - lo

    def centred(c, w):
        return c - w * rng.random(c.shape), c + w * rng.random(c.shape)

    c = rng.choice(np.array(crit, dtype=np.float64), size=k)
    w = 10.0 ** rng.uniform(-6, 1.5, k)
    touch = rng.random(k)
    crit_l = np.where(touch < 0.2, c, c - w * rng.random(k))
    crit_u = np.where((touch > 0.2) & (touch < 0.4), c, c + w * rng.random(k))
    edge = rng.choice([lo, hi], size=k)
    parts = [
        centred(lo + span * rng.random(k), 10.0 ** rng.uniform(-7, -1, k)),  # narrow
        (lo + span * 0.5 * rng.random(k), hi - span * 0.5 * rng.random(k)),  # wide
        centred(lo + span * rng.random(k), 10.0 ** rng.uniform(-2, 1.5, k)),  # medium
        (np.minimum(-rng.exponential(5, k), 0), -rng.exponential(0.5, k) * rng.random(k)),  # negative
        (rng.exponential(0.5, k) * rng.random(k), rng.exponential(5, k)),  # positive
        (-rng.exponential(3, k), rng.exponential(3, k)),  # straddling 0
        (lambda a: (a, a))(np.concatenate([c[: k // 2], lo + span * rng.random(k - k // 2)])),  # degenerate
        (np.where(edge == lo, lo, edge - rng.exponential(2, k)),
         np.where(edge == hi, hi, edge + rng.exponential(2, k))),  # domain edges
        (crit_l, crit_u),  # around a critical point
    ]
    l = np.clip(np.concatenate([p[0] for p in parts]), lo, hi)
    u = np.clip(np.concatenate([p[1] for p in parts]), lo, hi)
    return np.minimum(l, u), np.maximum(l, u)


def sample_points(l: torch.Tensor, u: torch.Tensor, crit: list[float], m: int, seed: int) -> torch.Tensor:
    """``(n, m)`` dtype-representable points of each ``[l, u]`` (float64): both ends, the
    critical points inside and their dtype neighbours, the rest uniform."""
    g = torch.Generator().manual_seed(seed)
    L, U = l.to(F64)[:, None], u.to(F64)[:, None]
    t = torch.rand(l.shape[0], m, generator=g, dtype=F64)
    t[:, 0], t[:, 1] = 0.0, 1.0
    z = (L + (U - L) * t).to(l.dtype)
    c = torch.tensor(crit, dtype=l.dtype)
    special = torch.cat([c, torch.nextafter(c, torch.full_like(c, INF)), torch.nextafter(c, torch.full_like(c, -INF))])
    z[:, 2:2 + special.numel()] = special.expand(l.shape[0], -1)
    z = z.to(F64)
    return torch.minimum(torch.maximum(z, L), U)


def assert_sound(op, l: torch.Tensor, u: torch.Tensor, params, crit: list[float], seed: int, m: int = 400) -> None:
    """Lines and interval image contain ``forward`` (float64) at every sampled point."""
    r = op.relax(l, u, params)
    lo, hi = op.interval(l, u)
    for t in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper, lo, hi):
        assert t.dtype == l.dtype and t.shape == l.shape
        assert not torch.isnan(t).any()
    assert torch.isfinite(r.slope_lower).all() and torch.isfinite(r.slope_upper).all()
    assert torch.isfinite(r.bias_lower[torch.isfinite(lo)]).all()
    assert torch.isfinite(r.bias_upper[torch.isfinite(hi)]).all()
    z = sample_points(l, u, crit, m, seed)
    h = op.forward(z)
    sl, bl, su, bu = (x.to(F64)[:, None] for x in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper))
    low = torch.where(sl == 0, bl, sl * z + bl)
    up = torch.where(su == 0, bu, su * z + bu)
    tol_lo = 1e-12 * ((sl * z).abs() + bl.abs() + h.abs()).nan_to_num(posinf=0.0)
    tol_up = 1e-12 * ((su * z).abs() + bu.abs() + h.abs()).nan_to_num(posinf=0.0)
    for name, bad in (("lower", ~(low <= h + tol_lo)), ("upper", ~(up >= h - tol_up))):
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            pytest.fail(f"{name} line violated on [{l[i].item()!r}, {u[i].item()!r}] at z={z[i, j].item()!r}: "
                        f"h={h[i, j].item()!r}, lower={low[i, j].item()!r}, upper={up[i, j].item()!r}")
    bad = ~((lo.to(F64)[:, None] <= h) & (h <= hi.to(F64)[:, None]))
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        pytest.fail(f"interval [{lo[i].item()!r}, {hi[i].item()!r}] of [{l[i].item()!r}, {u[i].item()!r}] "
                    f"misses h({z[i, j].item()!r}) = {h[i, j].item()!r}")


# ----------------------------------------------------------------------------- relaxations


def test_every_op_is_registered():
    assert set(NAMES) <= set(T)
    assert {c[1].name for c in CASES} == set(NAMES)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_relaxation_sound(case, dtype, seed):
    _, op, domain, crit = case
    l_np, u_np = make_intervals(seed, domain, crit)
    l, u = torch.tensor(l_np).to(dtype), torch.tensor(u_np).to(dtype)
    assert_sound(op, l, u, None, crit, seed)
    raw = random_params(op, l, u, seed)
    projected = op.project_params(raw, l, u)
    assert set(projected) == set(op.traits.param_names)
    assert_sound(op, l, u, projected, crit, seed + 1)
    assert_sound(op, l, u, raw, crit, seed + 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_huge_boxes_stay_finite_and_sound(case, dtype):
    """Intervals reaching 1e4 .. 1e30: no NaN, finite slopes, sound where the values are finite."""
    _, op, _, crit = case
    l = torch.tensor([1e3, -1e4, -1e30, 50.0, -1e30, 1e30, -3e4, 1e29], dtype=F64).to(dtype)
    u = torch.tensor([1e4, -1e3, 1e30, 1e30, -1e29, 1e30, 2e4, 1e30], dtype=F64).to(dtype)
    assert_sound(op, l, u, None, crit, 5, m=2000)
    assert_sound(op, l, u, random_params(op, l, u, 3), crit, 6, m=2000)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_init_params_are_projected_fixed_points(case):
    _, op, domain, crit = case
    for dtype in DTYPES:
        l_np, u_np = make_intervals(7, domain, crit, n=90)
        l, u = torch.tensor(l_np).to(dtype), torch.tensor(u_np).to(dtype)
        init = op.init_params(l, u)
        again = op.project_params(init, l, u)
        for k in init:
            torch.testing.assert_close(again[k], init[k], rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_unbounded_boxes(case):
    """Infinite interval ends (e.g. from IBP) give no NaN and lines valid on finite points."""
    _, op, _, _ = case
    l = torch.tensor([-INF, -INF, 0.5, -INF, 2.0], dtype=F64)
    u = torch.tensor([INF, 0.5, INF, -3.0, 2.0], dtype=F64)
    for dtype in DTYPES:
        r = op.relax(l.to(dtype), u.to(dtype))
        lo, hi = op.interval(l.to(dtype), u.to(dtype))
        coefs = [x.to(F64)[:, None] for x in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)]
        assert not any(torch.isnan(c).any() for c in coefs) and not torch.isnan(lo).any() and not torch.isnan(hi).any()
        a, b = l.clamp(min=-1e3), u.clamp(max=1e3)
        z = (a[:, None] + (b - a)[:, None] * torch.linspace(0, 1, 2001, dtype=F64)).to(dtype).to(F64)
        h = op.forward(z)
        sl, bl, su, bu = coefs
        assert (torch.where(sl == 0, bl, sl * z + bl) <= h).all()
        assert (torch.where(su == 0, bu, su * z + bu) >= h).all()
        assert (lo.to(F64)[:, None] <= h).all() and (h <= hi.to(F64)[:, None]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_params_broadcast_and_gradients(name, dtype):
    """alpha-CROWN use: params with an extra leading (spec) dim, finite gradients."""
    op = T[name].bind(min=-1.0, max=2.0) if name == "Clip" else T[name]
    l = torch.tensor([-3.0, -0.5, 0.2, -8.0, 1.0, -2.0], dtype=dtype)
    u = torch.tensor([-1.0, 0.7, 2.5, 6.0, 1.0, 4.0], dtype=dtype)
    init = op.init_params(l, u)
    params = {k: v.expand(3, -1).clone().requires_grad_(True) for k, v in init.items()}
    r = op.relax(l, u, params)
    assert r.slope_lower.shape == (3, 6)
    (r.bias_lower.sum() - r.bias_upper.sum() + r.slope_lower.sum() + r.slope_upper.sum()).backward()
    for v in params.values():
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def lines(op, l, u, params=None):
    lt, ut = torch.tensor([l], dtype=F64), torch.tensor([u], dtype=F64)
    p = None if params is None else {k: torch.tensor([v], dtype=F64) for k, v in params.items()}
    r = op.relax(lt, ut, p)
    return [float(x) for x in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)]


ELU_CHORD = (1 - math.expm1(-1)) / 2


@pytest.mark.parametrize("name,op,l,u,params,expected", [
    # |z| on [-1, 3]: chord 0.5 z + 1.5 above; default lower line z (the steeper side wins)
    ("abs", T["Abs"], -1.0, 3.0, None, [1.0, 0.0, 0.5, 1.5]),
    ("abs-param", T["Abs"], -1.0, 3.0, {"slope_lower": -0.25, "slope_upper": 0.5}, [-0.25, 0.0, 0.5, 1.5]),
    # clip to [0, 1] on [-1, 2]: lines through a corner and the far end, slopes 1/2
    ("clip", T["Clip"].bind(min=0.0, max=1.0), -1.0, 2.0, None, [0.5, 0.0, 0.5, 0.5]),
    ("clip-stable", T["Clip"].bind(min=0.0, max=1.0), 1.5, 2.0, None, [0.0, 1.0, 0.0, 1.0]),
    # hard sigmoid 0.2 z + 0.5 inside its linear piece
    ("hsig-linear", T["HardSigmoid"], -1.0, 1.0, None, [0.2, 0.5, 0.2, 0.5]),
    # elu on [-1, 1]: chord above; the lower line of slope 1 touches at 0
    ("elu", T["Elu"], -1.0, 1.0, {"slope_lower": 1.0}, [1.0, 0.0, ELU_CHORD, 1.0 - ELU_CHORD]),
    # elu lower line of slope e^-1 touches the exp piece at -1
    ("elu-tangent", T["Elu"], -2.0, 1.0, {"slope_lower": math.exp(-1)},
     [math.exp(-1), math.expm1(-1) + math.exp(-1), None, None]),
    # hard swish on [-3, 3] convex middle: tangent of slope 1/2 at 0 is 0.5 z; chord z/2 + 1.5 above
    ("hswish", T["HardSwish"], -3.0, 3.0, {"slope_lower": 0.5, "slope_upper": 0.5}, [0.5, 0.0, 0.5, 1.5]),
    ("softplus", T["Softplus"], -1.0, 1.0, {"tangent_lower": 0.0}, [0.5, math.log(2), 0.5, math.log1p(math.e) - 0.5]),
    ("cosh", T["Cosh"], -1.0, 1.0, {"tangent_lower": 0.0}, [0.0, 1.0, 0.0, math.cosh(1.0)]),
])
def test_exact_toy_lines(name, op, l, u, params, expected):
    got = lines(op, l, u, params)
    for g, e in zip(got, expected):
        if e is not None:
            assert abs(g - e) <= 1e-9 * (1 + abs(e)), (name, got, expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_default_lines_touch_the_curve(case):
    """Tightness: the default lines are tangent, chords or rigorous shifts of them, so each touches
    the curve on ``[l, u]`` (up to the 4001-point sampling of the check)."""
    _, op, _, crit = case
    l_np, u_np = make_intervals(3, (-20.0, 20.0), crit, n=270)
    l, u = torch.tensor(l_np), torch.tensor(u_np)
    r = op.relax(l, u)
    z = l[:, None] + (u - l)[:, None] * torch.linspace(0, 1, 4001, dtype=F64)
    h = op.forward(z)
    gap_lo = (h - (r.slope_lower[:, None] * z + r.bias_lower[:, None])).amin(1)
    gap_up = ((r.slope_upper[:, None] * z + r.bias_upper[:, None]) - h).amin(1)
    scale = 1.0 + h.amax(1) - h.amin(1)
    assert (gap_lo <= 1e-4 * scale).all() and (gap_up <= 1e-4 * scale).all()


def test_traits():
    assert T["Elu"].traits.kind == "convex" and T["Elu"].bind(alpha=2.0).traits.kind == "general"
    assert T["Selu"].traits.kind == "general"  # gamma alpha > gamma: a concave kink at 0
    assert T["Selu"].bind(alpha=0.5, gamma=1.5).traits.kind == "convex"
    assert T["Elu"].bind(alpha=-0.5).traits.monotone is None
    assert T["HardSigmoid"].bind(alpha=-0.3).traits.monotone == "decreasing"
    for name in ("Cosh", "Abs", "HardSwish", "Mish"):
        assert T[name].traits.monotone is None, name
    assert T["Clip"].bind(min=-1.0, max=2.0).traits.split_point == -1.0


# ----------------------------------------------------------------------------- models

WIDTH = 6


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((WIDTH, 3)).astype(np.float32) * 1.5, rng.standard_normal(WIDTH).astype(np.float32),
            rng.standard_normal((2, WIDTH)).astype(np.float32), rng.standard_normal(2).astype(np.float32))


class Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# op -> torch module whose export should contain the op, or None: build with onnx.helper
TORCH_ACTIVATIONS = {
    "Softplus": lambda: torch.nn.Softplus(), "Elu": lambda: torch.nn.ELU(0.7), "Selu": lambda: torch.nn.SELU(),
    "HardSigmoid": lambda: torch.nn.Hardsigmoid(), "HardSwish": lambda: torch.nn.Hardswish(),
    "Atan": lambda: Lambda(torch.atan), "Abs": lambda: Lambda(torch.abs),
    "Clip": lambda: Lambda(lambda x: torch.clamp(x, -0.5, 0.8)),
    "Mish": lambda: torch.nn.Mish(), "Softsign": lambda: torch.nn.Softsign(),
    "Sinh": lambda: Lambda(torch.sinh), "Cosh": lambda: Lambda(torch.cosh),
}
# extra graphs built with onnx.helper: (id, op type, attributes, extra constant inputs, opset)
HELPER_VARIANTS = [
    ("Clip-opset10", "Clip", {"min": -0.5, "max": 0.8}, [], 10),
    ("Clip-min-only", "Clip", {}, [np.array(0.3, np.float32)], 13),
    ("Clip-relu6", "Clip", {}, [np.array(0.0, np.float32), np.array(6.0, np.float32)], 13),
    ("HardSigmoid-attrs", "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [], 13),
    ("Elu-attrs", "Elu", {"alpha": 1.7}, [], 13),
]


def torch_export(tmp_path: Path, name: str) -> Path | None:
    """Export ``Linear -> op -> Linear``; None when the exporter fails or decomposes the op."""
    w1, b1, w2, b2 = _weights()
    net = torch.nn.Sequential(torch.nn.Linear(3, WIDTH), TORCH_ACTIVATIONS[name](), torch.nn.Linear(WIDTH, 2))
    with torch.no_grad():
        for layer, w, b in ((net[0], w1, b1), (net[2], w2, b2)):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, torch.zeros(1, 3), buf, opset_version=17, dynamo=False,
                              input_names=["x"], output_names=["y"])
    except Exception:  # e.g. aten::sinh has no ONNX export
        return None
    model = onnx.load_from_string(buf.getvalue())
    if name not in {n.op_type for n in model.graph.node}:
        return None
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(buf.getvalue())
    return path


def helper_model(tmp_path: Path, op_type: str, attrs: dict, extra: list, opset: int) -> Path:
    """``Gemm -> op -> Gemm`` with ``onnx.helper``."""
    w1, b1, w2, b2 = _weights()
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    inits += [numpy_helper.from_array(a, f"c{i}") for i, a in enumerate(extra)]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node(op_type, ["h", *[f"c{i}" for i in range(len(extra))]], ["a"], **attrs),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / f"{op_type}_{opset}_{len(extra)}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def model_path(tmp_path: Path, name: str) -> Path:
    path = torch_export(tmp_path, name)
    if path is None:
        opset = 18 if name == "Mish" else 13
        path = helper_model(tmp_path, name, {}, [], opset)
    return path


def translatable(path: Path) -> bool:
    from onnx2torch.node_converters.registry import get_converter

    from genbab.model.converters import register_converters
    register_converters()
    model = onnx.load(str(path))
    versions = {imp.domain or "": imp.version for imp in model.opset_import}
    try:
        for node in model.graph.node:
            get_converter(node.op_type, versions.get(node.domain or "", 1), node.domain or "")
    except NotImplementedError:
        return False
    return True


def ort_outputs(path: Path, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: x.reshape(1, 3).astype(np.float32)})[0].reshape(-1) for x in xs])


LOWER = np.array([-1.0, -0.5, -1.5])
UPPER = np.array([1.0, 1.5, 0.5])


def sample_box(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.random((n, 3))
    t[: n // 10] = t[: n // 10] > 0.5  # corners
    return (LOWER + t * (UPPER - LOWER)).astype(np.float32).astype(np.float64)


def check_model(path: Path, op_type: str) -> None:
    """Loads, matches onnxruntime, and CROWN / alpha-CROWN bounds contain onnxruntime outputs."""
    model = genbab.load_model(path)
    assert op_type in {n.op_type for n in model.graph.nodes}
    xs = sample_box(100, 1)
    with torch.no_grad():
        ours = model(torch.from_numpy(xs).to(model.graph.dtype)).reshape(100, -1).double().numpy()
    ref = ort_outputs(path, xs).astype(np.float64)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    ys = ort_outputs(path, sample_box(2000, 2)).astype(np.float64)
    lower, upper = torch.tensor(LOWER, dtype=torch.float32), torch.tensor(UPPER, dtype=torch.float32)
    tol = 1e-5 * (1.0 + np.abs(ys).max(axis=0))  # float32 evaluation error of onnxruntime
    bounds = {}
    for method in ("crown", "alpha-crown"):
        lb, ub = genbab.compute_bounds(model, lower, upper, method)
        lb, ub = lb[0].numpy(), ub[0].numpy()
        assert np.all(lb <= ys.min(axis=0) + tol), f"{method} lower bound above an onnxruntime output"
        assert np.all(ub >= ys.max(axis=0) - tol), f"{method} upper bound below an onnxruntime output"
        assert np.all(ub - lb < 100 * (1 + ys.max(axis=0) - ys.min(axis=0)))  # not vacuous
        bounds[method] = (lb, ub)
    assert np.all(bounds["alpha-crown"][0] >= bounds["crown"][0] - 1e-6)
    assert np.all(bounds["alpha-crown"][1] <= bounds["crown"][1] + 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_model_loads_and_bounds_contain_onnxruntime(tmp_path, name):
    path = model_path(tmp_path, name)
    if not translatable(path):  # onnx2torch has no converter: loading must say so
        with pytest.raises(genbab.UnsupportedOpError, match=name):
            genbab.load_model(path)
        return
    check_model(path, name)


@pytest.mark.parametrize("variant", HELPER_VARIANTS, ids=[v[0] for v in HELPER_VARIANTS])
def test_attribute_variants(tmp_path, variant):
    """Attributes and constant inputs reach the bound rule (a wrong binding breaks containment)."""
    _, op_type, attrs, extra, opset = variant
    check_model(helper_model(tmp_path, op_type, attrs, extra, opset), op_type)


def test_clip_bounds_are_bound_from_the_graph(tmp_path):
    from genbab.ops.registry import rule_for

    cases = [(("Clip", {"min": -0.5, "max": 0.8}, [], 10), (-0.5, 0.8)),
             (("Clip", {}, [np.array(0.3, np.float32)], 13), (0.3, INF)),
             (("Clip", {}, [np.array(0.0, np.float32), np.array(6.0, np.float32)], 13), (0.0, 6.0)),
             (("Clip", {}, [np.array(0.0, np.float32)], 13), (0.0, INF))]
    for (op_type, attrs, extra, opset), expected in cases:
        model = genbab.load_model(helper_model(tmp_path, op_type, attrs, extra, opset))
        node = next(n for n in model.graph.nodes if n.op_type == "Clip")
        op = rule_for(node).op
        assert (op.attrs["min"], op.attrs["max"]) == pytest.approx(expected)


def test_swish_as_mul_of_sigmoid_is_bounded(tmp_path):
    """``x * Sigmoid(x)`` (how SiLU reaches ONNX) is a product of two dependent inputs: bounded
    by the McCormick planes of the bilinear rule."""
    w1, b1, w2, b2 = _weights()
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Mul", ["h", "s"], ["a"]), helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "swish.onnx"
    path.write_bytes(model.SerializeToString())
    check_model(path, "Mul")


# ----------------------------------------------------------------------------- verify


def write_spec(path: Path, threshold: float) -> Path:
    """Unsafe set: ``Y_0 >= threshold`` on the box."""
    lines = [f"(declare-const X_{i} Real)" for i in range(3)] + ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    for i in range(3):
        lines += [f"(assert (>= X_{i} {float(LOWER[i])!r}))", f"(assert (<= X_{i} {float(UPPER[i])!r}))"]
    lines.append(f"(assert (>= Y_0 {threshold!r}))")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["Softplus", "HardSwish"])
def test_verify_proves_and_falsifies(tmp_path, name):
    path = model_path(tmp_path, name)
    model = genbab.load_model(path)
    ys = ort_outputs(path, sample_box(2000, 3))[:, 0].astype(np.float64)
    _, ub = genbab.compute_bounds(model, torch.tensor(LOWER), torch.tensor(UPPER), "crown")
    top, ub0 = float(ys.max()), float(ub[0, 0])
    assert ub0 > top + 0.05  # the proof below needs more than one CROWN pass
    holds = genbab.verify(model, str(write_spec(tmp_path / "holds.vnnlib", 0.5 * (top + ub0))), timeout=60)
    assert holds.status == "unsat", holds.status
    fails = genbab.verify(model, str(write_spec(tmp_path / "fails.vnnlib", top - 0.1 * (1 + abs(top)))), timeout=60)
    assert fails.status == "sat", fails.status
    x = np.asarray(fails.witness.x, dtype=np.float64).reshape(-1)
    assert np.all(x >= LOWER) and np.all(x <= UPPER)
    y = ort_outputs(path, x[None])[0]
    assert y[0] >= top - 0.1 * (1 + abs(top))
