"""Keep the C heap's freed blocks for reuse: inference allocates the same few-MB tensors every frame.

glibc's malloc serves a block larger than its mmap threshold with a fresh ``mmap`` and returns
it to the system on ``free``; it also trims the heap's free top. Every scan's point features,
pillar tables and BEV maps (1 to 5 MB each) were therefore mapped, zero-filled by page faults
and unmapped again, frame after frame: on a contended 2-core machine the same encoder step
took 2 to 9 ms one call and 15 the next. :func:`keep_freed_memory` raises the mmap threshold
to its ceiling (32 MB) and stops trimming, so freed blocks stay in the heap and the next frame
reuses them (the process keeps its peak heap, a few hundred MB for a node).

The effect is what ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment
would give, but applied from inside, so every inference process gets it however it was started
(node, sweep worker, evaluation). A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["MMAP_THRESHOLD", "heap_mapped_bytes", "keep_freed_memory"]

#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
#: trim only when this much is free at the heap's top (the largest value mallopt takes): in
#: effect never
_TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Tune this process's malloc as the module docstring says (once; later calls return the
    first answer). True where it took effect."""
    global _applied
    if _applied is None:
        libc = _glibc()
        _applied = bool(
            libc is not None
            and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
        )
    return _applied


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
        + ("fordblks", "keepcost")
    ]


def heap_mapped_bytes() -> int | None:
    """Bytes malloc holds in blocks mapped one by one (``mallinfo2().hblkhd``); None without
    glibc 2.33+. What the tests watch: a tuned process serves MB-sized blocks from the heap."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)
