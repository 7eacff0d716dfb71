"""Segment AI behaviour vectors: a fixed-length summary of each profile's journey.

The vector has two parts, computed by one function (`behaviour_vectors`) at
index build time and for single journeys alike:

- what the journey is about: the mix of event types, channels, product
  categories and pages over the whole horizon (shares of the profile's
  events; every event counts the same, so a profile's few events all give
  evidence of who it is);
- when it happens: log-scaled recency, frequency, decayed activity (half-life
  `half_life_days`), monetary value, tenure, purchase share and basket, and
  the events and purchases in each of the last `activity_windows_days`
  (the shape of activity over time: growing, steady, fading).

The trainer's journey encoder compresses it into an embedding. Like
`featurize`, `behaviour_vectors` is a pure function over a shard of profiles.

Every value is finite (no NaN): the encoder and the cosine index need that.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from foresight.errors import FailedPrecondition
from foresight.features.featurize import profile_index, vocab_index
from foresight.features.labels import as_utc
from foresight.features.spec import OTHER, PURCHASE_EVENT_TYPE
from foresight.features.spec_fit import top_values

__all__ = ["BEHAVIOUR_SCHEMA_VERSION", "BehaviourSpec", "behaviour_vectors", "fit_behaviour_spec"]

BEHAVIOUR_SCHEMA_VERSION = 2
_US_PER_DAY = 86_400_000_000
_SCALARS = (
    "log_recency_days",
    "log_frequency",
    "log_decayed_activity",
    "log_monetary",
    "log_active_day_span",
    "purchase_share",
    "log_mean_basket",
)
#: (spec field, event column, component name prefix) of each mix block, in vector order.
_MIXES = (
    ("event_types", "event_type", "type_share"),
    ("channels", "channel", "channel_share"),
    ("categories", "product_category", "category_share"),
    ("pages", "page_name", "page_share"),
)


@dataclass(frozen=True)
class BehaviourSpec:
    """Vocabularies and decay of the behaviour vector; stored with the encoder."""

    event_types: tuple[str, ...]
    channels: tuple[str, ...]
    categories: tuple[str, ...]
    pages: tuple[str, ...] = ()
    half_life_days: float = 30.0
    # Only this much history counts, so vectors of old and new profiles compare.
    horizon_days: int = 365
    activity_windows_days: tuple[int, ...] = (7, 30, 90, 180)
    purchase_event_type: str = PURCHASE_EVENT_TYPE
    schema_version: int = BEHAVIOUR_SCHEMA_VERSION

    @property
    def names(self) -> list[str]:
        """Name of each vector component, in order (cluster traits use them)."""
        return [
            *(
                f"{prefix}__{value}"
                for field, _, prefix in _MIXES
                for value in (*getattr(self, field), OTHER)
            ),
            *_SCALARS,
            *(f"log_events_{d}d" for d in self.activity_windows_days),
            *(f"log_purchases_{d}d" for d in self.activity_windows_days),
        ]

    @property
    def dim(self) -> int:
        """Length of the vector."""
        mixes = sum(len(getattr(self, field)) + 1 for field, _, _ in _MIXES)
        return mixes + len(_SCALARS) + 2 * len(self.activity_windows_days)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "schema_version": self.schema_version,
            "event_types": list(self.event_types),
            "channels": list(self.channels),
            "categories": list(self.categories),
            "pages": list(self.pages),
            "half_life_days": self.half_life_days,
            "horizon_days": self.horizon_days,
            "activity_windows_days": list(self.activity_windows_days),
            "purchase_event_type": self.purchase_event_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BehaviourSpec:
        """Inverse of `to_dict`."""
        version = data.get("schema_version")
        if version != BEHAVIOUR_SCHEMA_VERSION:
            raise FailedPrecondition(
                f"behaviour spec schema version {version} is not supported "
                f"(this build uses {BEHAVIOUR_SCHEMA_VERSION}); retrain the encoder"
            )
        return cls(
            event_types=tuple(data["event_types"]),
            channels=tuple(data["channels"]),
            categories=tuple(data["categories"]),
            pages=tuple(data["pages"]),
            half_life_days=float(data["half_life_days"]),
            horizon_days=int(data["horizon_days"]),
            activity_windows_days=tuple(int(d) for d in data["activity_windows_days"]),
            purchase_event_type=str(data["purchase_event_type"]),
        )

    def to_json(self) -> str:
        """Compact JSON text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BehaviourSpec:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def fit_behaviour_spec(
    events: pl.DataFrame,
    *,
    half_life_days: float = 30.0,
    horizon_days: int = 365,
    max_event_types: int = 20,
    max_channels: int = 10,
    max_categories: int = 30,
    max_pages: int = 20,
) -> BehaviourSpec:
    """Keep the most frequent event types, channels, categories and pages (the rest pool
    into "other"); a column the events lack has an empty vocabulary."""
    if not half_life_days > 0:
        raise FailedPrecondition("half_life_days must be positive")
    lazy = _with_mix_columns(events.lazy())
    return BehaviourSpec(
        event_types=top_values(lazy, "event_type", max_event_types),
        channels=top_values(lazy, "channel", max_channels),
        categories=top_values(lazy, "product_category", max_categories),
        pages=top_values(lazy, "page_name", max_pages),
        half_life_days=float(half_life_days),
        horizon_days=horizon_days,
    )


def behaviour_vectors(
    events: pl.DataFrame,
    as_of: datetime,
    spec: BehaviourSpec,
    profile_ids: pl.Series | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(profile ids, float32 [n, spec.dim]) from events in [as_of - horizon, as_of).

    Rows follow `profile_ids` when given (profiles without events get empty
    mixes and the maximum recency), else the sorted ids with events.
    """
    as_of = as_utc(as_of)
    as_of_us = int(as_of.timestamp() * 1_000_000)
    age = (pl.lit(as_of_us, dtype=pl.Int64) - pl.col("timestamp").dt.epoch("us")) / _US_PER_DAY
    visible = (
        _with_mix_columns(events.lazy())
        .with_columns(age.alias("age"))
        .filter((pl.col("age") > 0) & (pl.col("age") <= spec.horizon_days))
    )
    if profile_ids is not None:
        visible = visible.filter(pl.col("profile_id").is_in(profile_ids.cast(pl.String).implode()))
    index = profile_index(visible, profile_ids)
    n = index.height
    X = np.zeros((n, spec.dim), dtype=np.float32)
    offsets = _block_offsets(spec)
    X[:, offsets["scalars"]] = math.log1p(spec.horizon_days)  # recency of "no activity"
    if n == 0:
        return np.array([], dtype=object), X
    decay = math.log(2.0) / spec.half_life_days
    is_purchase = pl.col("event_type") == spec.purchase_event_type
    windows = spec.activity_windows_days
    prepared = (
        visible.join(index.lazy(), on="profile_id", how="inner")
        .select(
            "pidx",
            "age",
            (-decay * pl.col("age")).exp().alias("w"),
            *(vocab_index(column, getattr(spec, field)) for field, column, _ in _MIXES),
            is_purchase.alias("is_purchase"),
            pl.when(is_purchase).then(pl.col("value")).otherwise(None).alias("mval"),
        )
        .cache()
    )
    per_profile, *mixes = pl.collect_all(
        [
            prepared.group_by("pidx").agg(
                pl.col("age").min().alias("last"),
                pl.col("age").max().alias("first"),
                pl.len().alias("n"),
                pl.col("w").sum().alias("w"),
                pl.col("is_purchase").sum().alias("purchases"),
                pl.col("mval").sum().alias("money"),
                pl.col("mval").count().alias("valued"),
                *((pl.col("age") <= d).sum().alias(f"events_{d}") for d in windows),
                *(
                    (pl.col("is_purchase") & (pl.col("age") <= d)).sum().alias(f"purchases_{d}")
                    for d in windows
                ),
            ),
            *(
                prepared.filter(pl.col(f"{column}__idx").is_not_null())
                .group_by("pidx", f"{column}__idx")
                .len()
                for _, column, _ in _MIXES
            ),
        ]
    )
    for (_, column, _), counts in zip(_MIXES, mixes, strict=True):
        _scatter_shares(X, counts, f"{column}__idx", offsets[column])
    _fill_scalars(X, per_profile, offsets["scalars"])
    _fill_windows(X, per_profile, offsets["windows"], windows)
    return index.get_column("profile_id").to_numpy(), X


def _with_mix_columns(events: pl.LazyFrame) -> pl.LazyFrame:
    """The events with every mix column (a missing one, e.g. no pages, is all null)."""
    present = set(events.collect_schema().names())
    missing = [column for _, column, _ in _MIXES if column not in present]
    return events.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing)


def _fill_scalars(X: np.ndarray, per_profile: pl.DataFrame, s: int) -> None:
    """Recency, frequency, decayed activity, money, tenure, purchase share and mean
    purchase value of each profile, into columns s … s + 6 (log1p where they are counts)."""
    rows = per_profile.get_column("pidx").to_numpy()

    def get(name: str) -> np.ndarray:
        column: np.ndarray = per_profile.get_column(name).cast(pl.Float64).to_numpy()
        filled: np.ndarray = np.nan_to_num(column)
        return filled

    count, purchases, money, valued = get("n"), get("purchases"), get("money"), get("valued")
    X[rows, s + 0] = np.log1p(get("last"))
    X[rows, s + 1] = np.log1p(count)
    X[rows, s + 2] = np.log1p(get("w"))
    X[rows, s + 3] = np.log1p(np.maximum(money, 0.0))
    X[rows, s + 4] = np.log1p(np.maximum(get("first") - get("last"), 0.0))
    X[rows, s + 5] = purchases / np.maximum(count, 1.0)
    X[rows, s + 6] = np.log1p(np.maximum(money, 0.0) / np.maximum(valued, 1.0))


def _fill_windows(
    X: np.ndarray, per_profile: pl.DataFrame, s: int, windows: tuple[int, ...]
) -> None:
    """log1p of the events, then of the purchases, in each of the last `windows` days."""
    rows = per_profile.get_column("pidx").to_numpy()
    names = [f"events_{d}" for d in windows] + [f"purchases_{d}" for d in windows]
    for j, name in enumerate(names):
        X[rows, s + j] = np.log1p(per_profile.get_column(name).cast(pl.Float64).to_numpy())


def _block_offsets(spec: BehaviourSpec) -> dict[str, int]:
    """Where each block starts: the mixes (by event column), the scalars, the windows."""
    offsets: dict[str, int] = {}
    start = 0
    for field, column, _ in _MIXES:
        offsets[column] = start
        start += len(getattr(spec, field)) + 1
    offsets["scalars"] = start
    offsets["windows"] = start + len(_SCALARS)
    return offsets


def _scatter_shares(X: np.ndarray, agg: pl.DataFrame, column: str, offset: int) -> None:
    """Event counts per kind, normalised to shares within the block."""
    rows = agg.get_column("pidx").to_numpy().astype(np.int64)
    kinds = agg.get_column(column).to_numpy().astype(np.int64)
    weights = agg.get_column("len").to_numpy().astype(np.float64)
    totals = np.bincount(rows, weights=weights, minlength=X.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals[rows] > 0, weights / totals[rows], 0.0)
    X[rows, offset + kinds] = shares
