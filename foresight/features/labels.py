"""Labels without leakage: eligibility before a cutoff, outcome after it.

For a cutoff `c` on day `D` (UTC), a goal with an outcome window of `w` days
and a population with an optional look-back of `l` days:

    eligible  = profiles with a (population-matching) event before c
                (only in [c - l days, c) when the population sets a look-back)
    label     = goal events occurred in [c, D + w + 1 day)   (inverted for WILL_NOT_OCCUR)
    features  = events strictly before c                   (see featurize.py)

The outcome window is whole days, both ends inclusive: it starts at the
cutoff and ends with the last second of day D + w, so an outcome on the
window's last day counts. Every eligible profile gets a label row:
negatives are never dropped, and `population_funnel` says how many profiles
each population rule excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from foresight.conditions.compile import to_polars
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.evaluation_report import PopulationCounts
from foresight.instance import Goal, Occurrence, Population

__all__ = [
    "DEFAULT_MAX_CUTOFFS",
    "MIN_STEP_DAYS",
    "CutoffPlan",
    "LabelCounts",
    "PopulationFunnel",
    "as_utc",
    "choose_cutoffs",
    "data_end",
    "day_start",
    "eligible_profiles",
    "goal_labels",
    "label_counts",
    "population_funnel",
    "require_enough_labels",
    "staleness_warning",
    "window_end",
]

#: Rolling cutoffs at most (training and validation together), by default.
DEFAULT_MAX_CUTOFFS = 8
#: Cutoffs are never closer than this, however short the history.
MIN_STEP_DAYS = 7
_DAY = timedelta(days=1)


def as_utc(moment: datetime) -> datetime:
    """The same instant as an aware UTC datetime (naive input is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def day_start(moment: datetime) -> datetime:
    """Midnight (UTC) of the day `moment` falls on."""
    return as_utc(moment).replace(hour=0, minute=0, second=0, microsecond=0)


def window_end(cutoff: datetime, window_days: int) -> datetime:
    """Exclusive end of the outcome window: midnight after day(cutoff) + window_days.

    Whole days, both ends inclusive: a 30-day window from a cutoff on 1 April
    covers 1 April (from the cutoff on) through 1 May, the whole of 1 May.
    """
    return day_start(cutoff) + timedelta(days=window_days) + _DAY


def staleness_warning(
    as_of: datetime, data_end: datetime, window_days: int, now: datetime
) -> str | None:
    """Why scores as of `as_of` may mislead, given the data's end and the goal's window.

    Two cases, both relative to the outcome window: the newest event is older
    than one window (the data is stale: scores describe the past, not today),
    or `as_of` lies more than one window after the newest event (recency
    features then count days for which there are no events, not inactivity).
    """
    as_of, data_end, now = as_utc(as_of), as_utc(data_end), as_utc(now)
    window = timedelta(days=window_days)
    latest = data_end.date().isoformat()
    if as_of - data_end > window:
        gap = (as_of - data_end).days
        return (
            f"scoring as of {as_of.date().isoformat()}, {gap} days after the newest event "
            f"({latest}), more than the {window_days}-day outcome window: recency features "
            "count days without data as inactivity; import newer events or score as of the data's end"
        )
    if now - data_end > window:
        age = (now - data_end).days
        return (
            f"the newest event ({latest}) is {age} days old, more than the {window_days}-day "
            f"outcome window: scores are as of {as_of.date().isoformat()}, not today; "
            "import newer events for current scores"
        )
    return None


def data_end(events: pl.DataFrame) -> datetime:
    """Exclusive end of the data: one microsecond after the latest event."""
    latest = events.select(pl.col("timestamp").max()).item()
    if latest is None:
        raise FailedPrecondition("the dataset has no events")
    return as_utc(latest) + timedelta(microseconds=1)


def _population_events(
    events: pl.DataFrame, population: Population, cutoff: datetime
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """Events before the cutoff; of those, in the look-back; of those, matching the conditions."""
    before = events.lazy().filter(pl.col("timestamp") < cutoff)
    recent = before
    if population.lookback_days is not None:
        start = cutoff - timedelta(days=population.lookback_days)
        recent = before.filter(pl.col("timestamp") >= start)
    matching = recent.filter(to_polars(population.conditions))
    return before, recent, matching


def population_columns(population: Population) -> set[str]:
    """The event columns `eligible_profiles` reads (a reader may load only these)."""
    return {"profile_id", "timestamp", *to_polars(population.conditions).meta.root_names()}


def eligible_profiles(events: pl.DataFrame, population: Population, cutoff: datetime) -> pl.Series:
    """Sorted ids of profiles with ≥1 population event before the cutoff (in the look-back if set)."""
    _, _, matching = _population_events(events, population, as_utc(cutoff))
    return (
        matching.select(pl.col("profile_id").unique())
        .sort("profile_id")
        .collect()
        .get_column("profile_id")
    )


@dataclass(frozen=True, slots=True)
class PopulationFunnel:
    """How many profiles each population rule excluded at one cutoff.

    `with_history` profiles have any event before the cutoff; the look-back
    (when set) excludes those with none in it, then the conditions exclude
    those with no matching event: eligible = with_history - both exclusions.
    """

    with_history: int = 0
    excluded_by_lookback: int = 0
    excluded_by_conditions: int = 0

    @property
    def eligible(self) -> int:
        """Profiles left after every rule."""
        return self.with_history - self.excluded_by_lookback - self.excluded_by_conditions

    def counts(self) -> PopulationCounts:
        """The funnel as reported (evaluation, ValidateGoal)."""
        return PopulationCounts(
            with_history=self.with_history,
            excluded_by_lookback=self.excluded_by_lookback,
            excluded_by_conditions=self.excluded_by_conditions,
            eligible=self.eligible,
        )

    def __add__(self, other: PopulationFunnel) -> PopulationFunnel:
        return PopulationFunnel(
            self.with_history + other.with_history,
            self.excluded_by_lookback + other.excluded_by_lookback,
            self.excluded_by_conditions + other.excluded_by_conditions,
        )


def population_funnel(
    events: pl.DataFrame, population: Population, cutoff: datetime
) -> PopulationFunnel:
    """Profiles with history at `cutoff`, and how many each population rule excluded."""
    frames = _population_events(events, population, as_utc(cutoff))
    before, recent, matching = (
        f.select(pl.col("profile_id").n_unique()).collect().item() for f in frames
    )
    return PopulationFunnel(int(before), int(before - recent), int(recent - matching))


def goal_labels(
    events: pl.DataFrame, goal: Goal, cutoff: datetime, eligible: pl.Series
) -> pl.DataFrame:
    """One row per eligible profile: (profile_id, label Int8).

    The label looks only at the outcome window [cutoff, window_end); label 1
    means the goal happened as stated (for WILL_NOT_OCCUR: no goal event in it).
    """
    cutoff = as_utc(cutoff)
    end = window_end(cutoff, goal.window_days)
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


@dataclass(frozen=True, slots=True)
class CutoffPlan:
    """Rolling cutoffs, oldest first, and which of them each model trains on.

    `validation` (the last cutoff) is the latest one whose outcome window has
    closed. The validation model trains on the cutoffs whose windows end
    before it (`training`): an honest out-of-time check. The served model is
    then refit on every cutoff, the validation one included.
    """

    cutoffs: tuple[datetime, ...]
    training: tuple[int, ...]
    step_days: int

    @property
    def validation(self) -> datetime:
        """The out-of-time validation cutoff (the latest)."""
        return self.cutoffs[-1]

    @property
    def validation_index(self) -> int:
        """Index of the validation cutoff."""
        return len(self.cutoffs) - 1


def choose_cutoffs(
    data_end: datetime,
    window_days: int,
    *,
    data_start: datetime | None = None,
    max_cutoffs: int = DEFAULT_MAX_CUTOFFS,
    step_days: int | None = None,
    min_history_days: int = 30,
) -> CutoffPlan:
    """Rolling midnight (UTC) cutoffs whose number and spacing adapt to the history.

    The validation cutoff is the latest midnight whose whole outcome window
    lies within the data (the day of the latest event counts as complete).
    Earlier cutoffs step back by `step_days`; by default the step spreads up
    to `max_cutoffs` over the history, between MIN_STEP_DAYS (short history:
    more, denser cutoffs) and window + 1 days (long history: outcome windows
    that do not overlap). Cutoffs leaving less than `min_history_days` of
    history before them are dropped; the validation cutoff is always returned.
    """
    if window_days < 1:
        raise InvalidArgument("goal.window_days", "must be at least 1")
    if max_cutoffs < 2:
        raise InvalidArgument("max_cutoffs", "must be at least 2")
    if step_days is not None and step_days < 1:
        raise InvalidArgument("step_days", "must be at least 1")
    last_day = day_start(as_utc(data_end) - timedelta(microseconds=1))
    validation = last_day - timedelta(days=window_days)
    earliest = (
        None
        if data_start is None
        else day_start(as_utc(data_start)) + timedelta(days=min_history_days)
    )
    step = step_days
    if step is None:
        span = (validation - earliest).days if earliest is not None else 10**6
        step = -(-max(span, 0) // (max_cutoffs - 1))  # ceiling division
        step = min(max(step, MIN_STEP_DAYS), window_days + 1)
    cutoffs = [validation - timedelta(days=step * k) for k in range(max_cutoffs)]
    if earliest is not None:
        cutoffs = [c for c in cutoffs if c >= earliest] or [validation]
    cutoffs.sort()
    # The validation model may only see outcome windows that end by the validation cutoff.
    training = tuple(i for i, c in enumerate(cutoffs) if window_end(c, window_days) <= validation)
    return CutoffPlan(tuple(cutoffs), training, step)


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
