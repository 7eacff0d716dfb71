"""The event-store catalog: which Parquet parts of a dataset are visible.

Parts are files written atomically by `foresight.events.store.EventStore`;
a part exists for readers only once it is catalogued here, in the same
transaction that updates the dataset's counts. A process killed between the
file rename and the commit leaves an orphan file that nobody reads and the
trainer sweeps at its next start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from foresight.errors import NotFound
from foresight.storage.db import Database
from foresight.storage.models import DatasetPartRow, DatasetRow, QuarantineRow, utcnow


@dataclass(frozen=True, slots=True)
class CataloguedPart:
    """A part to record: path relative to the event-store root, shard and stats."""

    path: str
    shard: int
    rows: int
    min_ts: datetime
    max_ts: datetime


def dataset_names(db: Database) -> list[str]:
    """Every dataset, by name."""
    with db.session() as s:
        return list(s.scalars(select(DatasetRow.name).order_by(DatasetRow.name)))


def get_dataset(db: Database, name: str) -> DatasetRow:
    """The dataset row, or NotFound."""
    with db.session() as s:
        row = s.scalar(select(DatasetRow).where(DatasetRow.name == name))
        if row is None:
            raise NotFound(f"dataset {name!r} does not exist")
        return row


def part_count(db: Database, dataset_id: int) -> int:
    """Number of catalogued parts of a dataset."""
    with db.session() as s:
        return int(
            s.scalar(select(func.count()).where(DatasetPartRow.dataset_id == dataset_id)) or 0
        )


def catalogued_parts(db: Database, dataset: str, shard: int | None = None) -> list[str]:
    """Paths of the visible parts of a dataset (optionally of one shard); [] if none."""
    with db.session() as s:
        query = (
            select(DatasetPartRow.path)
            .join(DatasetRow, DatasetRow.id == DatasetPartRow.dataset_id)
            .where(DatasetRow.name == dataset)
            .order_by(DatasetPartRow.id)
        )
        if shard is not None:
            query = query.where(DatasetPartRow.shard == shard)
        return list(s.scalars(query))


def record_import(
    db: Database,
    dataset: str,
    parts: Sequence[CataloguedPart],
    quarantines: Sequence[tuple[str, int]] = (),
) -> None:
    """Publish written parts and quarantine files (path, rows); update counts; one transaction."""
    with db.session() as s:
        row = s.scalar(select(DatasetRow).where(DatasetRow.name == dataset))
        if row is None:
            row = DatasetRow(name=dataset, rows=0, quarantined_rows=0)
            s.add(row)
            s.flush()
        for part in parts:
            s.add(
                DatasetPartRow(
                    dataset_id=row.id,
                    path=part.path,
                    shard=part.shard,
                    rows=part.rows,
                    min_ts=part.min_ts,
                    max_ts=part.max_ts,
                )
            )
        row.rows += sum(p.rows for p in parts)
        for path, rows in quarantines:
            s.add(QuarantineRow(dataset_id=row.id, path=path, rows=rows))
            row.quarantined_rows += rows
        row.updated_at = utcnow()


@dataclass(frozen=True, slots=True)
class DamagedPart:
    """A catalogued part that cannot be read: its path (relative to the store), rows, problem."""

    path: str
    shard: int
    rows: int
    problem: str


@dataclass(frozen=True, slots=True)
class DatasetHealth:
    """What `verify` found (and `repair` dropped) for one dataset."""

    dataset: str
    parts_checked: int
    damaged: tuple[DamagedPart, ...]
    repaired: bool = False

    @property
    def rows_lost(self) -> int:
        """Catalogued rows in the damaged parts."""
        return sum(p.rows for p in self.damaged)


# Checks one part: (dataset, part path, catalogued rows) → problem or None.
PartCheck = Callable[[str, str, int], str | None]


def verify(db: Database, dataset: str, check: PartCheck) -> DatasetHealth:
    """Check every catalogued part of a dataset; NotFound for an unknown dataset."""
    row = get_dataset(db, dataset)
    with db.session() as s:
        parts = s.execute(
            select(DatasetPartRow.path, DatasetPartRow.shard, DatasetPartRow.rows)
            .where(DatasetPartRow.dataset_id == row.id)
            .order_by(DatasetPartRow.id)
        ).all()
    damaged = tuple(
        DamagedPart(path, shard, rows, problem)
        for path, shard, rows in parts
        if (problem := check(dataset, path, rows)) is not None
    )
    return DatasetHealth(dataset, len(parts), damaged)


def repair(db: Database, dataset: str, check: PartCheck) -> DatasetHealth:
    """Drop the damaged parts from the catalogue (and their rows from the counts).

    Events of a dropped part are no longer known, so re-importing the source
    restores them (ingestion skips only event ids of catalogued parts). The
    caller removes the dropped files.
    """
    health = verify(db, dataset, check)
    if not health.damaged:
        return health
    with db.session() as s:
        row = s.scalar(select(DatasetRow).where(DatasetRow.name == dataset))
        if row is None:
            raise NotFound(f"dataset {dataset!r} does not exist")
        s.execute(
            delete(DatasetPartRow).where(
                DatasetPartRow.dataset_id == row.id,
                DatasetPartRow.path.in_([p.path for p in health.damaged]),
            )
        )
        row.rows = max(0, row.rows - health.rows_lost)
        row.updated_at = utcnow()
    return DatasetHealth(dataset, health.parts_checked, health.damaged, repaired=True)


def quarantine_recorded(db: Database, dataset: str, path: str) -> bool:
    """Whether a quarantine file is already catalogued for the dataset (same rows, same name)."""
    with db.session() as s:
        found = s.scalar(
            select(QuarantineRow.id)
            .join(DatasetRow, DatasetRow.id == QuarantineRow.dataset_id)
            .where(DatasetRow.name == dataset, QuarantineRow.path == path)
        )
    return found is not None


def time_range(db: Database, dataset: str) -> tuple[datetime, datetime] | None:
    """Earliest and latest event time of a dataset from the catalog, or None when empty."""
    with db.session() as s:
        lo, hi = s.execute(
            select(func.min(DatasetPartRow.min_ts), func.max(DatasetPartRow.max_ts))
            .join(DatasetRow, DatasetRow.id == DatasetPartRow.dataset_id)
            .where(DatasetRow.name == dataset)
        ).one()
    if lo is None or hi is None:
        return None
    # min()/max() bypass the column type on SQLite: restore UTC.
    return _as_utc(lo), _as_utc(hi)


def _as_utc(value: datetime | str) -> datetime:
    from datetime import UTC

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
