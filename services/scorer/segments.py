"""Score segments: profiles of a run selected by bucket, percentile, probability or factor.

Selection runs on the run's column arrays (NumPy masks over a million rows take
milliseconds); the members are then stored with their scores so the segment
stays valid after newer runs, and the segmenter can use it as seeds. A filter
that selects nobody is a valid, empty segment; a filter that cannot be right
(a percentile of 120, an unknown factor) is an InvalidArgument.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from foresight.errors import AlreadyExists, InvalidArgument, NotFound
from foresight.storage.db import Database
from foresight.storage.models import SegmentMemberRow, SegmentRow, utcnow
from foresight.storage.paths import slug
from services.scorer.records import Bucket, MembersPage, Segment, SegmentFilter, SegmentMember
from services.scorer.snapshot import RunScores

SOURCE_SCORE = "score"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
EXPORT_CHUNK_BYTES = 1 << 20
_EXPORT_PAGE = 50_000
_NO_PROBABILITY = -1.0  # cluster segments have no probability; they sort last
_BUCKET_BY_NAME = {b.name: b for b in Bucket}


# --- filters ------------------------------------------------------------------------


def validate_filter(segment_filter: SegmentFilter, feature_codes: set[str]) -> None:
    """Raise InvalidArgument naming the first impossible part of a filter."""
    f = segment_filter
    for name, value in (("min_percentile", f.min_percentile), ("max_percentile", f.max_percentile)):
        if not 0 <= value <= 100:
            raise InvalidArgument(
                f"filter.{name}", f"must be between 1 and 100 (0 = unset), got {value}"
            )
    if f.min_percentile and f.max_percentile and f.min_percentile > f.max_percentile:
        raise InvalidArgument(
            "filter.min_percentile",
            f"{f.min_percentile} is above max_percentile {f.max_percentile}",
        )
    for name, prob in (
        ("min_probability", f.min_probability),
        ("max_probability", f.max_probability),
    ):
        if prob is not None and not 0.0 <= prob <= 1.0:
            raise InvalidArgument(f"filter.{name}", f"must be between 0 and 1, got {prob}")
    if (
        f.min_probability is not None
        and f.max_probability is not None
        and f.min_probability > f.max_probability
    ):
        raise InvalidArgument(
            "filter.min_probability",
            f"{f.min_probability} is above max_probability {f.max_probability}",
        )
    if f.factor_code and f.factor_code not in feature_codes:
        raise InvalidArgument(
            "filter.factor_code", f"unknown factor code '{f.factor_code}' for this model"
        )


def select_rows(scores: RunScores, segment_filter: SegmentFilter) -> np.ndarray:
    """Rows of `scores` the filter keeps, highest probability first."""
    f = segment_filter
    mask = np.ones(len(scores), dtype=bool)
    if f.buckets:
        mask &= np.isin(scores.bucket, np.array([int(b) for b in f.buckets], dtype=np.uint8))
    if f.min_percentile:
        mask &= scores.percentile >= f.min_percentile
    if f.max_percentile:
        mask &= scores.percentile <= f.max_percentile
    probability = scores.probability.astype(np.float64)
    if f.min_probability is not None:
        mask &= probability >= f.min_probability
    if f.max_probability is not None:
        mask &= probability <= f.max_probability
    if f.factor_code:
        code = scores.feature_index()[f.factor_code]
        mask &= (scores.factors.codes == code).any(axis=1)
    rows = np.flatnonzero(mask)
    return rows[np.argsort(-probability[rows], kind="stable")]


def filter_to_dict(f: SegmentFilter) -> dict[str, Any]:
    """JSON form stored in `segments.filter`."""
    return {
        "buckets": [b.name for b in f.buckets],
        "min_percentile": f.min_percentile,
        "max_percentile": f.max_percentile,
        "min_probability": f.min_probability,
        "max_probability": f.max_probability,
        "factor_code": f.factor_code,
    }


def filter_from_dict(d: dict[str, Any] | None) -> SegmentFilter:
    """Inverse of `filter_to_dict` (tolerates the empty filter of cluster segments)."""
    d = d or {}
    return SegmentFilter(
        buckets=tuple(_BUCKET_BY_NAME[b] for b in d.get("buckets", []) if b in _BUCKET_BY_NAME),
        min_percentile=int(d.get("min_percentile") or 0),
        max_percentile=int(d.get("max_percentile") or 0),
        min_probability=d.get("min_probability"),
        max_probability=d.get("max_probability"),
        factor_code=str(d.get("factor_code") or ""),
    )


def _segment_of(row: SegmentRow) -> Segment:
    return Segment(
        name=row.name,
        instance=row.instance_name or "",
        filter=filter_from_dict(row.filter),
        run_id=row.run_id or "",
        size=int(row.size),
        bucket_counts={str(k): int(v) for k, v in (row.bucket_counts or {}).items()},
        source=row.source,
        created_at=row.created_at,
    )


# --- paging tokens --------------------------------------------------------------------


def _encode_token(probability: float, profile_id: str) -> str:
    raw = json.dumps([probability, profile_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        probability, profile_id = json.loads(raw)
        return float(probability), str(profile_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidArgument(
            "page.page_token", "not a token returned by ListSegmentMembers"
        ) from None


# --- the store ---------------------------------------------------------------------------


class SegmentStore:
    """Segments and their members in the profile store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, segment_filter: SegmentFilter, scores: RunScores) -> Segment:
        """Select the members of `scores` and store them as segment `name`."""
        slug("name", name)
        validate_filter(segment_filter, {f.code for f in scores.features})
        rows = select_rows(scores, segment_filter)
        buckets = scores.bucket[rows]
        counts = {b.name: int(np.count_nonzero(buckets == b)) for b in Bucket}
        with self.db.session() as session:
            if session.scalar(select(SegmentRow.id).where(SegmentRow.name == name)) is not None:
                raise AlreadyExists(f"segment '{name}' already exists")
        segment_row = SegmentRow(
            name=name,
            source=SOURCE_SCORE,
            instance_name=scores.instance,
            run_id=scores.run_id,
            filter=filter_to_dict(segment_filter),
            size=len(rows),
            bucket_counts=counts,
            created_at=utcnow(),
        )
        try:
            with self.db.session() as session:
                session.add(segment_row)
                session.flush()
                segment_id = segment_row.id
        except IntegrityError:
            raise AlreadyExists(f"segment '{name}' already exists") from None
        try:
            self._store_members(segment_id, scores, rows)
        except BaseException:
            with self.db.session() as session:
                session.execute(
                    delete(SegmentMemberRow).where(SegmentMemberRow.segment_id == segment_id)
                )
                session.execute(delete(SegmentRow).where(SegmentRow.id == segment_id))
            raise
        return _segment_of(segment_row)

    def _store_members(self, segment_id: int, scores: RunScores, rows: np.ndarray) -> None:
        columns = ("segment_id", "profile_id", "probability", "score", "percentile", "bucket")
        table = SegmentMemberRow.__table__
        step = 50_000
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            ids = scores.ids.take(pa.array(chunk)).to_pylist()
            values = zip(
                [segment_id] * len(chunk),
                ids,
                scores.probability[chunk].astype(np.float64).tolist(),
                scores.score[chunk].tolist(),
                scores.percentile[chunk].tolist(),
                [Bucket(b).name for b in scores.bucket[chunk].tolist()],
                strict=True,
            )
            self.db.bulk_load(table, columns, list(values))  # type: ignore[arg-type]

    def _row(self, name: str) -> SegmentRow:
        with self.db.session() as session:
            row = session.scalar(select(SegmentRow).where(SegmentRow.name == name))
            if row is None:
                raise NotFound(f"segment '{name}' not found")
            session.expunge(row)
            return row

    def get(self, name: str) -> Segment:
        """One segment."""
        if not name:
            raise InvalidArgument("name", "must not be empty")
        return _segment_of(self._row(name))

    def list_all(self, instance: str = "") -> list[Segment]:
        """Segments by name, optionally only one instance's."""
        query = select(SegmentRow).order_by(SegmentRow.name)
        if instance:
            query = query.where(SegmentRow.instance_name == instance)
        with self.db.session() as session:
            return [_segment_of(r) for r in session.scalars(query).all()]

    def _page(
        self, segment_id: int, limit: int, after: tuple[float, str] | None
    ) -> list[SegmentMember]:
        probability = func.coalesce(SegmentMemberRow.probability, _NO_PROBABILITY)
        query = select(
            SegmentMemberRow.profile_id,
            SegmentMemberRow.probability,
            SegmentMemberRow.score,
            SegmentMemberRow.percentile,
            SegmentMemberRow.bucket,
        ).where(SegmentMemberRow.segment_id == segment_id)
        if after is not None:
            # Keyset paging: stable and as fast on page 1,000 as on page 1.
            p, pid = after
            query = query.where(
                or_(probability < p, and_(probability == p, SegmentMemberRow.profile_id > pid))
            )
        query = query.order_by(probability.desc(), SegmentMemberRow.profile_id).limit(limit)
        with self.db.session() as session:
            rows = session.execute(query).all()
        return [
            SegmentMember(
                profile_id=pid,
                probability=prob,
                score=score,
                percentile=pct,
                bucket=_BUCKET_BY_NAME.get(bucket) if bucket else None,
            )
            for pid, prob, score, pct, bucket in rows
        ]

    def members(self, name: str, page_size: int, page_token: str) -> MembersPage:
        """One page of members, highest probability first."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                "page.page_size",
                f"must be between 1 and {MAX_PAGE_SIZE:,} (0 = {DEFAULT_PAGE_SIZE})",
            )
        size = page_size or DEFAULT_PAGE_SIZE
        after = _decode_token(page_token) if page_token else None
        row = self._row(name)
        members = self._page(row.id, size + 1, after)
        token = ""
        if len(members) > size:
            members = members[:size]
            last = members[-1]
            token = _encode_token(
                last.probability if last.probability is not None else _NO_PROBABILITY,
                last.profile_id,
            )
        return MembersPage(members, token, int(row.size))

    def _all_members(self, segment_id: int) -> Iterator[list[SegmentMember]]:
        after: tuple[float, str] | None = None
        while True:
            page = self._page(segment_id, _EXPORT_PAGE, after)
            if not page:
                return
            yield page
            last = page[-1]
            after = (
                last.probability if last.probability is not None else _NO_PROBABILITY,
                last.profile_id,
            )

    def export(self, name: str, parquet: bool) -> Iterator[bytes]:
        """The members as CSV (streamed page by page) or Parquet bytes, in chunks of ≤ 1 MiB."""
        row = self._row(name)
        pages = self._all_members(row.id)
        if parquet:
            yield from _chunks(_parquet_bytes(pages))
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["profile_id", "probability", "score", "percentile", "bucket"])
        for page in pages:
            for m in page:
                writer.writerow(
                    [
                        m.profile_id,
                        "" if m.probability is None else repr(m.probability),
                        "" if m.score is None else m.score,
                        "" if m.percentile is None else m.percentile,
                        m.bucket.name if m.bucket else "",
                    ]
                )
            if buffer.tell() >= EXPORT_CHUNK_BYTES:
                yield from _chunks(buffer.getvalue().encode())
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
        if buffer.tell():
            yield from _chunks(buffer.getvalue().encode())


def _parquet_bytes(pages: Iterator[list[SegmentMember]]) -> bytes:
    members = [m for page in pages for m in page]
    table = pa.table(
        {
            "profile_id": pa.array([m.profile_id for m in members], pa.string()),
            "probability": pa.array([m.probability for m in members], pa.float64()),
            "score": pa.array([m.score for m in members], pa.int16()),
            "percentile": pa.array([m.percentile for m in members], pa.int16()),
            "bucket": pa.array([m.bucket.name if m.bucket else None for m in members], pa.string()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), EXPORT_CHUNK_BYTES):
        yield data[start : start + EXPORT_CHUNK_BYTES]
