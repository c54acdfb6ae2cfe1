"""One backward step through an elementwise relaxation, fused.

With lines ``s_l z + b_l <= h(z) <= s_u z + b_u`` a lower bound ``A y`` (``A`` ``[B, S, n]``)
becomes ``A' z + c`` with

    A' = A+ s_l + A- s_u,        c[k, s] = sum_j A+ b_l + A- b_u     (A+ = max(A, 0), A- = min(A, 0))

where a zero coefficient ignores its line (``0 * inf = 0``). One program handles ``BLOCK_S``
spec rows of one domain, sweeps ``n`` in ``BLOCK_N`` chunks, writes ``A'`` and accumulates the
bias in registers: ``A`` and the four line tensors are read once, ``A'`` written once (the torch
path materialises ``A+``, ``A-``, two products and two bias products). The lines may broadcast
over the spec dimension (stride 0, as ``relax(l.unsqueeze(1), ...)`` returns them).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from genbab.kernels._common import check_launchable, pow2


@triton.jit
def _backward_kernel(A_ptr, sl_ptr, bl_ptr, su_ptr, bu_ptr, coeff_ptr, bias_ptr, S, N,
                     sa_b, sa_s, sa_n, ls_b, ls_s, ls_n,
                     BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program ``(k, j)``: rows ``j*BLOCK_S ...`` of domain ``k``; the four line tensors share
    the strides ``ls_*`` (the launcher broadcasts them to one layout)."""
    k = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    rmask = rows < S
    cols0 = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_S], dtype=coeff_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + cols0
        mask = rmask[:, None] & (cols < N)[None, :]
        a = tl.load(A_ptr + k * sa_b + rows[:, None] * sa_s + cols[None, :] * sa_n, mask=mask, other=0.0)
        off = k * ls_b + rows[:, None] * ls_s + cols[None, :] * ls_n
        pos = a > 0
        neg = a < 0
        s = tl.where(pos, tl.load(sl_ptr + off, mask=mask & pos, other=0.0),
                     tl.load(su_ptr + off, mask=mask & neg, other=0.0))
        b = tl.where(pos, tl.load(bl_ptr + off, mask=mask & pos, other=0.0),
                     tl.load(bu_ptr + off, mask=mask & neg, other=0.0))
        tl.store(coeff_ptr + (k * S + rows[:, None]) * N + cols[None, :], a * s, mask=mask)
        acc += tl.sum(tl.where(pos | neg, a * b, 0.0), axis=1)
    tl.store(bias_ptr + k * S + rows, acc, mask=rmask)


def _times(A: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.where(A == 0, torch.zeros((), dtype=A.dtype, device=A.device), A * value)


def backward_reference(A: torch.Tensor, slope_lower, bias_lower, slope_upper, bias_upper
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference (the formulas above, as :func:`genbab.bounds.nonlinear.elementwise_backward`)."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    coeff = pos * slope_lower + neg * slope_upper
    bias = _times(pos, bias_lower) + _times(neg, bias_upper)
    return coeff, bias.reshape(A.shape[0], A.shape[1], -1).sum(-1)


def _line_views(A: torch.Tensor, lines) -> list[torch.Tensor]:
    """The four line tensors broadcast to ``A``'s shape and viewed ``[B, S, n]`` with one layout."""
    B, S = A.shape[0], A.shape[1]
    views = [torch.as_tensor(t, dtype=A.dtype, device=A.device).expand(A.shape) for t in lines]
    if len({v.stride() for v in views}) > 1:
        views = [v.contiguous() for v in views]
    out = []
    for v in views:
        try:
            out.append(v.view(B, S, -1))
        except RuntimeError:  # strides not collapsible: copy
            out.append(v.contiguous().view(B, S, -1))
    if len({v.stride() for v in out}) > 1:
        out = [v.contiguous() for v in out]
    return out


def backward_triton(A: torch.Tensor, slope_lower, bias_lower, slope_upper, bias_upper
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel; returns ``(A', c)`` with ``A'`` shaped like ``A`` and ``c`` ``[B, S]``."""
    B, S = A.shape[0], A.shape[1]
    A3 = A.reshape(B, S, math.prod(A.shape[2:]))
    N = A3.shape[2]
    sl, bl, su, bu = _line_views(A, (slope_lower, bias_lower, slope_upper, bias_upper))
    check_launchable(A3, sl)
    coeff = torch.empty((B, S, N), dtype=A.dtype, device=A.device)
    bias = torch.empty((B, S), dtype=A.dtype, device=A.device)
    if B * S == 0:
        return coeff.reshape(A.shape), bias
    if N == 0:
        return coeff.reshape(A.shape), bias.zero_()
    block_s = pow2(S, 1, 16)
    block_n = pow2(N, 16, 256 if A.is_cuda else 4096)
    grid = (B, triton.cdiv(S, block_s))
    _backward_kernel[grid](A3, sl, bl, su, bu, coeff, bias, S, N,
                           A3.stride(0), A3.stride(1), A3.stride(2),
                           sl.stride(0), sl.stride(1), sl.stride(2),
                           BLOCK_S=block_s, BLOCK_N=block_n)
    return coeff.reshape(A.shape), bias


class _ElementwiseBackward(torch.autograd.Function):
    """Kernel forward, PyTorch backward: the gradient of the reference formulas (torch's
    convention: no gradient to ``A`` where ``A = 0``)."""

    @staticmethod
    def forward(ctx, A, sl, bl, su, bu):
        ctx.save_for_backward(A, sl, bl, su, bu)
        return backward_triton(A, sl, bl, su, bu)

    @staticmethod
    def backward(ctx, g_coeff, g_bias):
        A, sl, bl, su, bu = ctx.saved_tensors
        need = ctx.needs_input_grad
        gb = g_bias.reshape(*g_bias.shape, *([1] * (A.dim() - 2)))
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        zero = torch.zeros((), dtype=A.dtype, device=A.device)
        grads = [None] * 5
        if need[0]:
            grads[0] = (g_coeff * torch.where(A > 0, sl, torch.where(A < 0, su, zero))
                        + gb * torch.where(A > 0, bl, torch.where(A < 0, bu, zero)))
        for i, (g, w) in enumerate(((g_coeff, pos), (gb, pos), (g_coeff, neg), (gb, neg)), start=1):
            if need[i]:
                grads[i] = (g * w).sum_to_size(ctx.saved_tensors[i].shape)
        return tuple(grads)


def elementwise_backward(A: torch.Tensor, slope_lower, bias_lower, slope_upper, bias_upper
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel with autograd for ``A`` and the four line tensors."""
    ts = (A, slope_lower, bias_lower, slope_upper, bias_upper)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in ts):
        return _ElementwiseBackward.apply(*ts)
    return backward_triton(*ts)
