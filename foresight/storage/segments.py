"""The segment tables' one owner: the scorer's score segments and the segmenter's cluster segments.

A segment is created all at once: its row is inserted (the unique name constraint,
not a prior lookup, decides a clash, so two services racing for one name get one
segment and one AlreadyExists), then its members are bulk-loaded; if loading fails
the row goes too, so a segment is never half there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from foresight.errors import AlreadyExists, NotFound
from foresight.storage.db import Database
from foresight.storage.models import SegmentMemberRow, SegmentRow, utcnow
from foresight.storage.paths import slug

# Members without a probability (cluster segments) sort after every scored one.
NO_PROBABILITY = -1.0
MEMBER_COLUMNS = ("profile_id", "probability", "score", "percentile", "bucket")


class SegmentSource(StrEnum):
    """Where a segment's members came from."""

    SCORE = "score"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A stored segment, without its members."""

    id: int
    name: str
    source: SegmentSource
    size: int
    filter: dict[str, Any]
    created_at: datetime
    instance: str = ""
    run_id: str = ""
    bucket_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One stored member: score columns are None for a cluster segment."""

    profile_id: str
    probability: float | None = None
    score: int | None = None
    percentile: int | None = None
    bucket: str | None = None


def _info(row: SegmentRow) -> SegmentInfo:
    return SegmentInfo(
        id=row.id,
        name=row.name,
        source=SegmentSource(row.source),
        size=int(row.size),
        filter=dict(row.filter or {}),
        instance=row.instance_name or "",
        run_id=row.run_id or "",
        bucket_counts={str(k): int(v) for k, v in (row.bucket_counts or {}).items()},
        created_at=row.created_at,
    )


class SegmentTables:
    """Reads and writes `segments` and `segment_members`; nothing else does."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: str,
        source: SegmentSource,
        members: Iterable[Sequence[tuple[Any, ...]]],
        *,
        size: int,
        filter: dict[str, Any],
        columns: Sequence[str] = ("profile_id",),
        instance: str = "",
        run_id: str = "",
        bucket_counts: dict[str, int] | None = None,
    ) -> SegmentInfo:
        """Store a segment: `members` yields chunks of rows with `columns` (from MEMBER_COLUMNS)."""
        slug("name", name)
        row = SegmentRow(
            name=name,
            source=source.value,
            instance_name=instance or None,
            run_id=run_id or None,
            filter=filter,
            size=size,
            bucket_counts=bucket_counts or {},
            created_at=utcnow(),
        )
        try:
            with self.db.session() as session:
                session.add(row)
                session.flush()
                session.expunge(row)
        except IntegrityError:
            raise AlreadyExists(f"segment '{name}' already exists") from None
        try:
            self._load_members(row.id, columns, members)
        except BaseException:
            with self.db.session() as session:
                session.execute(
                    delete(SegmentMemberRow).where(SegmentMemberRow.segment_id == row.id)
                )
                session.execute(delete(SegmentRow).where(SegmentRow.id == row.id))
            raise
        return _info(row)

    def _load_members(
        self, segment_id: int, columns: Sequence[str], chunks: Iterable[Sequence[tuple[Any, ...]]]
    ) -> None:
        unknown = set(columns) - set(MEMBER_COLUMNS)
        if unknown or "profile_id" not in columns:
            raise ValueError(f"member columns must include profile_id, from {MEMBER_COLUMNS}")
        table = SegmentMemberRow.__table__
        for chunk in chunks:
            data: dict[str, Sequence[Any]] = {"segment_id": [segment_id] * len(chunk)}
            data.update((c, [member[j] for member in chunk]) for j, c in enumerate(columns))
            self.db.bulk_load(table, data)  # type: ignore[arg-type]

    def get(self, name: str) -> SegmentInfo:
        """One segment by name (NotFound if there is none)."""
        with self.db.session() as session:
            row = session.scalar(select(SegmentRow).where(SegmentRow.name == name))
            if row is None:
                raise NotFound(f"segment '{name}' not found")
            return _info(row)

    def list_segments(self, instance: str = "") -> list[SegmentInfo]:
        """Segments by name, optionally only those of one instance."""
        query = select(SegmentRow).order_by(SegmentRow.name)
        if instance:
            query = query.where(SegmentRow.instance_name == instance)
        with self.db.session() as session:
            return [_info(r) for r in session.scalars(query).all()]

    def members(
        self, segment_id: int, limit: int, after: tuple[float, str] | None = None
    ) -> list[MemberRow]:
        """Up to `limit` members after the keyset `after`: highest probability first, then id.

        Keyset paging is stable and as fast on page 1,000 as on page 1.
        """
        probability = func.coalesce(SegmentMemberRow.probability, NO_PROBABILITY)
        query = select(
            SegmentMemberRow.profile_id,
            SegmentMemberRow.probability,
            SegmentMemberRow.score,
            SegmentMemberRow.percentile,
            SegmentMemberRow.bucket,
        ).where(SegmentMemberRow.segment_id == segment_id)
        if after is not None:
            p, pid = after
            query = query.where(
                or_(probability < p, and_(probability == p, SegmentMemberRow.profile_id > pid))
            )
        query = query.order_by(probability.desc(), SegmentMemberRow.profile_id).limit(limit)
        with self.db.session() as session:
            return [MemberRow(*r) for r in session.execute(query).all()]

    def member_ids(self, name: str) -> list[str]:
        """Every member id of a segment (NotFound if there is none)."""
        segment = self.get(name)
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(SegmentMemberRow.profile_id).where(
                        SegmentMemberRow.segment_id == segment.id
                    )
                )
            )
