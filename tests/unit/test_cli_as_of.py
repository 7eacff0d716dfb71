"""`foresight score --as-of`: dates and date-times, UTC unless an offset is given."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import typer

from foresight.cli.scorer import as_of_timestamp

pytestmark = pytest.mark.unit


def test_as_of_accepts_dates_and_date_times() -> None:
    assert as_of_timestamp(None) is None and as_of_timestamp("") is None
    date_only = as_of_timestamp("2024-03-31")
    assert date_only is not None
    assert date_only.ToDatetime(tzinfo=UTC) == datetime(2024, 3, 31, tzinfo=UTC)
    shifted = as_of_timestamp("2024-03-31T12:00:00+02:00")
    assert shifted is not None
    assert shifted.ToDatetime(tzinfo=UTC) == datetime(2024, 3, 31, 10, tzinfo=UTC)


def test_as_of_rejects_other_text_with_a_usage_error() -> None:
    with pytest.raises(typer.BadParameter, match="2024-03-31"):
        as_of_timestamp("yesterday")
