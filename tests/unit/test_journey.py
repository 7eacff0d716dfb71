"""Segment AI behaviour vectors: fixed length, finite, mixes and activity windows, pure over shards."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from foresight.errors import FailedPrecondition
from foresight.features.journey import BehaviourSpec, behaviour_vectors, fit_behaviour_spec

pytestmark = pytest.mark.unit

AS_OF = datetime(2024, 6, 1, tzinfo=UTC)
SCHEMA = pl.Schema(
    {
        "profile_id": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),
        "event_type": pl.String(),
        "channel": pl.String(),
        "value": pl.Float64(),
        "product_category": pl.String(),
    }
)


def event(
    profile: str,
    days_before: float,
    event_type: str,
    value: float | None = None,
    channel: str | None = "web",
    category: str | None = None,
) -> dict[str, Any]:
    return {
        "profile_id": profile,
        "timestamp": AS_OF - timedelta(days=days_before),
        "event_type": event_type,
        "channel": channel,
        "value": value,
        "product_category": category,
    }


ROWS = [
    event("a", 1, "commerce.purchases", 100.0, category="shoes"),
    event("a", 31, "commerce.purchases", 50.0, channel="mobile", category="bags"),
    event("a", 61, "web.webpagedetails.pageViews"),
    event("b", 10, "commerce.productViews", channel=None, category="shoes"),
]


def vectors(
    rows: list[dict[str, Any]], ids: list[str] | None = None
) -> tuple[BehaviourSpec, dict[str, dict[str, float]]]:
    events = pl.DataFrame(rows, schema=SCHEMA)
    spec = fit_behaviour_spec(pl.DataFrame(ROWS, schema=SCHEMA))
    pids, X = behaviour_vectors(events, AS_OF, spec, None if ids is None else pl.Series(ids))
    assert (
        X.dtype == np.float32 and X.shape == (len(pids), spec.dim) and len(spec.names) == spec.dim
    )
    assert np.isfinite(X).all()
    return spec, {
        str(p): dict(zip(spec.names, map(float, row), strict=True))
        for p, row in zip(pids, X, strict=True)
    }


def test_vector_values() -> None:
    _, v = vectors(ROWS)
    a = v["a"]
    # Mixes: every event of the horizon counts once.
    assert math.isclose(a["type_share__commerce.purchases"], 2 / 3, rel_tol=1e-5)
    assert math.isclose(a["channel_share__web"], 2 / 3, rel_tol=1e-5)
    assert math.isclose(a["category_share__shoes"], 1 / 2, rel_tol=1e-5)
    # Half-life 30 days: weights 2^(-1/30), 2^(-31/30), 2^(-61/30).
    w = [2 ** (-d / 30) for d in (1, 31, 61)]
    assert math.isclose(a["log_decayed_activity"], math.log1p(sum(w)), rel_tol=1e-5)
    # Activity windows: events and purchases in the last 7, 30, 90, 180 days.
    for days, events, purchases in ((7, 1, 1), (30, 1, 1), (90, 3, 2), (180, 3, 2)):
        assert math.isclose(a[f"log_events_{days}d"], math.log1p(events), rel_tol=1e-5)
        assert math.isclose(a[f"log_purchases_{days}d"], math.log1p(purchases), rel_tol=1e-5)
    assert math.isclose(a["log_recency_days"], math.log1p(1), rel_tol=1e-5)
    assert math.isclose(a["log_frequency"], math.log1p(3), rel_tol=1e-5)
    assert math.isclose(a["log_monetary"], math.log1p(150), rel_tol=1e-5)
    assert math.isclose(a["log_active_day_span"], math.log1p(60), rel_tol=1e-5)
    assert math.isclose(a["purchase_share"], 2 / 3, rel_tol=1e-5)
    assert math.isclose(a["log_mean_basket"], math.log1p(75), rel_tol=1e-5)
    b = v["b"]
    assert (
        sum(val for k, val in b.items() if k.startswith("channel_share__")) == 0
    )  # no channel seen
    assert b["purchase_share"] == 0 and b["log_monetary"] == 0


def test_shares_sum_to_one_per_block() -> None:
    _, v = vectors(ROWS)
    for prefix in ("type_share__", "category_share__"):
        for pid in v:
            assert math.isclose(
                sum(val for k, val in v[pid].items() if k.startswith(prefix)), 1.0, rel_tol=1e-5
            )


def test_timing_tells_apart_journeys_with_the_same_mix() -> None:
    # Same events, one profile recent and one lapsed: equal mixes, different windows.
    _, v = vectors(
        [
            *(event("new", d, "commerce.purchases", 1.0) for d in (1, 5, 20)),
            *(event("old", d, "commerce.purchases", 1.0) for d in (150, 155, 170)),
        ]
    )
    new, old = v["new"], v["old"]
    assert new["type_share__commerce.purchases"] == old["type_share__commerce.purchases"] == 1.0
    assert new["log_events_30d"] == pytest.approx(math.log1p(3)) and old["log_events_30d"] == 0
    assert new["log_events_180d"] == old["log_events_180d"]
    assert new["log_purchases_7d"] == pytest.approx(math.log1p(2))


def test_pages_are_a_mix_and_optional() -> None:
    with_pages = pl.DataFrame(ROWS, schema=SCHEMA).with_columns(
        pl.Series("page_name", ["deals", "deals", "home", None])
    )
    spec = fit_behaviour_spec(with_pages)
    assert spec.pages == ("deals", "home")
    ids, X = behaviour_vectors(with_pages, AS_OF, spec)
    row = dict(zip(spec.names, map(float, X[list(ids).index("a")]), strict=True))
    assert math.isclose(row["page_share__deals"], 2 / 3, rel_tol=1e-5)
    # Events without a page_name column: an empty page vocabulary, zero page shares.
    assert fit_behaviour_spec(pl.DataFrame(ROWS, schema=SCHEMA)).pages == ()
    _, without = behaviour_vectors(pl.DataFrame(ROWS, schema=SCHEMA), AS_OF, spec)
    assert without[:, [i for i, n in enumerate(spec.names) if n.startswith("page_")]].sum() == 0


def test_future_events_and_unknown_profiles() -> None:
    _, before = vectors(ROWS, ids=["a", "b", "nobody"])
    _, after = vectors(
        [*ROWS, event("a", 0, "message.opened"), event("b", -3, "commerce.purchases", 9.0)],
        ids=["a", "b", "nobody"],
    )
    for pid in ("a", "b", "nobody"):
        assert before[pid] == after[pid]
    nobody = before["nobody"]
    assert nobody["log_recency_days"] == pytest.approx(math.log1p(365))
    assert nobody["log_frequency"] == 0


def test_shards_match_the_whole() -> None:
    rng = np.random.default_rng(3)
    types = ["commerce.purchases", "commerce.productViews", "message.opened"]
    rows = [
        event(
            f"p{rng.integers(0, 20)}",
            float(rng.uniform(0.1, 300)),
            types[rng.integers(0, 3)],
            float(rng.gamma(2, 20)),
        )
        for _ in range(300)
    ]
    events = pl.DataFrame(rows, schema=SCHEMA)
    spec = fit_behaviour_spec(events)
    ids, whole = behaviour_vectors(events, AS_OF, spec)
    half = list(ids[::2])
    part_ids, part = behaviour_vectors(events.filter(pl.col("profile_id").is_in(half)), AS_OF, spec)
    assert list(part_ids) == half
    np.testing.assert_allclose(part, whole[::2], rtol=1e-6)


def test_spec_json_round_trip_and_version() -> None:
    spec = fit_behaviour_spec(pl.DataFrame(ROWS, schema=SCHEMA), half_life_days=14)
    assert BehaviourSpec.from_json(spec.to_json()) == spec
    with pytest.raises(FailedPrecondition):
        BehaviourSpec.from_dict({**spec.to_dict(), "schema_version": 0})
    with pytest.raises(FailedPrecondition):
        fit_behaviour_spec(pl.DataFrame(ROWS, schema=SCHEMA), half_life_days=0)
