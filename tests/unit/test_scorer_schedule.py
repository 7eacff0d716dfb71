"""Scoring schedules: named and cron, next fire time, due check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from foresight.errors import InvalidArgument
from services.scorer.schedule import Cron, is_due

pytestmark = pytest.mark.unit

T = datetime(2025, 3, 5, 10, 17, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("hourly", datetime(2025, 3, 5, 11, 0, tzinfo=UTC)),
        ("daily", datetime(2025, 3, 6, 0, 0, tzinfo=UTC)),
        ("weekly", datetime(2025, 3, 9, 0, 0, tzinfo=UTC)),  # Sunday
        ("monthly", datetime(2025, 4, 1, 0, 0, tzinfo=UTC)),
        ("*/15 * * * *", datetime(2025, 3, 5, 10, 30, tzinfo=UTC)),
        ("0 3 * * mon-fri", datetime(2025, 3, 6, 3, 0, tzinfo=UTC)),
        ("30 2 1 jan *", datetime(2026, 1, 1, 2, 30, tzinfo=UTC)),
        ("0 0 31 * *", datetime(2025, 3, 31, 0, 0, tzinfo=UTC)),
        ("0 0 1 * 5", datetime(2025, 3, 7, 0, 0, tzinfo=UTC)),  # day 1 OR Friday
        ("0 12 * * 7", datetime(2025, 3, 9, 12, 0, tzinfo=UTC)),  # 7 is Sunday too
    ],
)
def test_next_fire(schedule: str, expected: datetime) -> None:
    assert Cron.parse(schedule).next_fire(T) == expected


@pytest.mark.parametrize(
    "schedule", ["", "* * * *", "61 * * * *", "0 25 * * *", "0 0 * * funday", "*/0 * * * *"]
)
def test_malformed_schedules(schedule: str) -> None:
    with pytest.raises(InvalidArgument):
        Cron.parse(schedule)


def test_due_once_the_selected_minute_has_passed() -> None:
    last = datetime(2025, 3, 5, 0, 0, tzinfo=UTC)
    assert is_due("daily", last, datetime(2025, 3, 6, 0, 0, tzinfo=UTC))
    assert not is_due("daily", last, datetime(2025, 3, 5, 23, 59, tzinfo=UTC))
    assert not is_due("0 0 30 2 *", last, T)  # February 30th never comes
