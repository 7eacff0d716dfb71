"""Labels without leakage: eligibility before a cutoff, outcome after it.

For a cutoff `c`, a goal with an outcome window of `w` days and a population
look-back of `l` days:

    eligible  = profiles with a (population-matching) event in [c - l, c)
    label     = goal events occurred in [c, c + w)   (inverted for WILL_NOT_OCCUR)
    features  = events strictly before c             (see featurize.py)

Every eligible profile gets a label row: negatives are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from foresight.conditions.compile import to_polars
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.instance import Goal, Occurrence, Population

__all__ = [
    "LabelCounts",
    "as_utc",
    "choose_cutoffs",
    "data_end",
    "eligible_profiles",
    "goal_labels",
    "label_counts",
    "require_enough_labels",
]


def as_utc(moment: datetime) -> datetime:
    """The same instant as an aware UTC datetime (naive input is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def data_end(events: pl.DataFrame) -> datetime:
    """Exclusive end of the data: one microsecond after the latest event."""
    latest = events.select(pl.col("timestamp").max()).item()
    if latest is None:
        raise FailedPrecondition("the dataset has no events")
    return as_utc(latest) + timedelta(microseconds=1)


def eligible_profiles(events: pl.DataFrame, population: Population, cutoff: datetime) -> pl.Series:
    """Sorted ids of profiles with ≥1 population event in [cutoff - lookback, cutoff)."""
    cutoff = as_utc(cutoff)
    start = cutoff - timedelta(days=population.lookback_days)
    return (
        events.lazy()
        .filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < cutoff))
        .filter(to_polars(population.conditions))
        .select(pl.col("profile_id").unique())
        .sort("profile_id")
        .collect()
        .get_column("profile_id")
    )


def goal_labels(
    events: pl.DataFrame, goal: Goal, cutoff: datetime, eligible: pl.Series
) -> pl.DataFrame:
    """One row per eligible profile: (profile_id, label Int8).

    The label looks only at [cutoff, cutoff + window); label 1 means the goal
    happened as stated (for WILL_NOT_OCCUR: no goal event in the window).
    """
    cutoff = as_utc(cutoff)
    end = cutoff + timedelta(days=goal.window_days)
    occurred = (
        events.lazy()
        .filter((pl.col("timestamp") >= cutoff) & (pl.col("timestamp") < end))
        .filter(to_polars(goal.conditions))
        .select(pl.col("profile_id").unique(), pl.lit(True).alias("occurred"))
    )
    base = pl.DataFrame({"profile_id": eligible.cast(pl.String)}).lazy().unique(maintain_order=True)
    hit = pl.col("occurred").fill_null(False)
    label = hit if goal.occurrence is Occurrence.WILL_OCCUR else ~hit
    # A left join from the eligible ids keeps every negative by construction.
    return (
        base.join(occurred, on="profile_id", how="left", maintain_order="left")
        .select("profile_id", label.cast(pl.Int8).alias("label"))
        .collect()
    )


def choose_cutoffs(
    data_end: datetime,
    window_days: int,
    n: int = 4,
    step_days: int | None = None,
    data_start: datetime | None = None,
    min_history_days: int = 30,
) -> list[datetime]:
    """Rolling cutoffs, oldest first; the last one is the validation cutoff.

    The latest cutoff is the last midnight (UTC) whose outcome window ends at
    or before `data_end` (exclusive end of the data). Earlier cutoffs step back
    by `step_days` (default: the window, so no two outcome windows overlap and
    no training label sees the validation window). With `data_start`, cutoffs
    leaving less than `min_history_days` of history are dropped, but the
    validation cutoff is always returned.
    """
    if window_days < 1:
        raise InvalidArgument("goal.window_days", "must be at least 1")
    if n < 1:
        raise InvalidArgument("n", "must be at least 1")
    step = window_days if step_days is None else step_days
    if step < 1:
        raise InvalidArgument("step_days", "must be at least 1")
    end = as_utc(data_end)
    latest = end - timedelta(days=window_days)
    latest = latest.replace(hour=0, minute=0, second=0, microsecond=0)
    cutoffs = [latest - timedelta(days=step * k) for k in range(n)]
    if data_start is not None:
        earliest = as_utc(data_start) + timedelta(days=min_history_days)
        cutoffs = [c for c in cutoffs if c >= earliest] or [latest]
    return sorted(cutoffs)


@dataclass(frozen=True)
class LabelCounts:
    """The ValidateGoal dry run: label balance at one cutoff."""

    cutoff: datetime
    eligible: int
    positives: int
    negatives: int


def label_counts(
    events: pl.DataFrame, goal: Goal, population: Population, cutoff: datetime
) -> LabelCounts:
    """Eligible, positive and negative profiles at `cutoff` (use the validation cutoff)."""
    eligible = eligible_profiles(events, population, cutoff)
    labels = goal_labels(events, goal, cutoff, eligible)
    positives = int(labels.get_column("label").sum() or 0)
    return LabelCounts(
        cutoff=as_utc(cutoff),
        eligible=labels.height,
        positives=positives,
        negatives=labels.height - positives,
    )


def require_enough_labels(
    counts: LabelCounts,
    min_positives: int,
    min_negatives: int,
    occurrence: Occurrence = Occurrence.WILL_OCCUR,
) -> None:
    """Raise FailedPrecondition with the counts and what to change when a class is too small."""
    if counts.positives >= min_positives and counts.negatives >= min_negatives:
        return
    if counts.eligible == 0:
        advice = "no profile is eligible: widen the population conditions or lengthen its look-back"
    else:
        short_of_positives = counts.positives < min_positives
        # A longer window lets more goal events happen: more positives for
        # WILL_OCCUR, fewer for WILL_NOT_OCCUR.
        longer = short_of_positives == (occurrence is Occurrence.WILL_OCCUR)
        window = "lengthen the outcome window" if longer else "shorten the outcome window"
        which, knob = (
            ("positive", "min_positives") if short_of_positives else ("negative", "min_negatives")
        )
        advice = f"too few {which} profiles: {window}, widen the population, adjust the goal conditions or lower {knob}"
    raise FailedPrecondition(
        f"not enough data at cutoff {counts.cutoff.isoformat()}: {counts.eligible} eligible, "
        f"{counts.positives} positive (need {min_positives}), {counts.negatives} negative "
        f"(need {min_negatives}); {advice}"
    )
