"""Concretization of linear bounds over boxes: ``min_{l <= x <= u} A x + b``, fused.

For ``A`` ``[B, S, n]``, ``b`` ``[B, S]`` and boxes ``l``, ``u`` ``[B, n]``:

    out[k, s] = b[k, s] + sum_j min(A[k,s,j] l[k,j], A[k,s,j] u[k,j])      (a zero A term is 0)

which equals ``A x0 - |A| eps + b`` (centre ``x0``, radius ``eps``) in exact arithmetic but
needs neither rounded centre nor radius and stays finite where one bound is infinite and the
coefficient points the other way. One program reduces ``BLOCK_S`` spec rows of one domain over
``n`` in ``BLOCK_N`` chunks, reading each coefficient once (the torch path reads ``A`` twice,
for ``A x0`` and ``|A| eps``).

``rigorous=True`` also accumulates ``m = sum_j |term_j|`` and returns
``out - (n + 4) * eps * 1.01 * (m + |b|) - (n + 4) * tiny``: a true lower bound of the exact
real value despite the rounding of the products and of the sum (any summation order has error
at most ``gamma_{n+1} (m + |b|)``, ``gamma_k = k u / (1 - k u)``, ``u = eps / 2``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from genbab.kernels._common import check_launchable, pow2


@triton.jit
def _concretize_kernel(A_ptr, lo_ptr, up_ptr, b_ptr, out_ptr, mag_ptr, S, N,
                       sa_b, sa_s, sa_n, sl_b, sl_n, su_b, su_n, sb_b, sb_s,
                       BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program ``(k, j)``: rows ``j*BLOCK_S ...`` of domain ``k``; writes value and magnitude."""
    k = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    rmask = rows < S
    cols0 = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_S], dtype=out_ptr.dtype.element_ty)
    mag = tl.zeros([BLOCK_S], dtype=out_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + cols0
        cmask = cols < N
        lo = tl.load(lo_ptr + k * sl_b + cols * sl_n, mask=cmask, other=0.0)
        up = tl.load(up_ptr + k * su_b + cols * su_n, mask=cmask, other=0.0)
        a_ptrs = A_ptr + k * sa_b + rows[:, None] * sa_s + cols[None, :] * sa_n
        a = tl.load(a_ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0)
        term = tl.minimum(a * lo[None, :], a * up[None, :])
        term = tl.where(a == 0, 0.0, term)
        acc += tl.sum(term, axis=1)
        mag += tl.sum(tl.abs(term), axis=1)
    bias = tl.load(b_ptr + k * sb_b + rows * sb_s, mask=rmask, other=0.0)
    tl.store(out_ptr + k * S + rows, acc + bias, mask=rmask)
    tl.store(mag_ptr + k * S + rows, mag + tl.abs(bias), mask=rmask)


def _error_bound(mag: torch.Tensor, n: int) -> torch.Tensor:
    """Upper bound of the rounding error of an ``n``-term sum of rounded products plus bias."""
    fi = torch.finfo(mag.dtype)
    return (n + 4) * fi.eps * 1.01 * mag + (n + 4) * fi.tiny


def _flatten(A: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    B, S = A.shape[0], A.shape[1]
    A3 = A.reshape(B, S, math.prod(A.shape[2:]))
    lo = lower.reshape(lower.shape[0], -1).to(A.dtype).expand(B, -1)
    up = upper.reshape(upper.shape[0], -1).to(A.dtype).expand(B, -1)
    return A3, lo, up


def concretize_reference(A: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor,
                         upper: torch.Tensor, rigorous: bool = False) -> torch.Tensor:
    """PyTorch reference: ``b + sum_j min(A l, A u)`` (zero coefficients contribute 0)."""
    A3, lo, up = _flatten(A, lower, upper)
    term = torch.minimum(A3 * lo.unsqueeze(1), A3 * up.unsqueeze(1))
    term = torch.where(A3 == 0, torch.zeros((), dtype=A3.dtype), term)
    out = term.sum(-1) + bias
    if rigorous:
        out = out - _error_bound(term.abs().sum(-1) + bias.abs(), A3.shape[-1])
    return out


def concretize_triton(A: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor,
                      upper: torch.Tensor, rigorous: bool = False) -> torch.Tensor:
    """Launch the fused kernel: ``A`` ``[B, S, *shape]``, ``bias`` ``[B, S]``, boxes ``[B or 1, *shape]``."""
    A3, lo, up = _flatten(A, lower, upper)
    B, S, N = A3.shape
    bias = bias.to(A.dtype).expand(B, S)
    check_launchable(A3, lo, up, bias)
    out = torch.empty((B, S), dtype=A.dtype, device=A.device)
    mag = torch.empty_like(out)
    if B * S == 0:
        return out
    block_s = pow2(S, 1, 16)
    block_n = pow2(N, 16, 256 if A.is_cuda else 4096)
    grid = (B, triton.cdiv(S, block_s))
    _concretize_kernel[grid](A3, lo, up, bias, out, mag, S, N,
                             A3.stride(0), A3.stride(1), A3.stride(2), lo.stride(0), lo.stride(1),
                             up.stride(0), up.stride(1), bias.stride(0), bias.stride(1),
                             BLOCK_S=block_s, BLOCK_N=block_n)
    return out - _error_bound(mag, N) if rigorous else out


class _Concretize(torch.autograd.Function):
    """Kernel forward; backward ``dA = g * (l if A > 0, u if A < 0, (l+u)/2 if A = 0)``, ``db = g``
    (the gradient of the torch path ``A x0 - |A| eps + b``)."""

    @staticmethod
    def forward(ctx, A, bias, lower, upper):
        ctx.save_for_backward(A, lower, upper)
        ctx.bias_shape = bias.shape
        return concretize_triton(A, bias, lower, upper)

    @staticmethod
    def backward(ctx, g):
        A, lower, upper = ctx.saved_tensors
        A3, lo, up = _flatten(A, lower, upper)
        lo, up = lo.unsqueeze(1), up.unsqueeze(1)
        point = torch.where(A3 > 0, lo, torch.where(A3 < 0, up, 0.5 * (lo + up)))
        gA = (g.unsqueeze(-1) * point).reshape(A.shape) if ctx.needs_input_grad[0] else None
        gb = g.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[1] else None
        return gA, gb, None, None


def concretize(A: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor,
               upper: torch.Tensor) -> torch.Tensor:
    """The kernel with autograd for ``A`` and ``bias`` (the box gets no gradient)."""
    if torch.is_grad_enabled() and (A.requires_grad or bias.requires_grad):
        return _Concretize.apply(A, bias, lower, upper)
    return concretize_triton(A, bias, lower, upper)
