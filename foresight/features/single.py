"""The feature vector of one profile, for real-time scoring: the batch features, built for one row.

`featurize` is built for millions of rows: a dozen Polars group-bys whose fixed
cost (~10 ms) dwarfs the work for one profile's few hundred events. Here the
per-row inputs of the batch preparation (`prepare`: age, vocabulary indices,
monetary values, custom-event flags) are computed with NumPy from the few
hundred rows (a lazy Polars plan costs a millisecond whatever the row count),
conditions (exclusions, custom events) still go through their one Polars
compiler, and the aggregations are plain NumPy reductions, so the values equal
the batch featurizer's (a test compares both on thousands of profiles).
Attributes go through the batch code as they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from foresight.conditions.compile import to_polars
from foresight.features.featurize import FeatureMatrix, fill_attributes, initial_matrix
from foresight.features.labels import as_utc
from foresight.features.spec import (
    ACTIVE_DAY_WINDOWS,
    COUNT_WINDOWS,
    CUSTOM_WINDOWS,
    MIX_WINDOW,
    OTHER,
    TREND_WINDOW,
    VALUE_WINDOWS,
    FeatureSpec,
)

__all__ = ["featurize_one"]

_US_PER_DAY = 86_400_000_000  # as in featurize.prepare: ages are days


def _sum(values: np.ndarray) -> float:
    # Left to right, as the batch group-by adds a group's values.
    total = 0.0
    for v in values.tolist():
        total += v
    return total


@dataclass(frozen=True, slots=True)
class _Rows:
    """`prepare`'s per-row columns for the visible events of one profile, as arrays.

    Vocabulary indices are -1 where the value is null.
    """

    age: np.ndarray
    types: np.ndarray
    channels: np.ndarray
    categories: np.ndarray
    mval: np.ndarray  # NaN: not money
    custom: list[np.ndarray]


def featurize_one(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    as_of: datetime,
    spec: FeatureSpec,
    profile_id: str,
) -> FeatureMatrix:
    """`featurize(events, profiles, as_of, spec, profile_ids=[profile_id])`, for one profile."""
    as_of = as_utc(as_of)
    as_of_us = int(as_of.timestamp() * 1_000_000)
    X, col = _start(spec)
    rows = _rows(events, as_of_us, spec, profile_id)
    if len(rows.age):
        _fill(X[0], col, rows, spec)
    if spec.attributes:
        index = pl.DataFrame({"profile_id": [profile_id]}, schema={"profile_id": pl.String})
        fill_attributes(X, col, index.with_row_index("pidx"), profiles, spec.attributes, as_of)
    X[np.isinf(X)] = np.nan
    return FeatureMatrix(np.array([profile_id], dtype=object), X, spec.codes)


# The spec's empty row and column index, built once per spec (~100 µs each call otherwise).
_STARTS: dict[int, tuple[FeatureSpec, np.ndarray, dict[str, int]]] = {}


def _start(spec: FeatureSpec) -> tuple[np.ndarray, dict[str, int]]:
    """`initial_matrix(1, spec)` (a fresh copy) and `spec.column_index()` (shared, read-only)."""
    cached = _STARTS.get(id(spec))
    if cached is None or cached[0] is not spec:
        if len(_STARTS) >= 64:
            _STARTS.clear()
        cached = _STARTS[id(spec)] = (spec, initial_matrix(1, spec), spec.column_index())
    return cached[1].copy(), cached[2]


@functools.lru_cache(maxsize=256)
def _vocab_map(vocab: tuple[str, ...]) -> dict[str, int]:
    return {value: i for i, value in enumerate(vocab)}


def _vocab_index(values: np.ndarray, vocab: tuple[str, ...]) -> np.ndarray:
    """`featurize.vocab_index` (len(vocab) for "other"), -1 for null."""
    mapping = _vocab_map(vocab)
    other = len(vocab)
    return np.array([-1 if v is None else mapping.get(v, other) for v in values], dtype=np.int64)


def _text(events: pl.DataFrame, name: str, rows: np.ndarray) -> np.ndarray:
    """A text column's values at `rows` (None for null)."""
    values = events.get_column(name).to_numpy()
    return np.asarray(values[rows])


def _rows(events: pl.DataFrame, as_of_us: int, spec: FeatureSpec, profile_id: str) -> _Rows:
    """The rows `prepare` keeps (before as_of, this profile, not excluded) and their inputs.

    Series methods and eager selects each run a Polars query (tens of µs); the
    few hundred rows of one profile are cheaper as arrays. Conditions (custom
    events, exclusions) are evaluated by their compiler in one select.
    """
    # datetime64[us] viewed as int64 (`to_physical` runs a query: ~150 µs); null is NaT: never visible.
    moments = events.get_column("timestamp").to_numpy().astype("datetime64[us]", copy=False)
    stamps = moments.view(np.int64)
    keep = ~np.isnat(moments) & (stamps < as_of_us)
    keep &= events.get_column("profile_id").to_numpy() == profile_id
    conditions = [
        to_polars(ce.conditions).fill_null(False).alias(f"ce{i}")
        for i, ce in enumerate(spec.custom_events)
    ]
    if spec.exclusions is not None and not spec.exclusions.is_empty:
        # Kept only where the exclusion is false (null excludes too, as in a filter on ~x).
        conditions.append((~to_polars(spec.exclusions)).fill_null(False).alias("__kept"))
    flags = events.select(conditions) if conditions else pl.DataFrame()
    if "__kept" in flags.columns:
        keep &= flags.get_column("__kept").to_numpy()
    chosen = np.flatnonzero(keep)
    # Stored values are never NaN (validation refuses them), so NaN here is null.
    value = events.get_column("value").cast(pl.Float64).to_numpy()[chosen]
    money = ~np.isnan(value)
    types = _text(events, "event_type", chosen)
    if spec.monetary_event_type is not None:
        money &= types == spec.monetary_event_type
    return _Rows(
        age=(as_of_us - stamps[chosen]) / _US_PER_DAY,
        types=_vocab_index(types, spec.event_types),
        channels=_vocab_index(_text(events, "channel", chosen), spec.channels),
        categories=_vocab_index(_text(events, "product_category", chosen), spec.categories),
        mval=np.where(money, value, np.nan),
        custom=[
            flags.get_column(f"ce{i}").to_numpy()[chosen] for i in range(len(spec.custom_events))
        ],
    )


def _fill(x: np.ndarray, col: dict[str, int], rows: _Rows, spec: FeatureSpec) -> None:
    """Write one profile's event features into its row `x` (float32; values cast on write)."""
    age, types, mval = rows.age, rows.types, rows.mval
    money = ~np.isnan(mval)
    x[col["days_since_last_event"]] = age.min()
    x[col["tenure_days"]] = age.max()
    for w in COUNT_WINDOWS:
        x[col[f"count_{w}d"]] = np.count_nonzero(age < w)
    names = (*spec.event_types, OTHER)
    for t in np.unique(types[types >= 0]).tolist():  # event_type is required: never -1
        of_type = types == t
        if t < len(spec.event_types):
            x[col[f"days_since_last__{spec.event_types[t]}"]] = age[of_type].min()
        for w in COUNT_WINDOWS:
            x[col[f"count_{w}d__{names[t]}"]] = np.count_nonzero(of_type & (age < w))
    days = np.unique(np.floor(age[age < max(ACTIVE_DAY_WINDOWS)]).astype(np.int32))
    for w in ACTIVE_DAY_WINDOWS:
        x[col[f"active_days_{w}d"]] = np.count_nonzero(days < w)
    t = TREND_WINDOW
    prior = (age >= t) & (age < 2 * t)
    window_sums: dict[int, tuple[float, int]] = {}
    for w in sorted({*VALUE_WINDOWS, t}):
        chosen = mval[money & (age < w)]
        total = _sum(chosen)
        window_sums[w] = (total, len(chosen))
        if w in VALUE_WINDOWS:
            x[col[f"sum_value_{w}d"]] = total
            x[col[f"mean_value_{w}d"]] = total / len(chosen) if len(chosen) else np.nan
            x[col[f"max_value_{w}d"]] = chosen.max() if len(chosen) else np.nan
    x[col["lifetime_value"]] = _sum(mval[money])
    x[col["lifetime_purchases"]] = np.count_nonzero(money)
    prior_values = mval[money & prior]
    x[col[f"trend_{t}d_count"]] = np.count_nonzero(age < t) - np.count_nonzero(prior)
    x[col[f"trend_{t}d_purchases"]] = window_sums[t][1] - len(prior_values)
    x[col[f"trend_{t}d_value"]] = window_sums[t][0] - _sum(prior_values)
    recent = age < MIX_WINDOW
    for kinds, vocab, prefix in (
        (rows.channels, spec.channels, "share_channel__"),
        (rows.categories, spec.categories, "share_category__"),
    ):
        known = recent & (kinds >= 0)
        if not known.any():
            continue  # no known value in the window: the shares stay missing
        counts = np.bincount(kinds[known], minlength=len(vocab) + 1)
        total = counts.sum()
        for i, name in enumerate((*vocab, OTHER)):
            x[col[f"{prefix}{name}"]] = counts[i] / total
    for i, ce in enumerate(spec.custom_events):
        hit = rows.custom[i]
        x[col[f"days_since_last__custom.{ce.name}"]] = age[hit].min() if hit.any() else np.nan
        for w in CUSTOM_WINDOWS:
            x[col[f"count_{w}d__custom.{ce.name}"]] = np.count_nonzero(hit & (age < w))
