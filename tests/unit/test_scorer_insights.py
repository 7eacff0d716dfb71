"""Insights math: histogram, bucket factors, evaluation summary, expected vs actual."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from foresight.evaluation_report import ModelEvaluation
from foresight.features.spec import FeatureDef, Unit
from services.scorer.factors import NO_FACTOR, TopFactors, percentiles_of, scores_of
from services.scorer.insights import (
    bucket_insights,
    evaluation_summary,
    expected_vs_actual,
    histogram,
    outcome_available,
)
from services.scorer.records import Bucket
from services.scorer.snapshot import RunScores

pytestmark = pytest.mark.unit

FEATURES = (
    FeatureDef("a", "Feature a", Unit.COUNT),
    FeatureDef("b", "Feature b", Unit.COUNT),
    FeatureDef("c", "Feature c", Unit.COUNT),
)


def _scores(
    probability: list[float], codes: list[list[int]], impacts: list[list[float]]
) -> RunScores:
    p = np.array(probability, dtype=np.float32)
    return RunScores(
        run_id="r",
        instance="i",
        model_version=1,
        as_of=datetime(2025, 1, 1, tzinfo=UTC),
        features=FEATURES,
        ids=pa.array([f"p{i}" for i in range(len(p))], pa.large_string()),
        probability=p,
        score=scores_of(p),
        percentile=percentiles_of(p),
        factors=TopFactors(
            np.array(codes, dtype=np.int16),
            np.array(impacts, dtype=np.float32),
            np.zeros((len(p), len(codes[0])), dtype=np.float32),
        ),
    )


def test_histogram_has_ten_bins_and_100_is_in_the_last() -> None:
    bins = histogram(np.array([0, 9, 10, 55, 99, 100, 100]))
    assert [(b.low, b.high) for b in bins][:2] == [(0, 10), (10, 20)] and bins[-1].high == 100
    assert [b.count for b in bins] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 3]


def test_bucket_factor_share_and_weight() -> None:
    scores = _scores(
        [0.1, 0.1, 0.9, 0.9],
        [[0, 1], [0, NO_FACTOR], [2, 0], [2, 1]],
        [[0.4, -0.2], [-0.6, 0.0], [1.0, 0.5], [0.5, 0.1]],
    )
    by_bucket = {b.bucket: b for b in bucket_insights(scores)}
    low, high, medium = by_bucket[Bucket.LOW], by_bucket[Bucket.HIGH], by_bucket[Bucket.MEDIUM]
    assert medium.profiles == 0 and medium.factors == []
    assert low.profiles == 2 and low.mean_probability == pytest.approx(0.1)
    assert [(f.code, f.share) for f in low.factors] == [("a", 1.0), ("b", 0.5)]
    assert low.factors[0].weight == pytest.approx(0.5)  # mean |impact| of 0.4 and -0.6
    assert [(f.code, f.share) for f in high.factors] == [("c", 1.0), ("a", 0.5), ("b", 0.5)]
    assert (
        high.factors[0].weight == pytest.approx(0.75) and high.factors[0].description == "Feature c"
    )


def test_expected_vs_actual_per_bucket() -> None:
    scores = _scores([0.1, 0.2, 0.5, 0.8, 0.9], [[0]] * 5, [[0.1]] * 5)
    rows = expected_vs_actual(scores, np.array([0, 1, 1, 1, 0], dtype=np.int8))
    by_bucket = {r.bucket: r for r in rows}
    assert by_bucket[Bucket.LOW].profiles == 2 and by_bucket[Bucket.LOW].actual_rate == 0.5
    assert by_bucket[Bucket.LOW].expected_rate == pytest.approx(0.15)
    assert by_bucket[Bucket.MEDIUM].actual_rate == 1.0
    assert (
        by_bucket[Bucket.HIGH].expected_rate == pytest.approx(0.85)
        and by_bucket[Bucket.HIGH].actual_rate == 0.5
    )


def test_evaluation_summary_and_outcome_window() -> None:
    assert evaluation_summary(ModelEvaluation.from_optional_json({}), 1) is None
    summary = evaluation_summary(ModelEvaluation.from_json({"auc": 0.6, "pr_auc": 0.3}), 4)
    assert summary is not None and (summary.model_version, summary.quality) == (4, "POOR")
    # No stated quality: judged by the AUC.
    judged = evaluation_summary(ModelEvaluation.from_json({"auc": 0.9}), 3)
    assert judged is not None and judged.quality == "GOOD"
    given = evaluation_summary(
        ModelEvaluation.from_json({"auc": 0.9, "pr_auc": None, "quality": "GOOD"}), 2
    )
    assert given is not None and given.quality == "GOOD" and given.pr_auc == 0.0
    as_of = datetime(2025, 1, 1, tzinfo=UTC)
    # The window is 1-31 January, both days whole; the day of the latest event
    # counts as complete (as for training's validation cutoff). `data_end` is
    # exclusive: one microsecond after the latest event.
    assert outcome_available(as_of, 30, as_of + timedelta(days=30, microseconds=1))
    assert outcome_available(as_of, 30, as_of + timedelta(days=30, hours=12))
    assert not outcome_available(as_of, 30, as_of + timedelta(days=30))
    assert not outcome_available(as_of, 30, as_of + timedelta(days=29, hours=23))
