"""The concretisation behind every ``lb > 0`` decision is a true lower bound despite rounding.

Exact values are computed with :class:`fractions.Fraction` from the very floats the engine
holds (coefficients, bias, box), so "exact" means the real-valued minimum of the linear bound.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from genbab.bounds.box import Box, concretize_lower


def exact_minimum(A: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> list[list[Fraction]]:
    """``b + sum_j min(A_j l_j, A_j u_j)`` per ``[batch, row]`` in exact rational arithmetic."""
    out = []
    for k in range(A.shape[0]):
        rows = []
        for s in range(A.shape[1]):
            total = Fraction(float(b[k, s]))
            for j in range(A.shape[2]):
                a = Fraction(float(A[k, s, j]))
                total += min(a * Fraction(float(lo[k, j])), a * Fraction(float(hi[k, j])))
            rows.append(total)
        out.append(rows)
    return out


def naive(A: torch.Tensor, b: torch.Tensor, box: Box) -> torch.Tensor:
    """The concretisation without the rounding allowance (what the engine computed before)."""
    A3 = A.reshape(A.shape[0], A.shape[1], -1)
    center = box.center.reshape(box.batch, -1, 1).to(A.dtype)
    radius = box.radius.reshape(box.batch, -1, 1).to(A.dtype)
    return torch.bmm(A3, center).squeeze(-1) - torch.bmm(A3.abs(), radius).squeeze(-1) + b


def flipping_case(dtype: torch.dtype, big: float):
    """A one-row case ``big * x_0 - big * x_1 + b`` on a point box where the rounded product
    lies above the exact one, and ``b`` sits between minus the rounded and minus the exact sum:
    naive arithmetic says ``> 0``, the exact minimum is ``< 0``. Searched over ``x_0 = 1 + k ulp``."""
    eps = torch.finfo(dtype).eps
    for k in range(1, 200):
        A = torch.tensor([[[big, -big]]], dtype=dtype)
        lo = torch.tensor([[1 + k * eps, 1.0]], dtype=dtype)
        box = Box(lo, lo.clone())
        v = float(naive(A, torch.zeros(1, 1, dtype=dtype), box)[0, 0])
        m = exact_minimum(A, torch.zeros(1, 1, dtype=dtype), lo, lo)[0][0]
        if Fraction(v) > m:
            b = torch.tensor([[float(-(Fraction(v) + m) / 2)]], dtype=dtype)
            if float(naive(A, b, box)[0, 0]) > 0 and exact_minimum(A, b, lo, lo)[0][0] < 0:
                return A, b, box
    raise AssertionError("no flipping case found")


@pytest.mark.parametrize("dtype,big", [(torch.float64, 3e15), (torch.float32, 3e6)])
def test_a_row_that_naive_rounding_proves_stays_unproved(dtype, big):
    """Where naive rounding would flip the sign of a violated row to "proved", the rigorous
    concretisation stays at or below the exact (negative) minimum."""
    A, b, box = flipping_case(dtype, big)
    exact = exact_minimum(A, b, box.lower, box.upper)[0][0]
    assert exact < 0 < float(naive(A, b, box)[0, 0])
    rigorous = concretize_lower(A, b, box)
    assert not bool((rigorous > 0).any())
    assert Fraction(float(rigorous[0, 0])) <= exact


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_concretisation_never_exceeds_the_exact_minimum_under_cancellation(dtype):
    """Random rows with huge cancelling coefficients and tiny boxes: never above the exact value,
    and not looser than a few hundred rounding units of the magnitude."""
    g = torch.Generator().manual_seed(3)
    B, S, n = 4, 6, 40
    scale = 10.0 ** torch.randint(-3, 9, (B, S, n), generator=g)
    A = (torch.randn(B, S, n, generator=g, dtype=torch.float64) * scale).to(dtype)
    center = torch.randn(B, n, generator=g, dtype=torch.float64)
    width = 10.0 ** torch.randint(-12, 0, (B, n), generator=g) * torch.rand(B, n, generator=g, dtype=torch.float64)
    lo, hi = (center - width).to(dtype), (center + width).to(dtype)
    box = Box(lo, hi)
    nominal = naive(A, torch.zeros(B, S, dtype=dtype), box)
    b = -nominal  # rows whose exact minimum sits within rounding of zero
    got = concretize_lower(A, b, box)
    exact = exact_minimum(A, b, lo, hi)
    magnitude = (A.abs().double() * torch.maximum(lo.abs(), hi.abs()).double().unsqueeze(1)).sum(-1) + b.abs().double()
    eps = torch.finfo(dtype).eps
    for k in range(B):
        for s in range(S):
            assert Fraction(float(got[k, s])) <= exact[k][s]
            assert float(exact[k][s]) - float(got[k, s]) <= 4 * (n + 4) * eps * float(magnitude[k, s]) + 1e-300


def test_output_interval_rows_are_rounded_down_unless_exact() -> None:
    """``interval_rows`` (an output row bounded by the output's own interval): never above the exact
    rational ``C+ lo + C- hi``, also where nearest rounding lands above it (1 + 1.2e-16 rounds up
    to 1 + 2^-52); a single +-1 coefficient is exact and kept as is."""
    from fractions import Fraction

    from genbab.bounds.engine import interval_rows

    lo = torch.tensor([[1.0, 1.2e-16, 3.0, -2.5]], dtype=torch.float64)
    hi = torch.tensor([[2.0, 1.3e-16, 4.0, 7.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.1, 0.7, -0.3, 0.0]), torch.tensor([0.0, 0.0, 0.0, -1.0])]
    rows += [torch.randn(4, generator=gen, dtype=torch.float64) for _ in range(20)]
    C = torch.stack([r.double() for r in rows]).unsqueeze(0)
    lb = interval_rows(C, lo, hi)[0]
    for s, row in enumerate(C[0].tolist()):
        exact = sum(Fraction(c) * Fraction(lo[0, i].item() if c > 0 else hi[0, i].item()) for i, c in enumerate(row))
        assert Fraction(lb[s].item()) <= exact, (s, row)
    assert float(lb[2]) == -7.0  # one -1 coefficient: exact


def test_subtract_rounds_down_and_keeps_exact_differences() -> None:
    """``rounding.subtract(v, e)`` is at most the exact ``v - e`` (random and adversarial pairs,
    float64 and float32), and equals it when the difference is representable (``0 - 0``, ``1 - 0.5``)."""
    from fractions import Fraction

    from genbab.bounds.rounding import subtract

    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float64, torch.float32):
        v = torch.cat([torch.randn(2000, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-20, 20, (2000,), generator=gen),
                       torch.tensor([1.0, 0.0, 1.0, 3.0, 1e16])]).to(dtype)
        e = torch.cat([torch.rand(2000, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-30, 5, (2000,), generator=gen),
                       torch.tensor([1.2e-16, 0.0, 0.5, 1e-300, 1.0])]).to(dtype)
        r = subtract(v, e)
        for a, b, c in zip(v.tolist(), e.tolist(), r.tolist()):
            assert Fraction(c) <= Fraction(a) - Fraction(b), (dtype, a, b, c)
        assert float(r[-4]) == 0.0 and float(r[-3]) == 0.5  # exact differences are not moved
