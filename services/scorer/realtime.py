"""Real-time scoring of one profile: stored events plus fresh ones, nothing stored.

Fresh events go through `validate_profile_events`, shared with the segmenter.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

import polars as pl

from foresight.errors import InvalidArgument, NotFound
from foresight.events.profile_events import validate_profile_events
from foresight.events.schema import EVENT_COLUMNS
from foresight.events.validation import fill_event_ids
from foresight.features.labels import as_utc, staleness_warning
from foresight.features.single import featurize_one
from foresight.storage.models import utcnow
from services.scorer.catalog import Catalog
from services.scorer.factors import bucket_of, render_factors, score_of, top_factors
from services.scorer.models import LoadedModel
from services.scorer.records import InstanceScore


def score_profile(
    model: LoadedModel,
    catalog: Catalog,
    profile_id: str,
    fresh: pl.DataFrame,
    as_of: datetime | None,
    k: int,
) -> tuple[InstanceScore, str | None]:
    """Score one profile from its stored events plus `fresh` raw events.

    Returns the score and a warning when the data is stale for the goal's
    window (see labels.staleness_warning).
    """
    if not profile_id and fresh.height == 0:
        raise InvalidArgument("profile_id", "give a profile_id, events, or both")
    now = utcnow()
    events, profile_id = validate_profile_events(fresh, profile_id, now, derive_ids=False)
    parts = catalog.serving_parts(model.instance)
    stored = catalog.profile_events(parts, profile_id, _columns(model.event_columns))
    if stored.height == 0 and events.height == 0:
        raise NotFound(
            f"profile '{profile_id}' has no events in dataset '{parts.dataset}'; send events to score it"
        )
    combined = _each_event_once(stored, events)
    # The data's time, not the wall clock: the dataset's end, or just after the
    # newest event sent when that is later.
    newest = parts.end
    latest = combined.get_column("timestamp").max()
    if isinstance(latest, datetime):
        newest = max(newest, as_utc(latest) + timedelta(microseconds=1))
    as_of = newest if as_of is None else as_utc(as_of)
    names = [a.name for a in model.spec.attributes]
    profiles = catalog.profiles(names, ids=[profile_id]) if names else None
    matrix = featurize_one(combined, profiles, as_of, model.spec, profile_id)
    probability = float(model.predict(matrix.X)[0])
    factors = top_factors(model.contributions_one(matrix.X[0]), matrix.X, k)
    score = score_of(probability)
    window = model.config.goal.window_days
    warning = staleness_warning(as_of, newest, window, now)
    instance_score = InstanceScore(
        instance=model.instance,
        probability=probability,
        score=score,
        percentile=0,
        bucket=bucket_of(score),
        factors=render_factors(
            factors.codes[0], factors.impacts[0], factors.values[0], model.features
        ),
        model_version=model.version,
        scored_at=as_of,
        run_id="",
    )
    return instance_score, warning


@functools.lru_cache(maxsize=64)
def _columns(used: frozenset[str]) -> tuple[str, ...]:
    """The stored columns a model's scoring reads, and event ids (to tell events apart),
    in storage order: the rest are neither converted nor concatenated (~0.2 ms a call)."""
    return tuple(name for name in EVENT_COLUMNS if name in used or name == "event_id")


def _each_event_once(stored: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """The stored events, then each fresh event that is not one of them or sent twice,
    in the stored events' columns (`fresh` has them all: its ids may be derived).

    Events are the same when their ids are. A fresh event sent without an id has
    the id ingestion derives from its content, timestamp included (`fill_event_ids`,
    a Polars query: ~0.3 ms of a ~2.5 ms call), so it can only be a stored event
    when it shares a stored event's timestamp: only then are the ids derived.
    Otherwise none can match, and repeats within the request would each get an id
    of their own (`validate`), so every event without an id is kept.
    `unique(subset="event_id", keep="first", maintain_order=True)` for a few
    hundred rows, without a Polars query.
    """
    fresh_ids = fresh.get_column("event_id").to_list()
    if None in fresh_ids:
        stamps = set(stored.get_column("timestamp").cast(pl.Int64).to_list())
        sent = fresh.get_column("timestamp").cast(pl.Int64).to_list()  # same unit
        if any(i is None and t in stamps for i, t in zip(fresh_ids, sent, strict=True)):
            fresh = fill_event_ids(fresh)
            fresh_ids = fresh.get_column("event_id").to_list()
    seen: set[str] = set()
    first: list[int] = []
    for i, event_id in enumerate(stored.get_column("event_id").to_list() + fresh_ids):
        if event_id is None:
            first.append(i)  # sent without an id and no stored event's twin
        elif event_id not in seen:
            seen.add(event_id)
            first.append(i)
    events = pl.concat([stored, fresh[stored.columns]], how="vertical")
    return events if len(first) == events.height else events[first]
