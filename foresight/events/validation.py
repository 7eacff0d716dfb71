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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from foresight.events.schema import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    FAR_FUTURE_TOLERANCE,
    MALFORMED_COLUMN,
    MAX_ATTRIBUTES_LENGTH,
    MAX_PROFILE_ID_LENGTH,
    MAX_STRING_LENGTH,
    REQUIRED_COLUMNS,
    SchemaError,
)

__all__ = [
    "DERIVED_EVENT_ID_PREFIX",
    "EARLIEST_TIMESTAMP",
    "EPOCH_SECONDS_BELOW",
    "REJECTED_SCHEMA",
    "DuplicatePolicy",
    "ValidationResult",
    "derive_event_ids",
    "hex_strings",
    "validate",
]

#: Rows before this are rejected: they are almost always epoch *seconds*
#: sent where milliseconds were expected, which land in January 1970.
EARLIEST_TIMESTAMP: Final[datetime] = datetime(1990, 1, 1, tzinfo=UTC)

#: Prefix of event ids derived from the row content (input had none).
DERIVED_EVENT_ID_PREFIX: Final[str] = "auto-"

#: Epoch numbers below this are seconds, from it on milliseconds.
EPOCH_SECONDS_BELOW: Final[float] = 1e11


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

# A flat JSON object whose values are strings, numbers or null (null = the key
# is absent). Strings follow the JSON grammar exactly (no raw control
# characters, only valid escapes), so text that matches is valid JSON.
_JSON_STRING: Final[str] = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
_JSON_NUMBER: Final[str] = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_JSON_VALUE: Final[str] = rf"(?:{_JSON_STRING}|{_JSON_NUMBER}|null)"
_JSON_MEMBER: Final[str] = rf"{_JSON_STRING}\s*:\s*{_JSON_VALUE}"
_FLAT_JSON_OBJECT: Final[str] = (
    rf"^\s*\{{\s*(?:{_JSON_MEMBER}(?:\s*,\s*{_JSON_MEMBER})*)?\s*\}}\s*$"
)

_TEXT_TYPES: Final[tuple[type[pl.DataType], ...]] = (pl.String, pl.Categorical, pl.Enum)


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
) -> ValidationResult:
    """Validate a raw batch against the event schema.

    ``now`` is the ingestion time (timezone-aware; naive is taken as UTC):
    rows later than ``now + FAR_FUTURE_TOLERANCE`` are rejected.
    ``row_offset`` is the number of input rows before this batch, so
    ``row_number`` in rejected rows points into the whole file.
    ``duplicates`` decides the ids of rows that arrive without one.

    Raises :class:`SchemaError` for a column the schema does not know: that
    is a mistake in the file (a misspelt header), not in a row.
    """
    _check_columns(raw.schema)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    latest = now + FAR_FUTURE_TOLERANCE
    frame = raw.with_columns(
        pl.lit(None, dtype=pl.Null).alias(name)
        for name in (*EVENT_COLUMNS, MALFORMED_COLUMN)
        if name not in raw.columns
    )
    schema = frame.schema

    typed: dict[str, pl.Expr] = {}
    reasons: list[pl.Expr] = []
    for name in (
        "event_id",
        "profile_id",
        "event_type",
        "channel",
        "product_sku",
        "product_category",
        "page_name",
        "campaign_id",
    ):
        limit = MAX_PROFILE_ID_LENGTH if name == "profile_id" else MAX_STRING_LENGTH
        typed[name], name_reasons = _string_field(
            name, schema[name], limit, name in REQUIRED_COLUMNS
        )
        reasons.extend(name_reasons)
    typed["timestamp"], ts_reasons = _timestamp_field(schema["timestamp"], latest)
    reasons.extend(ts_reasons)
    typed["value"], value_reasons = _value_field(schema["value"])
    reasons.extend(value_reasons)
    typed["quantity"], quantity_reasons = _quantity_field(schema["quantity"])
    reasons.extend(quantity_reasons)
    typed["attributes"], attribute_reasons = _attributes_field(schema["attributes"])
    reasons.extend(attribute_reasons)

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
    missing_ids = accepted["event_id"].is_null()
    if missing_ids.any():
        # Hash only rows without an id: most files carry their own.
        derived = derive_event_ids(accepted.filter(missing_ids), duplicates)
        ids = accepted["event_id"].scatter(missing_ids.arg_true(), derived)
        accepted = accepted.with_columns(ids)

    rejected = (
        checked.with_row_index("row_number", offset=row_offset + 1)
        .filter(is_bad)
        .select(
            pl.col("row_number").cast(pl.Int64),
            pl.col(_REASON).alias("reason"),
            *(
                _as_text(name, schema[name]).alias(name)
                for name in (*EVENT_COLUMNS, MALFORMED_COLUMN)
            ),
        )
    )
    return ValidationResult(accepted=accepted, rejected=rejected)


def derive_event_ids(
    events: pl.DataFrame, duplicates: DuplicatePolicy = DuplicatePolicy.EVENT_ID
) -> pl.Series:
    """Ids for typed events without one, from every field but ``event_id``.

    ``exact_row``: the content alone, so identical rows share an id.
    ``event_id``: the n-th identical row of the batch (n ≥ 2) also hashes n, so
    repeats are kept; re-importing the same rows yields the same ids.
    ``none``: also a random per-call salt, so even a re-import adds its rows.
    """
    content = pl.struct([name for name in EVENT_COLUMNS if name != "event_id"])
    a, b = content.hash(_ID_SEEDS[0]), content.hash(_ID_SEEDS[1])
    if duplicates is not DuplicatePolicy.EXACT_ROW:
        a, b = a.alias("a"), b.alias("b")
        occurrence = pl.int_range(pl.len()).over(a, b).cast(pl.UInt64).alias("n")
        salt = uuid.uuid4().int & 0xFFFF_FFFF_FFFF if duplicates is DuplicatePolicy.NONE else 0
        salt_column = pl.lit(salt, pl.UInt64).alias("salt")
        # The first occurrence keeps the content id (as under exact_row).
        repeat = (occurrence > 0) | pl.lit(salt != 0)
        a = (
            pl.when(repeat)
            .then(pl.struct(a, occurrence, salt_column).hash(_ID_SEEDS[0]))
            .otherwise(a)
        )
        b = (
            pl.when(repeat)
            .then(pl.struct(b, occurrence, salt_column).hash(_ID_SEEDS[1]))
            .otherwise(b)
        )
    hashes = events.select(a.alias("a"), b.alias("b"))
    return hex_strings(
        hashes["a"].to_numpy(),
        hashes["b"].to_numpy(),
        prefix=DERIVED_EVENT_ID_PREFIX,
        name="event_id",
    )


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


def _check_columns(schema: Mapping[str, pl.DataType]) -> None:
    known = {*EVENT_COLUMNS, MALFORMED_COLUMN}
    for name in schema:
        if name not in known:
            raise SchemaError(
                name, f"unknown column; event columns are: {', '.join(EVENT_COLUMNS)}"
            )


def _is_nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.Struct, pl.List, pl.Array, pl.Object))


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """The raw value as text, for the quarantine file."""
    column = pl.col(name)
    if isinstance(dtype, pl.Struct):
        return column.struct.json_encode()
    if isinstance(dtype, (pl.List, pl.Array)):
        # Wrap in a struct to reuse its JSON encoder, then cut the wrapper off.
        prefix = len(f'{{"{name}":')
        return pl.struct(column).struct.json_encode().str.slice(prefix).str.strip_suffix("}")
    if isinstance(dtype, pl.Object):
        return pl.lit(None, dtype=pl.String)
    return column.cast(pl.String, strict=False)


def _blank(text: pl.Expr) -> pl.Expr:
    # A regex test allocates nothing, unlike stripping then measuring.
    return ~text.str.contains(r"\S")


def _string_field(
    name: str, dtype: pl.DataType, limit: int, required: bool
) -> tuple[pl.Expr, Sequence[pl.Expr]]:
    column = pl.col(name)
    if _is_nested(dtype):
        present = column.is_not_null()
        reasons = [pl.when(present).then(pl.lit(f"{name} is not a string"))]
        if required:
            reasons.append(pl.when(~present).then(pl.lit(f"missing {name}")))
        return pl.lit(None, dtype=pl.String), reasons
    text = column if isinstance(dtype, pl.String) else column.cast(pl.String, strict=False)
    # Empty text means "no value": CSV cannot tell the two apart.
    value = pl.when(text.is_null() | _blank(text)).then(None).otherwise(text)
    reasons = [
        pl.when(value.str.len_chars() > limit).then(
            pl.lit(f"{name} longer than {limit} characters")
        )
    ]
    if required:
        reasons.insert(0, pl.when(value.is_null()).then(pl.lit(f"missing {name}")))
    return value, reasons


def _timestamp_field(dtype: pl.DataType, latest: datetime) -> tuple[pl.Expr, Sequence[pl.Expr]]:
    column = pl.col("timestamp")
    parsed: pl.Expr
    if isinstance(dtype, pl.Datetime):
        in_us = column.dt.cast_time_unit("us")
        parsed = (
            in_us.dt.replace_time_zone("UTC")
            if dtype.time_zone is None
            else in_us.dt.convert_time_zone("UTC")
        )
    elif isinstance(dtype, pl.Date):
        parsed = column.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    elif dtype.is_integer() or dtype.is_float():
        parsed = _from_epoch(column.cast(pl.Float64))
    elif isinstance(dtype, _TEXT_TYPES):
        parsed = _parse_timestamp_text(column.cast(pl.String).str.strip_chars())
    else:
        parsed = pl.lit(None, dtype=pl.Datetime("us", "UTC"))

    present = column.is_not_null()
    if isinstance(dtype, _TEXT_TYPES):
        present = present & ~_blank(column.cast(pl.String))
    earliest = EARLIEST_TIMESTAMP
    reasons = [
        pl.when(~present).then(pl.lit("missing timestamp")),
        pl.when(present & parsed.is_null()).then(
            pl.lit("unparseable timestamp (use RFC 3339, a date like 2024-03-31 or epoch s/ms)")
        ),
        pl.when(parsed > pl.lit(latest)).then(pl.lit("timestamp in the far future")),
        pl.when(parsed < pl.lit(earliest)).then(
            pl.lit(f"timestamp before {earliest.date().isoformat()} (epoch in the wrong unit?)")
        ),
    ]
    return parsed, reasons


# Epoch milliseconds beyond year 9999 overflow microseconds; reject them as
# unparseable instead of wrapping around.
_MAX_EPOCH_MS: Final[float] = 253_402_300_800_000.0


def _from_epoch_ms(millis: pl.Expr) -> pl.Expr:
    in_range = millis.is_finite() & (millis.abs() < _MAX_EPOCH_MS)
    micros = pl.when(in_range).then((millis * 1000).round(0)).otherwise(None).cast(pl.Int64)
    return micros.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _from_epoch(number: pl.Expr) -> pl.Expr:
    """Epoch seconds below EPOCH_SECONDS_BELOW, milliseconds from there on."""
    seconds = number.abs() < EPOCH_SECONDS_BELOW
    return _from_epoch_ms(pl.when(seconds).then(number * 1000).otherwise(number))


# Naive forms tried after the offset-aware ones (first match wins); no offset means UTC.
_NAIVE_FORMATS: Final[tuple[str, ...]] = (
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y%m%dT%H%M%S",
    "%Y%m%d%H%M%S",
)
_DATE_FORMATS: Final[tuple[str, ...]] = ("%Y-%m-%d", "%Y%m%d")


def _parse_timestamp_text(text: pl.Expr) -> pl.Expr:
    """Every accepted text form (see the module docstring); None when none fits."""
    normalized = (
        text.str.replace(r"^(\d{4})/(\d{2})/(\d{2})", "${1}-${2}-${3}")
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT]", "${1}T")
        .str.replace(r"[zZ]$", "+00:00")
        .str.replace(r"^(\d{8})[tT]", "${1}T")
    )
    aware = [
        normalized.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%:z")
    ]
    naive = [
        normalized.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for fmt in _NAIVE_FORMATS
    ]
    is_date = text.str.contains(r"^\d{4}-\d{2}-\d{2}$|^\d{4}/\d{2}/\d{2}$|^\d{8}$")
    dates = [
        pl.when(is_date)
        .then(normalized.str.to_date(fmt, strict=False))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
        for fmt in _DATE_FORMATS
    ]
    # 8 and 14 digits are a compact date (time), never epoch numbers (1970 or 2611).
    epoch = _from_epoch(
        pl.when(
            text.str.contains(r"^-?\d{1,16}(\.\d+)?$") & ~text.str.contains(r"^(\d{8}|\d{14})$")
        )
        .then(text.cast(pl.Float64, strict=False))
        .otherwise(None)
    )
    return pl.coalesce(epoch, *dates, *aware, *naive)


def _number_text(column: pl.Expr, dtype: pl.DataType) -> pl.Expr | None:
    """The column as Float64 if it can hold numbers at all, else None."""
    if dtype.is_numeric():
        return column.cast(pl.Float64, strict=False)
    if isinstance(dtype, _TEXT_TYPES):
        return column.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    if isinstance(dtype, pl.Null):
        return pl.lit(None, dtype=pl.Float64)
    return None


def _value_field(dtype: pl.DataType) -> tuple[pl.Expr, Sequence[pl.Expr]]:
    column = pl.col("value")
    present = column.is_not_null()
    if isinstance(dtype, _TEXT_TYPES):
        present = present & ~_blank(column.cast(pl.String))
    number = _number_text(column, dtype)
    if number is None:  # booleans, nested values: never a number
        return pl.lit(None, dtype=pl.Float64), [
            pl.when(present).then(pl.lit("value is not a number"))
        ]
    reasons = [
        pl.when(present & number.is_null()).then(pl.lit("value is not a number")),
        pl.when(number.is_nan()).then(pl.lit("value is NaN")),
        pl.when(number.is_infinite()).then(pl.lit("value is infinite")),
        pl.when(number < 0).then(pl.lit("value is negative")),
    ]
    return number, reasons


def _quantity_field(dtype: pl.DataType) -> tuple[pl.Expr, Sequence[pl.Expr]]:
    column = pl.col("quantity")
    present = column.is_not_null()
    integer: pl.Expr
    if dtype.is_integer():
        integer = column.cast(pl.Int64, strict=False)
    elif dtype.is_float() or isinstance(dtype, (_TEXT_TYPES, pl.Null)):
        text = (
            column.cast(pl.String, strict=False).str.strip_chars() if not dtype.is_float() else None
        )
        as_float = column.cast(pl.Float64) if text is None else text.cast(pl.Float64, strict=False)
        # "3", "3.0" and 3.0 are all the integer 3; 2.5 is not an integer.
        whole = as_float.is_finite() & (as_float == as_float.floor()) & (as_float.abs() < 2.0**53)
        from_float = pl.when(whole).then(as_float).otherwise(None).cast(pl.Int64)
        integer = (
            from_float
            if text is None
            else pl.coalesce(text.cast(pl.Int64, strict=False), from_float)
        )
        if text is not None:
            present = present & ~_blank(column.cast(pl.String, strict=False))
    else:
        return pl.lit(None, dtype=pl.Int64), [
            pl.when(present).then(pl.lit("quantity is not an integer"))
        ]
    reasons = [
        pl.when(present & integer.is_null()).then(pl.lit("quantity is not an integer")),
        pl.when(integer < 0).then(pl.lit("quantity is negative")),
    ]
    return integer, reasons


def _attributes_field(dtype: pl.DataType) -> tuple[pl.Expr, Sequence[pl.Expr]]:
    column = pl.col("attributes")
    text: pl.Expr
    if isinstance(dtype, pl.Struct):
        # A nested object (JSON Lines, Parquet struct): encode it, dropping the
        # null members Polars adds for keys other rows have. A row without the
        # object at all stays null (json_encode would write the text "null").
        encoded = (
            column.struct.json_encode()
            .str.replace_all(rf"{_JSON_STRING}:null,?", "")
            .str.replace(r",\}$", "}")
        )
        text = pl.when(column.is_not_null()).then(encoded).otherwise(None)
    elif isinstance(dtype, (_TEXT_TYPES, pl.Null)):
        text = column.cast(pl.String)
    else:
        present = column.is_not_null()
        return pl.lit(None, dtype=pl.String), [
            pl.when(present).then(pl.lit("attributes is not a JSON object"))
        ]
    value = pl.when(text.is_null() | _blank(text)).then(None).otherwise(text)
    reasons = [
        pl.when(value.str.len_chars() > MAX_ATTRIBUTES_LENGTH).then(
            pl.lit(f"attributes longer than {MAX_ATTRIBUTES_LENGTH} characters")
        ),
        pl.when(value.is_not_null() & ~value.str.contains(_FLAT_JSON_OBJECT)).then(
            pl.lit("attributes is not a JSON object of string or number values")
        ),
    ]
    return value, reasons
