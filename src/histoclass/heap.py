"""glibc's allocator, set for the kind of process: a server hands freed pages back, a training keeps them.

glibc gives each thread that allocates its own arena and keeps what they free; a server's many threads then
hold on to memory long after a burst of large images. A training step, the other way round, frees and
allocates the same activations every time, and glibc's defaults hand them back and fault them in again
(both measured in docs/benchmarks.md). Other C libraries: no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

__all__ = ["give_back_freed_memory", "keep_freed_memory", "limit_arenas"]

#: ``mallopt`` parameters (glibc's ``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded once (None where the C library is another)."""
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


def limit_arenas(count: int = 2) -> None:
    """At most ``count`` malloc arenas for the whole process (before its threads start)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, count)


def give_back_freed_memory() -> None:
    """Return the freed pages of every arena to the system."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Keep the memory a training step frees for the next step instead of faulting it in again; whether it
    applied.

    With glibc's defaults a step's large activations are mapped and unmapped each step and the heap is
    trimmed as soon as its top is free: a 128 px Lite0 fine-tuning on 2 cores spent a fifth of its time in the
    kernel zeroing fresh pages (docs/benchmarks.md, "Freed memory kept"). Allocations up to 32 MB (glibc's
    ceiling) now come from the heap and up to 1 GiB of freed heap is kept: memory held at the step's peak,
    which a training process reaches every step anyway. PyTorch's CPU tuning guide recommends jemalloc or
    tcmalloc for the same reason; this needs neither."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    # Both or neither: setting either ends glibc's sliding threshold, and the trim threshold alone would
    # leave everything over 128 KiB mapped afresh each time (steps twice as slow, measured).
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(mapped and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
