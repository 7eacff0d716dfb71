"""ScoreProfile counts each event once: the lazily derived ids give what deriving them all gives.

A fresh event sent without an id is the same event as a stored one when the id
ingestion derives for it is the stored one's. `realtime._each_event_once`
derives those ids only when a fresh event shares a stored event's timestamp;
these tests compare it with deriving every id up front (what ingestion does)
and keeping the first row of each id.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foresight.events.fields import REQUEST_SCHEMA
from foresight.events.validation import fill_event_ids, validate
from services.scorer import realtime
from tests.fixtures.request_events import request_rows

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
_NOW_MS = int(NOW.timestamp()) * 1000

# A small pool, so stored and fresh events often share timestamps and contents.
_ROW = request_rows(
    st.sampled_from([None, None, None, "e1", "e2"]),
    st.just("p1"),
    st.sampled_from([_NOW_MS - 3_000, _NOW_MS - 2_000, _NOW_MS - 1_000]),
    st.sampled_from(["commerce.purchases", "web.pageViews"]),
)


def _typed(rows: list[dict[str, object]], derive_ids: bool) -> pl.DataFrame:
    result = validate(pl.DataFrame(rows, schema=REQUEST_SCHEMA), NOW, derive_ids=derive_ids)
    assert result.rejected.height == 0
    return result.accepted


def _first_of_each_id(events: pl.DataFrame) -> pl.DataFrame:
    """Every id derived up front, then the first row of each (what ingestion keeps)."""
    return events.unique(subset="event_id", keep="first", maintain_order=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ROW, max_size=8), st.lists(_ROW, min_size=1, max_size=8), st.booleans())
def test_lazily_derived_ids_keep_the_same_events(
    stored_rows: list[dict[str, object]], fresh_rows: list[dict[str, object]], resend: bool
) -> None:
    stored = _typed(stored_rows, derive_ids=True)  # as the event store holds them
    if resend:  # the caller sends some stored events again, without their ids
        fresh_rows = fresh_rows + [{**row, "event_id": None} for row in stored_rows[:3]]
    expected = _first_of_each_id(pl.concat([stored, _typed(fresh_rows, derive_ids=True)]))
    kept = realtime._each_event_once(stored, _typed(fresh_rows, derive_ids=False))
    assert kept.drop("event_id").equals(expected.drop("event_id"), null_equal=True)
    # Where an id was derived it is the one ingestion derives.
    assert fill_event_ids(kept).equals(expected, null_equal=True)


def test_a_stored_event_sent_again_counts_once_and_a_new_one_is_kept() -> None:
    row: dict[str, object] = {name: None for name in REQUEST_SCHEMA}
    stored_row: dict[str, object] = {
        **row,
        "profile_id": "p1",
        "timestamp": _NOW_MS - 1_000,
        "event_type": "a",
    }
    stored = _typed([stored_row], derive_ids=True)
    again = _typed([stored_row], derive_ids=False)
    assert realtime._each_event_once(stored, again).height == 1
    later: dict[str, object] = {**stored_row, "timestamp": _NOW_MS - 500}
    twice = _typed([later, later], derive_ids=False)  # two like events, both new
    assert realtime._each_event_once(stored, twice).height == 3
    named = _typed([{**later, "event_id": "x"}, {**later, "event_id": "x"}], derive_ids=False)
    assert realtime._each_event_once(stored, named).height == 2  # one id, one event
