"""The C heap under inference: keep freed blocks for reuse, return them when asked.

Every forward pass allocates its activations afresh (tens of MB per tensor for a batch of
64 texts at 128 tokens) and frees them a moment later. glibc's defaults give much of that
memory back to the operating system as soon as it is free (it trims the top of its heap
past a threshold that follows the largest block freed, at most 64 MB), so the next
forward asks the kernel again, and the kernel hands out fresh pages that it must fault in
and zero: about 45,000 page faults per 64-text call of MiniLM, a fifth of its time on a
CPU whose matrix units make the arithmetic cheap.

:func:`keep_freed_memory` raises those thresholds for the whole process (glibc
``mallopt``: a freed block up to :data:`MMAP_THRESHOLD` stays in the heap and the heap is
trimmed only past :data:`TRIM_THRESHOLD` of free memory at its top), so the next forward
reuses the pages the last one touched. The peak resident memory stays what the largest
forward needs; what changes is that memory freed after it is kept for the next one
instead of being returned. :func:`release_freed_memory` returns it on demand
(``malloc_trim``), e.g. after dropping adapters' heads.

The ``lastlayer`` command calls :func:`keep_freed_memory` before it runs a command; a
program that embeds with :class:`lastlayer.Embedder` calls it once itself (it changes the
C allocator of the whole process, so the library never does it behind a program's back).
Measured: ``python -m benchmarks.allocator`` (docs/speed.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

__all__ = ["MMAP_THRESHOLD", "OPT_OUT_ENV", "TOP_PAD", "TRIM_THRESHOLD", "keep_freed_memory",
           "release_freed_memory"]

MMAP_THRESHOLD = 256 * 2**20
"""Blocks up to this size come from (and go back to) the heap; larger ones are mapped."""
TRIM_THRESHOLD = 2**30
"""Free memory the heap may keep at its top before glibc gives it back by itself."""
TOP_PAD = 64 * 2**20
"""Extra address space the heap grows by at once (untouched pages cost no memory)."""

OPT_OUT_ENV = "LASTLAYER_KEEP_FREED_MEMORY"
"""Set to ``0`` to leave the C allocator at its defaults."""
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
"""glibc's own settings: where one is set, the user has chosen, and nothing is changed."""

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>


@functools.cache
def _libc() -> Any | None:
    """glibc, or None where the C library is another (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if libc.gnu_get_libc_version and libc.mallopt and libc.malloc_trim:
            return libc
    return None


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse instead of returning them to the operating
    system at once (module docstring); once per process.

    Returns:
        True when the settings were applied; False where the C library is not glibc, the
        user opted out (``LASTLAYER_KEEP_FREED_MEMORY=0``), glibc's own ``MALLOC_*_``
        variables are set, or glibc refused a value.
    """
    libc = _libc()
    if libc is None or os.environ.get(OPT_OUT_ENV, "1").strip() == "0" \
            or any(name in os.environ for name in GLIBC_ENV):
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (_M_TOP_PAD, TOP_PAD))
    return all([libc.mallopt(option, value) == 1 for option, value in settings])


def release_freed_memory() -> bool:
    """Return the heap's free memory to the operating system (glibc ``malloc_trim(0)``);
    False where the C library has no such call."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
