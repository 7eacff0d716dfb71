"""SQLAlchemy models of the registry, catalog and profile store.

One schema for SQLite (default) and PostgreSQL; Alembic migrations in
`foresight/storage/migrations` create it. Large per-profile outputs (scores,
cluster members) live here too, loaded in bulk.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use UTC-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


# ---------------------------------------------------------------- event catalog


class DatasetRow(Base):
    """A dataset of the event store."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    quarantined_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetPartRow(Base):
    """One Parquet part of a dataset; only catalogued parts are visible to readers."""

    __tablename__ = "dataset_parts"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512), unique=True)
    shard: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(BigInteger)
    min_ts: Mapped[datetime]
    max_ts: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_dataset_parts_dataset_shard", "dataset_id", "shard"),)


class QuarantineRow(Base):
    """A quarantine file of rejected rows from one import."""

    __tablename__ = "quarantine_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512))
    rows: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProfileRow(Base):
    """Profile attributes keyed by profile id."""

    __tablename__ = "profiles"
    profile_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- Customer AI registry


class InstanceRow(Base):
    """A prediction instance; `config` is `InstanceConfig.to_dict()`."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    dataset: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    current_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionRow(Base):
    """A trained model version of an instance (RUNNING → READY | FAILED | CANCELLED)."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    artifact_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    feature_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    validation_cutoff: Mapped[datetime | None] = mapped_column(nullable=True)
    owner_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    __table_args__ = (UniqueConstraint("instance_name", "version"),)


class EncoderVersionRow(Base):
    """A journey encoder version (Segment AI)."""

    __tablename__ = "encoder_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(64))
    dimensions: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- scores


class ScoringRunRow(Base):
    """A batch scoring run; its scores are in `profile_scores`."""

    __tablename__ = "scoring_runs"
    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_name: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    as_of: Mapped[datetime]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    profiles: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Parquet copy of the run's scores (the scorer's lookup snapshot loads from it).
    scores_path: Mapped[str | None] = mapped_column(String(512), nullable=True)


class ProfileScoreRow(Base):
    """One profile's score in one run (bulk loaded; COPY on PostgreSQL)."""

    __tablename__ = "profile_scores"
    run_id: Mapped[str] = mapped_column(
        ForeignKey("scoring_runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    profile_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    probability: Mapped[float] = mapped_column(Float)
    score: Mapped[int] = mapped_column(SmallInteger)
    percentile: Mapped[int] = mapped_column(SmallInteger)
    bucket: Mapped[str] = mapped_column(String(8))
    # JSON list of [code, text, impact, importance] lists, strongest first (rows written
    # before 2026-12-04 hold {"code", "text", "impact", "importance"} objects).
    factors: Mapped[str] = mapped_column(Text)


class SegmentRow(Base):
    """A stored segment: from scores (source "score") or a cluster (source "cluster")."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    instance_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    filter: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    bucket_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SegmentMemberRow(Base):
    """A member of a segment."""

    __tablename__ = "segment_members"
    segment_id: Mapped[int] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    profile_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    score: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    percentile: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    bucket: Mapped[str | None] = mapped_column(String(8), nullable=True)
    __table_args__ = (Index("ix_segment_members_segment_probability", "segment_id", "probability"),)


# ---------------------------------------------------------------- Segment AI


class IndexVersionRow(Base):
    """A built HNSW index (files under artifacts/indexes/v<N>)."""

    __tablename__ = "index_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    dataset: Mapped[str] = mapped_column(String(64))
    encoder_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    artifact_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexJournalRow(Base):
    """An acknowledged upsert or removal of the served index, written before the OK.

    Owned by services/segmenter/journal.py. One row per write request (or one
    compacted row standing for many): replayed over the last snapshot at
    start and over every rebuild from the event store.
    """

    __tablename__ = "index_journal"
    __table_args__ = (
        Index("ix_index_journal_dataset_seq", "dataset", "seq"),
        {"sqlite_autoincrement": True},
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(64))
    removed: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Profile ids removed."""
    stored: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Profile ids upserted from their events in the event store."""
    events: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """Parquet of the validated request events of the profiles upserted from the request."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DiscoveryRow(Base):
    """A versioned clustering of an index."""

    __tablename__ = "discoveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    index_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    chosen_by: Mapped[str] = mapped_column(Text, default="")
    # Parquet of (profile_id, cluster_id, distance) plus centroids, under artifacts/discoveries.
    artifact_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClusterRow(Base):
    """A cluster of a discovery with its traits (both views)."""

    __tablename__ = "clusters"
    id: Mapped[int] = mapped_column(primary_key=True)
    discovery_version: Mapped[int] = mapped_column(Integer, index=True)
    cluster_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    share: Mapped[float] = mapped_column(Float)
    # {"influence": [...], "popularity": [...]} trait dicts.
    traits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    __table_args__ = (UniqueConstraint("discovery_version", "cluster_id"),)
