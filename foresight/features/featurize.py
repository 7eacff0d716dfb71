"""Automatic features: a pure function from a shard of events to a matrix.

`featurize` sees only events strictly before `as_of` and drops events matching
the spec's exclusions, so a feature can never look at the outcome window.
It works on any shard of profiles (all events of a profile in one shard):
locally over shards on all cores, at scale as Dask tasks.

Speed comes from doing the per-row work once in Polars (window flags, vocab
indices, masked values) and then a few plain group-by aggregations on an
integer profile index; the small aggregated frames are scattered into the
matrix with NumPy fancy indexing instead of pivots or joins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from foresight.conditions.compile import to_polars
from foresight.errors import FailedPrecondition
from foresight.features.labels import as_utc
from foresight.features.spec import (
    ACTIVE_DAY_WINDOWS,
    COUNT_WINDOWS,
    CUSTOM_WINDOWS,
    MIX_WINDOW,
    OTHER,
    TREND_WINDOW,
    VALUE_WINDOWS,
    AttributeEncoding,
    AttributeKind,
    FeatureSpec,
    Unit,
)

__all__ = [
    "FeatureMatrix",
    "Featurizer",
    "check_no_leakage",
    "featurize",
    "fill_attributes",
    "initial_matrix",
    "prepare",
    "profile_index",
    "vocab_index",
]

_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class FeatureMatrix:
    """Rows are profiles, columns follow `codes` (= the spec's feature order)."""

    profile_ids: np.ndarray
    X: np.ndarray
    codes: list[str]

    def to_polars(self) -> pl.DataFrame:
        """The matrix as a frame (profile_id + one column per code), for inspection and tests."""
        data = {"profile_id": self.profile_ids}
        frame = pl.DataFrame(data, schema={"profile_id": pl.String})
        return frame.hstack(pl.DataFrame(self.X, schema=self.codes, orient="row"))


def vocab_index(column: str, vocab: tuple[str, ...]) -> pl.Expr:
    """Index of the value in `vocab`, len(vocab) for "other", null stays null.

    Through an Enum of the vocabulary (values outside it cast to null): a third
    less time than a `replace_strict` mapping over a shard's event types,
    channels and categories."""
    col = pl.col(column)
    index = col.cast(pl.Enum(vocab), strict=False).to_physical().cast(pl.Int32)
    return (
        pl.when(col.is_null())
        .then(None)
        .otherwise(index.fill_null(len(vocab)))
        .alias(f"{column}__idx")
    )


def profile_index(events: pl.LazyFrame, profile_ids: pl.Series | None) -> pl.DataFrame:
    """Rows of the output: (pidx, profile_id) for the given ids in order, else the sorted ids seen."""
    if profile_ids is not None:
        ids = profile_ids.cast(pl.String).rename("profile_id")
        frame = pl.DataFrame({"profile_id": ids}).unique(maintain_order=True)
    else:
        frame = events.select(pl.col("profile_id").unique()).sort("profile_id").collect()
    return frame.with_row_index("pidx")


def featurize(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    as_of: datetime,
    spec: FeatureSpec,
    profile_ids: pl.Series | None = None,
) -> FeatureMatrix:
    """Feature matrix for the profiles of a shard, as of `as_of`.

    Rows: `profile_ids` in the given order (profiles without events get
    zero counts and NaN recency), or else every profile with an event before
    `as_of`, sorted. Columns: `spec.features`. Missing values are NaN, never inf.
    """
    as_of = as_utc(as_of)
    as_of_us = int(as_of.timestamp() * 1_000_000)
    # Only the rows' profiles: `prepare` joins the events to `index`, which drops the others.
    visible = events.lazy().filter(pl.col("timestamp") < as_of)
    index = profile_index(visible, profile_ids)
    n = index.height
    col = spec.column_index()
    X = initial_matrix(n, spec)
    if spec.exclusions is not None and not spec.exclusions.is_empty:
        visible = visible.filter(~to_polars(spec.exclusions))
    if n == 0:
        return FeatureMatrix(np.array([], dtype=object), X, spec.codes)

    prepared = prepare(visible, index, as_of_us, spec).cache()
    per_profile, per_type, active, channels, categories = pl.collect_all(
        [
            _per_profile(prepared, spec),
            _per_type(prepared),
            _active_days(prepared),
            _mix(prepared, "channel__idx"),
            _mix(prepared, "product_category__idx"),
        ]
    )
    _fill_per_profile(X, col, per_profile, spec)
    _fill_per_type(X, col, per_type, spec)
    _fill_active_days(X, col, active)
    _fill_mix(
        X, col, channels, "channel__idx", [f"share_channel__{c}" for c in (*spec.channels, OTHER)]
    )
    _fill_mix(
        X,
        col,
        categories,
        "product_category__idx",
        [f"share_category__{c}" for c in (*spec.categories, OTHER)],
    )
    if spec.attributes:
        fill_attributes(X, col, index, profiles, spec.attributes, as_of)
    # Attribute passthrough can carry inf from the source data; trees want NaN.
    X[np.isinf(X)] = np.nan
    ids = index.get_column("profile_id").to_numpy()
    return FeatureMatrix(ids, X, spec.codes)


def initial_matrix(n: int, spec: FeatureSpec) -> np.ndarray:
    """The matrix of n profiles without events: counts and sums 0, everything else NaN."""
    X = np.full((n, len(spec.features)), np.nan, dtype=np.float32)
    # Counts are real zeros for every profile, not missing values.
    for i, f in enumerate(spec.features):
        if (
            f.unit in (Unit.COUNT, Unit.COUNT_CHANGE, Unit.MONEY_CHANGE)
            or f.code.startswith("sum_value_")
            or f.code == "lifetime_value"
        ):
            X[:, i] = 0.0
    return X


Featurizer = Callable[
    [pl.DataFrame, pl.DataFrame | None, datetime, FeatureSpec, pl.Series | None], FeatureMatrix
]


def check_no_leakage(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    as_of: datetime,
    spec: FeatureSpec,
    profile_ids: pl.Series,
    featurizer: Featurizer = featurize,
) -> None:
    """Raise FailedPrecondition if any feature moves when events at or after `as_of` vanish.

    The trainer runs it on a sample of profiles at each cutoff: features must
    be a function of the past only, whatever the featurizer's implementation.
    """
    as_of = as_utc(as_of)
    full = featurizer(events, profiles, as_of, spec, profile_ids)
    past = featurizer(
        events.filter(pl.col("timestamp") < as_of), profiles, as_of, spec, profile_ids
    )
    if full.X.shape != past.X.shape or list(full.profile_ids) != list(past.profile_ids):
        raise FailedPrecondition("feature leakage: the rows change when future events are removed")
    differs = ~np.isclose(full.X, past.X, rtol=1e-6, atol=1e-6, equal_nan=True)
    if differs.any():
        codes = [full.codes[i] for i in np.flatnonzero(differs.any(axis=0))]
        shown = ", ".join(codes[:10]) + (" …" if len(codes) > 10 else "")
        raise FailedPrecondition(
            f"feature leakage: {len(codes)} feature(s) use events at or after the cutoff "
            f"{as_of.isoformat()}: {shown}"
        )


# --- per-row preparation ----------------------------------------------------------


def prepare(
    visible: pl.LazyFrame, index: pl.DataFrame, as_of_us: int, spec: FeatureSpec
) -> pl.LazyFrame:
    """Per-row inputs of the aggregations: pidx, age (days), vocabulary indices, money, custom flags."""
    joined = visible.join(index.lazy(), on="profile_id", how="inner")
    return joined.select(pl.col("pidx"), *_row_inputs(as_of_us, spec))


def _row_inputs(as_of_us: int, spec: FeatureSpec) -> list[pl.Expr]:
    """`prepare`'s expressions over the event columns."""
    age = (pl.lit(as_of_us, dtype=pl.Int64) - pl.col("timestamp").dt.epoch("us")) / _US_PER_DAY
    if spec.monetary_event_type is None:
        is_money = pl.col("value").is_not_null()
    else:
        is_money = (pl.col("event_type") == spec.monetary_event_type) & pl.col(
            "value"
        ).is_not_null()
    return [
        age.alias("age"),
        vocab_index("event_type", spec.event_types),
        vocab_index("channel", spec.channels),
        vocab_index("product_category", spec.categories),
        pl.when(is_money).then(pl.col("value")).otherwise(None).alias("mval"),
        *(to_polars(ce.conditions).alias(f"ce{i}") for i, ce in enumerate(spec.custom_events)),
    ]


def event_columns(spec: FeatureSpec) -> set[str]:
    """The event columns `featurize` reads for `spec` (a reader may load only these)."""
    used = [*_row_inputs(0, spec), to_polars(spec.exclusions)]
    return {"profile_id", "timestamp"}.union(*(e.meta.root_names() for e in used))


def _per_profile(prepared: pl.LazyFrame, spec: FeatureSpec) -> pl.LazyFrame:
    age = pl.col("age")
    t = TREND_WINDOW
    prior = (age >= t) & (age < 2 * t)
    flags: list[pl.Expr] = [(age < w).alias(f"in{w}") for w in COUNT_WINDOWS]
    flags.append(prior.alias("prior"))
    money: list[pl.Expr] = [
        pl.when(age < w).then(pl.col("mval")).otherwise(None).alias(f"mv{w}")
        for w in {*VALUE_WINDOWS, t}
    ]
    money.append(pl.when(prior).then(pl.col("mval")).otherwise(None).alias("mvprior"))
    custom: list[pl.Expr] = []
    for i in range(len(spec.custom_events)):
        custom.append(pl.when(pl.col(f"ce{i}")).then(age).otherwise(None).alias(f"ce{i}_age"))
        custom.extend((pl.col(f"ce{i}") & (age < w)).alias(f"ce{i}_in{w}") for w in CUSTOM_WINDOWS)
    aggs: list[pl.Expr] = [
        age.min().alias("last_age"),
        age.max().alias("first_age"),
        *(pl.col(f"in{w}").sum().alias(f"n{w}") for w in COUNT_WINDOWS),
        pl.col("prior").sum().alias("nprior"),
        pl.col("mval").sum().alias("lifetime_value"),
        pl.col("mval").count().alias("lifetime_purchases"),
        pl.col("mvprior").sum().alias("mvprior_sum"),
        pl.col("mvprior").count().alias("mvprior_n"),
    ]
    for w in sorted({*VALUE_WINDOWS, t}):
        aggs += [
            pl.col(f"mv{w}").sum().alias(f"mv{w}_sum"),
            pl.col(f"mv{w}").count().alias(f"mv{w}_n"),
            pl.col(f"mv{w}").max().alias(f"mv{w}_max"),
        ]
    for i in range(len(spec.custom_events)):
        aggs.append(pl.col(f"ce{i}_age").min().alias(f"ce{i}_last"))
        aggs.extend(pl.col(f"ce{i}_in{w}").sum().alias(f"ce{i}_n{w}") for w in CUSTOM_WINDOWS)
    return prepared.with_columns(*flags, *money, *custom).group_by("pidx").agg(aggs)


def _per_type(prepared: pl.LazyFrame) -> pl.LazyFrame:
    age = pl.col("age")
    return prepared.group_by("pidx", "event_type__idx").agg(
        age.min().alias("last_age"), *((age < w).sum().alias(f"n{w}") for w in COUNT_WINDOWS)
    )


def _active_days(prepared: pl.LazyFrame) -> pl.LazyFrame:
    top = max(ACTIVE_DAY_WINDOWS)
    day = pl.col("age").floor().cast(pl.Int32).alias("day")
    days = prepared.filter(pl.col("age") < top).select("pidx", day).unique()
    return days.group_by("pidx").agg(
        *((pl.col("day") < w).sum().alias(f"d{w}") for w in ACTIVE_DAY_WINDOWS)
    )


def _mix(prepared: pl.LazyFrame, column: str) -> pl.LazyFrame:
    return (
        prepared.filter((pl.col("age") < MIX_WINDOW) & pl.col(column).is_not_null())
        .group_by("pidx", column)
        .len()
    )


# --- scattering into the matrix -------------------------------------------------------


def _np(frame: pl.DataFrame, name: str) -> np.ndarray:
    return frame.get_column(name).cast(pl.Float64).to_numpy()


def _fill_per_profile(
    X: np.ndarray, col: dict[str, int], agg: pl.DataFrame, spec: FeatureSpec
) -> None:
    rows = agg.get_column("pidx").to_numpy()
    X[rows, col["days_since_last_event"]] = _np(agg, "last_age")
    X[rows, col["tenure_days"]] = _np(agg, "first_age")
    for w in COUNT_WINDOWS:
        X[rows, col[f"count_{w}d"]] = _np(agg, f"n{w}")
    for w in VALUE_WINDOWS:
        total = np.nan_to_num(_np(agg, f"mv{w}_sum"))
        count = _np(agg, f"mv{w}_n")
        X[rows, col[f"sum_value_{w}d"]] = total
        with np.errstate(invalid="ignore", divide="ignore"):
            X[rows, col[f"mean_value_{w}d"]] = np.where(
                count > 0, total / np.maximum(count, 1), np.nan
            )
        X[rows, col[f"max_value_{w}d"]] = _np(agg, f"mv{w}_max")
    X[rows, col["lifetime_value"]] = np.nan_to_num(_np(agg, "lifetime_value"))
    X[rows, col["lifetime_purchases"]] = _np(agg, "lifetime_purchases")
    t = TREND_WINDOW
    X[rows, col[f"trend_{t}d_count"]] = _np(agg, f"n{t}") - _np(agg, "nprior")
    X[rows, col[f"trend_{t}d_purchases"]] = _np(agg, f"mv{t}_n") - _np(agg, "mvprior_n")
    X[rows, col[f"trend_{t}d_value"]] = np.nan_to_num(_np(agg, f"mv{t}_sum")) - np.nan_to_num(
        _np(agg, "mvprior_sum")
    )
    for i, ce in enumerate(spec.custom_events):
        X[rows, col[f"days_since_last__custom.{ce.name}"]] = _np(agg, f"ce{i}_last")
        for w in CUSTOM_WINDOWS:
            X[rows, col[f"count_{w}d__custom.{ce.name}"]] = _np(agg, f"ce{i}_n{w}")


def _fill_per_type(
    X: np.ndarray, col: dict[str, int], agg: pl.DataFrame, spec: FeatureSpec
) -> None:
    rows = agg.get_column("pidx").to_numpy()
    types = agg.get_column("event_type__idx").to_numpy()
    names = (*spec.event_types, OTHER)
    recency_cols = np.array([col[f"days_since_last__{et}"] for et in spec.event_types] + [-1])
    last = _np(agg, "last_age")
    kept = types < len(spec.event_types)  # no recency feature for "other"
    X[rows[kept], recency_cols[types[kept]]] = last[kept]
    for w in COUNT_WINDOWS:
        count_cols = np.array([col[f"count_{w}d__{et}"] for et in names])
        X[rows, count_cols[types]] = _np(agg, f"n{w}")


def _fill_active_days(X: np.ndarray, col: dict[str, int], agg: pl.DataFrame) -> None:
    rows = agg.get_column("pidx").to_numpy()
    for w in ACTIVE_DAY_WINDOWS:
        X[rows, col[f"active_days_{w}d"]] = _np(agg, f"d{w}")


def _fill_mix(
    X: np.ndarray, col: dict[str, int], agg: pl.DataFrame, column: str, codes: list[str]
) -> None:
    rows = agg.get_column("pidx").to_numpy().astype(np.int64)
    kinds = agg.get_column(column).to_numpy().astype(np.int64)
    counts = _np(agg, "len")
    totals = np.bincount(rows, weights=counts, minlength=X.shape[0])
    cols = np.array([col[c] for c in codes])
    active = np.unique(rows)
    # Profiles with known values get 0 for absent kinds; the rest stay NaN.
    X[np.ix_(active, cols)] = 0.0
    X[rows, cols[kinds]] = counts / totals[rows]


def fill_attributes(
    X: np.ndarray,
    col: dict[str, int],
    index: pl.DataFrame,
    profiles: pl.DataFrame | None,
    encodings: tuple[AttributeEncoding, ...],
    as_of: datetime,
) -> None:
    """Write the profile-attribute features of the profiles in `index` into X."""
    if profiles is None:
        return  # every attribute feature stays NaN (unknown)
    names = [e.name for e in encodings if e.name in profiles.columns]
    table = (
        index.lazy()
        .join(
            profiles.lazy().select("profile_id", *names).unique("profile_id", keep="first"),
            on="profile_id",
        )
        .collect()
    )
    rows = table.get_column("pidx").to_numpy()
    for enc in encodings:
        if enc.name not in table.columns:
            continue
        series = table.get_column(enc.name)
        if enc.kind is AttributeKind.NUMERIC:
            X[rows, col[f"attr__{enc.name}"]] = series.cast(pl.Float64, strict=False).to_numpy()
        elif enc.kind is AttributeKind.DATE:
            X[rows, col[f"attr_days_since__{enc.name}"]] = _days_since(series, as_of)
        elif enc.kind is AttributeKind.ONEHOT:
            text = series.cast(pl.String)
            known = text.is_not_null().to_numpy()
            hit_any = np.zeros(len(text), dtype=bool)
            for level in enc.levels:
                hit = (text == level).fill_null(False).to_numpy()
                hit_any |= hit
                X[rows[known], col[f"attr__{enc.name}=={level}"]] = hit[known]
            X[rows[known], col[f"attr__{enc.name}=={OTHER}"]] = ~hit_any[known]
        else:
            ranks = {level: i + 1 for i, level in enumerate(enc.levels)}
            ranked = series.cast(pl.String).replace_strict(
                ranks, default=len(enc.levels) + 1, return_dtype=pl.Float64
            )
            ranked = pl.select(pl.when(series.is_null()).then(None).otherwise(ranked)).to_series()
            X[rows, col[f"attr_rank__{enc.name}"]] = ranked.to_numpy()


def _days_since(series: pl.Series, as_of: datetime) -> np.ndarray:
    """Days from a date/datetime (or ISO text) attribute to `as_of`; NaN when unparseable."""
    if series.dtype == pl.String:
        series = series.str.to_date(strict=False)
    if series.dtype == pl.Date:
        as_of_day = np.datetime64(as_of.date(), "D").astype(np.int64)
        days = series.cast(pl.Int32).cast(pl.Float64).to_numpy()
        return np.asarray(as_of_day - days, dtype=np.float64)
    if isinstance(series.dtype, pl.Datetime):
        as_of_us = int(as_of.timestamp() * 1_000_000)
        micros = series.dt.epoch("us").cast(pl.Float64).to_numpy()
        return np.asarray((as_of_us - micros) / _US_PER_DAY, dtype=np.float64)
    return np.full(len(series), np.nan)
