"""Real-time scoring of one profile: stored events plus fresh ones, nothing stored.

Fresh events go through `validate_profile_events`, shared with the segmenter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from foresight.errors import InvalidArgument, NotFound
from foresight.events.profile_events import validate_profile_events
from foresight.features.featurize import featurize
from foresight.features.labels import as_utc
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
) -> InstanceScore:
    """Score one profile now from its stored events plus `fresh` raw events."""
    if not profile_id and fresh.height == 0:
        raise InvalidArgument("profile_id", "give a profile_id, events, or both")
    now = utcnow()
    events, profile_id = validate_profile_events(fresh, profile_id, now)
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
