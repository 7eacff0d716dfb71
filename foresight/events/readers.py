"""Read event (or profile) files as bounded batches of raw rows.

The readers do no validation: CSV comes in as strings, JSON Lines keep their
mixed JSON types (nested values become JSON text or structs), Parquet keeps
its stored types. `foresight.events.validation` turns a raw batch into typed
events and rejected rows. Batches are bounded so a 20M-row file never has to
fit in memory at once.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.events.schema import MALFORMED_COLUMN
from foresight.limits import JSONL_LINE_MAX_BYTES

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "SUPPORTED_SUFFIXES",
    "count_rows",
    "list_input_files",
    "read_batches",
    "read_csv_batches",
    "read_jsonl_batches",
    "read_parquet_batches",
]

DEFAULT_BATCH_ROWS: Final[int] = 250_000

_PARQUET: Final[frozenset[str]] = frozenset({".parquet", ".pq"})
_CSV: Final[frozenset[str]] = frozenset({".csv"})
_JSONL: Final[frozenset[str]] = frozenset({".jsonl", ".ndjson", ".json"})
SUPPORTED_SUFFIXES: Final[frozenset[str]] = _PARQUET | _CSV | _JSONL
_KIND: Final[dict[str, str]] = {
    **dict.fromkeys(_PARQUET, "Parquet"),
    **dict.fromkeys(_CSV, "CSV"),
    **dict.fromkeys(_JSONL, "JSON Lines"),
}

# Column that keeps JSON Lines rows in file order while good and malformed
# lines are parsed apart.
_LINE_INDEX: Final[str] = "__line_index"
_TOO_LONG: Final[str] = f"line longer than {JSONL_LINE_MAX_BYTES:,} bytes (limit); not read"


def list_input_files(path: Path) -> list[Path]:
    """Return the data files a path stands for: the file itself, or the
    supported files directly inside a folder, sorted by name.

    Hidden files (``.``/``_`` prefixes, e.g. temp files and ``_SUCCESS``
    markers) in a folder are skipped.
    """
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        if not files:
            raise InvalidArgument(
                "path", f"folder {path.name!r} holds no Parquet, CSV or JSON Lines file"
            )
        return files
    if not path.is_file():
        raise NotFound(f"{path.name!r} does not exist")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InvalidArgument(
            "path",
            f"unsupported file type {path.suffix!r}; use .parquet, .csv or .jsonl",
        )
    return [path]


def count_rows(path: Path) -> int:
    """Rows in an event file or folder, for progress (Parquet: from its footer; text: lines).

    A text file's count is an estimate for progress only (a CSV field may hold
    a line break); reading the batches stays the truth.
    """
    total = 0
    for f in list_input_files(path):
        suffix = f.suffix.lower()
        with _reading(f):
            if suffix in _PARQUET:
                total += pq.ParquetFile(f).metadata.num_rows
                continue
            lines = 0
            with f.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    lines += chunk.count(b"\n")
        total += max(lines - 1, 0) if suffix in _CSV else lines
    return total


def read_batches(path: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """Yield raw batches of at most ``batch_rows`` rows from a file or folder.

    The format is chosen by extension. Batches never span two files, so a
    caller that numbers rows can restart the count per file via
    :func:`list_input_files` if it wants per-file row numbers.
    """
    if batch_rows <= 0:
        raise InvalidArgument("batch_rows", "must be positive")
    for file in list_input_files(path):
        suffix = file.suffix.lower()
        with _reading(file):
            if suffix in _PARQUET:
                yield from read_parquet_batches(file, batch_rows)
            elif suffix in _CSV:
                yield from read_csv_batches(file, batch_rows)
            else:
                yield from read_jsonl_batches(file, batch_rows)


@contextmanager
def _reading(file: Path) -> Iterator[None]:
    """Turn a failure to read `file` into a domain error that names the file, not its path."""
    try:
        yield
    except PermissionError:
        raise FailedPrecondition(f"{file.name!r} is not readable by the service") from None
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError, UnicodeDecodeError):
        # The library's text names server paths; the file name is enough.
        raise InvalidArgument(
            "path", f"{file.name!r} is not a readable {_KIND[file.suffix.lower()]} file"
        ) from None


def read_parquet_batches(
    path: Path, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[pl.DataFrame]:
    """Yield batches of a Parquet file with its stored types, row group by row group."""
    parquet = pq.ParquetFile(path)
    for record_batch in parquet.iter_batches(batch_size=batch_rows):
        frame = pl.from_arrow(record_batch)
        assert isinstance(frame, pl.DataFrame)  # a RecordBatch always gives a frame
        yield frame


def read_csv_batches(path: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """Yield batches of a CSV file with every column as a string.

    Type inference is off on purpose: a column of numbers with one typo must
    reach validation as text so only that row is rejected.
    """
    lazy = pl.scan_csv(path, infer_schema=False, empty_string_is_null=True, raise_if_empty=False)
    for batch in lazy.collect_batches(chunk_size=batch_rows):
        # The streaming engine may hand back bigger chunks than asked for.
        for offset in range(0, batch.height, batch_rows):
            yield batch.slice(offset, batch_rows)


def read_jsonl_batches(path: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """Yield batches of a JSON Lines file, ``batch_rows`` lines at a time.

    Polars parses each chunk; a column whose JSON types conflict within a
    chunk comes back as text, nested objects as structs (or JSON text).
    A line that is not a JSON object does not fail the file: it comes back
    with its text in the ``_malformed`` column and nulls elsewhere. A line
    over ``JSONL_LINE_MAX_BYTES`` is never held in memory: it is skipped in
    chunks and comes back as a malformed row naming the limit.
    """
    with path.open("rb") as handle:
        lines_of_file = _bounded_lines(handle, JSONL_LINE_MAX_BYTES)
        while True:
            lines = [
                line
                for line in itertools.islice(lines_of_file, batch_rows)
                # Blank lines carry no row; skipping them keeps counts honest.
                if line is None or line.strip()
            ]
            if not lines:
                return
            yield _parse_jsonl_chunk(lines)


def _bounded_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The lines of a file; None for a line longer than `limit` bytes (read in chunks)."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := handle.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def _parse_jsonl_chunk(lines: list[bytes | None]) -> pl.DataFrame:
    """Parse a chunk of JSON lines, falling back to line-by-line checks on error."""
    if all(line is not None for line in lines):
        try:
            whole = b"".join(_with_newline([line for line in lines if line is not None]))
            return pl.read_ndjson(io.BytesIO(whole), infer_schema_length=None)
        except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, ValueError):
            pass
    # Slow path, only for chunks holding at least one bad line: find the bad
    # lines in Python, let Polars parse the rest, and splice them back in order.
    good: list[bytes] = []
    good_index: list[int] = []
    bad_text: list[str] = []
    bad_index: list[int] = []
    for index, line in enumerate(lines):
        if line is None:
            bad_text.append(_TOO_LONG)
            bad_index.append(index)
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            good.append(line)
            good_index.append(index)
        else:
            bad_text.append(line.decode("utf-8", errors="replace").rstrip("\r\n"))
            bad_index.append(index)
    parts: list[pl.DataFrame] = []
    if good:
        try:
            parsed_good = pl.read_ndjson(
                io.BytesIO(b"".join(_with_newline(good))), infer_schema_length=None
            )
        except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, ValueError):
            # Types too mixed for one frame (e.g. an object in one row, a list
            # in another): parse line by line and keep every value as JSON text.
            parsed_good = _parse_as_text(good)
        parts.append(parsed_good.with_columns(pl.Series(_LINE_INDEX, good_index, dtype=pl.Int64)))
    if bad_text:
        parts.append(
            pl.DataFrame(
                {MALFORMED_COLUMN: bad_text, _LINE_INDEX: bad_index},
                schema={MALFORMED_COLUMN: pl.String, _LINE_INDEX: pl.Int64},
            )
        )
    frame = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
    return frame.sort(_LINE_INDEX).drop(_LINE_INDEX)


def _parse_as_text(lines: list[bytes]) -> pl.DataFrame:
    """Parse JSON object lines into all-string columns (strings stay as-is,
    anything else becomes its JSON text)."""
    rows = [json.loads(line) for line in lines]
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns: dict[str, list[str | None]] = {
        name: [_as_text(row.get(name)) for row in rows] for name in names
    }
    return pl.DataFrame(columns, schema=dict.fromkeys(names, pl.String))


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _with_newline(lines: list[bytes]) -> Iterator[bytes]:
    # The last line of a file may lack its newline; joining needs one.
    for line in lines:
        yield line if line.endswith(b"\n") else line + b"\n"
