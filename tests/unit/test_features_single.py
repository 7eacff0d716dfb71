"""The one-profile featurizer of real-time scoring equals the batch featurizer."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from foresight.conditions import parse
from foresight.features.featurize import event_columns, featurize
from foresight.features.single import featurize_one
from foresight.features.spec_fit import fit_feature_spec
from foresight.instance import CustomEvent, Goal, InstanceConfig

pytestmark = pytest.mark.unit

AS_OF = datetime(2024, 6, 1, tzinfo=UTC)
TYPES = (
    "commerce.purchases",
    "commerce.productViews",
    "web.webpagedetails.pageViews",
    "message.opened",
    "application.launch",
    "custom.rare",
)


def _events(n_profiles: int, seed: int) -> pl.DataFrame:
    """Random journeys: every field that a feature reads varies, nulls included."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, n_profiles)
    sizes[:5] = 250  # a few long histories
    n = int(sizes.sum())
    pids = np.repeat([f"p{i:05d}" for i in range(n_profiles)], sizes)
    # Mostly the past, some at or after as_of (never features), some on exact day edges.
    days = rng.uniform(-20, 500, n)
    edge = rng.random(n) < 0.05
    days[edge] = rng.choice([7.0, 30.0, 60.0, 90.0, 365.0], int(edge.sum()))
    value = np.round(rng.gamma(2.0, 40.0, n), 2)
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "profile_id": pids,
            "timestamp": [AS_OF - timedelta(days=float(d)) for d in days],
            "event_type": rng.choice(TYPES, n, p=[0.1, 0.3, 0.3, 0.15, 0.1, 0.05]),
            "channel": rng.choice(["web", "mobile", "email", "store", ""], n),
            "value": np.where(rng.random(n) < 0.4, value, np.nan),
            "quantity": rng.integers(0, 5, n),
            "product_sku": None,
            "product_category": rng.choice(["a", "b", "c", "d", "e", ""], n),
            "page_name": None,
            "campaign_id": rng.choice(["post-purchase-1", "spring", ""], n),
            "attributes": None,
        },
    ).with_columns(
        pl.col("timestamp").dt.replace_time_zone("UTC"),
        *(pl.col(c).replace("", None) for c in ("channel", "product_category", "campaign_id")),
        pl.col("value").fill_nan(None),
        pl.col("product_sku").cast(pl.String),
        pl.col("page_name").cast(pl.String),
        pl.col("attributes").cast(pl.String),
    )


def _profiles(n_profiles: int) -> pl.DataFrame:
    ids = [f"p{i:05d}" for i in range(n_profiles)]
    return pl.DataFrame(
        {
            "profile_id": ids,
            "tier": [["gold", "silver", None, "bronze"][i % 4] for i in range(n_profiles)],
            "city": [f"city{i % 40}" for i in range(n_profiles)],
            "age": [float(20 + i % 50) if i % 9 else None for i in range(n_profiles)],
            "joined": [date(2023, 1, 1) + timedelta(days=i % 500) for i in range(n_profiles)],
        }
    )


def test_one_profile_features_equal_the_batch_ones() -> None:
    n = 1500
    events, profiles = _events(n, seed=3), _profiles(n)
    config = InstanceConfig(
        name="t",
        goal=Goal(parse('event_type = "commerce.purchases"')),
        custom_events=(
            CustomEvent("big", parse("value > 100")),
            CustomEvent("app", parse('event_type = "application.launch" and channel = "mobile"')),
        ),
        profile_attributes=("tier", "city", "age", "joined"),
        exclusions=parse('campaign_id starts with "post-purchase"'),
    )
    spec = fit_feature_spec(events, profiles, config, AS_OF, max_categories=3)
    ids = [f"p{i:05d}" for i in range(n)] + ["nobody"]
    batch = featurize(events, profiles, AS_OF, spec, profile_ids=pl.Series(ids))
    by_profile = events.partition_by("profile_id", as_dict=True)
    for row, pid in enumerate(ids):
        own = by_profile.get((pid,), events.clear())
        one = featurize_one(own, profiles, AS_OF, spec, pid)
        assert list(one.profile_ids) == [pid]
        # Bit for bit, NaN where the batch has NaN.
        np.testing.assert_array_equal(one.X[0], batch.X[row], err_msg=pid)
    # The data exercised every kind of feature (none is constant across profiles).
    varying = np.nanstd(batch.X, axis=0) > 0
    assert varying.sum() > 0.8 * len(spec.features)


def test_featurize_needs_only_its_event_columns() -> None:
    """The batch scorer reads only `event_columns(spec)` from the store: the matrix is the
    same as from every column, with conditions on other columns (exclusions, custom
    events, an attribute) among them."""
    n = 300
    events = _events(n, seed=5).with_columns(
        attributes=pl.when(pl.col("quantity") > 2)
        .then(pl.lit('{"vip": "yes"}'))
        .otherwise(pl.lit("{}"))
    )
    config = InstanceConfig(
        name="t",
        goal=Goal(parse('event_type = "commerce.purchases"')),
        custom_events=(CustomEvent("vip", parse('attributes.vip = "yes"')),),
        exclusions=parse('campaign_id starts with "post-purchase"'),
    )
    spec = fit_feature_spec(events, None, config, AS_OF, max_categories=3)
    columns = event_columns(spec)
    assert columns == {
        "profile_id",
        "timestamp",
        "event_type",
        "channel",
        "product_category",
        "value",
        "attributes",
        "campaign_id",
    }
    ids = pl.Series([f"p{i:05d}" for i in range(n)])
    full = featurize(events, None, AS_OF, spec, profile_ids=ids)
    projected = featurize(events.select(sorted(columns)), None, AS_OF, spec, profile_ids=ids)
    np.testing.assert_array_equal(projected.X, full.X)
    # The attribute condition matched some events and not others.
    vip = full.X[:, spec.codes.index("days_since_last__custom.vip")]
    assert 0 < np.isnan(vip).sum() < n
    plain = fit_feature_spec(events, None, InstanceConfig(name="t", goal=config.goal), AS_OF)
    assert event_columns(plain).isdisjoint({"attributes", "campaign_id"})
