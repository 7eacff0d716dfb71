"""One profile's stored events in well under a millisecond: an indexed copy of each event part.

Real-time scoring needs the history of one profile. Filtering the Parquet event
store decodes whole row groups (hundreds of thousands of rows) of the profile's
shard on every call. Parts are immutable files sorted by profile id, so the
first time a part is needed here it is copied once into the scorer's cache as
an uncompressed Arrow IPC file of small record batches (streamed, a batch at
a time, so the copy never holds a part in memory), and only each batch's
first and last profile id is kept in memory (a few KB a part). A lookup
bisects those ids, maps the one or two batches that can hold the profile
straight from the memory-mapped file (no copy, no decompression: a zstd batch
cost ~1 ms to decode, several times the rest of the lookup; the copy takes
about 10× the Parquet part's disk space instead) and bisects the batch for the
profile's rows.

The copy is derived data: written atomically, named after its part, and
removed when the catalog no longer lists the part (after a compaction).
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from foresight.errors import DatasetDamaged, FailedPrecondition
from foresight.events.damage import READ_ERRORS
from foresight.events.partitions import shard_for_profile, shard_of_part
from foresight.events.schema import EVENT_COLUMNS, EVENT_SCHEMA
from foresight.events.store import EventStore
from foresight.storage.artifacts import atomic_write

log = logging.getLogger("foresight.scorer.history")

BATCH_ROWS = 4096  # rows per record batch: one batch decodes in well under a millisecond
_SUFFIX = ".arrow"
_DECODE_ERRORS = (pa.ArrowException, pl.exceptions.PolarsError)  # a part that does not decode
_NO_EVENTS = pl.DataFrame(schema=EVENT_SCHEMA)  # cloned: an empty frame from a schema costs ~100 µs


@dataclass(frozen=True)
class _PartIndex:
    """The cached copy of one part: its reader, each batch's id range, whether Polars must cast it."""

    reader: pa.ipc.RecordBatchFileReader
    first_ids: list[str]
    last_ids: list[str]
    cast: bool  # its columns convert to other types than EVENT_SCHEMA's

    def rows_of(self, profile_id: str) -> list[pa.RecordBatch]:
        """The profile's rows, as slices of the batches that hold them (ids are sorted)."""
        start = bisect.bisect_left(self.last_ids, profile_id)
        stop = bisect.bisect_right(self.first_ids, profile_id)
        slices = []
        for i in range(start, stop):
            batch = self.reader.get_batch(i)
            ids = batch.column("profile_id")
            first = _bisect(ids, profile_id, right=False)
            end = _bisect(ids, profile_id, right=True)
            if end > first:
                slices.append(batch.slice(first, end - first))
        return slices


def _bisect(ids: pa.Array, profile_id: str, right: bool) -> int:
    """`bisect.bisect_left/right` over a sorted Arrow string column, without converting it."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        value = ids[mid].as_py()
        if value < profile_id or (right and value == profile_id):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _copy(source: Path, target: Path, part: str) -> int:
    """Copy a part into record batches of `BATCH_ROWS` rows, a batch at a time; returns
    its rows. Parts are written sorted by profile id: one that is not fails.

    At 1M profiles a shard's parts decoded whole and copied into a file in memory
    raised the scorer to ~940 MB at its first ScoreProfile, for ~1.8 s; this way it
    peaks at ~430 MB, for ~0.6 s. The batches are decoded on this thread, so the
    memory they took goes back to the system here (on Arrow's pool threads ~30 MB
    stayed with those threads' allocator heaps).
    """
    with pq.ParquetFile(source) as parquet:  # closed here, also when the part is damaged
        atomic_write(target, functools.partial(_write_batches, parquet, part))
    pa.default_memory_pool().release_unused()  # the decoded batches' memory, to the system
    return int(parquet.metadata.num_rows)


def _write_batches(parquet: pq.ParquetFile, part: str, fh: BinaryIO) -> None:
    """`parquet`'s rows into an Arrow IPC file, checking their profile order as they go."""
    last: str | None = None
    with pa.ipc.new_file(fh, parquet.schema_arrow) as writer:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            ids = batch.column("profile_id")
            if len(ids) == 0:
                continue
            ascending = pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py() is not False
            if not ascending or (last is not None and ids[0].as_py() < last):
                raise FailedPrecondition(
                    f"event part {part} is not sorted by profile id, as the event store "
                    "writes parts: it cannot be indexed for real-time scoring"
                )
            last = ids[len(ids) - 1].as_py()
            writer.write_batch(batch)


class ProfileHistory:
    """Stored events of one profile through per-part indexes (thread-safe)."""

    def __init__(self, store: EventStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self._parts: dict[str, _PartIndex] = {}
        self._lock = threading.Lock()

    def events(
        self,
        dataset: str,
        parts: list[str],
        profile_id: str,
        columns: Sequence[str] = EVENT_COLUMNS,
    ) -> pl.DataFrame:
        """Every stored event of `profile_id` in the catalogued `parts` of `dataset`: its
        `columns` (names of EVENT_SCHEMA, in its order), which alone are converted."""
        shards = [shard_of_part(p) for p in parts]
        if shards and max(shards) >= self.store.shards:
            raise FailedPrecondition(
                f"dataset '{dataset}' has shard {max(shards)} but FORESIGHT_SHARDS is "
                f"{self.store.shards}: set it as the trainer does"
            )
        shard = shard_for_profile(profile_id, self.store.shards)
        mine = [p for p, s in zip(parts, shards, strict=True) if s == shard]
        indexes = [self._index(dataset, part, mine) for part in mine]
        batches = [b.select(columns) for i in indexes for b in i.rows_of(profile_id)]
        if not batches:
            return _NO_EVENTS.select(columns)
        frame = pl.from_arrow(pa.concat_batches(batches))  # a batch converts faster than a table
        assert isinstance(frame, pl.DataFrame)
        # Comparing schemas costs ~50 µs a call: each part's was compared once, when indexed.
        if any(i.cast for i in indexes):
            return frame.cast({name: EVENT_SCHEMA[name] for name in columns})
        return frame

    def _index(self, dataset: str, part: str, siblings: list[str]) -> _PartIndex:
        index = self._parts.get(part)
        if index is not None:
            return index
        with self._lock:
            index = self._parts.get(part)
            if index is None:
                index = self._build(dataset, part, siblings)
                self._parts = {**self._parts, part: index}
            return index

    def _build(self, dataset: str, part: str, siblings: list[str]) -> _PartIndex:
        source = self.store.part_path(dataset, part)  # checked: <dataset>/shard=<k>/part-<uuid>
        target = self.cache_dir / Path(part).with_suffix(_SUFFIX)
        if not target.is_file():
            try:
                rows = _copy(source, target, part)
            except READ_ERRORS as exc:
                problem = self.store.part_problem(dataset, part)
                if problem is None and not isinstance(exc, _DECODE_ERRORS):
                    raise  # writing the copy failed (the cache's disk), not reading the part
                raise DatasetDamaged(dataset, part, problem or "unreadable") from None
            self._remove_stale(target.parent, siblings)
            log.info("indexed part %s for real-time scoring (%d events)", part, rows)
        reader = pa.ipc.open_file(pa.memory_map(str(target)))
        first_ids, last_ids = [], []
        for i in range(reader.num_record_batches):
            ids = reader.get_batch(i).column("profile_id")
            first_ids.append(ids[0].as_py())
            last_ids.append(ids[len(ids) - 1].as_py())
        # Built from typed empty arrays: `Schema.empty_table` loads pandas (~45 MB).
        schema = reader.schema
        converted = pl.from_arrow(
            pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
        )
        assert isinstance(converted, pl.DataFrame)
        return _PartIndex(reader, first_ids, last_ids, cast=converted.schema != EVENT_SCHEMA)

    def _remove_stale(self, folder: Path, siblings: list[str]) -> None:
        """Copies of parts the catalog no longer lists for this shard (compacted away)."""
        keep = {Path(p).with_suffix(_SUFFIX).name for p in siblings}
        for path in folder.glob(f"part-*{_SUFFIX}"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
