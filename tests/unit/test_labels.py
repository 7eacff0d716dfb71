"""Labels without leakage: eligibility, outcome windows, rolling cutoffs, the data gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import polars as pl
import pytest

from foresight.conditions import parse
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.features.labels import (
    MIN_STEP_DAYS,
    LabelCounts,
    PopulationFunnel,
    choose_cutoffs,
    data_end,
    eligible_profiles,
    goal_labels,
    label_counts,
    population_columns,
    population_funnel,
    require_enough_labels,
    window_end,
)
from foresight.instance import Goal, Occurrence, Population

pytestmark = pytest.mark.unit

CUTOFF = datetime(2024, 6, 1, tzinfo=UTC)
SCHEMA = pl.Schema(
    {
        "profile_id": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),
        "event_type": pl.String(),
        "channel": pl.String(),
        "value": pl.Float64(),
    }
)


def frame(rows: list[tuple[str, datetime, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"profile_id": p, "timestamp": t, "event_type": e, "channel": "web", "value": None}
            for p, t, e in rows
        ],
        schema=SCHEMA,
    )


def days(n: float) -> timedelta:
    return timedelta(days=n)


PURCHASE = 'event_type = "commerce.purchases"'


def test_eligibility_sees_only_the_lookback_before_the_cutoff() -> None:
    events = frame(
        [
            ("edge_start", CUTOFF - days(45), "web.webpagedetails.pageViews"),  # inclusive start
            (
                "too_old",
                CUTOFF - days(45) - timedelta(microseconds=1),
                "web.webpagedetails.pageViews",
            ),
            (
                "at_cutoff",
                CUTOFF,
                "web.webpagedetails.pageViews",
            ),  # the cutoff belongs to the future
            ("recent", CUTOFF - timedelta(microseconds=1), "message.opened"),
        ]
    )
    eligible = eligible_profiles(events, Population(lookback_days=45), CUTOFF)
    assert eligible.to_list() == ["edge_start", "recent"]


def test_default_population_is_every_profile_with_history_and_exclusions_are_counted() -> None:
    events = frame(
        [
            ("old_buyer", CUTOFF - days(400), "commerce.purchases"),
            ("old_browser", CUTOFF - days(100), "web.webpagedetails.pageViews"),
            ("recent_buyer", CUTOFF - days(3), "commerce.purchases"),
            ("recent_browser", CUTOFF - days(3), "web.webpagedetails.pageViews"),
            ("newcomer", CUTOFF, "commerce.purchases"),  # no history before the cutoff
        ]
    )
    everyone = ["old_browser", "old_buyer", "recent_browser", "recent_buyer"]
    assert eligible_profiles(events, Population(), CUTOFF).to_list() == everyone
    assert population_funnel(events, Population(), CUTOFF) == PopulationFunnel(4, 0, 0)
    narrow = Population(conditions=parse(PURCHASE), lookback_days=45)
    funnel = population_funnel(events, narrow, CUTOFF)
    assert funnel == PopulationFunnel(
        with_history=4, excluded_by_lookback=2, excluded_by_conditions=1
    )
    assert funnel.eligible == 1 == eligible_profiles(events, narrow, CUTOFF).len()
    assert funnel.counts().eligible == 1
    assert funnel + funnel == PopulationFunnel(8, 4, 2)


def test_population_conditions_filter_eligibility() -> None:
    events = frame(
        [
            ("buyer", CUTOFF - days(3), "commerce.purchases"),
            ("browser", CUTOFF - days(3), "web.webpagedetails.pageViews"),
        ]
    )
    population = Population(conditions=parse(PURCHASE), lookback_days=10)
    assert eligible_profiles(events, population, CUTOFF).to_list() == ["buyer"]


def test_population_columns_are_what_eligibility_reads() -> None:
    events = frame([(p, CUTOFF - days(2), "web.webpagedetails.pageViews") for p in "abc"])
    events = events.with_columns(
        page_name=pl.Series(["home", "cart", None]), value=pl.Series([None, 20.0, 5.0])
    )
    population = Population(conditions=parse('page_name = "home" or value > 10'))
    assert population_columns(population) == {"profile_id", "timestamp", "page_name", "value"}
    assert population_columns(Population()) == {"profile_id", "timestamp"}
    projected = events.select(sorted(population_columns(population)))
    assert eligible_profiles(projected, population, CUTOFF).to_list() == ["a", "b"]


def test_window_end_is_the_midnight_after_the_last_day() -> None:
    assert window_end(CUTOFF, 7) == CUTOFF + days(8)
    # A cutoff during a day: the window still ends with the whole last day.
    assert window_end(CUTOFF + timedelta(hours=15), 7) == CUTOFF + days(8)


def test_goal_labels_see_only_the_outcome_window() -> None:
    events = frame(
        [
            ("before", CUTOFF - days(1), "commerce.purchases"),  # feature side, not label
            ("at_start", CUTOFF, "commerce.purchases"),
            # Whole days, both ends inclusive: day(cutoff) + 7 is the window's last day.
            ("last_day", CUTOFF + days(7), "commerce.purchases"),
            ("last_moment", CUTOFF + days(8) - timedelta(microseconds=1), "commerce.purchases"),
            ("too_late", CUTOFF + days(8), "commerce.purchases"),
            ("wrong_type", CUTOFF + days(1), "web.webpagedetails.pageViews"),
        ]
    )
    eligible = pl.Series(
        ["before", "at_start", "last_day", "last_moment", "too_late", "wrong_type"]
    )
    labels = goal_labels(events, Goal(parse(PURCHASE), Occurrence.WILL_OCCUR, 7), CUTOFF, eligible)
    assert labels.schema == pl.Schema({"profile_id": pl.String, "label": pl.Int8})
    assert dict(labels.iter_rows()) == {
        "before": 0,
        "at_start": 1,
        "last_day": 1,
        "last_moment": 1,
        "too_late": 0,
        "wrong_type": 0,
    }


def test_negatives_are_never_dropped() -> None:
    # Profiles with no events at all after the cutoff must still get a row.
    events = frame([("buyer", CUTOFF + days(1), "commerce.purchases")])
    eligible = pl.Series([f"p{i}" for i in range(50)] + ["buyer"])
    labels = goal_labels(events, Goal(parse(PURCHASE), window_days=30), CUTOFF, eligible)
    assert labels.height == 51
    assert labels.get_column("label").sum() == 1
    assert labels.get_column("profile_id").to_list() == eligible.to_list()


def test_will_not_occur_inverts_the_label() -> None:
    events = frame([("stays", CUTOFF + days(2), "commerce.purchases")])
    eligible = pl.Series(["stays", "churns"])
    goal = Goal(parse(PURCHASE), Occurrence.WILL_NOT_OCCUR, 30)
    assert dict(goal_labels(events, goal, CUTOFF, eligible).iter_rows()) == {
        "stays": 0,
        "churns": 1,
    }


def test_validation_cutoff_is_the_latest_whose_window_has_closed() -> None:
    end = datetime(2024, 12, 31, 15, 30, tzinfo=UTC)
    plan = choose_cutoffs(end, window_days=30, max_cutoffs=4)
    # The latest event's day (31 Dec) counts as complete: 1 Dec + 30 days = 31 Dec.
    assert plan.validation == datetime(2024, 12, 1, tzinfo=UTC)
    assert window_end(plan.validation, 30) == datetime(2025, 1, 1, tzinfo=UTC)
    assert list(plan.cutoffs) == sorted(plan.cutoffs) and len(plan.cutoffs) == 4
    # Long history: outcome windows do not overlap (window + 1 days apart) ...
    assert all(b - a == days(31) for a, b in pairwise(plan.cutoffs))
    # ... so every earlier cutoff trains the validation model.
    assert plan.training == (0, 1, 2) and plan.validation_index == 3
    assert all(window_end(plan.cutoffs[i], 30) <= plan.validation for i in plan.training)


def test_cutoffs_get_denser_when_history_is_short() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    long = choose_cutoffs(datetime(2028, 1, 1, tzinfo=UTC), 90, data_start=start)
    short = choose_cutoffs(datetime(2024, 10, 1, tzinfo=UTC), 90, data_start=start)  # 9 months
    assert long.step_days == 91 and len(long.cutoffs) == 8
    assert short.step_days < long.step_days
    assert short.step_days >= MIN_STEP_DAYS
    assert len(short.cutoffs) > 2  # the old fixed 90-day step fitted only two
    assert short.cutoffs[0] >= start + days(30)
    assert short.training and all(
        window_end(short.cutoffs[i], 90) <= short.validation for i in short.training
    )
    # Cutoffs between the training ones and the validation one train only the served model.
    assert len(short.training) < len(short.cutoffs) - 1
    # Configurable: count and spacing.
    fixed = choose_cutoffs(datetime(2026, 1, 1, tzinfo=UTC), 30, max_cutoffs=3, step_days=7)
    assert len(fixed.cutoffs) == 3 and fixed.step_days == 7
    assert fixed.training == ()  # 7-day steps with a 30-day window: every window overlaps


def test_choose_cutoffs_respects_history() -> None:
    end = datetime(2024, 3, 1, tzinfo=UTC)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    plan = choose_cutoffs(end, 14, max_cutoffs=6, data_start=start, min_history_days=30)
    assert plan.cutoffs[0] >= start + days(30)
    assert plan.validation == datetime(2024, 2, 15, tzinfo=UTC)
    # Too little history for any cutoff: the validation cutoff is still returned.
    assert len(choose_cutoffs(end, 14, data_start=end - days(20)).cutoffs) == 1
    with pytest.raises(InvalidArgument):
        choose_cutoffs(end, 0)


def test_data_end_is_exclusive() -> None:
    last = CUTOFF + days(3)
    events = frame([("a", CUTOFF, "x.y"), ("a", last, "x.y")])
    assert data_end(events) == last + timedelta(microseconds=1)
    with pytest.raises(FailedPrecondition):
        data_end(frame([]))


def test_label_counts_for_the_dry_run() -> None:
    rows = [(f"p{i}", CUTOFF - days(5), "web.webpagedetails.pageViews") for i in range(10)]
    rows += [(f"p{i}", CUTOFF + days(3), "commerce.purchases") for i in range(3)]
    rows += [("late_joiner", CUTOFF + days(1), "commerce.purchases")]  # not eligible
    counts = label_counts(frame(rows), Goal(parse(PURCHASE), window_days=7), Population(), CUTOFF)
    assert counts == LabelCounts(cutoff=CUTOFF, eligible=10, positives=3, negatives=7)


def test_too_little_data_is_a_failed_precondition_with_counts() -> None:
    counts = LabelCounts(cutoff=CUTOFF, eligible=1000, positives=120, negatives=880)
    require_enough_labels(counts, 100, 100)
    with pytest.raises(FailedPrecondition) as err:
        require_enough_labels(counts, 500, 500)
    message = str(err.value)
    assert "1000 eligible" in message and "120 positive (need 500)" in message
    assert "lengthen the outcome window" in message
    with pytest.raises(FailedPrecondition, match="shorten the outcome window"):
        require_enough_labels(counts, 500, 500, Occurrence.WILL_NOT_OCCUR)
    with pytest.raises(FailedPrecondition, match="no profile is eligible"):
        require_enough_labels(LabelCounts(CUTOFF, 0, 0, 0), 1, 1)
