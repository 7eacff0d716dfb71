"""Score arithmetic and reason codes of the scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foresight.features.spec import FeatureDef, Unit
from services.scorer.batch import factor_json
from services.scorer.factors import (
    NO_FACTOR,
    TopFactors,
    bucket_of,
    buckets_of,
    importance_of,
    percentiles_of,
    render_factors,
    scores_of,
    top_factors,
)
from services.scorer.records import Bucket, Importance

pytestmark = pytest.mark.unit


def test_score_is_rounded_percentage_and_buckets_cut_at_25_and_75() -> None:
    p = np.array([0.0, 0.004, 0.246, 0.249, 0.25, 0.744, 0.745, 0.75, 1.0])
    assert scores_of(p).tolist() == [0, 0, 25, 25, 25, 74, 74, 75, 100]
    assert buckets_of(np.array([0, 24, 25, 74, 75, 100])).tolist() == [1, 1, 2, 2, 3, 3]
    assert (
        bucket_of(24) is Bucket.LOW
        and bucket_of(25) is Bucket.MEDIUM
        and bucket_of(75) is Bucket.HIGH
    )


def test_percentiles_are_1_to_100_and_ties_share_the_highest_rank() -> None:
    p = np.linspace(0, 1, 1000)
    pct = percentiles_of(p)
    assert pct.min() == 1 and pct.max() == 100
    assert np.all(np.diff(pct.astype(int)) >= 0)
    assert np.bincount(pct)[1:].tolist() == [10] * 100
    tied = percentiles_of(np.array([0.2, 0.2, 0.2, 0.9]))
    assert tied.tolist() == [75, 75, 75, 100]
    assert percentiles_of(np.array([0.5])).tolist() == [100]
    assert percentiles_of(np.array([])).size == 0
    # Unsorted, with ties: each profile's share of profiles at or below it, rounded up.
    rng = np.random.default_rng(4)
    shuffled = rng.choice(rng.random(300), 2000).astype(np.float32)
    at_or_below = (shuffled[None, :] <= shuffled[:, None]).sum(axis=1)
    assert percentiles_of(shuffled).tolist() == np.ceil(at_or_below * 100 / 2000).tolist()


def test_importance_thresholds_use_the_absolute_impact() -> None:
    assert importance_of(np.array([0.0, 0.149, -0.15, 0.49, -0.5, 2.0])).tolist() == [
        1,
        1,
        2,
        2,
        3,
        3,
    ]


def test_top_factors_are_the_largest_absolute_contributions_strongest_first() -> None:
    contributions = np.array([[0.1, -0.9, 0.0, 0.5, 0.05], [0.0, 0.0, 0.0, 0.0, 0.3]])
    X = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, np.nan]], dtype=np.float32)
    top = top_factors(contributions, X, 3)
    assert top.codes.tolist() == [[1, 3, 0], [4, NO_FACTOR, NO_FACTOR]]
    assert top.impacts[0].tolist() == pytest.approx([-0.9, 0.5, 0.1])
    assert top.values[0].tolist() == [2, 4, 1]
    assert np.isnan(top.values[1, 0])  # the profile's value was missing
    wide = top_factors(contributions, X, 8)  # more slots than features
    assert wide.codes.shape == (2, 8) and wide.codes[0].tolist()[:4] == [1, 3, 0, 4]
    assert (wide.codes[0, 4:] == NO_FACTOR).all()


def test_top_factors_break_ties_by_column_and_match_a_full_sort_on_random_rows() -> None:
    tied = np.array([[0.2, -0.5, 0.5, -0.2, 0.5]])
    assert top_factors(tied, np.zeros((1, 5), np.float32), 4).codes.tolist() == [[1, 2, 4, 0]]
    rng = np.random.default_rng(4)
    contributions = rng.normal(size=(2000, 40)) * (rng.random((2000, 40)) < 0.3)
    contributions[:, 7] = contributions[:, 3]  # ties in many rows
    X = rng.normal(size=(2000, 40)).astype(np.float32)
    top = top_factors(contributions, X, 5)
    # A few rows (real-time scoring) take another path to the same answer.
    assert np.array_equal(top_factors(contributions[:9], X[:9], 5).codes, top.codes[:9])
    for row, codes in zip(contributions, top.codes.tolist(), strict=True):
        # Stable sort by strength: equal strengths keep column order.
        expected = [int(c) for c in np.argsort(-np.abs(row), kind="stable")[:5] if row[c] != 0]
        assert [c for c in codes if c != NO_FACTOR] == expected


def test_rendered_factors_have_human_text_with_the_value() -> None:
    features = (
        FeatureDef("days_since_last__commerce.purchases", "Days since last purchase", Unit.DAYS),
        FeatureDef("lifetime_value", "Total purchase value, all time", Unit.MONEY),
        FeatureDef("share_channel__web", "Share of web events in the last 90 days", Unit.SHARE),
    )
    codes = np.array([0, 1, 2, NO_FACTOR], dtype=np.int16)
    impacts = np.array([0.7, -0.2, 0.01, 0.0], dtype=np.float32)
    values = np.array([3.2, 1234.5, 0.25, np.nan], dtype=np.float32)
    factors = render_factors(codes, impacts, values, features)
    assert [f.text for f in factors] == [
        "Days since last purchase: 3",
        "Total purchase value, all time: 1,234.50",
        "Share of web events in the last 90 days: 25%",
    ]
    assert [f.importance for f in factors] == [Importance.HIGH, Importance.MEDIUM, Importance.LOW]
    never = render_factors(
        np.array([0], dtype=np.int16), np.array([0.3]), np.array([np.nan]), features
    )
    assert never[0].text == "Days since last purchase: never"


def _reference_json(
    features: list[FeatureDef], factors: TopFactors, row: int, keyed: bool = True
) -> str:
    """json.dumps of the factor dicts (keyed), or of [code, text, impact, importance] lists."""
    items: list[object] = []
    for slot, (code, impact, value) in enumerate(
        zip(
            factors.codes[row].tolist(),
            factors.impacts[row].astype(np.float64).round(6).tolist(),
            factors.values[row].tolist(),
            strict=True,
        )
    ):
        if code == NO_FACTOR:
            break
        level = int(importance_of(factors.impacts[row][slot]))
        values = (
            features[code].code,
            render_factors([code], [impact], [value], features)[0].text,
            impact,
            ["", "LOW", "MEDIUM", "HIGH"][level],
        )
        items.append(
            dict(zip(("code", "text", "impact", "importance"), values, strict=True))
            if keyed
            else values
        )
    return json.dumps(items, separators=(",", ":"))


def test_factor_json_is_the_json_of_the_factor_dicts() -> None:
    features = [
        FeatureDef("days_since_last", 'Days since "last" visit', Unit.DAYS),
        FeatureDef("spend", "Spend é", Unit.MONEY),
        FeatureDef("flag", "Is a member", Unit.FLAG),
        FeatureDef("share", "Share", Unit.SHARE),
        FeatureDef("trend", "Change in visits", Unit.COUNT_CHANGE),
    ]
    rng = np.random.default_rng(3)
    n, k = 400, 3
    codes = rng.integers(0, len(features), (n, k)).astype(np.int16)
    # Few distinct values (shared renders), NaN, -0.0, and rows ending early; fractions of
    # whole-number units that round half to even, to -0 or across a thousands separator.
    values = rng.choice(
        [0.0, -0.0, 1.0, 2.5, 1234.5, np.nan, 0.5, 1.5, -0.4, 3.49, 999.5, 1e7 + 0.5, np.inf],
        (n, k),
    ).astype(np.float32)
    impacts = (rng.normal(0, 0.4, (n, k)) * np.array([4, 2, 1])).astype(np.float32)
    short = rng.random(n) < 0.3
    codes[short, 2] = NO_FACTOR
    codes[: n // 10] = NO_FACTOR
    factors = TopFactors(codes, impacts, values)
    got = factor_json(features, factors)
    assert got == [_reference_json(features, factors, r) for r in range(n)]
    assert got[0] == "[]" and json.loads(got[-1])[0]["importance"] in {"LOW", "MEDIUM", "HIGH"}
    assert factor_json(features, TopFactors.empty(k)) == []
    # The stored rows: the same values as [code, text, impact, importance] lists.
    stored = factor_json(features, factors, keyed=False)
    assert stored == [_reference_json(features, factors, r, keyed=False) for r in range(n)]
    assert stored[0] == "[]" and json.loads(stored[-1])[0][3] in {"LOW", "MEDIUM", "HIGH"}
    assert [[list(f.values()) for f in json.loads(row)] for row in got] == [
        json.loads(row) for row in stored
    ]


def test_factor_json_writes_every_impact_as_json_dumps_does() -> None:
    # The compiled loop writes impacts itself from 1e-4 up to 1e9 and leaves the rest
    # (exponents below 1e-4, -0.0, NaN, infinities, huge values) to json.dumps.
    features = [FeatureDef("spend", "Spend", Unit.MONEY)]
    rng = np.random.default_rng(11)
    n = 20_000
    magnitude = 10.0 ** rng.uniform(-9, 12, n)
    impacts = rng.choice([-1.0, 1.0], n) * magnitude
    # Ties at half a millionth, whole numbers, powers of ten and the edges of both paths.
    impacts[:12] = [
        5e-7,
        -5e-7,
        1.5e-6,
        2.5e-6,
        1e-4,
        -9.9e-5,
        1e9,
        -999999999.9999,
        3.0,
        0.1,
        1e-6,
        -1e-7,
    ]
    impacts[12:16] = [np.nan, np.inf, -np.inf, -0.0]
    impacts = impacts.astype(np.float32)
    codes = np.zeros((n, 1), dtype=np.int16)
    factors = TopFactors(codes, impacts.reshape(n, 1), np.ones((n, 1), dtype=np.float32))
    got = factor_json(features, factors)
    assert got == [_reference_json(features, factors, r) for r in range(n)]
    stored = factor_json(features, factors, keyed=False)
    assert stored == [_reference_json(features, factors, r, keyed=False) for r in range(n)]
    written = [json.loads(row)[0]["impact"] for row in got[:16]]
    assert written[:4] == [0.0, -0.0, 2e-06, 2e-06] and np.isnan(written[12])


def test_the_warmed_factor_loop_is_the_one_a_real_call_uses() -> None:
    # The scorer's forkserver warms the loop for its workers (kernel_preload): a load
    # job's first chunk must find that machine code, not compile another signature.
    from services.scorer import factor_kernel

    factor_kernel.warm()
    features = [FeatureDef("spend", "Spend", Unit.MONEY)]
    codes = np.array([[0, NO_FACTOR]], dtype=np.int16)
    impacts = np.array([[0.5, 0.0]], dtype=np.float32)
    factor_json(features, TopFactors(codes, impacts, np.ones((1, 2), dtype=np.float32)))
    assert factor_kernel.rows_json.signatures == [factor_kernel._SIGNATURE]
