"""Fitting a feature spec on training data: the vocabularies and attribute encodings.

Event types, channels and categories keep their most frequent values (the
rest pool into "other"); each profile attribute is encoded by what its
column holds (number, date, few levels one-hot, many levels by rank).
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from foresight.conditions.compile import to_polars
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.features.labels import as_utc
from foresight.features.spec import (
    OTHER,
    PURCHASE_EVENT_TYPE,
    AttributeEncoding,
    AttributeKind,
    FeatureSpec,
)
from foresight.instance import InstanceConfig

__all__ = ["fit_feature_spec", "top_values"]


def top_values(frame: pl.LazyFrame, column: str, k: int) -> tuple[str, ...]:
    """The k most frequent values of a column (ties by value), then sorted alphabetically."""
    counted = (
        frame.select(pl.col(column))
        .drop_nulls()
        .group_by(column)
        .len()
        .sort(["len", column], descending=[True, False])
        .head(k)
        .collect()
    )
    # Alphabetical order so the feature codes' order does not drift with counts.
    return tuple(sorted(str(v) for v in counted.get_column(column).to_list() if str(v) != OTHER))


def _encode_attribute(
    profiles: pl.DataFrame, name: str, path: str, max_onehot_levels: int, max_rank_levels: int
) -> AttributeEncoding:
    if name not in profiles.columns:
        raise InvalidArgument(path, f"the profile table has no attribute '{name}'")
    column = profiles.get_column(name)
    dtype = column.dtype
    if dtype.is_numeric() or dtype == pl.Boolean:
        return AttributeEncoding(name, AttributeKind.NUMERIC)
    if dtype in (pl.Date, pl.Datetime) or isinstance(dtype, pl.Datetime):
        return AttributeEncoding(name, AttributeKind.DATE)
    text = column.cast(pl.String).drop_nulls()
    if text.len() > 0:
        parsed = text.str.to_date(strict=False)
        # ISO dates stored as text (CSV imports) still mean "days since".
        if parsed.null_count() <= 0.1 * text.len():
            return AttributeEncoding(name, AttributeKind.DATE)
    levels = text.value_counts(sort=True, name="n")
    ordered = levels.sort(["n", name], descending=[True, False]).get_column(name).to_list()
    if len(ordered) <= max_onehot_levels:
        return AttributeEncoding(
            name, AttributeKind.ONEHOT, tuple(str(v) for v in ordered if v != OTHER)
        )
    return AttributeEncoding(
        name, AttributeKind.RANK, tuple(str(v) for v in ordered[:max_rank_levels])
    )


def fit_feature_spec(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    config: InstanceConfig,
    cutoff: datetime,
    *,
    max_event_types: int = 20,
    max_channels: int = 10,
    max_categories: int = 20,
    max_onehot_levels: int = 10,
    max_rank_levels: int = 100,
) -> FeatureSpec:
    """Fit vocabularies and attribute encodings on events before `cutoff` (after exclusions)."""
    cutoff = as_utc(cutoff)
    before = events.lazy().filter(pl.col("timestamp") < cutoff)
    if config.exclusions is not None and not config.exclusions.is_empty:
        before = before.filter(~to_polars(config.exclusions))
    event_types = top_values(before, "event_type", max_event_types)
    channels = top_values(before, "channel", max_channels)
    categories = top_values(before, "product_category", max_categories)
    has_purchase_values = (
        before.filter((pl.col("event_type") == PURCHASE_EVENT_TYPE) & pl.col("value").is_not_null())
        .select(pl.len())
        .collect()
        .item()
    )
    # Money means purchase value when purchases carry one; otherwise any valued event.
    monetary = PURCHASE_EVENT_TYPE if has_purchase_values else None
    attributes: list[AttributeEncoding] = []
    if config.profile_attributes:
        if profiles is None:
            raise FailedPrecondition(
                "the instance uses profile attributes but no profile table was imported"
            )
        for i, name in enumerate(config.profile_attributes):
            attributes.append(
                _encode_attribute(
                    profiles, name, f"profile_attributes[{i}]", max_onehot_levels, max_rank_levels
                )
            )
    return FeatureSpec(
        event_types=event_types,
        channels=channels,
        categories=categories,
        monetary_event_type=monetary,
        custom_events=config.custom_events,
        attributes=tuple(attributes),
        exclusions=config.exclusions,
    )
