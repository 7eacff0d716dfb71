"""The feature vector of one profile, for real-time scoring: the batch features, built for one row.

`featurize` is built for millions of rows: a dozen Polars group-bys whose fixed
cost (~10 ms) dwarfs the work for one profile's few hundred events. Here the
per-row preparation is the batch one (`prepare_rows`: the same expressions for
age, vocabulary indices, monetary values and custom-event flags, in one eager
select), and the aggregations are plain NumPy reductions over those rows, so
the values equal the batch featurizer's (a test compares both on thousands of
profiles). Attributes go through the batch code as they are.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from foresight.conditions.compile import to_polars
from foresight.features.featurize import FeatureMatrix, fill_attributes, initial_matrix, prepare
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


def _sum(values: np.ndarray) -> float:
    # Left to right, as the batch group-by adds a group's values.
    total = 0.0
    for v in values.tolist():
        total += v
    return total


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
    X = initial_matrix(1, spec)
    col = spec.column_index()
    index = pl.DataFrame({"profile_id": [profile_id]}, schema={"profile_id": pl.String})
    index = index.with_row_index("pidx")
    visible = events.lazy().filter(
        (pl.col("timestamp") < as_of) & (pl.col("profile_id") == profile_id)
    )
    if spec.exclusions is not None and not spec.exclusions.is_empty:
        visible = visible.filter(~to_polars(spec.exclusions))
    rows = prepare(visible, index, as_of_us, spec).collect()
    if rows.height:
        _fill(X[0], col, rows, spec)
    if spec.attributes:
        fill_attributes(X, col, index, profiles, spec.attributes, as_of)
    X[np.isinf(X)] = np.nan
    return FeatureMatrix(np.array([profile_id], dtype=object), X, spec.codes)


def _fill(x: np.ndarray, col: dict[str, int], rows: pl.DataFrame, spec: FeatureSpec) -> None:
    """Write one profile's event features into its row `x` (float32; values cast on write)."""
    age = rows.get_column("age").to_numpy()
    types = rows.get_column("event_type__idx").to_numpy()
    mval = rows.get_column("mval").cast(pl.Float64).to_numpy()  # null → NaN
    money = ~np.isnan(mval)
    x[col["days_since_last_event"]] = age.min()
    x[col["tenure_days"]] = age.max()
    for w in COUNT_WINDOWS:
        x[col[f"count_{w}d"]] = np.count_nonzero(age < w)
    names = (*spec.event_types, OTHER)
    for t in np.unique(types).tolist():
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
    for column, vocab, prefix in (
        ("channel__idx", spec.channels, "share_channel__"),
        ("product_category__idx", spec.categories, "share_category__"),
    ):
        kinds = rows.get_column(column)
        known = recent & kinds.is_not_null().to_numpy()
        if not known.any():
            continue  # no known value in the window: the shares stay missing
        counts = np.bincount(kinds.fill_null(0).to_numpy()[known], minlength=len(vocab) + 1)
        total = counts.sum()
        for i, name in enumerate((*vocab, OTHER)):
            x[col[f"{prefix}{name}"]] = counts[i] / total
    for i, ce in enumerate(spec.custom_events):
        hit = rows.get_column(f"ce{i}").fill_null(False).to_numpy()
        x[col[f"days_since_last__custom.{ce.name}"]] = age[hit].min() if hit.any() else np.nan
        for w in CUSTOM_WINDOWS:
            x[col[f"count_{w}d__custom.{ce.name}"]] = np.count_nonzero(hit & (age < w))
