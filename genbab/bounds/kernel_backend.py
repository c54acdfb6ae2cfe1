"""Which implementation serves the hot bound computations: Triton kernels or PyTorch.

``set_backend("auto" | "triton" | "torch")`` (process-wide, default ``"auto"``):

- ``auto``: Triton for tensors on CUDA devices (when Triton imports), PyTorch elsewhere;
- ``triton``: Triton everywhere; on the CPU this runs Triton's interpreter and is only allowed
  when ``TRITON_INTERPRET=1`` is set (tests; far slower than PyTorch), else a clear error;
- ``torch``: the PyTorch code of :mod:`genbab.bounds` and :mod:`genbab.ops` only.

Routed: :func:`genbab.bounds.box.concretize_lower`,
:func:`genbab.bounds.nonlinear.elementwise_backward` and the S-shaped relaxations
(:func:`genbab.ops.s_shaped.s_relax`; the relaxation kernel also covers Sin, Cos and GeLU, see
:func:`relax_or_none`). Results agree with the PyTorch path to float tolerance; the relaxation
kernel's lines are sound and at least as tight up to that tolerance. The check on the default
path is two string comparisons and a device-type test.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")
_backend = "auto"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``triton`` imports in this process."""
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def set_backend(name: str) -> None:
    """Select the backend (the ``--kernels`` CLI option); raises ValueError / RuntimeError."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton" and not triton_available():
        raise RuntimeError("--kernels triton: the triton package does not import")
    _backend = name


def get_backend() -> str:
    """The selected backend name."""
    return _backend


def backend_for(device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"``: what the selected backend uses for tensors on ``device``.

    Raises RuntimeError for ``triton`` on a non-CUDA device without ``TRITON_INTERPRET=1``."""
    device = torch.device(device)
    if _backend == "torch":
        return "torch"
    if _backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if device.type == "cuda" or (device.type == "cpu" and _interpreter_on()):
        return "triton"
    raise RuntimeError(f"kernel backend 'triton' cannot run on {device}: Triton kernels need a CUDA "
                       "device, or TRITON_INTERPRET=1 (the slow CPU interpreter, meant for tests)")


def use_triton(t: torch.Tensor) -> bool:
    """Cheap per-call check: whether the computation on tensor ``t`` goes to a Triton kernel."""
    if _backend == "torch" or (_backend == "auto" and t.device.type != "cuda"):
        return False
    return backend_for(t.device) == "triton"


# ----------------------------------------------------------------------------- routed calls


def concretize_lower(A: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor,
                     upper: torch.Tensor) -> torch.Tensor:
    """``min_{lower <= x <= upper} A x + b`` by the fused kernel (autograd for ``A``, ``b``)."""
    from genbab.kernels.concretize import concretize
    return concretize(A, bias, lower, upper)


def elementwise_backward(A: torch.Tensor, lines) -> tuple[torch.Tensor, torch.Tensor]:
    """One backward step through a :class:`~genbab.ops.relaxation.Relaxation` by the fused kernel."""
    from genbab.kernels.elementwise_backward import elementwise_backward as kernel
    return kernel(A, lines.slope_lower, lines.bias_lower, lines.slope_upper, lines.bias_upper)


def relax_or_none(op_name: str, l: torch.Tensor, u: torch.Tensor, params=None, **attrs):
    """The relaxation kernel's lines for ``op_name`` (Sigmoid, Tanh, Erf, Sin, Cos, Gelu) when the
    backend picks Triton for ``l`` and no gradient is needed; ``None`` otherwise (use PyTorch).

    The kernel has no backward: under autograd with parameters that require grad (the
    alpha-CROWN optimisation) the PyTorch path serves the call."""
    if not use_triton(l):
        return None
    if params and torch.is_grad_enabled() and any(p.requires_grad for p in params.values()):
        return None
    if torch.is_grad_enabled() and (l.requires_grad or u.requires_grad):
        return None
    from genbab.kernels.relax import SUPPORTED, relax_triton
    if op_name not in SUPPORTED:
        return None
    return relax_triton(op_name, l, u, params, **attrs)
