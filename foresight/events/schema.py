"""The canonical experience-event schema and its limits.

Every other part of Foresight (featurization, goals, the encoder, the
scorer's online path) codes against these column names and dtypes, so they
live in one place.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

import polars as pl

from foresight.errors import InvalidArgument
from foresight.limits import PROFILE_ID_MAX

__all__ = [
    "ATTRIBUTES_PREFIX",
    "EVENT_COLUMNS",
    "EVENT_SCHEMA",
    "FAR_FUTURE_TOLERANCE",
    "KNOWN_EVENT_TYPES",
    "MALFORMED_COLUMN",
    "MAX_ATTRIBUTES_LENGTH",
    "MAX_PROFILE_ID_LENGTH",
    "MAX_STRING_LENGTH",
    "OPTIONAL_STRING_COLUMNS",
    "REQUIRED_COLUMNS",
    "SchemaError",
    "empty_events",
]

#: Stored columns, in storage order. ``event_id`` is never null once stored
#: (it is derived from the row when the input has none).
EVENT_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "event_id": pl.String(),
        "profile_id": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),
        "event_type": pl.String(),
        "channel": pl.String(),
        "value": pl.Float64(),
        "quantity": pl.Int64(),
        "product_sku": pl.String(),
        "product_category": pl.String(),
        "page_name": pl.String(),
        "campaign_id": pl.String(),
        "attributes": pl.String(),
    }
)

#: The input fields a file may carry (the same names as the stored columns).
EVENT_COLUMNS: Final[tuple[str, ...]] = tuple(EVENT_SCHEMA.names())

#: Fields every row must have.
REQUIRED_COLUMNS: Final[tuple[str, ...]] = ("profile_id", "timestamp", "event_type")

#: Free-text fields limited to ``MAX_STRING_LENGTH`` characters.
OPTIONAL_STRING_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "channel",
    "product_sku",
    "product_category",
    "page_name",
    "campaign_id",
)

MAX_PROFILE_ID_LENGTH: Final[int] = PROFILE_ID_MAX
MAX_STRING_LENGTH: Final[int] = 512
#: The attributes JSON text may be longer than one field, but not unbounded.
MAX_ATTRIBUTES_LENGTH: Final[int] = 4096

#: Rows later than ingestion "now" plus this are rejected: a little slack
#: absorbs clock skew between the sender and us, more is a bad clock or unit.
FAR_FUTURE_TOLERANCE: Final[timedelta] = timedelta(days=1)

#: Conditions address attribute keys as ``attributes.NAME``.
ATTRIBUTES_PREFIX: Final[str] = "attributes."

#: Readers put a line they could not parse (JSON Lines) in this column, so
#: validation can reject it with a reason instead of failing the file.
MALFORMED_COLUMN: Final[str] = "_malformed"

#: XDM-style event types the generator and the docs use. Informative only:
#: any non-empty event type is accepted.
KNOWN_EVENT_TYPES: Final[tuple[str, ...]] = (
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
    "application.launch",
    "message.opened",
    "message.clicked",
)


class SchemaError(InvalidArgument):
    """A whole input file does not fit the event schema (e.g. an unknown column).

    Row-level problems are rejected row by row instead; this is for problems
    that make every row of the file suspect.
    """


def empty_events() -> pl.DataFrame:
    """Return an empty frame with the stored event schema."""
    return pl.DataFrame(schema=EVENT_SCHEMA)
