"""Automatic features: values, leakage guard, exclusions, stored vocabularies, shards."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from foresight.conditions import parse
from foresight.errors import FailedPrecondition, InvalidArgument
from foresight.features.featurize import FeatureMatrix, check_no_leakage, featurize
from foresight.features.spec import (
    AttributeKind,
    FeatureDef,
    FeatureSpec,
    Unit,
    format_factor_value,
    format_factor_values,
)
from foresight.features.spec_fit import fit_feature_spec
from foresight.instance import CustomEvent, Goal, InstanceConfig

pytestmark = pytest.mark.unit

AS_OF = datetime(2024, 6, 1, tzinfo=UTC)
SCHEMA = pl.Schema(
    {
        "event_id": pl.String(),
        "profile_id": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),
        "event_type": pl.String(),
        "channel": pl.String(),
        "value": pl.Float64(),
        "quantity": pl.Int64(),
        "product_sku": pl.String(),
        "product_category": pl.String(),
        "page_name": pl.String(),
        "campaign_id": pl.String(),
        "attributes": pl.String(),
    }
)


def event(
    profile: str,
    days_before: float,
    event_type: str,
    value: float | None = None,
    channel: str | None = "web",
    category: str | None = None,
    campaign: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": None,
        "profile_id": profile,
        "timestamp": AS_OF - timedelta(days=days_before),
        "event_type": event_type,
        "channel": channel,
        "value": value,
        "quantity": None,
        "product_sku": None,
        "product_category": category,
        "page_name": None,
        "campaign_id": campaign,
        "attributes": None,
    }


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


BASE_ROWS = [
    event("a", 3, "commerce.purchases", 120.0, category="shoes"),
    event("a", 10, "commerce.purchases", 30.0, channel="mobile", category="bags"),
    event("a", 45, "web.webpagedetails.pageViews"),
    event("a", 45.5, "web.webpagedetails.pageViews"),
    event("b", 100, "commerce.productViews", channel=None),
    event("b", 5, "message.opened", channel="email", campaign="post-purchase-1"),
]
PROFILES = pl.DataFrame(
    {
        "profile_id": ["a", "b", "c"],
        "loyalty_tier": ["gold", None, "silver"],
        "signup_date": ["2024-05-01", "2023-06-01", None],
        "age": [30, 40, 50],
        "joined": [date(2024, 5, 22), None, None],
    }
)


def config(**changes: Any) -> InstanceConfig:
    base: dict[str, Any] = {
        "name": "t",
        "goal": Goal(parse('event_type = "commerce.purchases"')),
        "custom_events": (CustomEvent("big", parse("value > 100")),),
        "profile_attributes": ("loyalty_tier", "signup_date", "age", "joined"),
        "exclusions": parse('campaign_id starts with "post-purchase"'),
    }
    base.update(changes)
    return InstanceConfig(**base)


def matrix(
    rows: list[dict[str, Any]], ids: list[str] | None = None, spec: FeatureSpec | None = None
) -> tuple[FeatureSpec, dict[str, dict[str, float]]]:
    events = frame(rows)
    spec = spec or fit_feature_spec(events, PROFILES, config(), AS_OF)
    fm = featurize(events, PROFILES, AS_OF, spec, None if ids is None else pl.Series(ids))
    return spec, as_dicts(fm)


def as_dicts(fm: FeatureMatrix) -> dict[str, dict[str, float]]:
    return {
        str(pid): dict(zip(fm.codes, map(float, row), strict=True))
        for pid, row in zip(fm.profile_ids, fm.X, strict=True)
    }


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def test_feature_values() -> None:
    spec, m = matrix(BASE_ROWS)
    a, b = m["a"], m["b"]
    assert a["days_since_last_event"] == 3 and a["tenure_days"] == 45.5
    assert a["days_since_last__commerce.purchases"] == 3
    assert a["count_7d__commerce.purchases"] == 1 and a["count_30d__commerce.purchases"] == 2
    assert a["count_90d"] == 4 and a["count_365d__web.webpagedetails.pageViews"] == 2
    assert a["active_days_30d"] == 2 and a["active_days_90d"] == 3  # both page views fall on day 45
    assert a["sum_value_30d"] == 150 and a["mean_value_30d"] == 75 and a["max_value_30d"] == 120
    assert a["lifetime_value"] == 150 and a["lifetime_purchases"] == 2
    # Last 30 days: 2 purchases; the 30 before: 2 page views.
    assert (
        a["trend_30d_count"] == 0 and a["trend_30d_purchases"] == 2 and a["trend_30d_value"] == 150
    )
    assert same(a["share_channel__mobile"], 0.25) and same(a["share_channel__web"], 0.75)
    assert a["share_category__shoes"] == 0.5 and a["share_category__other"] == 0
    assert a["days_since_last__custom.big"] == 3 and a["count_30d__custom.big"] == 1
    # Profile attributes: one-hot, days since a date (text or Date), numeric passthrough.
    assert a["attr__loyalty_tier==gold"] == 1 and a["attr__loyalty_tier==other"] == 0
    assert a["attr_days_since__signup_date"] == 31 and a["attr_days_since__joined"] == 10
    assert a["attr__age"] == 30
    # b: its only recent event is excluded, the old view had no channel.
    assert b["days_since_last_event"] == 100 and b["count_30d"] == 0
    assert math.isnan(b["days_since_last__commerce.purchases"])
    assert b["sum_value_30d"] == 0 and math.isnan(b["mean_value_30d"])
    assert math.isnan(b["share_channel__web"])  # no channel seen: unknown, not 0
    assert math.isnan(b["attr__loyalty_tier==gold"])
    assert set(spec.codes) == set(a)


def test_features_ignore_events_at_or_after_as_of() -> None:
    # The leakage guard: anything at or after the cutoff must not move a feature.
    future = [
        event("a", 0, "commerce.purchases", 999.0),  # exactly at as_of
        event("a", -1, "commerce.purchases", 500.0, category="shoes"),
        event("b", -0.5, "commerce.productViews"),
        event("new", -2, "commerce.purchases", 10.0),
    ]
    spec, before = matrix(BASE_ROWS)
    _, with_future = matrix(BASE_ROWS + future, spec=spec)
    assert set(with_future) == {"a", "b"}  # "new" has no history before as_of
    for pid in before:
        for code in spec.codes:
            assert same(before[pid][code], with_future[pid][code]), (pid, code)


def test_a_leaky_feature_would_be_caught() -> None:
    # Sanity check of the check above: moving as_of past a purchase changes features.
    events = frame([*BASE_ROWS, event("a", -1, "commerce.purchases", 500.0)])
    spec = fit_feature_spec(events, PROFILES, config(), AS_OF)
    later = featurize(events, PROFILES, AS_OF + timedelta(days=2), spec)
    assert as_dicts(later)["a"]["lifetime_value"] == 650


def test_exclusions_never_become_features() -> None:
    rows = [
        event("a", 1, "message.opened", campaign="post-purchase-7"),
        event("a", 20, "commerce.purchases", 5.0),
    ]
    spec, m = matrix(rows)
    assert "message.opened" not in spec.event_types
    assert m["a"]["days_since_last_event"] == 20 and m["a"]["count_30d"] == 1


def test_requested_profiles_keep_their_order_and_get_rows() -> None:
    _, m = matrix(BASE_ROWS, ids=["c", "b", "a"])
    assert list(m) == ["c", "b", "a"]
    c = m["c"]
    assert c["count_30d"] == 0 and c["lifetime_purchases"] == 0 and c["sum_value_90d"] == 0
    assert math.isnan(c["days_since_last_event"]) and math.isnan(c["tenure_days"])
    assert c["attr__loyalty_tier==silver"] == 1 and c["attr__age"] == 50


def test_scoring_reuses_the_stored_vocabulary() -> None:
    events = frame(BASE_ROWS)
    spec = fit_feature_spec(events, PROFILES, config(), AS_OF)
    stored = FeatureSpec.from_json(spec.to_json())
    assert stored == spec
    # New event types, channels and categories at scoring time pool into "other".
    later_rows = [
        *BASE_ROWS,
        event("a", 1, "application.launch", channel="kiosk", category="hats"),
    ]
    fm = featurize(frame(later_rows), PROFILES, AS_OF, stored)
    assert fm.codes == spec.codes and fm.X.shape == (2, len(spec.features))
    a = as_dicts(fm)["a"]
    assert a["count_7d__other"] == 1
    assert same(a["share_channel__other"], 0.2) and same(a["share_category__other"], 1 / 3)


def test_stored_spec_from_another_schema_is_refused() -> None:
    data = fit_feature_spec(frame(BASE_ROWS), PROFILES, config(), AS_OF).to_dict()
    with pytest.raises(FailedPrecondition, match="schema version"):
        FeatureSpec.from_dict({**data, "schema_version": 999})
    with pytest.raises(FailedPrecondition, match="differs"):
        FeatureSpec.from_dict({**data, "features": data["features"][1:]})


def test_top_k_vocabulary_and_attribute_encodings() -> None:
    rows = [event(f"p{i}", 1, f"custom.type{i % 5}", category=f"c{i}") for i in range(40)]
    profiles = pl.DataFrame(
        {
            "profile_id": [f"p{i}" for i in range(40)],
            "city": [f"city{i % 25}" for i in range(40)],
            "flag": [i % 2 == 0 for i in range(40)],
        }
    )
    cfg = config(custom_events=(), profile_attributes=("city", "flag"), exclusions=None)
    spec = fit_feature_spec(frame(rows), profiles, cfg, AS_OF, max_event_types=3, max_categories=2)
    assert len(spec.event_types) == 3 and len(spec.categories) == 2
    kinds = {a.name: a.kind for a in spec.attributes}
    assert kinds == {"city": AttributeKind.RANK, "flag": AttributeKind.NUMERIC}
    fm = featurize(frame(rows), profiles, AS_OF, spec)
    ranks = fm.X[:, spec.column_index()["attr_rank__city"]]
    assert np.nanmin(ranks) == 1 and np.nanmax(ranks) <= 26
    # No categorical column reaches the model: everything is float32.
    assert fm.X.dtype == np.float32
    with pytest.raises(InvalidArgument) as err:
        fit_feature_spec(frame(rows), profiles, config(profile_attributes=("missing",)), AS_OF)
    assert err.value.field == "profile_attributes[0]"
    with pytest.raises(FailedPrecondition):
        fit_feature_spec(frame(rows), None, cfg, AS_OF)


def test_no_inf_values() -> None:
    profiles = PROFILES.with_columns(pl.Series("age", [float("inf"), 1.0, None]))
    events = frame(BASE_ROWS)
    spec = fit_feature_spec(events, profiles, config(), AS_OF)
    fm = featurize(events, profiles, AS_OF, spec)
    assert not np.isinf(fm.X).any()


def test_shards_give_the_same_rows_as_the_whole() -> None:
    rng = np.random.default_rng(7)
    types = [
        "commerce.purchases",
        "commerce.productViews",
        "web.webpagedetails.pageViews",
        "message.opened",
    ]
    rows = [
        event(
            f"p{rng.integers(0, 30)}",
            float(rng.uniform(0.01, 400)),
            types[rng.integers(0, 4)],
            float(rng.gamma(2, 30)),
            channel=["web", "mobile", None][rng.integers(0, 3)],
            category=["a", "b", None][rng.integers(0, 3)],
        )
        for _ in range(600)
    ]
    events = frame(rows)
    spec = fit_feature_spec(events, PROFILES, config(), AS_OF)
    whole = as_dicts(featurize(events, PROFILES, AS_OF, spec))
    ids = sorted(whole)
    for shard_ids in (ids[::2], ids[1::2]):
        shard = events.filter(pl.col("profile_id").is_in(shard_ids))
        part = as_dicts(featurize(shard, PROFILES, AS_OF, spec))
        assert list(part) == shard_ids
        for pid in shard_ids:
            assert all(same(part[pid][c], whole[pid][c]) for c in spec.codes)


def test_empty_shard() -> None:
    spec = fit_feature_spec(frame(BASE_ROWS), PROFILES, config(), AS_OF)
    fm = featurize(frame([]), None, AS_OF, spec)
    assert fm.X.shape == (0, len(spec.features))


@pytest.mark.parametrize(
    ("feature", "value", "text"),
    [
        (
            FeatureDef(
                "days_since_last__commerce.purchases", "Days since last purchase", Unit.DAYS
            ),
            3.2,
            "Days since last purchase: 3",
        ),
        (
            FeatureDef(
                "days_since_last__commerce.purchases", "Days since last purchase", Unit.DAYS
            ),
            float("nan"),
            "Days since last purchase: never",
        ),
        (
            FeatureDef(
                "count_30d__commerce.purchases", "Purchases in the last 30 days", Unit.COUNT
            ),
            1200.0,
            "Purchases in the last 30 days: 1,200",
        ),
        (
            FeatureDef("sum_value_30d", "Total purchase value in the last 30 days", Unit.MONEY),
            12.5,
            "Total purchase value in the last 30 days: 12.50",
        ),
        (
            FeatureDef("trend_30d_count", "Change in events", Unit.COUNT_CHANGE),
            -4.0,
            "Change in events: -4",
        ),
        (
            FeatureDef("share_channel__mobile", "Share of mobile events", Unit.SHARE),
            0.256,
            "Share of mobile events: 26%",
        ),
        (FeatureDef("attr__tier==gold", "tier is gold", Unit.FLAG), 1.0, "tier is gold: yes"),
        (FeatureDef("attr__age", "age", Unit.NUMBER), None, "age: unknown"),
    ],
)
def test_format_factor_value(feature: FeatureDef, value: float | None, text: str) -> None:
    assert format_factor_value(feature, value) == text


@pytest.mark.parametrize("unit", list(Unit))
def test_format_factor_values_is_format_factor_value_of_each(unit: Unit) -> None:
    feature = FeatureDef(f"days_since_{unit.value}", f"A {unit.value}", unit)
    values = [0.0, -0.0, 0.5, 0.49, -3.2, 1234567.891, 1e-40, float("nan"), 2.5, -1e12]
    assert format_factor_values(feature, values) == [
        format_factor_value(feature, v) for v in values
    ]


def test_descriptions_are_human() -> None:
    spec = fit_feature_spec(frame(BASE_ROWS), PROFILES, config(), AS_OF)
    by_code = {f.code: f.description for f in spec.features}
    assert by_code["days_since_last__commerce.purchases"] == "Days since last purchase"
    assert by_code["count_30d__commerce.purchases"] == "Purchases in the last 30 days"
    assert by_code["count_7d__commerce.productViews"] == "Product views in the last 7 days"
    assert len(by_code) == len(spec.features)  # codes are unique


def test_leakage_check_catches_a_feature_that_sees_the_future() -> None:
    events = frame(
        [*BASE_ROWS, event("a", 0, "commerce.purchases", 999.0), event("b", -3, "message.opened")]
    )
    spec = fit_feature_spec(events, PROFILES, config(), AS_OF)
    ids = pl.Series(["a", "b"])
    check_no_leakage(events, PROFILES, AS_OF, spec, ids)  # the real featurizer passes

    def leaky(
        ev: pl.DataFrame,
        prof: pl.DataFrame | None,
        as_of: datetime,
        sp: FeatureSpec,
        pids: pl.Series | None,
    ) -> FeatureMatrix:
        # Off by one: includes the event sitting exactly on the cutoff.
        return featurize(ev, prof, as_of + timedelta(microseconds=1), sp, pids)

    with pytest.raises(FailedPrecondition) as err:
        check_no_leakage(events, PROFILES, AS_OF, spec, ids, featurizer=leaky)
    assert "feature leakage" in str(err.value) and "days_since_last_event" in str(err.value)
