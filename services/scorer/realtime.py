"""Real-time scoring of one profile: stored events plus fresh ones, nothing stored.

Fresh events go through the same validation as ingestion, but here a bad
event is the caller's mistake, so it fails the request naming the event and
field (`events[2].timestamp: missing timestamp`) instead of being quarantined.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import polars as pl

from foresight.errors import InvalidArgument, NotFound
from foresight.events.schema import EVENT_COLUMNS, EVENT_SCHEMA
from foresight.events.validation import validate
from foresight.features.featurize import featurize
from foresight.features.labels import as_utc
from foresight.storage.models import utcnow
from services.scorer.catalog import Catalog
from services.scorer.factors import bucket_of, render_factors, score_of, top_factors
from services.scorer.models import LoadedModel
from services.scorer.records import InstanceScore

MAX_EVENTS = 10_000
_WORD = re.compile(r"[A-Za-z_]+")


def _field_of(reason: str) -> str:
    """The event field a validation reason is about ("value is negative" → "value")."""
    for word in _WORD.findall(reason.split(";")[0]):
        if word in EVENT_COLUMNS:
            return str(word)
    return "event"


def validate_events(raw: pl.DataFrame, profile_id: str, now: datetime) -> tuple[pl.DataFrame, str]:
    """Typed events and the profile they belong to; InvalidArgument names the first bad one.

    Events without a profile id take the request's; events of another profile
    are refused, so one call always scores exactly one profile.
    """
    if raw.height > MAX_EVENTS:
        raise InvalidArgument(
            "events", f"at most {MAX_EVENTS:,} events per call, got {raw.height:,}"
        )
    if raw.height == 0:
        return pl.DataFrame(schema=EVENT_SCHEMA), profile_id
    if "profile_id" in raw.columns:
        given = raw.get_column("profile_id").cast(pl.String).fill_null("")
        for i, pid in enumerate(given.to_list()):
            if pid and profile_id and pid != profile_id:
                raise InvalidArgument(
                    f"events[{i}].profile_id", f"'{pid}' differs from profile_id '{profile_id}'"
                )
        if profile_id:
            raw = raw.with_columns(pl.lit(profile_id, dtype=pl.String).alias("profile_id"))
    elif profile_id:
        raw = raw.with_columns(pl.lit(profile_id, dtype=pl.String).alias("profile_id"))
    result = validate(raw, now)
    if result.rejected.height:
        first = result.rejected.row(0, named=True)
        reason = str(first["reason"])
        raise InvalidArgument(f"events[{int(first['row_number']) - 1}].{_field_of(reason)}", reason)
    ids = result.accepted.get_column("profile_id").unique().to_list()
    if len(ids) > 1:
        raise InvalidArgument(
            "events", f"events belong to {len(ids)} profiles; score one profile per call"
        )
    return result.accepted, profile_id or str(ids[0])


def score_profile(
    model: LoadedModel,
    catalog: Catalog,
    profile_id: str,
    fresh: pl.DataFrame,
    as_of: datetime | None,
    k: int,
) -> InstanceScore:
    """Score one profile now from its stored events plus `fresh` raw events."""
    if not profile_id and fresh.height == 0:
        raise InvalidArgument("profile_id", "give a profile_id, events, or both")
    now = utcnow()
    events, profile_id = validate_events(fresh, profile_id, now)
    parts = catalog.parts(catalog.dataset_of(model.instance))
    stored = catalog.profile_events(parts, profile_id)
    if stored.height == 0 and events.height == 0:
        raise NotFound(
            f"profile '{profile_id}' has no events in dataset '{parts.dataset}'; send events to score it"
        )
    combined = pl.concat([stored, events], how="vertical").unique(
        subset="event_id", keep="first", maintain_order=True
    )
    if as_of is None:
        latest = combined.get_column("timestamp").max()
        # Score "now", unless the caller sent events stamped later (clock skew).
        as_of = (
            max(now, as_utc(latest) + timedelta(microseconds=1))
            if isinstance(latest, datetime)
            else now
        )
    as_of = as_utc(as_of)
    profiles = catalog.profiles([a.name for a in model.spec.attributes], ids=[profile_id])
    matrix = featurize(combined, profiles, as_of, model.spec, profile_ids=pl.Series([profile_id]))
    probability = float(model.predict(matrix.X)[0])
    factors = top_factors(model.contributions(matrix.X, 1), matrix.X, k)
    score = score_of(probability)
    return InstanceScore(
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
