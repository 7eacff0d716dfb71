"""Events sent in a request for one profile: the one validation both services use.

A bad event sent in a request is the caller's mistake, so it fails the request
naming the event and field (`events[2].timestamp: missing timestamp`) instead
of being quarantined as at ingestion.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

import polars as pl

from foresight.errors import InvalidArgument
from foresight.events.schema import EVENT_COLUMNS, EVENT_SCHEMA
from foresight.events.validation import validate

MAX_PROFILE_EVENTS: Final[int] = 10_000
_WORD = re.compile(r"[A-Za-z_]+")


def _column_of(reason: str) -> str:
    """The event column a validation reason is about ("value is negative" → "value")."""
    for word in _WORD.findall(reason.split(";")[0]):
        if word in EVENT_COLUMNS:
            return str(word)
    return "event"


def _with_profile(raw: pl.DataFrame, profile_id: str, field: str) -> pl.DataFrame:
    """Events without a profile id take `profile_id`; one of another profile is refused."""
    if not profile_id:
        return raw
    if "profile_id" in raw.columns:
        for i, pid in enumerate(raw.get_column("profile_id").cast(pl.String).to_list()):
            if pid and pid != profile_id:
                raise InvalidArgument(
                    f"{field}[{i}].profile_id", f"'{pid}' differs from profile_id '{profile_id}'"
                )
    # A column swap, not `with_columns`: no query for a handful of rows.
    given = pl.Series("profile_id", [profile_id] * raw.height, dtype=pl.String)
    if "profile_id" in raw.columns:
        return raw.clone().replace_column(raw.get_column_index("profile_id"), given)
    return raw.hstack([given])


def validate_profile_events(
    raw: pl.DataFrame,
    profile_id: str,
    now: datetime,
    field: str = "events",
    derive_ids: bool = True,
) -> tuple[pl.DataFrame, str]:
    """Typed events of exactly one profile, and that profile's id.

    `profile_id` may be empty when the events name their profile. InvalidArgument
    names `field`, the event and the column of the first problem. With
    `derive_ids=False` events sent without an id keep a null one (see `validate`).
    """
    if raw.height > MAX_PROFILE_EVENTS:
        raise InvalidArgument(
            field, f"at most {MAX_PROFILE_EVENTS:,} events per profile, got {raw.height:,}"
        )
    if raw.height == 0:
        return pl.DataFrame(schema=EVENT_SCHEMA), profile_id
    result = validate(_with_profile(raw, profile_id, field), now, derive_ids=derive_ids)
    if result.rejected.height:
        first = result.rejected.row(0, named=True)
        reason = str(first["reason"])
        row = int(first["row_number"]) - 1
        raise InvalidArgument(f"{field}[{row}].{_column_of(reason)}", reason)
    ids = list(dict.fromkeys(result.accepted.get_column("profile_id").to_list()))  # no query
    if len(ids) > 1:
        raise InvalidArgument(field, f"events belong to {len(ids)} profiles; send one profile")
    return result.accepted, profile_id or str(ids[0])
