"""CRC-32 of every profile id of a run, compiled (Numba): the hashes the id index keeps.

`snapshot.IdIndex` stores each id's `zlib.crc32` so a serving process never
hashes a million ids. Computing them in Python costs ~0.35 s per million ids
on the run's serial path; this loop does it in the shard workers, straight
from the Arrow buffers (23 ms per million ids). Table-driven CRC-32 (the reflected
0xEDB88320 polynomial zlib uses); the tests hold it to `zlib.crc32`.
Compiled once per machine and cached on disk (`cache=True`).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
from numba import njit

__all__ = ["crc32_each", "warm"]


def _table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[byte] = c
    return table


_TABLE = _table()


def crc32_each(ids: pa.Array) -> np.ndarray:
    """`zlib.crc32` of each id's UTF-8 bytes (uint32 [n]) of a large_string array."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset : ids.offset + n + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8)
    data.flags.writeable = False  # one compiled signature, mapped (read-only) buffers or not
    hashes: np.ndarray = _crc32_each(data, np.ascontiguousarray(offsets), _TABLE)
    return hashes


def warm() -> None:
    """Load the loop's machine code (or compile it), before shard workers fork."""
    _crc32_each.compile(_SIGNATURE)


@njit(cache=True, nogil=True)
def _crc32_each(data: np.ndarray, offsets: np.ndarray, table: np.ndarray) -> np.ndarray:
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.uint32)
    for i in range(n):
        c = np.uint32(0xFFFFFFFF)
        for j in range(offsets[i], offsets[i + 1]):
            c = table[(c ^ data[j]) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
        out[i] = c ^ np.uint32(0xFFFFFFFF)
    return out


# The argument types `crc32_each` passes, in order; the tests hold a real call to it.
_SIGNATURE = (
    numba.types.Array(numba.types.uint8, 1, "C", readonly=True),  # the ids' bytes
    numba.types.Array(numba.types.int64, 1, "C"),
    numba.types.Array(numba.types.uint32, 1, "C"),
)
