"""Which implementation serves the hot bound computations, Triton kernels or PyTorch, and the
routed calls themselves. No process-wide switch: the backend is a field of the engine's
:class:`~genbab.bounds.config.EngineConfig`, passed to each routed call.

:func:`backend_for` ``(device, requested)`` resolves the user's choice for one device:

- ``auto``: ``"triton"`` on CUDA devices when Triton imports, ``"torch"`` elsewhere;
- ``triton``: ``"triton"`` on CUDA, and on the CPU only with ``TRITON_INTERPRET=1`` (Triton's
  interpreter: tests, far slower than PyTorch); otherwise a one-line error;
- ``torch``: ``"torch"``.

Routed (with ``backend == "triton"``): :func:`genbab.bounds.box.concretize_lower`,
:func:`genbab.bounds.nonlinear.elementwise_backward` and the relaxations of Sigmoid, Tanh,
Erf, Sin, Cos and GeLU (:func:`relax_lines`). All three kernels are differentiable (the
relaxation kernel's backward is the gradient of the PyTorch relaxation, recomputed), so
alpha/beta-CROWN run on either backend. Results agree with the PyTorch path to float
tolerance; the relaxation kernel's lines are sound and at least as tight up to that tolerance.
"""

from __future__ import annotations

import functools
import os

import torch

from genbab.errors import GenbabError

REQUESTS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``triton`` imports in this process."""
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def interpreter_on() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_for(device: torch.device | str, requested: str = "auto") -> str:
    """``"triton"`` or ``"torch"``: what ``requested`` (``auto``/``triton``/``torch``) means on ``device``.

    Raises :class:`~genbab.errors.GenbabError` (one line) for an unknown request, ``triton``
    without the triton package, or ``triton`` on the CPU without ``TRITON_INTERPRET=1``."""
    device = torch.device(device)
    if requested not in REQUESTS:
        raise GenbabError(f"kernel backend must be one of {REQUESTS}, got {requested!r}")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise GenbabError("--kernels triton: the triton package does not import")
    if device.type == "cuda" or (device.type == "cpu" and interpreter_on()):
        return "triton"
    raise GenbabError(f"kernel backend 'triton' cannot run on {device}: Triton kernels need a CUDA "
                      "device, or TRITON_INTERPRET=1 (the slow CPU interpreter, meant for tests)")


# ----------------------------------------------------------------------------- routed calls


def concretize_lower(A: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor,
                     upper: torch.Tensor) -> torch.Tensor:
    """``min_{lower <= x <= upper} A x + b`` by the fused kernel (autograd for ``A``, ``b``)."""
    from genbab.kernels.concretize import concretize
    return concretize(A, bias, lower, upper)


def elementwise_backward(A: torch.Tensor, lines) -> tuple[torch.Tensor, torch.Tensor]:
    """One backward step through a :class:`~genbab.ops.relaxation.Relaxation` by the fused kernel
    (autograd for ``A`` and the lines)."""
    from genbab.kernels.elementwise_backward import elementwise_backward as kernel
    return kernel(A, lines.slope_lower, lines.bias_lower, lines.slope_upper, lines.bias_upper)


def kernel_relaxes(op) -> bool:
    """Whether the relaxation kernel covers the elementwise op ``op`` (its ``kernel`` trait)."""
    return op.traits.kernel is not None


def relax_lines(op, l: torch.Tensor, u: torch.Tensor, params=None, backend: str = "torch"):
    """The relaxation of the :class:`~genbab.ops.relaxation.ElementwiseOp` ``op`` on ``[l, u]``:
    the kernel's lines (differentiable in ``l``, ``u`` and ``params``) when ``backend`` is
    ``"triton"`` and the kernel covers ``op``, else ``op.relax`` (PyTorch)."""
    if backend == "triton" and kernel_relaxes(op):
        from genbab.kernels.relax import relax
        return relax(op.traits.kernel, l, u, params, **op.attrs)
    return op.relax(l, u, params)
