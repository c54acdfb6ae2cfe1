"""How many domains one batched bound pass may hold, and recovery when an allocation fails.

A bound pass on ``D`` domains keeps, per domain and spec row, a few coefficient tensors of the
size of every node (the backward pass, its sign split, alpha gradients):
``bytes(D) ~ D * S * sum_nodes numel * itemsize * PASS_COPIES``. The batch is the largest ``D``
that fits in half the memory free now (GPU memory on CUDA, ``MemAvailable`` on the CPU), within
the configured maximum; an out-of-memory error halves it and the pass is retried.
"""

from __future__ import annotations

import math

import torch

PASS_COPIES = 48  # live coefficient-sized tensors per node in a bound pass with alpha gradients (measured: a toy
# MLP peaks at ~40 per node and row, eran_sigmoid 6x200 at ~30; tests/test_bab_memory.py)


def free_bytes(device: torch.device) -> float:
    """Memory free for tensors on ``device`` now (CPU: the kernel's ``MemAvailable``)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9  # unknown platform: assume a modest machine


def pass_bytes_per_domain(shapes: dict[str, tuple[int, ...]], rows: int, itemsize: int) -> float:
    """Estimated bytes one domain adds to a bound pass with ``rows`` spec rows."""
    return float(rows * sum(math.prod(s) for s in shapes.values()) * itemsize * PASS_COPIES)


def fitting_batch(maximum: int, per_domain: float, free: float) -> int:
    """Largest even batch ``<= maximum`` whose pass fits in half of ``free`` (at least 2)."""
    fit = int(0.5 * free // max(per_domain, 1.0))
    return max(2, min(maximum, fit) // 2 * 2)


def is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation (CUDA or CPU allocator), as opposed to any other runtime error."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)
