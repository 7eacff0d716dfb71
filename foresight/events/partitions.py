"""How events are partitioned: the shard of a profile, and the names of part files.

All events of one profile live in one shard: ``k`` = FNV-1a 64 of the
profile id modulo the shard count, the same on every machine and library
version, because shard placement is persisted on disk. A part file is
``<dataset>/shard=<k>/part-<uuid>.parquet``; this module is its one writer
(`part_name`) and parser (`shard_of_part`, `parts_by_shard`).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable
from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa

from foresight.errors import InvalidArgument

__all__ = [
    "DEFAULT_SHARDS",
    "SHARD_PREFIX",
    "is_part_name",
    "part_name",
    "parts_by_shard",
    "shard_for_profile",
    "shard_of",
    "shard_of_part",
]

DEFAULT_SHARDS: Final[int] = 16

_PART_NAME: Final[re.Pattern[str]] = re.compile(r"^shard=(\d+)/part-[0-9a-f]{32}\.parquet$")
_SHARD_DIR: Final[re.Pattern[str]] = re.compile(r"(?:^|/)shard=(\d+)/")

# FNV-1a, 64-bit: simple, documented, and the same on every machine and
# library version. Shard placement is persisted on disk, so it must never
# depend on a hash that a Polars upgrade or a different CPU could change.
_FNV_OFFSET: Final[int] = 0xCBF29CE484222325
_FNV_PRIME: Final[int] = 0x100000001B3
_U64_MASK: Final[int] = 0xFFFFFFFFFFFFFFFF


def shard_for_profile(profile_id: str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of one profile (FNV-1a 64 of its UTF-8 bytes, modulo ``shards``)."""
    value = _FNV_OFFSET
    for byte in profile_id.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & _U64_MASK
    return value % shards


def shard_of(profile_ids: pl.Series, shards: int = DEFAULT_SHARDS) -> pl.Series:
    """Vectorized :func:`shard_for_profile` over a string series (nulls → shard 0)."""
    arrow = profile_ids.fill_null("").cast(pl.String).to_arrow()
    large = arrow.cast(pa.large_string()) if not pa.types.is_large_string(arrow.type) else arrow
    if isinstance(large, pa.ChunkedArray):
        large = large.combine_chunks()
    buffers = large.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[
        large.offset : large.offset + len(large) + 1
    ]
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(0, dtype=np.uint8)
    )
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    hashes = np.full(len(lengths), _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    if len(lengths) and lengths.min() == lengths.max():
        # Common case (fixed-width ids): no reordering needed.
        for position in range(int(lengths[0])):
            hashes ^= data[starts + position].astype(np.uint64)
            hashes *= prime  # wraps modulo 2**64, as FNV wants
        return pl.Series(profile_ids.name or "shard", (hashes % np.uint64(shards)).astype(np.int32))
    # Walk byte positions longest-first so each pass touches only the prefix
    # of strings still that long: total work is the number of bytes.
    order = np.argsort(-lengths, kind="stable")
    sorted_starts = starts[order]
    sorted_lengths = lengths[order]
    longest = int(sorted_lengths[0]) if len(sorted_lengths) else 0
    # Number of strings longer than each position (lengths sorted descending).
    active_counts = np.searchsorted(-sorted_lengths, -np.arange(longest), side="left")
    for position in range(longest):
        active = int(active_counts[position])
        chunk = hashes[:active]
        chunk ^= data[sorted_starts[:active] + position].astype(np.uint64)
        chunk *= prime
    result = np.empty_like(hashes)
    result[order] = hashes
    return pl.Series(profile_ids.name or "shard", (result % np.uint64(shards)).astype(np.int32))


SHARD_PREFIX: Final[str] = "shard="
"""The folder of shard k is ``shard=<k>``."""


def part_name(shard: int) -> str:
    """A new part's path inside its dataset folder: ``shard=<k>/part-<uuid>.parquet``."""
    return f"{SHARD_PREFIX}{shard}/part-{uuid.uuid4().hex}.parquet"


@functools.lru_cache(maxsize=1 << 16)  # real-time scoring asks for every part on each call
def shard_of_part(part: str) -> int:
    """The shard a part path (``<dataset>/shard=<k>/part-…``) belongs to: the one parser."""
    match = _SHARD_DIR.search(part)
    if match is None:
        raise InvalidArgument("part", f"{part!r} has no shard folder")
    return int(match.group(1))


def parts_by_shard(parts: Iterable[str]) -> dict[int, list[str]]:
    """Part paths grouped by shard, shards in ascending order, parts in their given order."""
    grouped: dict[int, list[str]] = {}
    for part in parts:
        grouped.setdefault(shard_of_part(part), []).append(part)
    return dict(sorted(grouped.items()))


def is_part_name(relative: str) -> bool:
    """Whether a path inside a dataset folder is a part file the store wrote."""
    return _PART_NAME.match(relative) is not None
