"""Triton kernels (``genbab.kernels``) against their PyTorch references, soundness, dispatch.

CI has no GPU: the kernels run through Triton's interpreter on CPU tensors, which needs
``TRITON_INTERPRET=1`` in the environment before Triton is imported (the Makefile's test
target sets it). Without it, and without CUDA, the module skips.

- concretization: kernel = reference (float tolerance), = the torch path of ``box.py``, never
  above the float64 value of the same data beyond float rounding, and below it with
  ``rigorous=True``; infinities, zeros, huge values, stride-0 inputs, gradients;
- elementwise backward: kernel = reference incl. infinite biases on zero / opposite-sign
  coefficients and lines broadcast over spec rows; gradients = autograd of the reference;
- relaxation (Sigmoid, Tanh, Erf, Sin, Cos, GeLU erf / tanh forms): same slopes as the
  ``genbab.ops`` relaxation, biases as tight up to tolerance, and sound by dense sampling
  (also on huge, degenerate and unbounded intervals), float32 and float64, with and without
  tangent-point parameters;
- dispatch: ``backend_for`` / ``EngineConfig.resolve`` rules and errors; an engine whose config
  says ``triton`` launches the three kernels (counted) and bounds as the ``torch`` engine, which
  launches none; the relaxation kernel's gradients equal the PyTorch relaxation's (float64);
  a whole ``genbab.verify`` on the toy model with ``kernels="triton"`` (alpha-CROWN included).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="triton does not import")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET=1 not set: Triton kernels cannot run",
                allow_module_level=True)

from genbab.bounds import kernel_backend  # noqa: E402
from genbab.bounds.box import Box, concretize_lower  # noqa: E402
from genbab.bounds.config import EngineConfig  # noqa: E402
from genbab.bounds.nonlinear import elementwise_backward  # noqa: E402
from genbab.kernels.concretize import concretize, concretize_reference, concretize_triton  # noqa: E402
from genbab.kernels.elementwise_backward import (backward_reference, backward_triton,  # noqa: E402
                                                 elementwise_backward as eb_kernel)
from genbab.kernels.relax import relax_reference, relax_triton  # noqa: E402
from genbab.ops import OP_RELAXATIONS  # noqa: E402
from genbab.ops.relaxation import Relaxation  # noqa: E402

# numpy warnings of the interpreter about 0 * inf in masked-out lanes
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a busy 2-core machine the tangent tables' bisection (many small
    torch ops) runs ~100x slower with OpenMP workers contending."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- concretize


def random_problem(B, S, shape, dtype, seed, zero_frac=0.2):
    g = gen(seed)
    A = torch.randn(B, S, *shape, generator=g, dtype=F64)
    A[torch.rand(A.shape, generator=g) < zero_frac] = 0.0
    lo = torch.randn(B, *shape, generator=g, dtype=F64) * 3
    up = lo + torch.rand(B, *shape, generator=g, dtype=F64) * 2
    b = torch.randn(B, S, generator=g, dtype=F64)
    return [t.to(dtype).to(DEV) for t in (A, b, lo, up)]


def exact64(A, b, lo, up):
    """Float64 value of the same data (products of float32 numbers are exact in float64)."""
    return concretize_reference(A.double(), b.double(), lo.double(), up.double())


@pytest.mark.parametrize("B,S,shape", [(1, 1, (1,)), (2, 3, (7,)), (3, 17, (2, 5, 3)), (2, 5, (600,)),
                                       (1, 40, (33,))])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_concretize_matches_reference_and_torch_path(B, S, shape, dtype):
    A, b, lo, up = random_problem(B, S, shape, dtype, seed=B * 100 + S)
    k = concretize_triton(A, b, lo, up)
    ref = concretize_reference(A, b, lo, up)
    m = torch.maximum(lo.abs(), up.abs()).reshape(B, 1, -1)
    mag = (A.abs().reshape(B, S, -1) * m).sum(-1) + b.abs()
    tol = 4 * (A[0, 0].numel() + 2) * torch.finfo(dtype).eps * (mag.abs() + 1e-30)
    assert torch.all((k - ref).abs() <= tol)
    torch_path = concretize_lower(A, b, Box(lo, up))
    assert torch.all((k - torch_path).abs() <= tol)
    exact = exact64(A, b, lo, up)
    assert torch.all(k.double() <= exact + tol.double()), "above the exact value beyond rounding"
    rig = concretize_triton(A, b, lo, up, rigorous=True)
    assert torch.all(rig.double() <= exact), "rigorous result above the exact value"
    assert torch.all(exact - rig.double() <= 2 * tol.double() + 1e-300)
    assert torch.all(concretize_reference(A, b, lo, up, rigorous=True).double() <= exact)


def test_concretize_edge_cases():
    A = torch.tensor([[[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
                       [1e150, -1e150, 0.0, 0.0]]], dtype=F64, device=DEV)
    lo = torch.tensor([[-float("inf"), 1.0, -float("inf"), 0.0]], dtype=F64, device=DEV)
    up = torch.tensor([[1.0, float("inf"), float("inf"), 1e150]], dtype=F64, device=DEV)
    b = torch.tensor([[0.5, 2.0, 0.0, 1.0]], dtype=F64, device=DEV)
    k = concretize_triton(A, b, lo, up)
    expect = torch.tensor([[-float("inf"), 2.0, -1.0, -float("inf")]], dtype=F64)
    assert torch.equal(k.cpu(), expect)
    assert torch.equal(concretize_reference(A, b, lo, up).cpu(), expect)
    huge = torch.tensor([[[1e200, -1e200]]], dtype=F64, device=DEV)
    box = torch.tensor([[1e100, -1e100]], dtype=F64, device=DEV)
    assert concretize_triton(huge, torch.zeros(1, 1, dtype=F64, device=DEV), box, box).item() == 2e300
    empty = concretize_triton(torch.zeros(2, 0, 3, dtype=F64, device=DEV), torch.zeros(2, 0, dtype=F64, device=DEV),
                              torch.zeros(2, 3, dtype=F64, device=DEV), torch.ones(2, 3, dtype=F64, device=DEV))
    assert empty.shape == (2, 0)


def test_concretize_strided_inputs_and_gradients():
    A, b, lo, up = random_problem(1, 6, (9,), F64, seed=7)
    A_exp = A[:, :1].expand(3, 6, 9)  # stride 0 over domains and rows
    lo3, up3 = lo.expand(3, 9), up.expand(3, 9)
    torch.testing.assert_close(concretize_triton(A_exp, b.expand(3, 6), lo3, up3),
                               concretize_reference(A_exp, b.expand(3, 6), lo3, up3), rtol=1e-12, atol=1e-12)
    A1 = A.clone().requires_grad_()
    b1 = b.clone().requires_grad_()
    A2, b2 = A.clone().requires_grad_(), b.clone().requires_grad_()
    w = torch.randn(1, 6, generator=gen(1), dtype=F64).to(DEV)
    (concretize(A1, b1, lo, up) * w).sum().backward()
    (concretize_lower(A2, b2, Box(lo, up)) * w).sum().backward()
    torch.testing.assert_close(A1.grad, A2.grad)
    torch.testing.assert_close(b1.grad, b2.grad)


# ----------------------------------------------------------------------------- backward step


def random_lines(B, S_lines, shape, dtype, seed):
    g = gen(seed)
    return [(torch.randn(B, S_lines, *shape, generator=g, dtype=F64) * s).to(dtype).to(DEV)
            for s in (1.0, 3.0, 1.0, 3.0)]


@pytest.mark.parametrize("B,S,S_lines,shape", [(1, 1, 1, (5,)), (2, 4, 1, (3, 7)), (3, 9, 9, (40,)),
                                               (2, 20, 1, (2, 3, 4))])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_elementwise_backward_matches_reference(B, S, S_lines, shape, dtype):
    A = random_problem(B, S, shape, dtype, seed=S)[0]
    lines = random_lines(B, S_lines, shape, dtype, seed=S + 1)
    c1, b1 = backward_triton(A, *lines)
    c2, b2 = backward_reference(A, *lines)
    assert torch.equal(c1, c2)
    tol = 4 * (A[0, 0].numel() + 1) * torch.finfo(dtype).eps * (A.abs() * 3).reshape(B, S, -1).sum(-1)
    assert torch.all((b1 - b2).abs() <= tol + 1e-30)


def test_elementwise_backward_ignores_unused_infinite_lines():
    A = torch.tensor([[[2.0, -1.0, 0.0, 0.0]]], dtype=F64, device=DEV)
    inf = float("inf")
    sl = torch.tensor([[[0.5, 1.0, 2.0, 0.0]]], dtype=F64, device=DEV)
    su = torch.tensor([[[1.0, 0.25, 3.0, 0.0]]], dtype=F64, device=DEV)
    bl = torch.tensor([[[1.0, -inf, inf, float("nan")]]], dtype=F64, device=DEV)
    bu = torch.tensor([[[inf, 2.0, -inf, float("nan")]]], dtype=F64, device=DEV)
    coeff, bias = backward_triton(A, sl, bl, su, bu)
    assert coeff.cpu().tolist() == [[[1.0, -0.25, 0.0, 0.0]]]
    assert bias.cpu().tolist() == [[0.0]]  # 2*1 + (-1)*2


@pytest.mark.parametrize("S_lines", [1, 3])
def test_elementwise_backward_gradients(S_lines):
    A = random_problem(2, 3, (6,), F64, seed=3)[0]
    lines = random_lines(2, S_lines, (6,), F64, seed=4)
    w = torch.randn(2, 3, 6, generator=gen(5), dtype=F64).to(DEV)
    grads = []
    for fn in (eb_kernel, backward_reference):
        ts = [t.clone().requires_grad_() for t in (A, *lines)]
        coeff, bias = fn(*ts)
        ((coeff * w).sum() + bias.pow(2).sum()).backward()
        grads.append([t.grad for t in ts])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- relaxation


def gelu_forward(approximate):
    return lambda z: torch.nn.functional.gelu(z, approximate=approximate)


RELAX_OPS = [("Sigmoid", {}, torch.sigmoid), ("Tanh", {}, torch.tanh), ("Erf", {}, torch.special.erf),
             ("Sin", {}, torch.sin), ("Cos", {}, torch.cos), ("Gelu", {"approximate": "none"}, gelu_forward("none")),
             ("Gelu", {"approximate": "tanh"}, gelu_forward("tanh"))]
IDS = [f"{name}-{kw.get('approximate', '')}".rstrip("-") for name, kw, _ in RELAX_OPS]


def intervals(seed: int, n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """Narrow, wide, one-sided, straddling, degenerate and large intervals (float64)."""
    g = gen(seed)
    c = torch.randn(n, generator=g, dtype=F64) * torch.tensor([0.5, 3.0, 10.0], dtype=F64).repeat(n // 3 + 1)[:n]
    w = torch.rand(n, generator=g, dtype=F64) ** 3 * torch.tensor([0.1, 2.0, 8.0, 30.0], dtype=F64).repeat(n // 4 + 1)[:n]
    l, u = c - w, c + w
    fixed = torch.tensor([[0.0, 0.0], [-1e-9, 1e-9], [2.0, 2.0], [-3.0, 3.0], [0.0, 5.0], [-5.0, 0.0],
                          [-1.5, 1.5], [-1.4185, 1.4], [-0.8, -0.7], [1e-3, 2e-3]], dtype=F64)
    return torch.cat([l, fixed[:, 0]]), torch.cat([u, fixed[:, 1]])


def sample_points(l: torch.Tensor, u: torch.Tensor, k: int = 257) -> torch.Tensor:
    t = torch.linspace(0, 1, k, dtype=F64)
    z = l.unsqueeze(-1) + (u - l).unsqueeze(-1) * t
    return torch.minimum(torch.maximum(z, l.unsqueeze(-1)), u.unsqueeze(-1))


def check_sound(lines, l64, u64, forward, what):
    """``lower(z) <= f(z) <= upper(z)`` on dense samples of every finite interval, in float64."""
    z = sample_points(l64, u64)
    fz = forward(z)
    sl, bl, su, bu = [t.double().cpu().unsqueeze(-1) for t in (lines.slope_lower, lines.bias_lower,
                                                                lines.slope_upper, lines.bias_upper)]
    lo, up = sl * z + bl, su * z + bu
    scale = 1e-12 * (sl.abs() * z.abs() + bl.abs() + fz.abs() + 1e-300)
    assert torch.all(lo <= fz + scale), f"{what}: lower line above f"
    scale = 1e-12 * (su.abs() * z.abs() + bu.abs() + fz.abs() + 1e-300)
    assert torch.all(up >= fz - scale), f"{what}: upper line below f"


def random_params(l, u, seed):
    """Tangent points anywhere around the interval (any value is sound after projection)."""
    g = gen(seed)
    t = torch.rand(2, *l.shape, generator=g, dtype=F64) * 1.4 - 0.2
    return {"tangent_lower": l + (u - l) * t[0], "tangent_upper": l + (u - l) * t[1]}


def compare_to_torch_path(name, kw, forward, l, u, params):
    """Kernel lines sound; same slopes as the ``genbab.ops`` relaxation and biases as tight, up
    to float tolerance and the conditioning of chord slopes on narrow intervals."""
    dtype = l.dtype
    l64, u64 = l.double(), u.double()  # the intervals actually relaxed
    k = relax_triton(name, l.to(DEV), u.to(DEV), None if params is None else
                     {k_: v.to(DEV) for k_, v in params.items()}, **kw)
    r = relax_reference(name, l, u, params, **kw)
    check_sound(k, l64, u64, forward, f"{name} kernel")
    m = torch.maximum(l64.abs(), u64.abs())
    w = (u64 - l64).clamp(min=1e-300)
    chord_cond = 8 * torch.finfo(F64).eps * (forward(l64).abs() + forward(u64).abs()) / w
    tol = 1e-9 * (1 + m) + 8 * torch.finfo(dtype).eps * (1 + m)
    ds = torch.zeros_like(m)
    for s_k, s_r in ((k.slope_lower, r.slope_lower), (k.slope_upper, r.slope_upper)):
        d = (s_k.double().cpu() - s_r.double()).abs()
        assert torch.all(d <= tol + chord_cond), f"{name}: slopes differ"
        ds = torch.maximum(ds, d)
    tol_b = tol + ds * m
    assert torch.all(k.bias_lower.double().cpu() >= r.bias_lower.double() - tol_b), f"{name}: lower looser"
    assert torch.all(k.bias_upper.double().cpu() <= r.bias_upper.double() + tol_b), f"{name}: upper looser"
    assert k.slope_lower.dtype == dtype and k.bias_upper.dtype == dtype


@pytest.mark.parametrize("name,kw,forward", RELAX_OPS, ids=IDS)
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("with_params", [False, True])
def test_relaxation_kernel_agrees_and_is_sound(name, kw, forward, dtype, with_params):
    """Intervals inside the tangent tables' grids (|z| <= 100)."""
    l64, u64 = intervals(seed=len(name) + (dtype == F32))
    keep = torch.maximum(l64.abs(), u64.abs()) <= 100
    l, u = l64[keep].to(dtype), u64[keep].to(dtype)
    params = random_params(l.double(), u.double(), seed=3) if with_params else None
    params = None if params is None else {k_: v.to(dtype) for k_, v in params.items()}
    compare_to_torch_path(name, kw, forward, l, u, params)


@pytest.mark.parametrize("name,kw,forward", [c for c in RELAX_OPS if c[0] not in ("Sin", "Cos")],
                         ids=[i for i in IDS if i not in ("Sin", "Cos")])
def test_relaxation_kernel_off_the_table_grid(name, kw, forward):
    """Anchors beyond |z| = 128: the kernel bisects like ``TangentTable`` (slow in the interpreter,
    so few intervals)."""
    l = torch.tensor([-200.0, 130.0, -150.0, -1e3, -0.5, -300.0, -129.0], dtype=F64)
    u = torch.tensor([-130.0, 300.0, 140.0, 1.0, 1e3, 250.0, 129.0], dtype=F64)
    compare_to_torch_path(name, kw, forward, l, u, random_params(l, u, seed=5))


@pytest.mark.parametrize("name,kw,forward", RELAX_OPS, ids=IDS)
def test_relaxation_kernel_unbounded_and_spec_broadcast(name, kw, forward):
    inf = float("inf")
    l = torch.tensor([-inf, -inf, 0.0, -2.0, 1.0], dtype=F64)
    u = torch.tensor([inf, 0.0, inf, 3.0, 1.0], dtype=F64)
    k = relax_triton(name, l.to(DEV), u.to(DEV), None, **kw)
    r = relax_reference(name, l, u, None, **kw)
    for a in ("slope_lower", "bias_lower", "slope_upper", "bias_upper"):
        assert torch.all(torch.isfinite(getattr(k, a)) == torch.isfinite(getattr(r, a)))
    tail = Relaxation(*(t[3:] for t in (k.slope_lower, k.bias_lower, k.slope_upper, k.bias_upper)))
    check_sound(tail, l[3:], u[3:], forward, name)
    assert torch.all(k.slope_lower[:3] == 0) and torch.all(k.slope_upper[:3] == 0)
    # [B, 1, n] bounds with [B, S, n] parameters give [B, S, n] lines
    lb = torch.linspace(-3, 1, 8, dtype=F64).reshape(2, 1, 4)
    ub = lb + 1.5
    p = {"tangent_lower": (lb + ub).expand(2, 3, 4) / 2 + torch.linspace(-1, 1, 3, dtype=F64).reshape(1, 3, 1)}
    out = relax_triton(name, lb.to(DEV), ub.to(DEV), {k_: v.to(DEV) for k_, v in p.items()}, **kw)
    assert out.slope_lower.shape == (2, 3, 4)
    flat = Relaxation(*(t.reshape(-1) for t in (out.slope_lower, out.bias_lower, out.slope_upper, out.bias_upper)))
    check_sound(flat, lb.expand(2, 3, 4).reshape(-1), ub.expand(2, 3, 4).reshape(-1), forward, name)


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_rules(monkeypatch):
    """``backend_for(device, requested)``: auto is Triton on CUDA only; triton on the CPU needs the
    interpreter; bad requests and impossible devices raise one-line GenbabErrors."""
    from genbab.errors import GenbabError
    with pytest.raises(GenbabError, match="one of"):
        kernel_backend.backend_for("cpu", "cuda")
    assert kernel_backend.backend_for("cpu", "torch") == "torch"
    assert kernel_backend.backend_for("cuda", "torch") == "torch"
    assert kernel_backend.backend_for("cpu", "auto") == "torch"
    assert kernel_backend.backend_for("cuda", "auto") == "triton"
    assert kernel_backend.backend_for("cuda", "triton") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_backend.backend_for("cpu", "triton") == "triton"
    assert EngineConfig.resolve("cpu", "triton") == EngineConfig(torch.device("cpu"), F64, "triton")
    assert EngineConfig.resolve("cpu", "auto").backend == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(GenbabError, match="TRITON_INTERPRET"):
        kernel_backend.backend_for("cpu", "triton")
    with pytest.raises(GenbabError, match="TRITON_INTERPRET"):
        EngineConfig.resolve("cpu", "triton")
    with pytest.raises(ValueError, match="resolved"):
        EngineConfig(torch.device("cpu"), F64, "auto")
    monkeypatch.setattr(kernel_backend, "triton_available", lambda: False)
    with pytest.raises(GenbabError, match="does not import"):
        kernel_backend.backend_for("cuda", "triton")
    assert kernel_backend.backend_for("cuda", "auto") == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(GenbabError, match="no CUDA device"):
            EngineConfig.resolve("cuda", "torch")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts of the three kernels' launches (the launchers the routed calls end in)."""
    import genbab.kernels.concretize as kc
    import genbab.kernels.elementwise_backward as ke
    import genbab.kernels.relax as kr
    calls = {"concretize": 0, "elementwise_backward": 0, "relax": 0}

    def counted(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(kc, "concretize_triton", "concretize")
    counted(ke, "backward_triton", "elementwise_backward")
    counted(kr, "relax_raw_triton", "relax")
    return calls


def test_routed_functions_follow_the_engine_config(kernel_calls):
    """The routed functions take the backend as an argument: ``torch`` never launches a kernel,
    ``triton`` launches each, and both agree."""
    A, b, lo, up = random_problem(2, 3, (4,), F64, seed=11)
    sigmoid, tanh = OP_RELAXATIONS["Sigmoid"], OP_RELAXATIONS["Tanh"]
    outs = {}
    for name in ("torch", "triton"):
        lines = kernel_backend.relax_lines(sigmoid, lo.unsqueeze(1), up.unsqueeze(1), None, name)
        outs[name] = (concretize_lower(A, b, Box(lo, up), name), *elementwise_backward(A, lines, name),
                      *kernel_backend.relax_lines(tanh, lo, up, None, name).__dict__.values())
        if name == "torch":
            assert kernel_calls == {"concretize": 0, "elementwise_backward": 0, "relax": 0}
    assert kernel_calls == {"concretize": 1, "elementwise_backward": 1, "relax": 2}
    for x, y in zip(outs["torch"], outs["triton"]):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    relu = OP_RELAXATIONS["Relu"]  # no kernel for it: the triton backend uses the op's own relaxation
    kernel_backend.relax_lines(relu, lo, up, None, "triton")
    assert kernel_calls["relax"] == 2


@pytest.mark.parametrize("name,kw", [("Sigmoid", {}), ("Sin", {}), ("Gelu", {"approximate": "tanh"})],
                         ids=["Sigmoid", "Sin", "Gelu-tanh"])
def test_relaxation_kernel_gradients_match_the_torch_path(name, kw, kernel_calls):
    """``kernels.relax.relax``: kernel forward, and the gradients with respect to ``l``, ``u`` and
    both tangent points are those of the PyTorch relaxation (float64, broadcast parameters)."""
    from genbab.kernels.relax import relax
    g = gen(21)
    lo = (torch.randn(2, 1, 5, generator=g, dtype=F64) * 2).to(DEV)
    up = lo + torch.rand(2, 1, 5, generator=g, dtype=F64).to(DEV) * 3 + 0.1
    t = torch.rand(2, 2, 3, 5, generator=g, dtype=F64).to(DEV)
    p_lo, p_up = lo + (up - lo) * t[0], lo + (up - lo) * t[1]  # [2, 3, 5]: one set per spec row
    w = torch.randn(4, 2, 3, 5, generator=g, dtype=F64).to(DEV)
    grads, values = [], []
    for use_kernel in (True, False):
        leaves = [x.clone().requires_grad_() for x in (lo, up, p_lo, p_up)]
        params = {"tangent_lower": leaves[2], "tangent_upper": leaves[3]}
        r = (relax if use_kernel else relax_reference)(name, leaves[0], leaves[1], params, **kw)
        lines = (r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper)
        sum((line * wi).sum() for line, wi in zip(lines, w)).backward()
        grads.append([x.grad for x in leaves])
        values.append(lines)
    assert kernel_calls["relax"] == 1
    for a, b in zip(*values):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def write_small_net(tmp_path: Path) -> Path:
    """x[1,4] -> MatMul -> Add -> Sigmoid -> MatMul -> Tanh -> MatMul -> y[1,3]."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (4, 6)), ("b1", (6,)), ("w2", (6, 5)), ("w3", (5, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Add", ["h1", "b1"], ["a1"]),
             helper.make_node("Sigmoid", ["a1"], ["s1"]), helper.make_node("MatMul", ["s1", "w2"], ["h2"]),
             helper.make_node("Tanh", ["h2"], ["t2"]), helper.make_node("MatMul", ["t2", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_bounds_agree_between_backends(tmp_path, method, kernel_calls):
    """Whole CROWN / alpha-CROWN bounds: the triton backend matches the torch backend.

    One alpha step only: Adam normalises gradients, so after a few steps rounding differences
    of 1e-13 between the backends can send the two optimisations down different (equally sound)
    paths; longer runs are checked for soundness instead (next test)."""
    import genbab
    from genbab.bounds import compute_bounds
    from genbab.bounds.alpha import AlphaConfig
    model = genbab.load_model(write_small_net(tmp_path))
    lower = torch.tensor([[-1.0, -0.5, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    upper = lower + torch.tensor([[0.5, 1.0, 0.3, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    res = {}
    for name in ("torch", "triton"):
        res[name] = compute_bounds(model, lower, upper, method, device=DEV, kernels=name,
                                   alpha=AlphaConfig(iterations=1, stop_when_positive=False))
        if name == "torch":
            assert sum(kernel_calls.values()) == 0
    assert all(n > 0 for n in kernel_calls.values()), kernel_calls
    for x, y in zip(res["torch"], res["triton"]):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_alpha_crown_on_the_triton_backend_is_sound(tmp_path, kernel_calls):
    """Several alpha steps on the triton backend: the bounds contain every sampled output and are
    no looser than CROWN's."""
    import genbab
    from genbab.bounds import compute_bounds
    from genbab.bounds.alpha import AlphaConfig
    model = genbab.load_model(write_small_net(tmp_path))
    lower = torch.tensor([[-1.0, -0.5, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    upper = lower + torch.tensor([[0.5, 1.0, 0.3, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    crown = compute_bounds(model, lower, upper, "crown", device=DEV, kernels="triton")
    before = dict(kernel_calls)
    lb, ub = compute_bounds(model, lower, upper, "alpha-crown", device=DEV, kernels="triton",
                            alpha=AlphaConfig(iterations=5, stop_when_positive=False))
    assert all(kernel_calls[k] > before[k] for k in kernel_calls), "the alpha steps ran the kernels"
    assert bool((lb >= crown[0] - 1e-12).all() and (ub <= crown[1] + 1e-12).all())
    g = torch.Generator().manual_seed(11)
    for b in range(2):
        xs = lower[b] + torch.rand(20_000, 4, generator=g, dtype=F64) * (upper[b] - lower[b])
        with torch.no_grad():
            ys = model.forward_flat(xs.to(model.dtype)).double()
        assert bool((ys >= lb[b] - 1e-5).all() and (ys <= ub[b] + 1e-5).all())


SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (the kernels on CPU tensors)")
def test_verify_with_triton_kernels_on_the_toy_model(kernel_calls):
    """A whole ``genbab.verify`` on the CPU with the Triton kernels (interpreter): the verdict of
    the torch run, and every kernel launched. Then branch and bound itself on the kernels: the
    toy case with a floor above what alpha-CROWN proves at the root, so domains get split,
    bounded with alpha/beta optimisation (gradients through the relaxation kernel) and proved."""
    import genbab
    from genbab.bab.loop import BabConfig, BranchAndBound
    from genbab.bounds import engine_for
    model, spec = SPECS / "toy_mlp.onnx", SPECS / "toy_mlp_robust.vnnlib"
    expected = genbab.verify(model, spec, timeout=120, device="cpu", kernels="torch")
    assert sum(kernel_calls.values()) == 0
    got = genbab.verify(model, spec, timeout=120, device="cpu", kernels="triton")
    assert got.status == expected.status == "unsat"
    assert all(n > 0 for n in kernel_calls.values()), kernel_calls
    loaded, case = genbab.load_model(model), genbab.load_spec(spec)
    floor = 0.95  # root CROWN bound 0.685 < 0.95 < 1.057 (sampled minimum): proved by splitting only
    statuses = {}
    for kernels in ("torch", "triton"):
        before = dict(kernel_calls)
        bab = BranchAndBound(engine_for(loaded, EngineConfig.resolve("cpu", kernels)), case.lower[0], case.upper[0],
                             case.C[0], case.d[0] + floor, BabConfig(alpha_iterations=2, input_batch_size=8))
        result = bab.run(time.monotonic() + 120)
        assert result.visited > 1
        statuses[kernels] = result.status
        launched = [kernel_calls[k] > before[k] for k in kernel_calls]
        assert all(launched) if kernels == "triton" else not any(launched), kernel_calls
    assert statuses == {"torch": "unsat", "triton": "unsat"}
