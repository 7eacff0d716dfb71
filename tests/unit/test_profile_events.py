"""Events sent for one profile: the validation the scorer and the segmenter share."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from foresight.errors import InvalidArgument
from foresight.events.profile_events import MAX_PROFILE_EVENTS, validate_profile_events

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _events(*rows: dict[str, object]) -> pl.DataFrame:
    full = [
        {
            "profile_id": None,
            "timestamp": "2024-05-01T12:00:00Z",
            "event_type": "commerce.purchases",
            "value": "10",
        }
        | row
        for row in rows
    ]
    return pl.DataFrame(full, schema_overrides={k: pl.String for k in full[0]}, strict=False)


def test_events_without_a_profile_take_the_given_one() -> None:
    events, profile = validate_profile_events(_events({}, {"profile_id": "p1"}), "p1", NOW)
    assert profile == "p1" and events["profile_id"].to_list() == ["p1", "p1"]


def test_the_profile_comes_from_the_events_when_none_is_given() -> None:
    events, profile = validate_profile_events(_events({"profile_id": "p7"}), "", NOW)
    assert profile == "p7" and events.height == 1


@pytest.mark.parametrize(
    ("rows", "profile", "field"),
    [
        (({}, {"profile_id": "other"}), "p1", "profiles[2].events[1].profile_id"),
        (({"value": "-3"},), "p1", "profiles[2].events[0].value"),
        (({"profile_id": "a"}, {"profile_id": "b"}), "", "profiles[2].events"),
    ],
)
def test_the_first_problem_names_its_event_and_field(
    rows: tuple[dict[str, object], ...], profile: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_profile_events(_events(*rows), profile, NOW, "profiles[2].events")
    assert info.value.field == field


def test_too_many_events_name_the_limit() -> None:
    many = pl.DataFrame({"event_type": ["x"] * (MAX_PROFILE_EVENTS + 1)})
    with pytest.raises(InvalidArgument) as info:
        validate_profile_events(many, "p1", NOW)
    assert info.value.field == "events" and f"{MAX_PROFILE_EVENTS:,}" in info.value.reason
