"""Giving freed heap memory back to the system after a catalog is replaced (glibc only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable


def return_freed_memory() -> None:
    """Ask glibc to give freed heap memory back to the system (malloc_trim(3)); a no-op elsewhere.

    Freed small objects (a parse's millions of short strings) stay in glibc's arenas and keep
    counting in the process's RSS; malloc_trim releases the free pages. ctypes releases the GIL
    during the call, so serving goes on meanwhile."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim
