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

from foresight.errors import InvalidArgument
from foresight.storage.db import Database
from foresight.storage.paths import slug
from foresight.storage.segments import (
    MEMBER_COLUMNS,
    NO_PROBABILITY,
    SegmentInfo,
    SegmentSource,
    SegmentTables,
)
from services.scorer.records import Bucket, MembersPage, Segment, SegmentFilter, SegmentMember
from services.scorer.snapshot import RunScores

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
EXPORT_CHUNK_BYTES = 1 << 20
_EXPORT_PAGE = 50_000
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


def _segment_of(stored: SegmentInfo) -> Segment:
    return Segment(
        name=stored.name,
        instance=stored.instance,
        filter=filter_from_dict(stored.filter),
        run_id=stored.run_id,
        size=stored.size,
        bucket_counts=stored.bucket_counts,
        source=stored.source.value,
        created_at=stored.created_at,
    )


def _member_chunks(scores: RunScores, rows: np.ndarray) -> Iterator[list[tuple[Any, ...]]]:
    """The selected rows as member tuples (MEMBER_COLUMNS), 50,000 at a time."""
    step = 50_000
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        yield list(
            zip(
                scores.ids.take(pa.array(chunk)).to_pylist(),
                scores.probability[chunk].astype(np.float64).tolist(),
                scores.score[chunk].tolist(),
                scores.percentile[chunk].tolist(),
                [Bucket(b).name for b in scores.bucket[chunk].tolist()],
                strict=True,
            )
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
    """Score segments: selection here, the tables through `SegmentTables`."""

    def __init__(self, db: Database) -> None:
        self.tables = SegmentTables(db)

    def create(self, name: str, segment_filter: SegmentFilter, scores: RunScores) -> Segment:
        """Select the members of `scores` and store them as segment `name`."""
        slug("name", name)
        validate_filter(segment_filter, {f.code for f in scores.features})
        rows = select_rows(scores, segment_filter)
        buckets = scores.bucket[rows]
        counts = {b.name: int(np.count_nonzero(buckets == b)) for b in Bucket}
        stored = self.tables.create(
            name,
            SegmentSource.SCORE,
            _member_chunks(scores, rows),
            columns=MEMBER_COLUMNS,
            size=len(rows),
            filter=filter_to_dict(segment_filter),
            instance=scores.instance,
            run_id=scores.run_id,
            bucket_counts=counts,
        )
        return _segment_of(stored)

    def get(self, name: str) -> Segment:
        """One segment."""
        if not name:
            raise InvalidArgument("name", "must not be empty")
        return _segment_of(self.tables.get(name))

    def list_all(self, instance: str = "") -> list[Segment]:
        """Segments by name, optionally only one instance's."""
        return [_segment_of(s) for s in self.tables.list_segments(instance)]

    def _page(
        self, segment_id: int, limit: int, after: tuple[float, str] | None
    ) -> list[SegmentMember]:
        return [
            SegmentMember(
                profile_id=m.profile_id,
                probability=m.probability,
                score=m.score,
                percentile=m.percentile,
                bucket=_BUCKET_BY_NAME.get(m.bucket) if m.bucket else None,
            )
            for m in self.tables.members(segment_id, limit, after)
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
        row = self.tables.get(name)
        members = self._page(row.id, size + 1, after)
        token = ""
        if len(members) > size:
            members = members[:size]
            last = members[-1]
            token = _encode_token(
                last.probability if last.probability is not None else NO_PROBABILITY,
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
                last.probability if last.probability is not None else NO_PROBABILITY,
                last.profile_id,
            )

    def export(self, name: str, parquet: bool) -> Iterator[bytes]:
        """The members as CSV (streamed page by page) or Parquet bytes, in chunks of ≤ 1 MiB."""
        pages = self._all_members(self.tables.get(name).id)
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
