"""Segment AI behaviour vectors: a fixed-length summary of each profile's journey.

The vector mixes what a profile does (event types), where (channels) and on
what (product categories) with exponential time decay, so recent behaviour
weighs more, plus log-scaled recency, frequency and monetary value. The
trainer's journey encoder compresses it into an embedding. Like `featurize`,
`behaviour_vectors` is a pure function over a shard of profiles.

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

BEHAVIOUR_SCHEMA_VERSION = 1
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


@dataclass(frozen=True)
class BehaviourSpec:
    """Vocabularies and decay of the behaviour vector; stored with the encoder."""

    event_types: tuple[str, ...]
    channels: tuple[str, ...]
    categories: tuple[str, ...]
    half_life_days: float = 30.0
    # Only this much history counts, so vectors of old and new profiles compare.
    horizon_days: int = 365
    purchase_event_type: str = PURCHASE_EVENT_TYPE
    schema_version: int = BEHAVIOUR_SCHEMA_VERSION

    @property
    def names(self) -> list[str]:
        """Name of each vector component, in order (cluster traits use them)."""
        return [
            *(f"type_share__{et}" for et in (*self.event_types, OTHER)),
            *(f"channel_share__{ch}" for ch in (*self.channels, OTHER)),
            *(f"category_share__{cat}" for cat in (*self.categories, OTHER)),
            *_SCALARS,
        ]

    @property
    def dim(self) -> int:
        """Length of the vector."""
        return len(self.event_types) + len(self.channels) + len(self.categories) + 3 + len(_SCALARS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "schema_version": self.schema_version,
            "event_types": list(self.event_types),
            "channels": list(self.channels),
            "categories": list(self.categories),
            "half_life_days": self.half_life_days,
            "horizon_days": self.horizon_days,
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
            half_life_days=float(data["half_life_days"]),
            horizon_days=int(data["horizon_days"]),
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
) -> BehaviourSpec:
    """Keep the most frequent event types, channels and categories (the rest pool into "other")."""
    if not half_life_days > 0:
        raise FailedPrecondition("half_life_days must be positive")
    lazy = events.lazy()
    return BehaviourSpec(
        event_types=top_values(lazy, "event_type", max_event_types),
        channels=top_values(lazy, "channel", max_channels),
        categories=top_values(lazy, "product_category", max_categories),
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
        events.lazy()
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
    prepared = (
        visible.join(index.lazy(), on="profile_id", how="inner")
        .select(
            "pidx",
            "age",
            (-decay * pl.col("age")).exp().alias("w"),
            vocab_index("event_type", spec.event_types),
            vocab_index("channel", spec.channels),
            vocab_index("product_category", spec.categories),
            is_purchase.alias("is_purchase"),
            pl.when(is_purchase).then(pl.col("value")).otherwise(None).alias("mval"),
        )
        .cache()
    )
    per_profile, types, channels, categories = pl.collect_all(
        [
            prepared.group_by("pidx").agg(
                pl.col("age").min().alias("last"),
                pl.col("age").max().alias("first"),
                pl.len().alias("n"),
                pl.col("w").sum().alias("w"),
                pl.col("is_purchase").sum().alias("purchases"),
                pl.col("mval").sum().alias("money"),
                pl.col("mval").count().alias("valued"),
            ),
            *(
                prepared.filter(pl.col(c).is_not_null()).group_by("pidx", c).agg(pl.col("w").sum())
                for c in ("event_type__idx", "channel__idx", "product_category__idx")
            ),
        ]
    )
    _scatter_shares(X, types, "event_type__idx", offsets["event_type__idx"])
    _scatter_shares(X, channels, "channel__idx", offsets["channel__idx"])
    _scatter_shares(X, categories, "product_category__idx", offsets["product_category__idx"])
    _fill_scalars(X, per_profile, offsets["scalars"])
    return index.get_column("profile_id").to_numpy(), X


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


def _block_offsets(spec: BehaviourSpec) -> dict[str, int]:
    start_channels = len(spec.event_types) + 1
    start_categories = start_channels + len(spec.channels) + 1
    return {
        "event_type__idx": 0,
        "channel__idx": start_channels,
        "product_category__idx": start_categories,
        "scalars": start_categories + len(spec.categories) + 1,
    }


def _scatter_shares(X: np.ndarray, agg: pl.DataFrame, column: str, offset: int) -> None:
    """Decayed weights per kind, normalised to shares within the block."""
    rows = agg.get_column("pidx").to_numpy().astype(np.int64)
    kinds = agg.get_column(column).to_numpy().astype(np.int64)
    weights = agg.get_column("w").to_numpy()
    totals = np.bincount(rows, weights=weights, minlength=X.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals[rows] > 0, weights / totals[rows], 0.0)
    X[rows, offset + kinds] = shares
