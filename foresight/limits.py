"""Input limits, in one place.

Every request and file a service reads is bounded by these numbers; a value
over a limit is refused with InvalidArgument naming the field and the limit
(never an INTERNAL error, never minutes of work). README "Input limits" lists
them; change them here only.
"""

from __future__ import annotations

from typing import Final

from foresight.errors import InvalidArgument

__all__ = [
    "CONDITION_DEPTH_MAX",
    "CONDITION_ITEMS_MAX",
    "CONDITION_LITERAL_MAX",
    "CONDITION_TEXT_MAX",
    "CONDITION_VALUES_MAX",
    "JSONL_LINE_MAX_BYTES",
    "NAME_MAX",
    "PROFILE_ID_MAX",
    "REQUEST_FIELD_LIMITS",
    "STATUS_MESSAGE_MAX",
    "check_length",
    "check_profile_id",
]

CONDITION_TEXT_MAX: Final[int] = 16_384
"""Characters in one condition text (`event_type = "x" and value > 1`)."""
CONDITION_ITEMS_MAX: Final[int] = 500
"""Conditions plus groups in one condition tree."""
CONDITION_DEPTH_MAX: Final[int] = 16
"""Nesting depth of groups (parentheses) in one condition tree."""
CONDITION_VALUES_MAX: Final[int] = 10_000
"""Literals in one condition tree (all `in` lists together)."""
CONDITION_LITERAL_MAX: Final[int] = 1_024
"""Characters in one string literal of a condition."""
PROFILE_ID_MAX: Final[int] = 128
"""Characters in a profile id (the event schema's limit)."""
JSONL_LINE_MAX_BYTES: Final[int] = 1 << 20
"""Bytes in one JSON Lines line; a longer line is rejected, never read whole."""
NAME_MAX: Final[int] = 128
"""Characters in a name a request looks up (instance, dataset, segment, run id)."""
STATUS_MESSAGE_MAX: Final[int] = 1_000
"""Characters of an error message sent back (longer ones are cut, never overflow metadata)."""

REQUEST_FIELD_LIMITS: Final[dict[str, int]] = {
    "profile_id": PROFILE_ID_MAX,
    "profile_ids": PROFILE_ID_MAX,
    "instance": NAME_MAX,
    "instances": NAME_MAX,
    "dataset": NAME_MAX,
    "name": NAME_MAX,
    "segment": NAME_MAX,
    "run_id": NAME_MAX,
    "page_token": NAME_MAX,
    "factor_code": NAME_MAX,
    "path": 4_096,
    "description": 4_096,
    "scoring_schedule": NAME_MAX,
    "text": CONDITION_TEXT_MAX,
}
"""Longest value of a request string field, by field name, wherever it occurs in a request.

Event rows are exempt: they are validated row by row (bad rows are quarantined,
not refused), see `foresight.events.validation`.
"""


def check_length(field: str, value: str, limit: int, what: str = "characters") -> str:
    """Return `value`, or InvalidArgument when it is longer than `limit`."""
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit:,} {what} (limit), got {len(value):,}")
    return value


def check_profile_id(field: str, profile_id: str) -> str:
    """A non-empty profile id of at most PROFILE_ID_MAX characters."""
    if not profile_id:
        raise InvalidArgument(field, "must not be empty")
    return check_length(field, profile_id, PROFILE_ID_MAX)
