"""Export a whole scoring run: every profile's probability, score, percentile, bucket, reasons.

Read from the run's stored scores (the served snapshot, or its Parquet copy
for an older run) and written page by page, so CSV streams without building
the whole file first; Parquet gets one row group per page. Reasons are the
profile's top factors as JSON text (code, text with the profile's value,
signed impact, importance): the same text the lookups serve.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from services.scorer.batch import factor_json
from services.scorer.records import Bucket
from services.scorer.snapshot import RunScores

__all__ = ["EXPORT_COLUMNS", "export_run"]

EXPORT_COLUMNS = ("profile_id", "probability", "score", "percentile", "bucket", "reasons")
CHUNK_BYTES = 1 << 20
PAGE_ROWS = 50_000


def _page(scores: RunScores, start: int, stop: int) -> pl.DataFrame:
    names = np.array([""] + [b.name for b in Bucket], dtype=object)
    return pl.DataFrame(
        {
            "profile_id": pl.Series(scores.ids.slice(start, stop - start)).cast(pl.String),
            "probability": scores.probability[start:stop].astype(np.float64).round(6),
            "score": scores.score[start:stop].astype(np.int16),
            "percentile": scores.percentile[start:stop].astype(np.int16),
            "bucket": names[scores.bucket[start:stop]].tolist(),
            "reasons": factor_json(scores.features, scores.factors.rows(start, stop)),
        },
        schema={
            "profile_id": pl.String,
            "probability": pl.Float64,
            "score": pl.Int16,
            "percentile": pl.Int16,
            "bucket": pl.String,
            "reasons": pl.String,
        },
    )


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


def export_run(scores: RunScores, parquet: bool) -> Iterator[bytes]:
    """The run as CSV (with a header) or Parquet bytes, in chunks of at most 1 MiB."""
    n = len(scores)
    pages = (_page(scores, s, min(s + PAGE_ROWS, n)) for s in range(0, max(n, 1), PAGE_ROWS))
    if parquet:
        sink = io.BytesIO()
        writer: pq.ParquetWriter | None = None
        for frame in pages:
            table: pa.Table = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(sink, table.schema, compression="zstd")
            writer.write_table(table)
        if writer is not None:
            writer.close()
        yield from _chunks(sink.getvalue())
        return
    for i, frame in enumerate(pages):
        yield from _chunks(frame.write_csv(include_header=i == 0).encode())
