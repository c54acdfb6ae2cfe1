"""Where and how a bound engine computes: one frozen config, handed to the engine explicitly.

``EngineConfig(device, dtype, backend)``: every tensor of a bound computation (the engine's
constants, boxes, bounds, alpha/beta parameters, the branch-and-bound domains) lives on
``device`` in ``dtype``; ``backend`` is the *resolved* implementation of the hot steps,
``"torch"`` (the PyTorch code of :mod:`genbab.bounds` and :mod:`genbab.ops`) or ``"triton"``
(the kernels of :mod:`genbab.kernels`). Build one with :meth:`EngineConfig.resolve`, which
turns the user's choices (``--device auto|cpu|cuda``, ``--kernels auto|triton|torch``) into
a config or raises :class:`~genbab.errors.GenbabError` with a one-line reason:

- device ``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; ``cuda`` without
  a CUDA device is refused;
- kernels ``auto``: ``triton`` on CUDA when Triton imports, else ``torch``; ``triton`` on the
  CPU only under ``TRITON_INTERPRET=1`` (Triton's interpreter: tests, far slower than PyTorch).

Configs are hashable: :func:`genbab.bounds.engine_for` keeps one engine per config and model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEVICES = ("auto", "cpu", "cuda")
KERNELS = ("auto", "triton", "torch")
BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class EngineConfig:
    """Device, dtype and resolved kernel backend of one bound engine."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float64
    backend: str = "torch"  # "torch" | "triton" (resolved for ``device``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", _indexed(torch.device(self.device)))
        if self.backend not in BACKENDS:
            raise ValueError(f"EngineConfig.backend must be one of {BACKENDS} (resolved), got {self.backend!r}; "
                             "use EngineConfig.resolve(device, kernels) for 'auto'")

    @classmethod
    def resolve(cls, device: str | torch.device | None = "auto", kernels: str = "auto",
                dtype: torch.dtype = torch.float64) -> "EngineConfig":
        """The config for the user's ``device`` and ``kernels`` choices (see the module docstring)."""
        from genbab.bounds.kernel_backend import backend_for

        dev = resolve_device(device)
        return cls(dev, dtype, backend_for(dev, kernels))

    @property
    def triton(self) -> bool:
        """Whether the hot steps run the Triton kernels."""
        return self.backend == "triton"


PRECISIONS = ("auto", "float32", "float64")


def resolve_precision(precision: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """The bound arithmetic's dtype: ``float32``, ``float64``, or ``auto``: float64 on every device
    (measured on this project's 2-core CPU, float32 bound passes are no faster there; on a GPU it is
    not measured yet, see the README). Both are sound (:mod:`genbab.bounds.rounding`)."""
    from genbab.errors import GenbabError

    if isinstance(precision, torch.dtype):
        if precision not in (torch.float32, torch.float64):
            raise GenbabError(f"precision must be float32 or float64, got {precision}")
        return precision
    if precision not in PRECISIONS:
        raise GenbabError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.float32 if precision == "float32" else torch.float64


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None: ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA raises
    :class:`~genbab.errors.GenbabError` (one line: the CLI prints it and exits 2)."""
    from genbab.errors import GenbabError

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise GenbabError(f"device must be one of {DEVICES} (or a torch device), got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenbabError("--device cuda was asked for, but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise GenbabError(f"device {dev} is not supported: use cpu or cuda")
    return _indexed(dev)


def _indexed(dev: torch.device) -> torch.device:
    """``cuda`` as ``cuda:<current>``: tensors report the index, so configs and tensors compare equal."""
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return dev
