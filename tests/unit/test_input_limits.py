"""Limits on conditions and JSON Lines lines (issue 11.5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from foresight.api.common.v1 import common_pb2
from foresight.conditions import ConditionGroup, GroupMode, parse, validate_group
from foresight.conditions.model import Condition, Operator
from foresight.convert import events_to_frame
from foresight.errors import InvalidArgument
from foresight.events.readers import read_jsonl_batches
from foresight.events.schema import MALFORMED_COLUMN
from foresight.events.validation import validate
from foresight.limits import (
    CONDITION_DEPTH_MAX,
    CONDITION_ITEMS_MAX,
    CONDITION_LITERAL_MAX,
    CONDITION_TEXT_MAX,
    JSONL_LINE_MAX_BYTES,
)

pytestmark = pytest.mark.unit


def test_a_thousand_parentheses_are_refused_naming_the_limit() -> None:
    text = "(" * 1000 + 'event_type = "x"' + ")" * 1000
    with pytest.raises(InvalidArgument) as caught:
        parse(text, field="goal.conditions")
    assert caught.value.field == "goal.conditions"
    assert f"{CONDITION_DEPTH_MAX} deep" in caught.value.reason


def test_depth_at_the_limit_parses_and_parentheses_in_strings_do_not_count() -> None:
    text = (
        "(" * CONDITION_DEPTH_MAX
        + 'page_name = "((((((((((((((((((((("'
        + ")" * CONDITION_DEPTH_MAX
    )
    assert parse(text).conditions()[0].value == "((((((((((((((((((((("


def test_long_text_and_many_items_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="limit"):
        parse("value = 1 or " * (CONDITION_TEXT_MAX // 10) + "value = 1")
    many = " or ".join(f"value = {i}" for i in range(CONDITION_ITEMS_MAX + 1))
    assert len(many) <= CONDITION_TEXT_MAX
    with pytest.raises(InvalidArgument, match=f"{CONDITION_ITEMS_MAX}"):
        parse(many)


def test_structured_groups_are_bounded_too() -> None:
    wide = ConditionGroup(
        GroupMode.ANY_OF,
        tuple(Condition("value", Operator.EQ, i) for i in range(100_000)),
    )
    with pytest.raises(InvalidArgument, match=f"{CONDITION_ITEMS_MAX}"):
        validate_group(wide, "goal.conditions")
    deep: ConditionGroup = ConditionGroup(items=(Condition("value", Operator.GT, 1),))
    for _ in range(5_000):  # deeper than Python's recursion limit
        deep = ConditionGroup(items=(deep,))
    with pytest.raises(InvalidArgument, match="deep"):
        validate_group(deep)
    long_literal = ConditionGroup(
        items=(Condition("page_name", Operator.EQ, "x" * (CONDITION_LITERAL_MAX + 1)),)
    )
    with pytest.raises(InvalidArgument, match=f"{CONDITION_LITERAL_MAX:,}|{CONDITION_LITERAL_MAX}"):
        validate_group(long_literal)


def test_an_over_long_json_line_is_a_rejected_row_never_read_whole(tmp_path: Path) -> None:
    good = {"profile_id": "p1", "event_type": "x", "timestamp": 1_700_000_000_000}
    path = tmp_path / "events.jsonl"
    with path.open("wb") as fh:
        fh.write(json.dumps(good).encode() + b"\n")
        fh.write(b'{"profile_id": "' + b"a" * (3 * JSONL_LINE_MAX_BYTES) + b'"}\n')
        fh.write(json.dumps(good).encode() + b"\n")
        fh.write(b"b" * (JSONL_LINE_MAX_BYTES + 5))  # last line, no newline, too long
    frames = list(read_jsonl_batches(path, batch_rows=10))
    rows = [row for frame in frames for row in frame.to_dicts()]
    assert len(rows) == 4
    assert [row.get("profile_id") for row in rows] == ["p1", None, "p1", None]
    for bad in (rows[1], rows[3]):
        assert "limit" in bad[MALFORMED_COLUMN]
        assert len(bad[MALFORMED_COLUMN]) < 200


def test_request_events_with_unrepresentable_values_are_rejected_rows() -> None:
    infinite = common_pb2.Event(event_id="a", profile_id="p", event_type="x")
    infinite.timestamp.FromSeconds(1_767_225_600)
    infinite.attributes.update({"ltv": float("inf")})
    ancient = common_pb2.Event(event_id="b", profile_id="p", event_type="x")
    ancient.timestamp.seconds = -(2**62)  # outside what protobuf can convert
    result = validate(events_to_frame([infinite, ancient]), datetime.now(UTC))
    assert result.accepted.height == 0
    reasons = result.rejected["reason"].to_list()
    assert "attributes" in reasons[0] and "timestamp" in reasons[1]
