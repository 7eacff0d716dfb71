"""Turn raw batches into typed events and rejected rows, with a reason each.

All checks are vectorized Polars expressions: one pass builds the typed
columns and a reason string per row; rows with no reason are accepted.
Nothing is dropped silently: ``len(accepted) + len(rejected) == len(raw)``.

Timestamps (the one parser for every way events come in) may be:

- RFC 3339 / ISO 8601: ``2024-03-31T15:30:00Z``, ``2024-03-31 15:30:00+02:00``,
  fractions of a second, ``T`` or a space, seconds optional (``2024-03-31T15:30``);
- a date alone: ``2024-03-31``, ``2024/03/31``, or compact ``20240331``
  (midnight); compact date-times ``20240331T153000`` and ``20240331153000``;
- epoch numbers (as numbers or digits): below 10^11 they are seconds, from
  there on milliseconds (10^11 s is the year 5138; 10^11 ms is 1973).

Without an offset a time is taken as **UTC**, and every timestamp is stored as UTC.

Duplicates follow the `DuplicatePolicy` chosen at import, and the ingest
summary reports how many rows it removed:

- ``event_id`` (default): rows without an event id get one from their content
  and their occurrence among identical rows of the batch, so two identical
  purchases on one day are both kept, while re-importing the same file adds
  nothing.
- ``exact_row``: rows without an id that are identical in every field are
  one event (the id comes from the content alone).
- ``none``: no row without an id is removed, not even on re-import (ids are
  unique per import).

Under every policy an event id given in the input names one event: a second
row with the same id is a duplicate (counted, never written twice).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from foresight.events.fields import (
    REQUEST_SCHEMA,
    as_text,
    check_columns,
    typed_fields,
    typed_request_rows,
)
from foresight.events.schema import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    FAR_FUTURE_TOLERANCE,
    MALFORMED_COLUMN,
)

__all__ = [
    "DERIVED_EVENT_ID_PREFIX",
    "REJECTED_SCHEMA",
    "DuplicatePolicy",
    "ValidationResult",
    "derive_event_ids",
    "hex_strings",
    "validate",
]

#: Prefix of event ids derived from the row content (input had none).
DERIVED_EVENT_ID_PREFIX: Final[str] = "auto-"


class DuplicatePolicy(StrEnum):
    """Which rows of an import are the same event (see the module docstring)."""

    EVENT_ID = "event_id"
    EXACT_ROW = "exact_row"
    NONE = "none"


#: Quarantine rows: where the row was, why it was rejected, and every input
#: field as the text it arrived as (nested values as JSON).
REJECTED_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "row_number": pl.Int64(),
        "reason": pl.String(),
        **{name: pl.String() for name in EVENT_COLUMNS},
        MALFORMED_COLUMN: pl.String(),
    }
)

# Two fixed seeds give a 128-bit id: collisions stay negligible at billions of
# rows. Polars only promises hash stability within one version; polars is
# pinned and a golden-value test fails loudly if an upgrade changes it.
_ID_SEEDS: Final[tuple[int, int]] = (0x5EED_F0E5, 0xC0FF_EE11)

_REASON: Final[str] = "__reason"

# The two words of a derived id: every field but event_id, hashed with each seed
# (built once: building the expressions cost about as much as running them on a few rows).
_CONTENT: Final[pl.Expr] = pl.struct([name for name in EVENT_COLUMNS if name != "event_id"])
_CONTENT_HASHES: Final[tuple[pl.Expr, pl.Expr]] = (
    _CONTENT.hash(_ID_SEEDS[0]).alias("a"),
    _CONTENT.hash(_ID_SEEDS[1]).alias("b"),
)

# Built once: an empty frame from a schema costs ~100 µs, a clone nothing.
_NO_REJECTED: Final[pl.DataFrame] = pl.DataFrame(schema=REJECTED_SCHEMA)

#: Batches of `REQUEST_SCHEMA` up to this many rows are checked row by row
#: (`typed_request_rows`): the events of one request, in microseconds.
FEW_ROWS: Final[int] = 64


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """Outcome of validating one raw batch.

    ``accepted`` has exactly :data:`EVENT_SCHEMA`; ``rejected`` has
    :data:`REJECTED_SCHEMA` (1-based ``row_number`` in the input, ``reason``).
    """

    accepted: pl.DataFrame
    rejected: pl.DataFrame

    @property
    def rows_read(self) -> int:
        """Rows in the raw batch (accepted plus rejected)."""
        return self.accepted.height + self.rejected.height

    def reason_counts(self) -> dict[str, int]:
        """Rejected rows per reason (a row with several reasons counts under each)."""
        if self.rejected.is_empty():
            return {}
        counts = (
            self.rejected.select(pl.col("reason").str.split("; ").explode())
            .group_by("reason")
            .len()
        )
        return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def validate(
    raw: pl.DataFrame,
    now: datetime,
    row_offset: int = 0,
    duplicates: DuplicatePolicy = DuplicatePolicy.EVENT_ID,
    derive_ids: bool = True,
) -> ValidationResult:
    """Validate a raw batch against the event schema.

    ``now`` is the ingestion time (timezone-aware; naive is taken as UTC):
    rows later than ``now + FAR_FUTURE_TOLERANCE`` are rejected.
    ``row_offset`` is the number of input rows before this batch, so
    ``row_number`` in rejected rows points into the whole file.
    ``duplicates`` decides the ids of rows that arrive without one; with
    ``derive_ids=False`` such rows keep a null id (`fill_event_ids` derives
    them later, the same ids).

    Raises :class:`SchemaError` for a column the schema does not know: that
    is a mistake in the file (a misspelt header), not in a row.
    """
    check_columns(raw.schema)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if raw.height <= FEW_ROWS and raw.schema == REQUEST_SCHEMA:
        result = _validate_rows(raw, now + FAR_FUTURE_TOLERANCE, row_offset)
    else:
        result = _validate_columns(raw, now + FAR_FUTURE_TOLERANCE, row_offset)
    if not derive_ids:
        return result
    return ValidationResult(fill_event_ids(result.accepted, duplicates), result.rejected)


def _validate_columns(raw: pl.DataFrame, latest: datetime, row_offset: int) -> ValidationResult:
    """`validate` as Polars expressions over whole columns (any batch); ids not derived."""
    frame = raw.with_columns(
        pl.lit(None, dtype=pl.Null).alias(name)
        for name in (*EVENT_COLUMNS, MALFORMED_COLUMN)
        if name not in raw.columns
    )
    schema = frame.schema

    typed, reasons = typed_fields(schema, latest)

    malformed = pl.col(MALFORMED_COLUMN).is_not_null()
    reason = (
        pl.when(malformed)
        .then(pl.lit("malformed line (not a JSON object)"))
        .otherwise(pl.concat_str(reasons, separator="; ", ignore_nulls=True))
    )
    checked = frame.with_columns(
        *(expr.alias(f"__typed_{name}") for name, expr in typed.items()),
        reason.alias(_REASON),
    )
    is_bad = pl.col(_REASON) != ""

    accepted = checked.filter(~is_bad).select(
        pl.col(f"__typed_{name}").cast(dtype).alias(name) for name, dtype in EVENT_SCHEMA.items()
    )
    rejected = _rejected(checked, is_bad, row_offset)
    return ValidationResult(accepted=accepted, rejected=rejected)


def _validate_rows(raw: pl.DataFrame, latest: datetime, row_offset: int) -> ValidationResult:
    """`validate` for a few rows of `REQUEST_SCHEMA`: the same rules in plain Python
    (ids not derived)."""
    columns = raw.to_dict(as_series=False)
    typed, reasons = typed_request_rows(columns, latest)
    good = [i for i, why in enumerate(reasons) if not why]

    def column(name: str, dtype: pl.DataType) -> pl.Series:
        values = typed[name]
        if name == "timestamp":
            return pl.Series(name, [values[i] for i in good], dtype=pl.Int64()).cast(dtype)
        if len(good) == raw.height and values == columns[name]:
            return raw.get_column(name)  # unchanged (same dtype): no copy from Python
        return pl.Series(name, [values[i] for i in good], dtype=dtype)

    accepted = pl.DataFrame([column(name, dtype) for name, dtype in EVENT_SCHEMA.items()])
    if len(good) == raw.height:
        rejected = _NO_REJECTED.clone()
    else:
        checked = raw.with_columns(
            pl.lit(None, dtype=pl.Null).alias(MALFORMED_COLUMN),
            pl.Series(_REASON, reasons, dtype=pl.String),
        )
        rejected = _rejected(checked, pl.col(_REASON) != "", row_offset)
    return ValidationResult(accepted=accepted, rejected=rejected)


def _rejected(checked: pl.DataFrame, is_bad: pl.Expr, row_offset: int) -> pl.DataFrame:
    """Rows with a reason, numbered in the input, every raw field as text."""
    return (
        checked.with_row_index("row_number", offset=row_offset + 1)
        .filter(is_bad)
        .select(
            pl.col("row_number").cast(pl.Int64),
            pl.col(_REASON).alias("reason"),
            *(
                as_text(name, checked.schema[name]).alias(name)
                for name in (*EVENT_COLUMNS, MALFORMED_COLUMN)
            ),
        )
    )


def fill_event_ids(
    events: pl.DataFrame, duplicates: DuplicatePolicy = DuplicatePolicy.EVENT_ID
) -> pl.DataFrame:
    """Typed events (`EVENT_SCHEMA`) with the ids `validate` derives for rows without one."""
    if events.height > FEW_ROWS:
        return _with_event_ids(events, duplicates)
    ids = events.get_column("event_id").to_list()
    missing = [i for i, event_id in enumerate(ids) if event_id is None]
    if not missing:
        return events
    some = events if len(missing) == len(ids) else events[missing]
    for i, event_id in zip(missing, _derived_id_list(some, duplicates), strict=True):
        ids[i] = event_id
    # A column swap, not `with_columns`: no query for a handful of rows.
    return events.clone().replace_column(
        events.get_column_index("event_id"), pl.Series("event_id", ids, dtype=pl.String)
    )


def _with_event_ids(accepted: pl.DataFrame, duplicates: DuplicatePolicy) -> pl.DataFrame:
    """Ids derived from the content for accepted rows without one."""
    missing_ids = accepted["event_id"].is_null()
    if missing_ids.any():
        # Hash only rows without an id: most files carry their own.
        derived = derive_event_ids(accepted.filter(missing_ids), duplicates)
        ids = accepted["event_id"].scatter(missing_ids.arg_true(), derived)
        accepted = accepted.with_columns(ids)
    return accepted


def derive_event_ids(
    events: pl.DataFrame, duplicates: DuplicatePolicy = DuplicatePolicy.EVENT_ID
) -> pl.Series:
    """Ids for typed events without one, from every field but ``event_id``.

    ``exact_row``: the content alone, so identical rows share an id.
    ``event_id``: the n-th identical row of the batch (n ≥ 2) also hashes n, so
    repeats are kept; re-importing the same rows yields the same ids.
    ``none``: also a random per-call salt, so even a re-import adds its rows.
    """
    hashes = _id_words(events, duplicates)
    return hex_strings(
        hashes["a"].to_numpy(),
        hashes["b"].to_numpy(),
        prefix=DERIVED_EVENT_ID_PREFIX,
        name="event_id",
    )


def _derived_id_list(events: pl.DataFrame, duplicates: DuplicatePolicy) -> list[str]:
    """`derive_event_ids(events, duplicates).to_list()` for a few rows, formatted in Python.

    `hex_strings` hands a buffer to Arrow and Polars (~100 µs whatever the size);
    tests/unit/test_request_validation.py checks both paths give the same ids.
    """
    hashes = _id_words(events, duplicates)
    return [
        f"{DERIVED_EVENT_ID_PREFIX}{a:016x}{b:016x}"
        for a, b in zip(hashes["a"].to_list(), hashes["b"].to_list(), strict=True)
    ]


def _id_words(events: pl.DataFrame, duplicates: DuplicatePolicy) -> pl.DataFrame:
    """The two 64-bit hash words ("a", "b") of each derived id (see `derive_event_ids`)."""
    hashes = events.select(_CONTENT_HASHES)
    if duplicates is not DuplicatePolicy.EXACT_ROW:
        occurrence = _occurrences(hashes)
        salt = uuid.uuid4().int & 0xFFFF_FFFF_FFFF if duplicates is DuplicatePolicy.NONE else 0
        if salt or occurrence.max():
            # The first occurrence keeps the content id (as under exact_row).
            repeat = (pl.col("n") > 0) | pl.lit(salt != 0)
            hashes = hashes.with_columns(occurrence, pl.lit(salt, pl.UInt64).alias("salt")).select(
                pl.when(repeat)
                .then(pl.struct(word, "n", "salt").hash(seed))
                .otherwise(word)
                .alias(word)
                for word, seed in zip("ab", _ID_SEEDS, strict=True)
            )
    return hashes


def _occurrences(hashes: pl.DataFrame) -> pl.Series:
    """Per row, how many earlier rows have the same content hashes ("n", UInt64)."""
    if hashes.height > FEW_ROWS:
        return hashes.select(pl.int_range(pl.len()).over("a", "b").cast(pl.UInt64).alias("n"))["n"]
    # A window over a few rows costs a millisecond; counting them costs microseconds.
    seen: dict[tuple[int, int], int] = {}
    counts = []
    for key in zip(hashes["a"].to_list(), hashes["b"].to_list(), strict=True):
        counts.append(seen.get(key, 0))
        seen[key] = counts[-1] + 1
    return pl.Series("n", counts, dtype=pl.UInt64)


# Two hex digits per byte value.
_HEX_TABLE: Final = np.frombuffer(
    "".join(f"{value:02x}" for value in range(256)).encode("ascii"), dtype=np.uint8
).reshape(256, 2)


def hex_strings(*words: npt.NDArray[np.uint64], prefix: str = "", name: str = "") -> pl.Series:
    """Fixed-width strings ``prefix + hex(word_1) + hex(word_2) ...`` (16 digits per word).

    Built as one byte buffer handed to Arrow: formatting tens of millions of
    integers as text one by one (or via Polars casts) costs seconds.
    """
    count = len(words[0])
    prefix_bytes = np.frombuffer(prefix.encode("utf-8"), dtype=np.uint8)
    pieces: list[npt.NDArray[np.uint8]] = [
        np.broadcast_to(prefix_bytes, (count, len(prefix_bytes)))
    ]
    for word in words:
        # Big-endian bytes so the text reads as the number in hex.
        as_bytes = np.ascontiguousarray(word, dtype=">u8").view(np.uint8).reshape(count, 8)
        pieces.append(_HEX_TABLE[as_bytes].reshape(count, 16))
    data = np.ascontiguousarray(np.hstack(pieces))
    width = data.shape[1]
    offsets = np.arange(0, (count + 1) * width, width, dtype=np.int64)
    array = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data))
    series = pl.Series(name, array)
    return series.cast(pl.String)
