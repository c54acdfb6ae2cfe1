"""Soundness and tightness of every relaxation in ``genbab.ops``.

Every op of ``OP_RELAXATIONS`` (with several attribute values) is checked by dense sampling:
batches of hypothesis-seeded intervals of every kind (narrow, wide, negative, positive,
straddling 0, degenerate, at the domain edges up to |x| = 100) plus up to 16 intervals drawn
by hypothesis directly, ~10^5 sample points including both ends and the critical points,
random parameters (projected and raw), float32 and float64.
Lines are evaluated in float64 from the returned coefficients against ``forward`` in float64;
the tolerance is ``1e-12`` relative to the size of the terms, far below any real error.
Hand-computed toy cases pin the exact chords / tangents.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genbab.ops import BINARY_OPS, OP_RELAXATIONS
from genbab.ops.bilinear import interval_mul, relax_mul

F64 = torch.float64
OPS = OP_RELAXATIONS
TINY32 = float(torch.finfo(torch.float32).tiny)

# (id, op, domain of the sampled intervals)
CASES = [
    ("Relu", OPS["Relu"], (-100.0, 100.0)),
    ("LeakyRelu", OPS["LeakyRelu"], (-100.0, 100.0)),
    ("LeakyRelu-0.3", OPS["LeakyRelu"].bind(alpha=0.3), (-100.0, 100.0)),
    ("LeakyRelu-2", OPS["LeakyRelu"].bind(alpha=2.0), (-100.0, 100.0)),
    ("LeakyRelu-neg", OPS["LeakyRelu"].bind(alpha=-0.5), (-100.0, 100.0)),
    ("Sign", OPS["Sign"], (-100.0, 100.0)),
    ("Sigmoid", OPS["Sigmoid"], (-100.0, 100.0)),
    ("Tanh", OPS["Tanh"], (-100.0, 100.0)),
    ("Erf", OPS["Erf"], (-100.0, 100.0)),
    ("Sin", OPS["Sin"], (-100.0, 100.0)),
    ("Cos", OPS["Cos"], (-100.0, 100.0)),
    ("Gelu", OPS["Gelu"], (-100.0, 100.0)),
    ("Gelu-tanh", OPS["Gelu"].bind(approximate="tanh"), (-100.0, 100.0)),
    ("Exp", OPS["Exp"], (-100.0, 100.0)),
    ("Log", OPS["Log"], (TINY32, 100.0)),
    ("LogPositive", OPS["LogPositive"], (TINY32, 100.0)),
    ("Reciprocal+", OPS["Reciprocal"], (1e-3, 100.0)),
    ("Reciprocal-", OPS["Reciprocal"], (-100.0, -1e-3)),
    ("Sqrt", OPS["Sqrt"], (0.0, 100.0)),
    ("Pow", OPS["Pow"], (-100.0, 100.0)),
    ("Pow3", OPS["Pow"].bind(exponent=3), (-100.0, 100.0)),
    ("Pow4", OPS["Pow"].bind(exponent=4), (-30.0, 30.0)),
    ("Pow5", OPS["Pow"].bind(exponent=5), (-30.0, 30.0)),
    ("Pow0", OPS["Pow"].bind(exponent=0), (-100.0, 100.0)),
    ("Pow1", OPS["Pow"].bind(exponent=1), (-100.0, 100.0)),
    ("Pow-1+", OPS["Pow"].bind(exponent=-1), (1e-2, 100.0)),
    ("Pow-1-", OPS["Pow"].bind(exponent=-1), (-100.0, -1e-2)),
    ("Pow-2-", OPS["Pow"].bind(exponent=-2), (-100.0, -1e-2)),
    ("Pow0.5", OPS["Pow"].bind(exponent=0.5), (0.0, 100.0)),
    ("Pow1.5", OPS["Pow"].bind(exponent=1.5), (0.0, 100.0)),
    ("Pow-0.5", OPS["Pow"].bind(exponent=-0.5), (1e-3, 100.0)),
]
CASE_IDS = [c[0] for c in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small tensor ops: intra-op threads only add contention (10-40x slower when the
    machine is busy), so this module runs single-threaded and restores the setting after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
DTYPES = [torch.float32, torch.float64]
# points where something happens: kinks, inflections, extrema, the pole-free GeLU minimum
CRITICAL = [0.0, -0.75179, -0.75246, math.sqrt(2), -math.sqrt(2), 1.4185, -1.4185]


def make_intervals(seed: int, domain: tuple[float, float], n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """``n`` intervals inside ``domain``, eight kinds in equal parts (float64)."""
    rng = np.random.default_rng(seed)
    lo, hi = domain
    k = n // 8
    span = hi - lo

    def centred(c: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return c - w * rng.random(c.shape), c + w * rng.random(c.shape)

    parts = [
        centred(lo + span * rng.random(k), 10.0 ** rng.uniform(-7, -1, k)),  # narrow
        (lo + span * 0.5 * rng.random(k), hi - span * 0.5 * rng.random(k)),  # wide
        centred(lo + span * rng.random(k), 10.0 ** rng.uniform(-2, 1.5, k)),  # medium
        (np.minimum(-rng.exponential(5, k), 0), -rng.exponential(0.5, k) * rng.random(k)),
        (rng.exponential(0.5, k) * rng.random(k), rng.exponential(5, k)),  # positive
        (-rng.exponential(3, k), rng.exponential(3, k)),  # straddling 0
    ]
    a = lo + span * rng.random(k)
    parts.append((a, a))  # degenerate
    ext = rng.choice([lo, hi], size=k)
    parts.append((np.where(ext == lo, lo, ext - rng.exponential(2, k)),
                  np.where(ext == hi, hi, ext + rng.exponential(2, k))))  # domain edges
    l = np.concatenate([p[0] for p in parts])
    u = np.concatenate([p[1] for p in parts])
    l, u = np.clip(l, lo, hi), np.clip(u, lo, hi)
    return np.minimum(l, u), np.maximum(l, u)


def sample_points(l: torch.Tensor, u: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """``(n, m)`` dtype-representable points of each ``[l, u]``: both ends, the critical
    points and multiples of pi/2 inside, the rest uniform; returned as float64."""
    g = torch.Generator().manual_seed(seed)
    L, U = l.to(F64)[:, None], u.to(F64)[:, None]
    t = torch.rand(l.shape[0], m, generator=g, dtype=F64)
    t[:, 0], t[:, 1] = 0.0, 1.0
    z = L + (U - L) * t
    crit = torch.tensor(CRITICAL, dtype=F64)
    k0 = torch.floor(L / (math.pi / 2))
    trig = (k0 + torch.arange(1, 9, dtype=F64)) * (math.pi / 2)
    special = torch.cat([crit.expand(l.shape[0], -1), trig], dim=1)
    z[:, 2:2 + special.shape[1]] = torch.minimum(torch.maximum(special, L), U)
    z = z.to(l.dtype).to(F64)
    return torch.minimum(torch.maximum(z, L), U)


def random_params(op, l: torch.Tensor, u: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    init = op.init_params(l, u)
    width = (u - l).to(F64) + 1.0
    return {k: (v.to(F64) + 2.0 * width * torch.randn(v.shape, generator=g, dtype=F64)).to(v.dtype)
            for k, v in init.items()}


def assert_sound(op, l: torch.Tensor, u: torch.Tensor, params, seed: int, m: int = 420) -> None:
    """Lines and interval contain ``forward`` at every sampled point."""
    r = op.relax(l, u, params)
    lo, hi = op.interval(l, u)
    for t in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper, lo, hi):
        assert t.dtype == l.dtype and t.shape == l.shape
        assert not torch.isnan(t).any()
    assert torch.isfinite(r.slope_lower).all() and torch.isfinite(r.slope_upper).all()
    assert torch.isfinite(r.bias_lower[torch.isfinite(lo)]).all()
    assert torch.isfinite(r.bias_upper[torch.isfinite(hi)]).all()
    z = sample_points(l, u, m, seed)
    h = op.forward(z)
    sl, bl, su, bu = (x.to(F64)[:, None] for x in
                      (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper))
    low, up = sl * z + bl, su * z + bu
    tol_lo = 1e-12 * ((sl * z).abs() + bl.abs() + h.abs()).nan_to_num(posinf=0.0)
    tol_up = 1e-12 * ((su * z).abs() + bu.abs() + h.abs()).nan_to_num(posinf=0.0)
    bad_lo = ~(low <= h + tol_lo)
    bad_up = ~(up >= h - tol_up)
    for name, bad in (("lower", bad_lo), ("upper", bad_up)):
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            pytest.fail(f"{name} line violated on [{l[i].item()!r}, {u[i].item()!r}] at "
                        f"z={z[i, j].item()!r}: h={h[i, j].item()!r}, lower={low[i, j].item()!r}, "
                        f"upper={up[i, j].item()!r}")
    lo64, hi64 = lo.to(F64)[:, None], hi.to(F64)[:, None]
    assert (lo64 <= h).all() and (h <= hi64).all(), "interval image misses a sampled value"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1),
       drawn=st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), max_size=16))
def test_relaxation_sound(case, dtype, seed, drawn):
    _, op, domain = case
    l_np, u_np = make_intervals(seed, domain)
    if drawn:  # hypothesis-drawn intervals (shrinkable), clipped into the domain
        a = np.clip(np.array(drawn, dtype=np.float64), *domain)
        l_np = np.concatenate([l_np, a.min(axis=1)])
        u_np = np.concatenate([u_np, a.max(axis=1)])
    l, u = torch.tensor(l_np).to(dtype), torch.tensor(u_np).to(dtype)
    assert_sound(op, l, u, None, seed)
    raw = random_params(op, l, u, seed)
    projected = op.project_params(raw, l, u)
    assert set(projected) == set(op.traits.param_names)
    assert_sound(op, l, u, projected, seed + 1)
    assert_sound(op, l, u, raw, seed + 2)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_init_params_are_projected_fixed_points(case):
    _, op, domain = case
    l_np, u_np = make_intervals(7, domain, n=80)
    l, u = torch.tensor(l_np), torch.tensor(u_np)
    init = op.init_params(l, u)
    again = op.project_params(init, l, u)
    for k in init:
        torch.testing.assert_close(again[k], init[k], rtol=0, atol=0)


def test_every_registered_op_is_tested():
    assert {c[1].name for c in CASES} == set(OP_RELAXATIONS)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["Sigmoid", "Tanh", "Sin", "Gelu", "Exp", "Pow", "Relu", "Sign"])
def test_params_broadcast_and_gradients(name, dtype):
    """alpha-CROWN use: params with an extra leading (spec) dim, gradients finite."""
    op = OPS[name]
    l = torch.tensor([-3.0, -0.5, 0.2, -8.0, 1.0], dtype=dtype)
    u = torch.tensor([-1.0, 0.7, 2.5, 6.0, 1.0], dtype=dtype)
    init = op.init_params(l, u)
    params = {k: v.expand(3, -1).clone().requires_grad_(True) for k, v in init.items()}
    r = op.relax(l, u, params)
    assert r.slope_lower.shape == (3, 5)
    (r.bias_lower.sum() - r.bias_upper.sum() + r.slope_lower.sum()).backward()
    for v in params.values():
        assert v.grad is not None and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_unbounded_boxes(case):
    """Infinite interval ends (e.g. from IBP) give no NaN and lines valid on finite points."""
    _, op, (dlo, dhi) = case
    inf = float("inf")
    lo_end = -inf if dlo == -100.0 else dlo
    mid = 0.5 * (dlo + dhi)
    l = torch.tensor([lo_end, lo_end, mid], dtype=F64)
    u = torch.tensor([inf, mid, inf], dtype=F64)
    for dtype in DTYPES:
        r = op.relax(l.to(dtype), u.to(dtype))
        lo, hi = op.interval(l.to(dtype), u.to(dtype))
        coefs = [x.to(F64)[:, None] for x in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)]
        assert not any(torch.isnan(c).any() for c in coefs) and not torch.isnan(lo).any()
        t = torch.linspace(0, 1, 2001, dtype=F64)
        a, b = l.clamp(min=max(dlo, -1e3)), u.clamp(max=min(dhi, 1e3))
        z = (a[:, None] + (b - a)[:, None] * t).to(dtype).to(F64)
        h = op.forward(z)
        sl, bl, su, bu = coefs
        assert (torch.where(sl == 0, bl, sl * z + bl) <= h).all()
        assert (torch.where(su == 0, bu, su * z + bu) >= h).all()
        assert (lo.to(F64)[:, None] <= h).all() and (h <= hi.to(F64)[:, None]).all()


def _engine_cases():
    from genbab.ops import exp_log, gelu, s_shaped, trig
    r2 = math.sqrt(2)
    return {
        "sigmoid": (s_shaped.SIGMOID.curve, lambda l, u: [torch.zeros_like(l)], (-12.0, 12.0)),
        "gelu": (gelu.ERF_FORM.curve, lambda l, u: [torch.full_like(l, -r2), torch.full_like(l, r2)],
                 (-6.0, 6.0)),
        "sin": (trig.SIN_CURVE, lambda l, u: [torch.ceil(l / math.pi) * math.pi,
                                              (torch.ceil(l / math.pi) + 1) * math.pi], (-6.0, 6.0)),
        "sqrt": (exp_log.SQRT.curve, lambda l, u: [], (0.0, 10.0)),
    }


@pytest.mark.parametrize("name", ["sigmoid", "gelu", "sin", "sqrt"])
def test_rigorous_biases_for_any_slope(name):
    """The core guarantee: for *any* slopes the biases bound ``f - s z`` on ``[l, u]``, and
    after refinement they are close to the true extremes."""
    from genbab.ops.curvature import extreme_gaps
    curve, cuts, (lo, hi) = _engine_cases()[name]
    g = torch.Generator().manual_seed(3)
    n = 3000
    a, b = (lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64) for _ in range(2))
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    if name == "sin":
        u = torch.minimum(u, l + 1.9 * math.pi)  # at most two inflection points inside
    s_lo, s_up = (torch.randn(n, generator=g, dtype=F64) for _ in range(2))
    extra = l + (u - l) * torch.rand(n, generator=g, dtype=F64)
    pts = torch.stack([l, u, extra, *(c.clamp(l, u) for c in [torch.minimum(torch.maximum(c, l), u)
                                                              for c in cuts(l, u)])])
    b_lo, b_up = extreme_gaps(curve, pts, s_lo, s_up, refine=3)
    z = l[:, None] + (u - l)[:, None] * torch.linspace(0, 1, 4001, dtype=F64)
    fz = curve.f(z)
    g_lo, g_up = fz - s_lo[:, None] * z, fz - s_up[:, None] * z
    tol = 1e-12 * (fz.abs() + z.abs()).amax(1)
    assert (b_lo <= g_lo.amin(1) + tol).all() and (b_up >= g_up.amax(1) - tol).all()
    scale = 1.0 + (u - l)
    assert (g_lo.amin(1) - b_lo).quantile(0.99) < 1e-3 * scale.mean()
    assert (b_up - g_up.amax(1)).quantile(0.99) < 1e-3 * scale.mean()


# ----------------------------------------------------------------------------- toy cases


def lines(op, l, u, params=None):
    lt, ut = torch.tensor([l], dtype=F64), torch.tensor([u], dtype=F64)
    p = None if params is None else {k: torch.tensor([v], dtype=F64) for k, v in params.items()}
    r = op.relax(lt, ut, p)
    return [float(x) for x in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)]


@pytest.mark.parametrize("name,l,u,params,expected", [
    ("Exp", 0.0, 1.0, {"tangent_lower": 0.0}, [1.0, 1.0, math.e - 1, 1.0]),
    ("Log", 1.0, math.e, {"tangent_upper": 1.0}, [1 / (math.e - 1), -1 / (math.e - 1), 1.0, -1.0]),
    ("Sqrt", 1.0, 4.0, {"tangent_upper": 4.0}, [1 / 3, 2 / 3, 0.25, 1.0]),
    ("Reciprocal", 1.0, 2.0, {"tangent_lower": 1.0}, [-1.0, 2.0, -0.5, 1.5]),
    ("Relu", -1.0, 3.0, {"slope_lower": 0.25}, [0.25, 0.0, 0.75, 0.75]),
    ("Relu", 1.0, 3.0, None, [1.0, 0.0, 1.0, 0.0]),
    ("Relu", -3.0, -1.0, None, [0.0, 0.0, 0.0, 0.0]),
    ("Sign", -1.0, 2.0, {"weight_lower": 1.0, "weight_upper": 0.0}, [1.0, -1.0, 0.0, 1.0]),
    ("Sign", -2.0, 1.0, {"weight_lower": 0.0, "weight_upper": 1.0}, [0.0, -1.0, 1.0, 1.0]),
    ("Sin", 0.0, math.pi / 2, {"tangent_upper": 0.0}, [2 / math.pi, 0.0, 1.0, 0.0]),
    ("Gelu", -1.0, 1.0, {"tangent_lower": 0.0}, [0.5, 0.0, 0.5, 0.3413447460685429]),
])
def test_exact_toy_lines(name, l, u, params, expected):
    got = lines(OPS[name], l, u, params)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_pow_toy_lines():
    sq = OPS["Pow"]  # x^2 on [-1, 2]: chord slope 1 bias 2; tangent at the midpoint 0.5
    np.testing.assert_allclose(lines(sq, -1.0, 2.0), [1.0, -0.25, 1.0, 2.0], rtol=1e-9, atol=1e-9)
    cube = OPS["Pow"].bind(exponent=3)  # x^3 on [-1, 1]: tangents through (-1,-1) / (1,1)
    np.testing.assert_allclose(lines(cube, -1.0, 1.0), [0.75, -0.25, 0.75, 0.25], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,l,u", [("Sigmoid", -2.5, 3.0), ("Tanh", -2.5, 3.0),
                                      ("Erf", -2.5, 3.0), ("Gelu", -1.0, 3.0), ("Sin", -1.5, 1.5)])
def test_straddling_tangents_touch_the_far_endpoint(name, l, u):
    """Default (area-optimal) lines across one inflection point pass through the far endpoint
    (up to the table resolution), i.e. they are the tightest valid tangents (or the chord)."""
    op = OPS[name]
    s_lo, b_lo, s_up, b_up = lines(op, l, u)
    f = lambda x: float(op.forward(torch.tensor(x, dtype=F64)))
    assert 0 <= (s_up * l + b_up) - f(l) < 2e-3
    assert 0 <= f(u) - (s_lo * u + b_lo) < 2e-3


def test_convex_piece_is_exact_chord_and_tangent():
    op = OPS["Sigmoid"]  # convex on [-3, -1]
    s_lo, b_lo, s_up, b_up = lines(op, -3.0, -1.0, {"tangent_lower": -2.0})
    sig = lambda x: 1 / (1 + math.exp(-x))
    d = sig(-2.0) * (1 - sig(-2.0))
    np.testing.assert_allclose([s_lo, b_lo], [d, sig(-2.0) + 2 * d], rtol=1e-9)
    chord = (sig(-1.0) - sig(-3.0)) / 2
    np.testing.assert_allclose([s_up, b_up], [chord, sig(-1.0) + chord], rtol=1e-9)


def test_extreme_inputs_stay_finite():
    l = torch.tensor([40.0, -1e4, 50.0, -1e30, 88.0, 1e3], dtype=torch.float32)
    u = torch.tensor([50.0, 1e4, 50.0, 1e30, 100.0, 1e3], dtype=torch.float32)
    for name in ["Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Gelu", "Relu", "Sign", "LeakyRelu"]:
        r = OPS[name].relax(l, u)
        for t in (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper):
            assert torch.isfinite(t).all(), name
    r = OPS["Exp"].relax(torch.tensor([40.0, 50.0, -100.0], dtype=F64),
                         torch.tensor([50.0, 50.0, 100.0], dtype=F64))
    assert all(torch.isfinite(t).all() for t in (r.slope_lower, r.bias_lower, r.slope_upper,
                                                 r.bias_upper))
    r = OPS["Exp"].relax(l, u)  # float32: exp(100) overflows; the lower line stays finite
    assert torch.isfinite(r.slope_lower).all() and torch.isfinite(r.bias_lower).all()


# ----------------------------------------------------------------------------- bilinear


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_bilinear_planes_sound(dtype, alpha):
    rng = np.random.default_rng(int(alpha * 10) + (dtype == F64))
    n, m = 400, 250
    c = rng.uniform(-50, 50, (2, n)) * rng.choice([0.01, 1.0], (2, n))
    w = rng.exponential(3, (2, n)) * (rng.random((2, n)) > 0.1)
    lo_t, hi_t = torch.tensor(c - w).to(dtype), torch.tensor(c + w).to(dtype)
    lx, ly, ux, uy = lo_t[0], lo_t[1], hi_t[0], hi_t[1]
    a = torch.full((n,), alpha, dtype=dtype)
    r = relax_mul(lx, ux, ly, uy, {"alpha_lower": a, "alpha_upper": a})
    t = torch.rand(2, n, m, dtype=F64)
    t[:, :, :4] = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]], dtype=F64)[:, None, :]
    x = (lx.to(F64)[:, None] + (ux - lx).to(F64)[:, None] * t[0]).to(dtype).to(F64)
    y = (ly.to(F64)[:, None] + (uy - ly).to(F64)[:, None] * t[1]).to(dtype).to(F64)
    x = torch.minimum(torch.maximum(x, lx.to(F64)[:, None]), ux.to(F64)[:, None])
    y = torch.minimum(torch.maximum(y, ly.to(F64)[:, None]), uy.to(F64)[:, None])
    z = x * y
    (cxl, cyl, bl), (cxu, cyu, bu) = ([v.to(F64)[:, None] for v in p] for p in (r.lower, r.upper))
    assert (cxl * x + cyl * y + bl <= z + 1e-12 * z.abs()).all()
    assert (cxu * x + cyu * y + bu >= z - 1e-12 * z.abs()).all()
    lo, hi = interval_mul(lx, ux, ly, uy)
    assert (lo.to(F64)[:, None] <= z).all() and (z <= hi.to(F64)[:, None]).all()


def test_bilinear_toy_planes():
    one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    r = relax_mul(zero, one, zero, one, {"alpha_lower": zero, "alpha_upper": one})
    np.testing.assert_allclose([float(v) for v in r.lower], [1.0, 1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose([float(v) for v in r.upper], [1.0, 0.0, 0.0], atol=1e-12)
    assert set(BINARY_OPS) == {"Mul"}
