"""Labels without leakage: eligibility, outcome windows, rolling cutoffs, the data gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import polars as pl
import pytest

from foresight.conditions import parse
from foresight.errors import FailedPrecondition
from foresight.features.labels import (
    LabelCounts,
    choose_cutoffs,
    data_end,
    eligible_profiles,
    goal_labels,
    label_counts,
    require_enough_labels,
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
    eligible = eligible_profiles(events, Population(), CUTOFF)
    assert eligible.to_list() == ["edge_start", "recent"]


def test_population_conditions_filter_eligibility() -> None:
    events = frame(
        [
            ("buyer", CUTOFF - days(3), "commerce.purchases"),
            ("browser", CUTOFF - days(3), "web.webpagedetails.pageViews"),
        ]
    )
    population = Population(conditions=parse(PURCHASE), lookback_days=10)
    assert eligible_profiles(events, population, CUTOFF).to_list() == ["buyer"]


def test_goal_labels_see_only_the_outcome_window() -> None:
    events = frame(
        [
            ("before", CUTOFF - days(1), "commerce.purchases"),  # feature side, not label
            ("at_start", CUTOFF, "commerce.purchases"),
            ("last_moment", CUTOFF + days(7) - timedelta(microseconds=1), "commerce.purchases"),
            ("too_late", CUTOFF + days(7), "commerce.purchases"),
            ("wrong_type", CUTOFF + days(1), "web.webpagedetails.pageViews"),
        ]
    )
    eligible = pl.Series(["before", "at_start", "last_moment", "too_late", "wrong_type"])
    labels = goal_labels(events, Goal(parse(PURCHASE), Occurrence.WILL_OCCUR, 7), CUTOFF, eligible)
    assert labels.schema == pl.Schema({"profile_id": pl.String, "label": pl.Int8})
    assert dict(labels.iter_rows()) == {
        "before": 0,
        "at_start": 1,
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


def test_choose_cutoffs_keeps_outcome_windows_inside_the_data() -> None:
    end = datetime(2024, 12, 31, 15, 30, tzinfo=UTC)
    cutoffs = choose_cutoffs(end, window_days=30, n=4)
    assert len(cutoffs) == 4
    assert cutoffs == sorted(cutoffs)
    assert all(c + days(30) <= end for c in cutoffs)
    assert cutoffs[-1] == datetime(
        2024, 12, 1, tzinfo=UTC
    )  # latest = validation cutoff, at midnight
    # Default step = window: training outcome windows end before the validation cutoff.
    assert all(b - a == days(30) for a, b in pairwise(cutoffs))
    assert choose_cutoffs(end, 30, n=3, step_days=7)[0] == datetime(2024, 11, 17, tzinfo=UTC)


def test_choose_cutoffs_respects_history() -> None:
    end = datetime(2024, 3, 1, tzinfo=UTC)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    cutoffs = choose_cutoffs(end, 14, n=6, data_start=start, min_history_days=30)
    assert cutoffs[0] >= start + days(30)
    assert cutoffs[-1] == datetime(2024, 2, 16, tzinfo=UTC)
    # Too little history for any cutoff: the validation cutoff is still returned.
    assert len(choose_cutoffs(end, 14, data_start=end - days(20))) == 1


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
