"""Giving freed memory back to the system.

glibc's allocator keeps the pages of freed blocks that sit below a live one (fragmentation), so a process that once
held a large working set (a calibration pass, an export, a converter) keeps most of it as its resident size long
after Python freed it: the next stage, or a child process beside it, then adds to that figure. ``malloc_trim(0)``
returns every whole free page inside the heap. Elsewhere (musl, macOS, Windows) there is nothing to call and nothing
is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None) if libc is not None else None


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the system; whether there was an allocator to ask (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True
