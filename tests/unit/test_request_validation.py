"""The row-wise validation of a request's few events equals the Polars validation.

`validate` checks small frames of `REQUEST_SCHEMA` (the events of one request)
row by row in plain Python; anything else runs the Polars expressions. Both
must accept the same rows with the same typed values and event ids, and refuse
the same rows with the same reasons, on valid and invalid values alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foresight.api.common.v1 import common_pb2
from foresight.convert import events_to_frame
from foresight.events import validation
from foresight.events.fields import REQUEST_SCHEMA
from foresight.events.schema import FAR_FUTURE_TOLERANCE, MAX_ATTRIBUTES_LENGTH
from foresight.events.validation import FEW_ROWS, DuplicatePolicy
from foresight.limits import PROFILE_ID_MAX
from tests.fixtures.request_events import request_rows

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
_MS = 1000
_NOW_MS = int(NOW.timestamp()) * _MS
_LATEST_MS = _NOW_MS + int(FAR_FUTURE_TOLERANCE.total_seconds()) * _MS

# Whitespace the Rust regex treats differently from Python's \s, and other edges.
_ODD = ["", " ", "\t", "\x1c", "\x1f", "\u3000", "\u180e", "\u200b", "\x85", " a ", "é", "😀"]
_TEXT = st.one_of(
    st.none(),
    st.sampled_from(_ODD),
    st.text(max_size=6),
    st.sampled_from(["web", "commerce.purchases", "x" * 512, "x" * 513]),
)
_PROFILE = st.one_of(
    st.none(),
    st.sampled_from([*_ODD, "p1", "p2", "p" * PROFILE_ID_MAX, "p" * (PROFILE_ID_MAX + 1)]),
)
_MILLIS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            0,
            -1,
            631_152_000,  # 1990-01-01 in seconds
            631_151_999,
            631_152_000_000,  # in milliseconds
            631_151_999_999,
            99_999_999_999,  # the last "seconds" number
            100_000_000_000,
            _NOW_MS,
            _LATEST_MS,
            _LATEST_MS + 1,
            _NOW_MS // _MS,
            253_402_300_799_999,
            253_402_300_800_000,
            -253_402_300_800_000,
            2**63 - 1,
            -(2**63),
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=_NOW_MS - 10**11, max_value=_LATEST_MS + 10**6),
)
_VALUE = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, -1.0, 10.0, float("nan"), float("inf"), float("-inf"), 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_QUANTITY = st.one_of(
    st.none(), st.sampled_from([0, -1, 3, 2**62]), st.integers(-(2**63), 2**63 - 1)
)
_ATTRIBUTES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            *_ODD,
            "{}",
            '{"a":1}',
            ' { "a" : "x" , "b" : -1.5e3 } ',
            '{"a":1}\n',
            "{\x1c}",
            '{"a":null}',
            '{"a":[1]}',
            '{"a":{"b":1}}',
            '{"a":1,}',
            '{"a":"\\u12"}',
            '{"a":"\\u0041"}',
            '{"a":"\x01"}',
            '{"a":NaN}',
            '{"a":01}',
            "[1]",
            '{"k":"' + "v" * MAX_ATTRIBUTES_LENGTH + '"}',
        ]
    ),
    st.text(max_size=12),
)
_ROW = st.fixed_dictionaries(
    {
        "event_id": st.one_of(st.none(), st.sampled_from(["", " ", "e1", "e2"])),
        "profile_id": _PROFILE,
        "timestamp": _MILLIS,
        "event_type": _TEXT,
        "channel": _TEXT,
        "value": _VALUE,
        "quantity": _QUANTITY,
        "product_sku": _TEXT,
        "product_category": _TEXT,
        "page_name": _TEXT,
        "campaign_id": _TEXT,
        "attributes": _ATTRIBUTES,
    }
)
_GOOD_ROW = request_rows(
    st.none(),
    st.sampled_from(["p1", "p2"]),
    st.integers(min_value=_NOW_MS - 10**9, max_value=_NOW_MS),
    st.sampled_from(["a", "b"]),
)


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=REQUEST_SCHEMA)


def _same(raw: pl.DataFrame, duplicates: DuplicatePolicy) -> None:
    latest = NOW + FAR_FUTURE_TOLERANCE
    rows = validation._validate_rows(raw, latest, 7)
    columns = validation._validate_columns(raw, latest, 7)
    assert rows.accepted.equals(columns.accepted, null_equal=True)
    # Ids are derived in Python for a few rows and by Polars for a batch: the same ids.
    few = validation.fill_event_ids(rows.accepted, duplicates)
    batch = validation._with_event_ids(columns.accepted, duplicates)
    assert few.equals(batch, null_equal=True)
    assert few.schema == batch.schema == rows.accepted.schema == columns.accepted.schema
    assert rows.rejected.equals(columns.rejected, null_equal=True)
    assert rows.rejected.schema == columns.rejected.schema


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ROW, min_size=1, max_size=8))
def test_any_rows_get_the_same_outcome(rows: list[dict[str, object]]) -> None:
    _same(_frame(rows), DuplicatePolicy.EVENT_ID)


@settings(max_examples=100, deadline=None)
@given(st.lists(_GOOD_ROW, min_size=1, max_size=12), st.sampled_from(list(DuplicatePolicy)[:2]))
def test_repeated_rows_get_the_same_event_ids(
    rows: list[dict[str, object]], duplicates: DuplicatePolicy
) -> None:
    """Identical rows (the n-th repeat hashes n) and ids given or not, under both fixed policies."""
    _same(_frame(rows + rows[: len(rows) // 2]), duplicates)


def test_request_events_take_the_row_path() -> None:
    event = common_pb2.Event(profile_id="p1", event_type="commerce.purchases", value=3.0)
    event.timestamp.FromDatetime(NOW - timedelta(hours=1))
    raw = events_to_frame([event] * 3)
    assert raw.schema == REQUEST_SCHEMA
    assert raw.height <= FEW_ROWS
    result = validation.validate(raw, NOW)
    assert result.accepted.height == 3 and result.rejected.height == 0
    assert result.accepted["event_id"].n_unique() == 3  # repeats are kept, each its own id
