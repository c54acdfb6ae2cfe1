"""The einsum / mat-vec fast paths of the nonlinear backward steps equal the elementwise references."""

from __future__ import annotations

import pytest
import torch

from genbab.bounds import nonlinear
from genbab.bounds.nonlinear import (bilinear_backward, bilinear_backward_reference, elementwise_backward,
                                     elementwise_backward_reference, matmul_backward, matmul_backward_reference,
                                     matmul_expand)
from genbab.ops.bilinear import relax_mul
from genbab.ops.relaxation import Relaxation

F32, F64 = torch.float32, torch.float64


def tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == F64 else {"rtol": 2e-5, "atol": 2e-4}


def rand(g, shape, dtype, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)


def coefficients(g, shape, dtype):
    """Random ``A`` with exact zeros (a fifth) so both signs and ``A == 0`` occur."""
    A = rand(g, shape, dtype)
    return torch.where(torch.rand(*shape, generator=g) < 0.2, torch.zeros((), dtype=dtype), A)


def assert_same(fast, ref, dtype):
    assert len(fast) == len(ref)
    for f, r in zip(fast, ref):
        assert f.shape == r.shape
        torch.testing.assert_close(f, r, **tol(dtype))


def fast_only(fn, *args):
    """``fn(*args)``, failing if it falls back to the elementwise form (``_times`` or a reference)."""
    def boom(*_args, **_kwargs):
        raise AssertionError("fell back to the elementwise form")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nonlinear, "_times", boom)
        mp.setattr(nonlinear, "matmul_backward_reference", boom)
        return fn(*args)


# (B, S, batch dims of A, i, j, k, shape of the planes or None for full [B, 1, *batch, i, j, k])
MATMUL_CASES = [
    (1, 1, (), 3, 4, 5, None),
    (2, 7, (3,), 4, 5, 6, None),
    (1, 5, (1, 3), 6, 6, 4, None),                # vit-like [B, S, 1, heads, i, k]
    (3, 4, (2,), 3, 4, 2, "per_row"),           # planes [B, S, ...]: alpha per output row
    (2, 3, (2,), 3, 4, 5, "no_lead"),           # planes [*batch, i, j, k] without B, S
    (2, 3, (2,), 3, 4, 5, "size1"),             # planes [1, 1, 1, i, j, k]: broadcast over B, batch
    (2, 3, (2,), 3, 4, 5, "bcast_i"),           # planes [B, 1, 2, 1, j, k]: broadcast over i
    (2, 3, (2,), 3, 4, 5, "bcast_k"),           # planes [B, 1, 2, i, j, 1]: broadcast over k
    (2, 3, (1,), 3, 4, 5, "wider"),             # planes [B, 1, 3, i, j, k], A's batch dim is 1
]


def matmul_planes(g, B, S, batch, i, j, k, kind, dtype):
    full = (B, 1, *batch, i, j, k)
    shape = {None: full, "per_row": (B, S, *batch, i, j, k), "no_lead": (*batch, i, j, k),
             "size1": (1, 1, *(1 for _ in batch), i, j, k), "bcast_i": (B, 1, *batch, 1, j, k),
             "bcast_k": (B, 1, *batch, i, j, 1), "wider": (B, 1, 3, i, j, k)}[kind]
    return tuple(tuple(rand(g, shape, dtype, 2.0) for _ in range(3)) for _ in range(2))


def out_shapes(batch, i, j, k, kind):
    if kind == "wider":
        return (1, i, j), (1, j, k)
    return (*batch, i, j), (*batch, j, k)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("case", MATMUL_CASES, ids=lambda c: f"{c[:6]}-{c[6]}")
def test_matmul_backward_matches_reference(case, dtype):
    B, S, batch, i, j, k, kind = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    A = coefficients(g, (B, S, *batch, i, k), dtype)
    planes = matmul_planes(g, B, S, batch, i, j, k, kind, dtype)
    x_shape, y_shape = out_shapes(batch, i, j, k, kind)
    ref = matmul_backward_reference(A, planes, x_shape, y_shape)
    assert_same(fast_only(matmul_backward, A, planes, x_shape, y_shape), ref, dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("B,S,x_shape,y_shape", [(1, 3, (2, 4, 5), (2, 5, 3)), (2, 6, (1, 3, 4), (2, 4, 6)),
                                                 (2, 4, (3, 4), (4, 2))])
def test_matmul_backward_mccormick_planes(B, S, x_shape, y_shape, per_row, dtype):
    """Planes as the engine builds them: McCormick of the expanded operand intervals."""
    g = torch.Generator().manual_seed(B * 100 + S)
    lx, ly = rand(g, (B, *x_shape), dtype), rand(g, (B, *y_shape), dtype)
    ux, uy = lx + rand(g, lx.shape, dtype).abs(), ly + rand(g, ly.shape, dtype).abs()
    ex = [t.unsqueeze(1) for t in matmul_expand(lx, ux, ly, uy)]
    shape = torch.broadcast_shapes(*(t.shape for t in ex))
    params = None
    if per_row:
        rows = (B, S, *shape[2:])
        params = {"alpha_lower": torch.rand(*rows, generator=g, dtype=F64).to(dtype),
                  "alpha_upper": torch.rand(*rows, generator=g, dtype=F64).to(dtype)}
    relaxed = relax_mul(*ex, params)
    planes = (relaxed.lower, relaxed.upper)
    out = torch.broadcast_shapes(x_shape[:-2], y_shape[:-2]) + (x_shape[-2], y_shape[-1])
    A = coefficients(g, (B, S, *out), dtype)
    ref = matmul_backward_reference(A, planes, x_shape, y_shape)
    assert_same(fast_only(matmul_backward, A, planes, x_shape, y_shape), ref, dtype)


def test_matmul_backward_infinite_bias_falls_back():
    """An infinite plane bias under zero coefficients: the reference's ``0 * inf = 0``."""
    g = torch.Generator().manual_seed(7)
    B, S, i, j, k = 2, 3, 3, 4, 5
    A = coefficients(g, (B, S, i, k), F64)
    A[:, :, 1, 2] = 0.0
    planes = matmul_planes(g, B, S, (), i, j, k, None, F64)
    (lxc, lyc, lb), (uxc, uyc, ub) = planes
    lb[:, :, 1, :, 2], ub[:, :, 1, :, 2] = -torch.inf, torch.inf
    fast = matmul_backward(A, planes, (i, j), (j, k))
    assert torch.isfinite(fast[2]).all()
    assert_same(fast, matmul_backward_reference(A, planes, (i, j), (j, k)), F64)


def test_matmul_backward_gradients_match():
    """alpha-CROWN differentiates through the planes: same gradients as the reference."""
    g = torch.Generator().manual_seed(3)
    B, S, batch, i, j, k = 2, 4, (3,), 3, 4, 5
    A = coefficients(g, (B, S, *batch, i, k), F64)
    planes = matmul_planes(g, B, S, batch, i, j, k, None, F64)
    w = [rand(g, (B, S, *batch, i, j), F64), rand(g, (B, S, *batch, j, k), F64), rand(g, (B, S), F64)]
    grads = []
    for fn in (matmul_backward, matmul_backward_reference):
        leaves = [t.clone().requires_grad_() for plane in planes for t in plane]
        out = fn(A, (tuple(leaves[:3]), tuple(leaves[3:])), (*batch, i, j), (*batch, j, k))
        sum((o * wi).sum() for o, wi in zip(out, w)).backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# (B, S, shape, lines' leading dims): (B, 1) shared by the rows, (B, S) per row, (1, 1) broadcast
ELEMENTWISE_CASES = [(1, 1, (5,), "B1"), (2, 4, (3, 7), "B1"), (3, 9, (40,), "BS"), (2, 20, (2, 3, 4), "B1"),
                     (3, 5, (4, 6), "11"), (2, 3, (1, 17, 96), "B1")]


def random_lines(g, B, S, shape, lead, dtype):
    head = {"B1": (B, 1), "BS": (B, S), "11": (1, 1)}[lead]
    return Relaxation(*(rand(g, (*head, *shape), dtype, s) for s in (1.0, 3.0, 1.0, 3.0)))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=str)
def test_elementwise_backward_matches_reference(case, dtype):
    B, S, shape, lead = case
    g = torch.Generator().manual_seed(B * 1000 + S)
    A = coefficients(g, (B, S, *shape), dtype)
    lines = random_lines(g, B, S, shape, lead, dtype)
    ref = elementwise_backward_reference(A, lines)
    assert_same(fast_only(elementwise_backward, A, lines), ref, dtype)


def test_elementwise_backward_matvec_used(monkeypatch):
    """Lines shared by the rows: the bias is a mat-vec, no elementwise product of ``A``'s size."""
    g = torch.Generator().manual_seed(11)
    A = coefficients(g, (2, 6, 3, 4), F64)
    lines = random_lines(g, 2, 6, (3, 4), "B1", F64)
    products = []
    real_mul = torch.Tensor.__mul__
    monkeypatch.setattr(torch.Tensor, "__mul__", lambda a, b: products.append(1) or real_mul(a, b))
    _, bias = elementwise_backward(A, lines)
    monkeypatch.undo()
    assert len(products) == 1  # the slope product only
    torch.testing.assert_close(bias, elementwise_backward_reference(A, lines)[1], rtol=1e-12, atol=1e-12)


def test_elementwise_backward_infinite_lines_fall_back():
    A = torch.tensor([[[2.0, -1.0, 0.0, 0.0]]], dtype=F64)
    inf = torch.inf
    lines = Relaxation(torch.tensor([[[0.5, 1.0, 2.0, 0.0]]], dtype=F64),
                       torch.tensor([[[1.0, -inf, inf, float("nan")]]], dtype=F64),
                       torch.tensor([[[1.0, 0.25, 3.0, 0.0]]], dtype=F64),
                       torch.tensor([[[inf, 2.0, -inf, float("nan")]]], dtype=F64))
    coeff, bias = elementwise_backward(A, lines)
    assert coeff.tolist() == [[[1.0, -0.25, 0.0, 0.0]]]
    assert bias.tolist() == [[0.0]]  # 2*1 + (-1)*2


def test_elementwise_backward_gradients_match():
    g = torch.Generator().manual_seed(5)
    A = coefficients(g, (2, 3, 6), F64)
    base = random_lines(g, 2, 3, (6,), "B1", F64)
    w = rand(g, (2, 3, 6), F64)
    grads = []
    for fn in (elementwise_backward, elementwise_backward_reference):
        leaves = [t.clone().requires_grad_() for t in (base.slope_lower, base.bias_lower, base.slope_upper,
                                                       base.bias_upper)]
        coeff, bias = fn(A, Relaxation(*leaves))
        ((coeff * w).sum() + bias.pow(2).sum()).backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("B,S,x_shape,y_shape,lead", [(2, 5, (3, 4), (3, 4), "B1"), (2, 3, (3, 1), (1, 4), "B1"),
                                                      (1, 4, (6,), (6,), "BS")])
def test_bilinear_backward_matches_reference(B, S, x_shape, y_shape, lead, dtype):
    g = torch.Generator().manual_seed(B + S)
    out = torch.broadcast_shapes(x_shape, y_shape)
    A = coefficients(g, (B, S, *out), dtype)
    head = (B, S) if lead == "BS" else (B, 1)
    planes = tuple(tuple(rand(g, (*head, *out), dtype) for _ in range(3)) for _ in range(2))
    ref = bilinear_backward_reference(A, planes, x_shape, y_shape)
    assert_same(fast_only(bilinear_backward, A, planes, x_shape, y_shape), ref, dtype)


# ----------------------------------------------------------------------------- allocator settings


def test_tune_malloc_on_glibc():
    """``mallopt`` accepts the settings (run in a child: they last for the whole process)."""
    import subprocess
    import sys

    from genbab.memory_tuning import _is_glibc
    code = "from genbab.memory_tuning import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(_is_glibc())


def test_tune_malloc_does_nothing_off_glibc(monkeypatch):
    import os

    from genbab import memory_tuning

    def no_glibc(name):
        raise ValueError(name)
    monkeypatch.setattr(os, "confstr", no_glibc)
    monkeypatch.setattr(memory_tuning.ctypes, "CDLL", lambda *a: pytest.fail("loaded libc off glibc"))
    assert memory_tuning.tune_malloc() is False


# ----------------------------------------------------------------------------- soundness on real points


def _random_box(shape, gen):
    lo = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    return lo, lo + torch.rand(shape, generator=gen, dtype=torch.float64) * 3


@pytest.mark.parametrize("seed", range(4))
def test_matmul_backward_is_a_sound_lower_bound_on_sampled_points(seed) -> None:
    """``A (x @ y) >= A_x . x + A_y . y + bias`` for points sampled in the boxes of ``x`` and ``y``,
    with McCormick planes at random alpha, as the engine builds them (the fast einsum path)."""
    from genbab.bounds.nonlinear import matmul_backward, matmul_expand
    from genbab.ops.bilinear import relax_mul

    gen = torch.Generator().manual_seed(seed)
    B, S, i, j, k = 2, 3, 4, 5, 3
    lx, ux = _random_box((B, i, j), gen)
    ly, uy = _random_box((B, j, k), gen)
    ex = matmul_expand(lx, ux, ly, uy)
    # pure McCormick planes (alpha 0 or 1) are tight at box corners, where a wrong plane shows
    params = {"alpha_lower": torch.randint(0, 2, (B, 1, i, j, k), generator=gen).double(),
              "alpha_upper": torch.randint(0, 2, (B, 1, i, j, k), generator=gen).double()}
    relaxed = relax_mul(*(t.unsqueeze(1) for t in ex), params)
    A = torch.randn(B, S, i, k, generator=gen, dtype=torch.float64)
    A_x, A_y, bias = matmul_backward(A, (relaxed.lower, relaxed.upper), (i, j), (j, k))
    n = 4000
    u_x = torch.rand(B, n, i, j, generator=gen, dtype=torch.float64)
    u_y = torch.rand(B, n, j, k, generator=gen, dtype=torch.float64)
    u_x[:, : n // 2], u_y[:, : n // 2] = u_x[:, : n // 2].round(), u_y[:, : n // 2].round()  # box corners
    x = lx.unsqueeze(1) + u_x * (ux - lx).unsqueeze(1)
    y = ly.unsqueeze(1) + u_y * (uy - ly).unsqueeze(1)
    true = torch.einsum("bsik,bnik->bsn", A, x @ y)
    line = (torch.einsum("bsij,bnij->bsn", A_x, x) + torch.einsum("bsjk,bnjk->bsn", A_y, y)
            + bias.unsqueeze(-1))
    assert bool((true >= line - 1e-9).all())


@pytest.mark.parametrize("seed", range(4))
def test_elementwise_backward_is_a_sound_lower_bound_on_sampled_points(seed) -> None:
    """``A sigmoid(z) >= coeff . z + bias`` for points sampled in the box (mat-vec bias path)."""
    from genbab.bounds.nonlinear import elementwise_backward
    from genbab.ops.registry import elementwise_table

    gen = torch.Generator().manual_seed(seed)
    B, S, n_z = 2, 3, 7
    lo, hi = _random_box((B, n_z), gen)
    lines = elementwise_table()["Sigmoid"].relax(lo.unsqueeze(1), hi.unsqueeze(1))
    A = torch.randn(B, S, n_z, generator=gen, dtype=torch.float64)
    coeff, bias = elementwise_backward(A, lines)
    z = lo.unsqueeze(1) + torch.rand(B, 5000, n_z, generator=gen, dtype=torch.float64) * (hi - lo).unsqueeze(1)
    true = torch.einsum("bsn,bpn->bsp", A, torch.sigmoid(z))
    line = torch.einsum("bsn,bpn->bsp", coeff, z) + bias.unsqueeze(-1)
    assert bool((true >= line - 1e-9).all())
