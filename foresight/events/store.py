"""Partitioned Parquet event store.

Layout: ``<root>/<dataset>/shard=<k>/part-<uuid>.parquet``, where ``k`` is a
stable hash of ``profile_id`` modulo the shard count, so all events of one
profile live in one shard and featurization can run shard by shard (the
hash and the part names: :mod:`foresight.events.partitions`).

The root is a local folder or an fsspec URL (``s3://bucket/events``, see
:mod:`foresight.storage.fs`): on an object store the same layout holds, and a
shard task reads only its shard's objects.

The SQL catalog (owned by the caller) is the source of truth for which parts
exist: every read takes the list of catalogued parts, and a file on disk that
the catalog does not know (a crash between writing and cataloguing) stays
invisible until :meth:`EventStore.cleanup_orphans` removes it. Files appear
atomically (temp name, fsync, rename), so readers never see half a file.

Part paths are POSIX paths relative to the store root, e.g.
``clickstream/shard=3/part-<uuid>.parquet``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final

import polars as pl

from foresight.errors import DatasetDamaged, InvalidArgument
from foresight.events.damage import READ_ERRORS as _READ_ERRORS
from foresight.events.damage import part_file_problem
from foresight.events.partitions import (
    DEFAULT_SHARDS,
    SHARD_PREFIX,
    is_part_name,
    part_name,
    shard_of,
    shard_of_part,
)
from foresight.events.schema import EVENT_SCHEMA
from foresight.events.validation import REJECTED_SCHEMA
from foresight.storage import fs
from foresight.storage.artifacts import atomic_write
from foresight.storage.catalog import CataloguedPart
from foresight.storage.paths import confined, slug

__all__ = ["QUARANTINE_DIR", "EventStore", "PartInfo"]

QUARANTINE_DIR: Final[str] = "_quarantine"

# Seed for the in-memory event-id hash (never persisted, so Polars' own hash
# is fine here).
_ID_HASH_SEED: Final[int] = 0x1D5


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One Parquet part the store wrote; the caller catalogues it."""

    path: str
    """POSIX path relative to the store root."""
    dataset: str
    shard: int
    rows: int
    profiles: int
    min_timestamp: datetime
    max_timestamp: datetime
    event_types: tuple[str, ...]
    size_bytes: int

    def catalogued(self) -> CataloguedPart:
        """What the catalogue records of this part."""
        return CataloguedPart(
            self.path, self.shard, self.rows, self.min_timestamp, self.max_timestamp
        )


@dataclass(slots=True)
class _KnownIds:
    """Event ids already stored in one shard, from the parts in ``parts``."""

    parts: set[str]
    ids: pl.DataFrame  # columns: h (UInt64 hash of event_id), event_id


class EventStore:
    """Partitioned Parquet storage of validated events.

    Writes to one dataset must be serialized by the caller (one ingestion at
    a time per dataset, as the trainer does); reads may run concurrently with
    writes because files only ever appear whole.
    """

    def __init__(self, root: Path | str, shards: int = DEFAULT_SHARDS) -> None:
        """Open (and create) a store under ``root`` (a folder or a URL) with ``shards`` shards."""
        if shards <= 0:
            raise InvalidArgument("shards", "must be positive")
        self.url = str(root)
        self.remote = fs.is_remote(self.url)
        self.root = Path(root) if not self.remote else Path(".")  # local stores only
        self.shards = shards
        if self.remote:
            fs.makedirs(self.url)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
        self._known: dict[tuple[str, int], _KnownIds] = {}
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------

    def dataset_dir(self, dataset: str) -> Path:
        """The folder of a dataset (the name is checked so it cannot escape the root)."""
        return confined(self.root, slug("dataset", dataset))

    def part_path(self, dataset: str, part: str) -> Path:
        """Absolute path of a catalogued part, checked to belong to the dataset."""
        prefix = f"{dataset}/"
        if not part.startswith(prefix) or not is_part_name(part[len(prefix) :]):
            raise InvalidArgument("part", f"{part!r} is not a part of dataset {dataset!r}")
        return confined(self.dataset_dir(dataset), part[len(prefix) :])

    def location(self, dataset: str, relative: str = "") -> str:
        """Where a file of a dataset lives: a local path or a URL (names checked as above)."""
        if not self.remote:
            folder = self.dataset_dir(dataset)
            return str(folder / relative) if relative else str(folder)
        self.dataset_dir(dataset)  # the same name check
        return fs.join(self.url, dataset, relative)

    shard_of_part = staticmethod(shard_of_part)  # the module function, for existing callers

    def part_location(self, dataset: str, part: str) -> str:
        """Where a catalogued part lives (checked to belong to the dataset)."""
        local = self.part_path(dataset, part)
        return str(local) if not self.remote else fs.join(self.url, part)

    # -- writes --------------------------------------------------------------

    def write(
        self, dataset: str, accepted: pl.DataFrame, known_parts: Iterable[str]
    ) -> list[PartInfo]:
        """Store validated events; returns the parts actually written (one per shard touched).

        Events whose ``event_id`` is already in a catalogued part of the same
        shard (``known_parts``) or earlier in ``accepted`` are skipped, so
        re-ingesting a file adds nothing. ``accepted`` must have
        :data:`EVENT_SCHEMA` (the output of validation).
        """
        if accepted.schema != EVENT_SCHEMA:
            raise InvalidArgument("events", "expected the validated event schema")
        dataset_dir = self.dataset_dir(dataset)
        if accepted.is_empty():
            return []
        known_by_shard: dict[int, set[str]] = {}
        for part in known_parts:
            self.part_path(dataset, part)  # rejects paths from elsewhere
            known_by_shard.setdefault(shard_of_part(part), set()).add(part)

        events = accepted.unique(subset="event_id", keep="first", maintain_order=True)
        events = events.with_columns(
            shard_of(events["profile_id"], self.shards).alias("__shard"),
            pl.col("event_id").hash(_ID_HASH_SEED).alias("__h"),
        )
        written: list[PartInfo] = []
        with self._lock:
            for (shard,), group in events.partition_by("__shard", as_dict=True).items():
                assert isinstance(shard, int)
                known = self._known_ids(dataset, shard, known_by_shard.get(shard, set()))
                fresh = _drop_known(group, known.ids)
                if fresh.is_empty():
                    continue
                info = self._write_part(dataset_dir, dataset, shard, fresh.drop("__shard", "__h"))
                known.parts.add(info.path)
                known.ids = pl.concat(
                    [known.ids, fresh.select(pl.col("__h").alias("h"), "event_id")], rechunk=False
                )
                written.append(info)
        return sorted(written, key=lambda info: info.shard)

    def _write_part(
        self, dataset_dir: Path, dataset: str, shard: int, events: pl.DataFrame
    ) -> PartInfo:
        # Sorted by profile then time: featurization reads profiles in order
        # and the min/max statistics per row group become useful.
        events = events.sort("profile_id", "timestamp")
        relative = part_name(shard)

        def write(handle: BinaryIO) -> None:
            events.write_parquet(handle, compression="zstd", compression_level=1, statistics=True)

        if self.remote:
            size = fs.put_object(self.location(dataset, relative), write)
        else:
            target = dataset_dir / relative
            atomic_write(target, write)
            size = target.stat().st_size
        summary = events.select(
            pl.col("profile_id").n_unique().alias("profiles"),
            pl.col("timestamp").min().alias("min_ts"),
            pl.col("timestamp").max().alias("max_ts"),
            pl.col("event_type").unique().sort().implode().alias("types"),
        ).row(0, named=True)
        return PartInfo(
            path=f"{dataset}/{relative}",
            dataset=dataset,
            shard=shard,
            rows=events.height,
            profiles=int(summary["profiles"]),
            min_timestamp=summary["min_ts"],
            max_timestamp=summary["max_ts"],
            event_types=tuple(summary["types"]),
            size_bytes=size,
        )

    def _known_ids(self, dataset: str, shard: int, catalogued: set[str]) -> _KnownIds:
        """Ids in the catalogued parts of a shard, cached between calls.

        Re-reading every part on every batch would make a large import
        quadratic; the cache only reads parts it has not seen. If it holds a
        part the catalog no longer lists (a write that was never catalogued),
        it is rebuilt from the catalog alone.
        """
        key = (dataset, shard)
        cached = self._known.get(key)
        if cached is None or not cached.parts <= catalogued:
            cached = _KnownIds(
                parts=set(), ids=pl.DataFrame(schema={"h": pl.UInt64, "event_id": pl.String})
            )
            self._known[key] = cached
        missing = sorted(catalogued - cached.parts)
        if missing:
            ids = self.scan(dataset, missing).select(
                pl.col("event_id").hash(_ID_HASH_SEED).alias("h"), "event_id"
            )
            try:
                cached.ids = pl.concat([cached.ids, ids.collect()], rechunk=True)
            except _READ_ERRORS:
                raise self.damage(dataset, missing) from None
            cached.parts.update(missing)
        return cached

    def release(self, dataset: str | None = None) -> None:
        """Forget cached event ids (of one dataset, or all) to free memory after an import."""
        with self._lock:
            for key in [key for key in self._known if dataset is None or key[0] == dataset]:
                del self._known[key]

    def write_quarantine(self, dataset: str, rejected: pl.DataFrame) -> str:
        """Write rejected rows (:data:`REJECTED_SCHEMA`) next to the dataset.

        Returns the path relative to the store root,
        ``<dataset>/_quarantine/rejected-<hash>.parquet`` (see `quarantine_path`).
        """
        relative = self.quarantine_path(dataset, rejected)

        def write(handle: BinaryIO) -> None:
            rejected.write_parquet(handle, compression="zstd")

        if self.remote:
            fs.put_object(fs.join(self.url, relative), write)
        else:
            atomic_write(confined(self.root, relative), write)
        return relative

    def quarantine_path(self, dataset: str, rejected: pl.DataFrame) -> str:
        """Where `write_quarantine` puts these rows: named by their content, so the
        same rejected rows (a file imported twice) always map to the same file."""
        if rejected.schema != REJECTED_SCHEMA:
            raise InvalidArgument("rejected", "expected the rejected-row schema of validation")
        digest = hashlib.sha256(rejected.write_csv().encode()).hexdigest()[:32]
        self.dataset_dir(dataset)  # checks the name
        return f"{dataset}/{QUARANTINE_DIR}/rejected-{digest}.parquet"

    def read_quarantine(self, path: str) -> pl.DataFrame:
        """Read back a quarantine file written by :meth:`write_quarantine`."""
        dataset, _, rest = path.partition("/")
        if not _is_quarantine_name(rest):
            raise InvalidArgument("path", f"{path!r} is not a quarantine file")
        if self.remote:
            return fs.read_parquet(self.location(dataset, rest))
        return pl.read_parquet(confined(self.dataset_dir(dataset), rest))

    def remove(self, dataset: str, paths: Iterable[str]) -> None:
        """Delete parts or quarantine files of a dataset (paths as written: ``<dataset>/…``).

        For files the catalog does not (or no longer) name: a failed import's
        writes, the damaged parts a repair dropped. Missing files are fine.
        """
        prefix = f"{dataset}/"
        for path in paths:
            relative = path[len(prefix) :]
            if not path.startswith(prefix) or not (
                is_part_name(relative) or _is_quarantine_name(relative)
            ):
                raise InvalidArgument("path", f"{path!r} is not a file of dataset {dataset!r}")
            if self.remote:
                fs.remove(self.location(dataset, relative))
            else:
                confined(self.dataset_dir(dataset), relative).unlink(missing_ok=True)
        self.release(dataset)  # cached ids may come from removed files

    def compact(self, dataset: str, shard: int, parts: Iterable[str]) -> PartInfo | None:
        """Merge the given catalogued parts of one shard into a single new part.

        Many small imports leave many small files; featurization reads fewer,
        larger ones faster. The caller swaps the catalog entries in one
        transaction and then removes the old files with
        :meth:`cleanup_orphans`. Returns None when there is nothing to merge.
        """
        selected = [part for part in parts if shard_of_part(part) == shard]
        if len(selected) < 2:
            return None
        events = self.read_shard(dataset, shard, selected)
        return self._write_part(self.dataset_dir(dataset), dataset, shard, events)

    # -- reads ---------------------------------------------------------------

    def scan(self, dataset: str, parts: Iterable[str]) -> pl.LazyFrame:
        """Lazy frame over the given catalogued parts (an empty frame if none).

        A catalogued local part that is gone raises DatasetDamaged naming it.
        """
        paths = [
            self.part_location(dataset, part)
            if self.remote
            else str(self.present_part(dataset, part))
            for part in parts
        ]
        if not paths:
            return pl.LazyFrame(schema=EVENT_SCHEMA)
        if self.remote:
            return fs.scan_parquet(paths, EVENT_SCHEMA)
        return pl.scan_parquet(paths, schema=EVENT_SCHEMA)

    def read_shard(
        self, dataset: str, shard: int, parts: Iterable[str], columns: Iterable[str] | None = None
    ) -> pl.DataFrame:
        """All events of one shard, from the catalogued parts that belong to it: every
        column, or only `columns` (the others are not decoded)."""
        selected = [part for part in parts if shard_of_part(part) == shard]
        try:
            scan = self.scan(dataset, selected)
            if columns is not None:
                wanted = set(columns)
                scan = scan.select(name for name in EVENT_SCHEMA if name in wanted)
            return scan.collect()
        except _READ_ERRORS:
            raise self.damage(dataset, selected) from None

    def present_part(self, dataset: str, part: str) -> Path:
        """`part_path`, or DatasetDamaged when the catalogued file is gone."""
        path = self.part_path(dataset, part)
        if not path.is_file():
            raise DatasetDamaged(dataset, part, "missing")
        return path

    def part_problem(self, dataset: str, part: str, rows: int | None = None) -> str | None:
        """Why a catalogued part cannot be read, or None (see `part_file_problem`)."""
        return part_file_problem(self.part_path(dataset, part), rows)

    def damage(self, dataset: str, parts: Iterable[str]) -> DatasetDamaged:
        """The precise error for a read that failed: the first damaged part among `parts`."""
        for part in parts:
            problem = self.part_problem(dataset, part)
            if problem is not None:
                return DatasetDamaged(dataset, part, problem)
        return DatasetDamaged(dataset, "(unknown)", "unreadable")

    # -- housekeeping ----------------------------------------------------------

    def cleanup_orphans(
        self, dataset: str, known_parts: Iterable[str], min_age_seconds: float = 0.0
    ) -> list[str]:
        """Delete part files (and stale temp files) the catalog does not know.

        Only files older than ``min_age_seconds`` go, so a write still waiting
        to be catalogued by a concurrent import survives. Returns the removed
        paths (relative to the root).
        """
        if self.remote:
            return self._cleanup_remote(dataset, set(known_parts), min_age_seconds)
        dataset_dir = self.dataset_dir(dataset)
        known = set(known_parts)
        deadline = time.time() - min_age_seconds
        removed: list[str] = []
        if not dataset_dir.is_dir():
            return removed
        for shard_dir in sorted(dataset_dir.glob(f"{SHARD_PREFIX}*")):
            for file in sorted(shard_dir.iterdir()):
                relative = f"{dataset}/{shard_dir.name}/{file.name}"
                is_part = file.name.startswith("part-") and file.suffix == ".parquet"
                is_temp = file.name.startswith(".")  # a killed write's temp file
                if not (is_part or is_temp) or relative in known:
                    continue
                if file.stat().st_mtime > deadline:
                    continue
                file.unlink(missing_ok=True)
                removed.append(relative)
        with self._lock:
            for key in [key for key in self._known if key[0] == dataset]:
                del self._known[key]  # cached ids may come from removed files
        return removed

    def _cleanup_remote(self, dataset: str, known: set[str], min_age_seconds: float) -> list[str]:
        """cleanup_orphans on an object store (no temp files there: uploads appear whole)."""
        deadline = time.time() - min_age_seconds
        removed: list[str] = []
        for relative, modified in fs.listing(self.location(dataset)):
            part = f"{dataset}/{relative}"
            if not is_part_name(relative) or part in known:
                continue
            if modified is not None and modified.timestamp() > deadline:
                continue
            fs.remove(self.location(dataset, relative))
            removed.append(part)
        self.release(dataset)  # cached ids may come from removed files
        return removed

    def delete_dataset(self, dataset: str) -> None:
        """Remove every file of a dataset (parts and quarantine)."""
        self.release(dataset)
        if self.remote:
            fs.remove_tree(self.location(dataset))
            return
        shutil.rmtree(self.dataset_dir(dataset), ignore_errors=True)


def _is_quarantine_name(relative: str) -> bool:
    """Whether `relative` (inside a dataset folder) names a quarantine file."""
    return re.fullmatch(rf"{QUARANTINE_DIR}/rejected-[0-9a-f]{{32}}\.parquet", relative) is not None


def _drop_known(events: pl.DataFrame, known: pl.DataFrame) -> pl.DataFrame:
    """Rows of ``events`` whose event_id is not in ``known``.

    The batch's 64-bit id hashes form the (small) probe set, so each call
    scans the known ids once without building a hash table of them; only
    known ids with a matching hash are compared as strings, so a hash
    collision can never drop an event.
    """
    if known.is_empty():
        return events
    same_hash = known.filter(pl.col("h").is_in(events["__h"].implode()))
    if same_hash.is_empty():
        return events
    return events.join(
        same_hash.select("event_id"), on="event_id", how="anti", maintain_order="left"
    )
