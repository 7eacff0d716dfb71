"""One event field at a time: raw column → typed value and the reasons a row is refused.

Every parser takes the raw column's dtype (text, numbers, nested values as
they arrived from Parquet, CSV or JSON Lines) and returns Polars expressions:
the typed value, and one expression per check that yields a reason or null.
`foresight.events.validation` combines them into accepted and rejected rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import polars as pl

from foresight.events.schema import (
    EVENT_COLUMNS,
    MALFORMED_COLUMN,
    MAX_ATTRIBUTES_LENGTH,
    MAX_PROFILE_ID_LENGTH,
    MAX_STRING_LENGTH,
    REQUIRED_COLUMNS,
    SchemaError,
)

__all__ = [
    "EARLIEST_TIMESTAMP",
    "EPOCH_SECONDS_BELOW",
    "REQUEST_SCHEMA",
    "as_text",
    "check_columns",
    "typed_fields",
    "typed_request_rows",
]

#: Rows before this are rejected: they are almost always epoch *seconds*
#: sent where milliseconds were expected, which land in January 1970.
EARLIEST_TIMESTAMP: Final[datetime] = datetime(1990, 1, 1, tzinfo=UTC)

#: Epoch numbers below this are seconds, from it on milliseconds.
EPOCH_SECONDS_BELOW: Final[float] = 1e11

# Reasons a row is refused, shared by the column (Polars) and row (Python) forms.
_UNPARSEABLE_TIMESTAMP: Final[str] = (
    "unparseable timestamp (use RFC 3339, a date like 2024-03-31 or epoch s/ms)"
)
_FAR_FUTURE: Final[str] = "timestamp in the far future"
_TOO_EARLY: Final[str] = (
    f"timestamp before {EARLIEST_TIMESTAMP.date().isoformat()} (epoch in the wrong unit?)"
)
_VALUE_NAN: Final[str] = "value is NaN"
_VALUE_INFINITE: Final[str] = "value is infinite"
_VALUE_NEGATIVE: Final[str] = "value is negative"
_QUANTITY_NEGATIVE: Final[str] = "quantity is negative"
_NOT_FLAT_JSON: Final[str] = "attributes is not a JSON object of string or number values"


def _missing(name: str) -> str:
    return f"missing {name}"


def _too_long(name: str, limit: int) -> str:
    return f"{name} longer than {limit} characters"


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
# The text columns, in the order their reasons are reported.
_STRING_COLUMNS: Final = (
    "event_id",
    "profile_id",
    "event_type",
    "channel",
    "product_sku",
    "product_category",
    "page_name",
    "campaign_id",
)


def typed_fields(
    schema: Mapping[str, pl.DataType], latest: datetime
) -> tuple[dict[str, pl.Expr], list[pl.Expr]]:
    """Per event column: the typed value, and every reason a row's raw value is refused."""
    typed: dict[str, pl.Expr] = {}
    reasons: list[pl.Expr] = []
    for name in _STRING_COLUMNS:
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
    return typed, reasons


def check_columns(schema: Mapping[str, pl.DataType]) -> None:
    known = {*EVENT_COLUMNS, MALFORMED_COLUMN}
    for name in schema:
        if name not in known:
            raise SchemaError(
                name, f"unknown column; event columns are: {', '.join(EVENT_COLUMNS)}"
            )


def _is_nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.Struct, pl.List, pl.Array, pl.Object))


def as_text(name: str, dtype: pl.DataType) -> pl.Expr:
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
            reasons.append(pl.when(~present).then(pl.lit(_missing(name))))
        return pl.lit(None, dtype=pl.String), reasons
    text = column if isinstance(dtype, pl.String) else column.cast(pl.String, strict=False)
    # Empty text means "no value": CSV cannot tell the two apart.
    value = pl.when(text.is_null() | _blank(text)).then(None).otherwise(text)
    reasons = [pl.when(value.str.len_chars() > limit).then(pl.lit(_too_long(name, limit)))]
    if required:
        reasons.insert(0, pl.when(value.is_null()).then(pl.lit(_missing(name))))
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
        pl.when(~present).then(pl.lit(_missing("timestamp"))),
        pl.when(present & parsed.is_null()).then(pl.lit(_UNPARSEABLE_TIMESTAMP)),
        pl.when(parsed > pl.lit(latest)).then(pl.lit(_FAR_FUTURE)),
        pl.when(parsed < pl.lit(earliest)).then(pl.lit(_TOO_EARLY)),
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
        pl.when(number.is_nan()).then(pl.lit(_VALUE_NAN)),
        pl.when(number.is_infinite()).then(pl.lit(_VALUE_INFINITE)),
        pl.when(number < 0).then(pl.lit(_VALUE_NEGATIVE)),
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
        pl.when(integer < 0).then(pl.lit(_QUANTITY_NEGATIVE)),
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
            pl.lit(_too_long("attributes", MAX_ATTRIBUTES_LENGTH))
        ),
        pl.when(value.is_not_null() & ~value.str.contains(_FLAT_JSON_OBJECT)).then(
            pl.lit(_NOT_FLAT_JSON)
        ),
    ]
    return value, reasons


# --- the same rules, row by row, for the few events of one request -------------------------

#: The raw columns `foresight.convert.events_to_frame` builds from request
#: messages: text, epoch milliseconds, numbers. A handful of such rows is
#: validated by `typed_request_rows` in plain Python (the expressions above
#: cost ~25 Polars passes whatever the row count); a test checks both give the
#: same typed values and reasons on random valid and invalid rows.
REQUEST_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        name: pl.Int64()
        if name in ("timestamp", "quantity")
        else pl.Float64()
        if name == "value"
        else pl.String()
        for name in EVENT_COLUMNS
    }
)

# Unicode White_Space, which the Polars (Rust) regex class \s matches; Python's
# \s would also match \x1c-\x1f.
_WHITESPACE: Final[str] = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_FLAT_JSON_OBJECT_PY: Final[re.Pattern[str]] = re.compile(
    _FLAT_JSON_OBJECT.replace(r"\s", f"[{re.escape(_WHITESPACE)}]").removesuffix("$") + r"\Z"
)
_EPOCH: Final[datetime] = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final[timedelta] = timedelta(microseconds=1)


def _text_value(text: object) -> str | None:
    """`_string_field`'s value: None for missing or blank text."""
    if text is None or not str(text).strip(_WHITESPACE):
        return None
    return str(text)


def _epoch_micros(millis: int | None) -> int | None:
    """`_from_epoch` of an Int64 column: seconds below EPOCH_SECONDS_BELOW, else milliseconds."""
    if millis is None:
        return None
    number = float(millis)
    if abs(number) < EPOCH_SECONDS_BELOW:
        number *= 1000
    if not math.isfinite(number) or abs(number) >= _MAX_EPOCH_MS:
        return None
    return int(number * 1000)  # whole: the input is whole milliseconds


def typed_request_rows(
    columns: Mapping[str, Sequence[object]], latest: datetime
) -> tuple[dict[str, list[object]], list[str]]:
    """`typed_fields` for raw columns of `REQUEST_SCHEMA`, row by row.

    Returns the typed columns (timestamps as epoch microseconds) and each
    row's reasons joined by "; " ("" for a good row), in `typed_fields` order.
    """
    count = len(columns["timestamp"])
    reasons: list[list[str]] = [[] for _ in range(count)]
    typed: dict[str, list[object]] = {}
    for name in _STRING_COLUMNS:
        limit = MAX_PROFILE_ID_LENGTH if name == "profile_id" else MAX_STRING_LENGTH
        values = [_text_value(t) for t in columns[name]]
        for value, why in zip(values, reasons, strict=True):
            if value is None and name in REQUIRED_COLUMNS:
                why.append(_missing(name))
            if value is not None and len(value) > limit:
                why.append(_too_long(name, limit))
        typed[name] = list(values)
    latest_us = (latest - _EPOCH) // _MICROSECOND
    earliest_us = (EARLIEST_TIMESTAMP - _EPOCH) // _MICROSECOND
    stamps: list[object] = []
    for millis, why in zip(columns["timestamp"], reasons, strict=True):
        micros = _epoch_micros(millis if isinstance(millis, int) else None)
        if millis is None:
            why.append(_missing("timestamp"))
        elif micros is None:
            why.append(_UNPARSEABLE_TIMESTAMP)
        if micros is not None and micros > latest_us:
            why.append(_FAR_FUTURE)
        if micros is not None and micros < earliest_us:
            why.append(_TOO_EARLY)
        stamps.append(micros)
    typed["timestamp"] = stamps
    for number, why in zip(columns["value"], reasons, strict=True):
        if isinstance(number, float):
            if math.isnan(number):
                why.append(_VALUE_NAN)
            if math.isinf(number):
                why.append(_VALUE_INFINITE)
            if number < 0:
                why.append(_VALUE_NEGATIVE)
    typed["value"] = list(columns["value"])
    for quantity, why in zip(columns["quantity"], reasons, strict=True):
        if isinstance(quantity, int) and quantity < 0:
            why.append(_QUANTITY_NEGATIVE)
    typed["quantity"] = list(columns["quantity"])
    attributes = [_text_value(t) for t in columns["attributes"]]
    for value, why in zip(attributes, reasons, strict=True):
        if value is not None and len(value) > MAX_ATTRIBUTES_LENGTH:
            why.append(_too_long("attributes", MAX_ATTRIBUTES_LENGTH))
        if value is not None and _FLAT_JSON_OBJECT_PY.match(value) is None:
            why.append(_NOT_FLAT_JSON)
    typed["attributes"] = list(attributes)
    return typed, ["; ".join(why) for why in reasons]
