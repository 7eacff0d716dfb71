"""Give freed memory back to the operating system after big loads.

Loading a model or a million-row snapshot makes large short-lived buffers
(Arrow reads, NumPy temporaries, parsed model text). The allocators keep
freed memory for reuse, which would leave the serving process's RSS far above
what it holds: glibc keeps heap pages until `malloc_trim`, Arrow's pool keeps
its arenas until `release_unused`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

import pyarrow as pa

log = logging.getLogger("foresight.scorer.memory")

_libc: ctypes.CDLL | None = None
try:
    _name = ctypes.util.find_library("c")
    _libc = ctypes.CDLL(_name) if _name else None
    if _libc is not None and not hasattr(_libc, "malloc_trim"):
        _libc = None  # not glibc (musl, macOS): nothing to trim
except OSError:
    _libc = None


def release_unused_memory() -> None:
    """Collect garbage and return free allocator memory to the OS (best effort)."""
    gc.collect()
    try:
        pa.default_memory_pool().release_unused()
    except Exception:  # older pools lack it; never worth failing a load over
        log.debug("arrow pool release failed", exc_info=True)
    if _libc is not None:
        _libc.malloc_trim(0)
