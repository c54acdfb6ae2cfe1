"""Allocator settings for the bound computations (glibc ``mallopt``).

CROWN allocates and frees tensors of many megabytes thousands of times. By default glibc serves
blocks above its (dynamic) mmap threshold with fresh ``mmap`` calls and returns freed memory at
the top of the heap to the system, so every such tensor is page-faulted in again: on the vit
models that cost more time than the arithmetic. :func:`tune_malloc` keeps freed blocks in one
heap instead, shared by all threads (the resident memory stays at the computation's peak).
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

INT_MAX = 2**31 - 1  # mallopt takes an int


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or no GNU libc
        return False


def tune_malloc(trim_threshold: int = INT_MAX, mmap_threshold: int = INT_MAX,
                arena_max: int | None = 1) -> bool:
    """Set glibc's ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` (bytes, at most ``INT_MAX``)
    and, unless None, ``M_ARENA_MAX``; True when every ``mallopt`` call succeeded.

    Freed memory is returned to the system only when more than ``trim_threshold`` bytes are
    free at the top of the heap, and only blocks of ``mmap_threshold`` bytes or more get their
    own ``mmap``. ``arena_max=1`` makes threads share the main heap: a thread's own arena is
    built of 64 MB heaps, maps larger blocks anyway and gives freed heaps back, so the thread
    that ``genbab verify`` bounds in would still fault most of its memory in again. Call it
    before starting that thread. Does nothing (False) off glibc."""
    if not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(M_TRIM_THRESHOLD, trim_threshold), (M_MMAP_THRESHOLD, mmap_threshold)]
    if arena_max is not None:
        settings.append((M_ARENA_MAX, arena_max))
    return all([mallopt(param, min(int(value), INT_MAX)) == 1 for param, value in settings])
