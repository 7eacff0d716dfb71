"""Ingestion: raw batches → validation → event store → catalog, and dataset descriptions.

Bad rows are never dropped silently: each goes to a quarantine file with its
reason and is counted, so accepted + rejected always equals rows read.
Re-importing the same data adds nothing (event ids, given or derived).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from sqlalchemy import Table

from foresight.errors import InvalidArgument, NotFound, PermissionDenied
from foresight.events.damage import READ_ERRORS
from foresight.events.readers import count_rows, list_input_files, read_batches
from foresight.events.schema import EVENT_COLUMNS
from foresight.events.store import EventStore, PartInfo
from foresight.events.validation import DuplicatePolicy, validate
from foresight.limits import PROFILE_ID_MAX
from foresight.progress import Progress
from foresight.storage import catalog
from foresight.storage.db import Database
from foresight.storage.models import ProfileRow
from foresight.storage.paths import slug

# Which root applies, without the server's own path: give paths relative to it.
IMPORT_ROOT_TEXT = (
    "the trainer's import root (FORESIGHT_IMPORT_ROOT, default <FORESIGHT_DATA_DIR>/imports); "
    "give a path relative to it"
)


def check_dataset_name(name: str) -> str:
    """A dataset name is a short slug: it becomes a folder name."""
    return slug("dataset", name)


@dataclass(slots=True)
class IngestSummary:
    """Counts of one ingestion; rows_read == accepted + rejected."""

    dataset: str
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    written: int = 0
    quarantine_path: str = ""
    reject_reasons: Counter[str] = field(default_factory=Counter)
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.EVENT_ID

    @property
    def duplicates(self) -> int:
        """Accepted rows the duplicate policy removed (already stored, or repeated)."""
        return self.accepted - self.written


@dataclass(frozen=True, slots=True)
class ProfileImportSummary:
    """Counts of one profile-attribute import."""

    rows_read: int
    profiles: int
    attributes: list[str]
    rejected: int


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """A dataset of the event store."""

    name: str
    rows: int
    parts: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DatasetDescription:
    """What a dataset holds."""

    info: DatasetInfo
    profiles: int
    min_timestamp: datetime | None
    max_timestamp: datetime | None
    event_types: list[tuple[str, int]]
    completeness: list[tuple[str, float]]
    quarantined_rows: int


class Ingestor:
    """Writes validated events into the store and catalogues them."""

    def __init__(self, db: Database, store: EventStore, import_root: Path) -> None:
        self.db = db
        self.store = store
        self.import_root = import_root.resolve()
        # One writer per dataset at a time: dedupe reads the catalog it then extends.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, dataset: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(dataset, threading.Lock())

    # ------------------------------------------------------------ paths

    def resolve_import_path(self, path: str) -> list[Path]:
        """The files a request path stands for, all strictly inside the import root.

        Relative paths are taken from the root. `..`, absolute paths elsewhere and
        symlinks that lead outside are refused, whatever their spelling.
        """
        if not path:
            raise InvalidArgument("path", "must not be empty")
        if "\x00" in path:
            raise InvalidArgument("path", "must not contain NUL characters")
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.import_root / candidate
        try:
            resolved = candidate.resolve()
            if not resolved.is_relative_to(self.import_root):
                raise PermissionDenied(f"path {path!r} is outside {IMPORT_ROOT_TEXT}")
            if not resolved.exists():
                raise NotFound(f"path {path!r} does not exist under {IMPORT_ROOT_TEXT}")
        except OSError:  # e.g. a name longer than the file system allows
            raise InvalidArgument("path", "not a usable file name") from None
        files = list_input_files(resolved)
        for f in files:
            if not f.resolve().is_relative_to(self.import_root):
                raise PermissionDenied(f"{f.name} in {path!r} links outside {IMPORT_ROOT_TEXT}")
        return files

    # ------------------------------------------------------------ events

    def ingest(
        self,
        dataset: str,
        batches: Iterable[pl.DataFrame],
        now: datetime | None = None,
        first_row: int = 0,
        duplicates: DuplicatePolicy = DuplicatePolicy.EVENT_ID,
        on_batch: Callable[[IngestSummary], None] | None = None,
    ) -> IngestSummary:
        """Validate and store raw batches; quarantine rejects; catalog new parts.

        All or nothing: the parts and quarantine files are catalogued in one
        transaction after the last batch, so a call that fails, is cancelled
        (`on_batch` raises) or is killed publishes none of its rows.
        `first_row` is the number of input rows before these batches (a stream
        ingested in chunks), so rejected rows keep their place in the input.
        `on_batch` sees the running summary after each batch is stored.
        """
        check_dataset_name(dataset)
        now = now or datetime.now(UTC)
        summary = IngestSummary(dataset=dataset, duplicate_policy=duplicates)
        with self._lock(dataset):
            known = catalog.catalogued_parts(self.db, dataset)  # grows with this call's parts
            existed = bool(known)
            written: list[PartInfo] = []
            quarantines: list[tuple[str, int]] = []  # written here, not yet catalogued
            rejected: list[pl.DataFrame] = []
            try:
                for raw in batches:
                    result = validate(
                        raw, now, row_offset=first_row + summary.rows_read, duplicates=duplicates
                    )
                    summary.rows_read += result.rows_read
                    summary.accepted += result.accepted.height
                    summary.rejected += result.rejected.height
                    summary.reject_reasons.update(result.reason_counts())
                    if result.rejected.height:
                        rejected.append(result.rejected)
                    parts = self.store.write(dataset, result.accepted, known)
                    known.extend(p.path for p in parts)
                    written.extend(parts)
                    summary.written += sum(p.rows for p in parts)
                    if sum(r.height for r in rejected) >= 100_000:  # bounded memory
                        summary.quarantine_path = self._quarantine(dataset, rejected, quarantines)
                        rejected = []
                    if on_batch is not None:
                        on_batch(summary)
                if rejected:
                    summary.quarantine_path = self._quarantine(dataset, rejected, quarantines)
                if written or quarantines or (summary.rows_read and not existed):
                    # All or nothing: one transaction publishes every part (an
                    # empty dataset still exists once rows were read).
                    catalog.record_import(
                        self.db, dataset, [p.catalogued() for p in written], quarantines
                    )
            except BaseException:
                # Nothing of a failed, cancelled or interrupted import is visible;
                # what a kill -9 leaves here is swept at the next start.
                self.store.remove(
                    dataset, [*(p.path for p in written), *(p for p, _ in quarantines)]
                )
                raise
            finally:
                self.store.release(dataset)
        return summary

    def _quarantine(
        self, dataset: str, rejected: list[pl.DataFrame], new: list[tuple[str, int]]
    ) -> str:
        """Write rejected rows once; returns the file's path, added to `new` when
        it is not catalogued yet.

        Files are named by content, so re-importing the same file finds its
        rejected rows already quarantined and adds nothing.
        """
        frame = pl.concat(rejected, how="vertical_relaxed")
        path = self.store.quarantine_path(dataset, frame)
        if path not in (p for p, _ in new) and not catalog.quarantine_recorded(
            self.db, dataset, path
        ):
            new.append((self.store.write_quarantine(dataset, frame), frame.height))
        return path

    def import_dataset(
        self,
        dataset: str,
        path: str,
        duplicates: DuplicatePolicy = DuplicatePolicy.EVENT_ID,
        progress: Progress | None = None,
    ) -> IngestSummary:
        """Import a server-side file or folder under the import root.

        With `progress`, the rows are counted first (Parquet footers, lines of
        text files) and each stored batch reports the share read; a report that
        raises (the caller cancelled) stops the import after a whole batch.
        """
        check_dataset_name(dataset)
        files = self.resolve_import_path(path)
        batches = (batch for f in files for batch in read_batches(f))
        if progress is None:  # nobody follows: no second pass over the files
            return self.ingest(dataset, batches, duplicates=duplicates)
        report_progress = progress
        report_progress("count", 0.0, f"counting rows in {len(files)} file(s)")
        total = sum(count_rows(f) for f in files)

        def report(summary: IngestSummary) -> None:
            done = min(summary.rows_read / total, 1.0) if total else 0.0
            report_progress("import", done, f"{summary.rows_read:,} of ~{total:,} rows")

        return self.ingest(dataset, batches, duplicates=duplicates, on_batch=report)

    def cleanup(self) -> int:
        """Remove part files no catalog entry points at (left by a killed import).

        Dataset folders on disk count too: the first import of a dataset that
        was killed before it was catalogued leaves a folder nothing names.
        """
        removed = 0
        on_disk = (
            [p.name for p in self.store.root.iterdir() if p.is_dir()]
            if self.store.root.is_dir()
            else []
        )
        for name in sorted({*catalog.dataset_names(self.db), *on_disk}):
            try:
                known = catalog.catalogued_parts(self.db, name)
                removed += len(self.store.cleanup_orphans(name, known))
            except InvalidArgument:  # a folder that is no dataset of ours: leave it
                continue
        return removed

    # ------------------------------------------------------------ profiles

    def import_profiles(self, path: str) -> ProfileImportSummary:
        """Upsert profile attributes from a file keyed by profile_id."""
        files = self.resolve_import_path(path)
        batches = [b for f in files for b in read_batches(f)]
        if not batches:
            raise InvalidArgument("path", "the profile file holds no rows")
        frame = pl.concat(batches, how="diagonal_relaxed")
        if "profile_id" not in frame.columns:
            raise InvalidArgument("path", "profile file has no profile_id column")
        rows_read = frame.height
        ids = pl.col("profile_id").cast(pl.Utf8).str.strip_chars()
        frame = frame.with_columns(ids.alias("profile_id"))
        # NaN and ±Infinity are not values (and JSON cannot hold them): such rows
        # are rejected on every backend alike.
        finite = [
            pl.col(c).is_finite() | pl.col(c).is_null()
            for c, dtype in frame.schema.items()
            if dtype.is_float()
        ]
        good = frame.filter(
            pl.col("profile_id").is_not_null()
            & (pl.col("profile_id").str.len_chars().is_between(1, PROFILE_ID_MAX)),
            *finite,
        )
        rejected = rows_read - good.height
        good = good.unique("profile_id", keep="last")
        attributes = [c for c in good.columns if c != "profile_id"]
        records = (
            good.select(attributes).to_dicts() if attributes else [{} for _ in range(good.height)]
        )
        ids_list = good["profile_id"].to_list()
        now = datetime.now(UTC)
        table: Table = ProfileRow.__table__  # type: ignore[assignment]
        self.db.bulk_load(
            table,
            {
                "profile_id": ids_list,
                "attributes": [_jsonable(rec) for rec in records],
                "updated_at": [now] * len(ids_list),
            },
            replace=("profile_id", ids_list),
        )
        return ProfileImportSummary(rows_read, len(ids_list), attributes, rejected)

    # ------------------------------------------------------------ datasets

    def verify_dataset(self, dataset: str) -> catalog.DatasetHealth:
        """Check every catalogued part of a dataset (footers only: cheap)."""
        return catalog.verify(self.db, check_dataset_name(dataset), self._part_problem)

    def repair_dataset(self, dataset: str) -> catalog.DatasetHealth:
        """Drop damaged parts from the catalogue and delete their files.

        Other datasets are untouched; re-importing the source restores the events.
        """
        with self._lock(check_dataset_name(dataset)):
            health = catalog.repair(self.db, dataset, self._part_problem)
            self.store.remove(dataset, [part.path for part in health.damaged])
        return health

    def _part_problem(self, dataset: str, part: str, rows: int) -> str | None:
        return self.store.part_problem(dataset, part, rows)

    def list_datasets(self) -> list[DatasetInfo]:
        """Every dataset with its counts."""
        return [self._info(name) for name in catalog.dataset_names(self.db)]

    def _info(self, name: str) -> DatasetInfo:
        row = catalog.get_dataset(self.db, name)
        return DatasetInfo(
            row.name, row.rows, catalog.part_count(self.db, row.id), row.created_at, row.updated_at
        )

    def describe(self, dataset: str) -> DatasetDescription:
        """Rows, profiles, time range, event types and completeness per field."""
        info = self._info(dataset)
        row = catalog.get_dataset(self.db, dataset)
        parts = catalog.catalogued_parts(self.db, dataset)
        if not parts:
            return DatasetDescription(info, 0, None, None, [], [], row.quarantined_rows)
        lf = self.store.scan(dataset, parts)
        optional = [c for c in EVENT_COLUMNS if c != "event_id"]
        try:
            stats = lf.select(
                pl.len().alias("rows"),
                pl.col("profile_id").n_unique().alias("profiles"),
                pl.col("timestamp").min().alias("min_ts"),
                pl.col("timestamp").max().alias("max_ts"),
                *[pl.col(c).is_not_null().mean().alias(f"c_{c}") for c in optional],
            ).collect()
            types = (
                lf.group_by("event_type")
                .len()
                .sort(["len", "event_type"], descending=[True, False])
                .collect()
            )
        except READ_ERRORS:
            raise self.store.damage(dataset, parts) from None
        s = stats.row(0, named=True)
        return DatasetDescription(
            info=info,
            profiles=int(s["profiles"]),
            min_timestamp=s["min_ts"],
            max_timestamp=s["max_ts"],
            event_types=list(
                zip(types["event_type"].to_list(), types["len"].to_list(), strict=True)
            ),
            completeness=[(c, round(100.0 * float(s[f"c_{c}"] or 0.0), 2)) for c in optional],
            quarantined_rows=row.quarantined_rows,
        )


def _jsonable(record: dict[str, object]) -> dict[str, object]:
    """Attribute values as JSON-friendly scalars (dates become ISO text)."""
    out: dict[str, object] = {}
    for key, value in record.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return out


def merge_summaries(summaries: list[IngestSummary]) -> IngestSummary:
    """Add up the summaries of several chunks of one ingestion."""
    total = IngestSummary(
        dataset=summaries[0].dataset, duplicate_policy=summaries[0].duplicate_policy
    )
    for s in summaries:
        total.rows_read += s.rows_read
        total.accepted += s.accepted
        total.rejected += s.rejected
        total.written += s.written
        total.reject_reasons.update(s.reject_reasons)
        total.quarantine_path = s.quarantine_path or total.quarantine_path
    return total
