"""Scoring schedules: named (hourly, daily, weekly, monthly) or 5-field cron, in UTC.

`next_fire(schedule, after)` is the first minute strictly after `after` the
schedule selects; a run is due when that minute has passed. Standard cron
rules: lists, ranges, steps, month and weekday names, and when both day of
month and day of week are restricted a day matching either is selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from foresight.errors import InvalidArgument

NAMED = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 0",
    "monthly": "0 0 1 * *",
}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_HORIZON = timedelta(days=366 * 5)


def _field(text: str, low: int, high: int, names: dict[str, int], what: str) -> frozenset[int]:
    # Day of week accepts 7 as a second Sunday, as cron does.
    top = 7 if what == "day of week" else high
    values: set[int] = set()
    for part in text.lower().split(","):
        body, _, step_text = part.partition("/")
        if step_text and (not step_text.isdigit() or int(step_text) == 0):
            raise InvalidArgument("scoring_schedule", f"bad step in {what} field '{part}'")
        step = int(step_text) if step_text else 1
        if body in ("*", "?"):
            start, stop = low, high
        else:
            first, _, last = body.partition("-")
            start = _value(first, names, what)
            stop = _value(last, names, what) if last else (high if step_text else start)
        if not (low <= start <= stop <= top):
            raise InvalidArgument("scoring_schedule", f"{what} '{part}' out of range {low}-{high}")
        values.update(range(start, stop + 1, step))
    if 7 in values and what == "day of week":
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _value(text: str, names: dict[str, int], what: str) -> int:
    if text.isdigit():
        return int(text)
    if text in names:
        return names[text]
    raise InvalidArgument("scoring_schedule", f"'{text}' is not a valid {what}")


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, schedule: str) -> Cron:
        """Parse a named schedule or cron text; InvalidArgument when malformed."""
        text = NAMED.get(schedule.strip().lower(), schedule.strip())
        parts = text.split()
        if len(parts) != 5:
            raise InvalidArgument("scoring_schedule", f"expected 5 cron fields, got {schedule!r}")
        minute, hour, day, month, weekday = parts
        return cls(
            minutes=_field(minute, 0, 59, {}, "minute"),
            hours=_field(hour, 0, 23, {}, "hour"),
            days=_field(day, 1, 31, {}, "day of month"),
            months=_field(month, 1, 12, _MONTHS, "month"),
            weekdays=_field(weekday, 0, 6, _DAYS, "day of week"),
            any_day=day in ("*", "?"),
            any_weekday=weekday in ("*", "?"),
        )

    def _day_matches(self, moment: datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def next_fire(self, after: datetime) -> datetime | None:
        """First selected minute strictly after `after` (UTC), or None within five years."""
        t = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + _HORIZON
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None


def is_due(schedule: str, last: datetime, now: datetime) -> bool:
    """Whether the schedule selected a minute in (last, now]."""
    fire = Cron.parse(schedule).next_fire(last)
    return fire is not None and fire <= now
