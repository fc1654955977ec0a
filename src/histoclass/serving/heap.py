"""glibc's allocator, tuned for a server: few arenas, and freed pages handed back after large decodes.

glibc gives each thread that allocates its own arena and keeps what they free; a server's many
threads then hold on to memory long after a burst of large images (measured in docs/benchmarks.md).
Other C libraries: no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

__all__ = ["give_back_freed_memory", "limit_arenas"]


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
        libc.mallopt(-8, count)  # M_ARENA_MAX


def give_back_freed_memory() -> None:
    """Return the freed pages of every arena to the system."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
