"""How a damaged Parquet part is recognised (missing, unreadable, wrong row count)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["READ_ERRORS", "part_file_problem"]

READ_ERRORS: Final = (OSError, pa.ArrowException, pl.exceptions.PolarsError)
"""What reading a damaged Parquet file raises (their messages name server paths)."""


def part_file_problem(path: Path, rows: int | None = None) -> str | None:
    """Why a part file cannot be read ("missing", "unreadable", a row count), or None.

    Reads only the Parquet footer, so checking a whole dataset is cheap.
    """
    if not path.is_file():
        return "missing"
    try:
        found = pq.ParquetFile(path).metadata.num_rows
    except READ_ERRORS:
        return "unreadable"
    if rows is not None and found != rows:
        return f"holding {found:,} rows instead of {rows:,}"
    return None
