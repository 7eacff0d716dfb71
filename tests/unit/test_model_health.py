"""Model health arithmetic on constructed data: sketches, PSI, realized quality, the advice."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from foresight.calibration import brier, expected_calibration_error
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.lifecycle import Status
from services.scorer.drift import GRID, merge, psi, sketch, sketch_columns
from services.scorer.health import (
    Drift,
    FeatureDrift,
    RealizedQuality,
    RunHealth,
    Thresholds,
    drift_between,
    lift_top_decile,
    read_summary,
    realized_quality,
    recommend,
    summarize,
    write_summary,
)
from services.scorer.records import ScoringRun
from tests.fixtures.scores import make_scores

RNG = np.random.default_rng(42)


def exact_psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI over the reference's deciles, from the raw values."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1]))
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    # np.histogram bins are [a, b); PSI's are (a, b]: histogram the negated values.
    ref = np.histogram(-reference, -bins[::-1])[0][::-1] / len(reference)
    cur = np.histogram(-current, -bins[::-1])[0][::-1] / len(current)
    ref, cur = np.maximum(ref, 1e-4), np.maximum(cur, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


# --- sketches and PSI -------------------------------------------------------------------------


def test_merged_shard_sketches_match_the_sketch_of_all_values() -> None:
    values = RNG.lognormal(size=40_000)
    shards = [sketch(part) for part in np.array_split(RNG.permutation(values), 8)]
    merged = merge(shards)
    whole = sketch(values)
    assert merged.count == whole.count == 40_000 and merged.missing == 0
    inner = slice(1, len(GRID) - 1)  # min and max are exact; the rest within 1 % of rank
    ranks = np.searchsorted(np.sort(values), merged.quantiles[inner]) / len(values)
    assert np.max(np.abs(ranks - GRID[inner])) < 0.01
    assert merged.quantiles[0] == values.min() and merged.quantiles[-1] == values.max()


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    reference = RNG.normal(size=20_000)
    same = RNG.normal(size=20_000)
    shifted = RNG.normal(loc=1.0, size=20_000)
    assert psi(sketch(reference), sketch(same)) < 0.01
    shift = psi(sketch(reference), sketch(shifted))
    assert shift > 0.25
    # From 101 percentiles, within 0.02 of PSI computed from every value.
    assert shift == pytest.approx(exact_psi(reference, shifted), abs=0.02)


def test_psi_of_counts_with_a_point_mass_and_of_missing_values() -> None:
    quiet = RNG.poisson(0.5, 20_000).astype(np.float64)  # ~60 % zeros
    assert psi(sketch(quiet), sketch(RNG.poisson(0.5, 20_000).astype(np.float64))) < 0.01
    busy = RNG.poisson(3.0, 20_000).astype(np.float64)
    assert psi(sketch(quiet), sketch(busy)) > 1.0
    # "Days since" features are missing for profiles that never did the thing.
    rarely = np.where(RNG.random(20_000) < 0.1, np.nan, RNG.exponential(10, 20_000))
    often = np.where(RNG.random(20_000) < 0.6, np.nan, RNG.exponential(10, 20_000))
    assert sketch(often).missing == pytest.approx(12_000, rel=0.05)
    assert psi(sketch(rarely), sketch(often)) > 0.25


def test_sketch_columns_and_empty_inputs() -> None:
    X = np.column_stack([RNG.normal(size=100), np.full(100, np.nan)])
    a, b = sketch_columns(X)
    assert a.count == 100 and a.missing == 0 and len(a.quantiles) == len(GRID)
    assert b.missing == 100 and len(b.quantiles) == 0 and b.present == 0
    assert psi(b, b) == pytest.approx(0.0)  # everything missing on both sides: no drift
    assert math.isnan(psi(sketch(np.zeros(0)), a))
    # One sort of the matrix gives np.quantile's percentiles, column by column.
    counts = RNG.poisson(2.0, size=(5_000, 6)).astype(np.float32)
    counts[RNG.random(counts.shape) < 0.3] = np.nan
    for j, s in enumerate(sketch_columns(counts)):
        one = sketch(counts[:, j])
        assert s.missing == one.missing and np.allclose(s.quantiles, one.quantiles)
    assert [s.count for s in sketch_columns(np.zeros((0, 2)))] == [0, 0]


# --- realized quality ---------------------------------------------------------------------


def test_realized_quality_of_constructed_outcomes() -> None:
    p = RNG.random(5_000)
    y = (RNG.random(5_000) < p).astype(np.int8)  # calibrated by construction
    q = realized_quality(y, p)
    assert q.profiles == 5_000 and q.positives == int(y.sum())
    assert 0.7 < q.auc < 0.9
    assert q.brier == pytest.approx(brier(y, p)) and q.ece == pytest.approx(
        expected_calibration_error(y, p)
    )
    assert q.ece < 0.03 and q.conclusive
    # Perfect ranking: the top decile holds only positives.
    ranked = np.arange(1000) / 1000
    labels = (ranked >= 0.8).astype(np.int8)
    assert lift_top_decile(labels, ranked) == pytest.approx(1 / 0.2)
    assert realized_quality(labels, ranked).auc == 1.0
    # One class only: no AUC, never conclusive.
    none = realized_quality(np.zeros(50, np.int8), RNG.random(50))
    assert math.isnan(none.auc) and not none.conclusive


# --- the advice -------------------------------------------------------------------------------

AS_OF = datetime(2025, 1, 1, tzinfo=UTC)


def _run(days_ago: int, version: int = 2) -> ScoringRun:
    as_of = AS_OF - timedelta(days=days_ago)
    return ScoringRun(
        f"run-{days_ago}", "churn", version, Status.READY, as_of, as_of, as_of, 1000, ""
    )


def _realized(auc: float, positives: int = 200) -> RealizedQuality:
    return RealizedQuality(1000, positives, auc, 2.0, 0.1, 0.02, 0.2, 0.2)


def _drift(score_psi: float, feature_psi: float = 0.01, same_model: bool = True) -> Drift:
    features = [FeatureDrift("count_30d", "Events in 30 days", feature_psi)]
    return Drift("previous", same_model, score_psi, features)


def _history(realized_auc: float, score_psi: float, feature_psi: float) -> list[RunHealth]:
    """Newest first: an open run with drift, then a closed run with realized quality."""
    return [
        RunHealth(_run(0), AS_OF, False, 0.80, drift=_drift(score_psi, feature_psi)),
        RunHealth(_run(40), AS_OF, True, 0.80, realized=_realized(realized_auc)),
    ]


def test_recommends_a_retrain_when_realized_auc_drops_or_scores_drift() -> None:
    reasons = recommend(_history(0.70, 0.40, 0.30), 2, Thresholds())
    assert len(reasons) == 3
    assert (
        "realized AUC 0.700" in reasons[0] and "0.100 below the validation AUC 0.800" in reasons[0]
    )
    assert "score PSI 0.400" in reasons[1]
    assert "count_30d (0.300)" in reasons[2]


def test_no_retrain_when_quality_holds_and_nothing_drifts() -> None:
    assert recommend(_history(0.78, 0.05, 0.05), 2, Thresholds()) == []
    # A drop within the threshold is not a reason either; a stricter threshold makes it one.
    assert recommend(_history(0.76, 0.05, 0.05), 2, Thresholds()) == []
    assert len(recommend(_history(0.76, 0.05, 0.05), 2, Thresholds(auc_drop=0.02))) == 1


def test_advice_counts_only_the_serving_version_and_conclusive_outcomes() -> None:
    # The poor runs were scored by version 1; version 3 serves now: retrained already.
    assert recommend(_history(0.60, 0.40, 0.40), 3, Thresholds()) == []
    # Too few positives in the sample to trust the realized AUC.
    thin = [RunHealth(_run(40), AS_OF, True, 0.8, realized=_realized(0.5, positives=10))]
    assert recommend(thin, 2, Thresholds()) == []
    # Score PSI across a model change is not drift of the data.
    changed = [RunHealth(_run(0), AS_OF, False, 0.8, drift=_drift(0.9, same_model=False))]
    assert recommend(changed, 2, Thresholds()) == []
    # Feature drift counts only for the model's key features when they are known.
    keyed = RunHealth(
        _run(0), AS_OF, False, 0.8, drift=_drift(0.0, 0.5), key_features=frozenset({"other"})
    )
    assert recommend([keyed], 2, Thresholds()) == []


# --- the run summary ---------------------------------------------------------------------------


def test_run_summary_round_trip_sample_and_drift(tmp_path: Path) -> None:
    scores = make_scores(3_000, run_id="run-a")
    X = RNG.poisson(2.0, size=(3_000, len(scores.features))).astype(np.float64)
    shards = [sketch_columns(X[:1500]), sketch_columns(X[1500:]), None]  # None: an empty shard
    summary = summarize(scores, shards, sample_size=500)
    assert len(summary.sample_ids) == 500 and len(set(summary.sample_ids)) == 500
    rows = [scores.find(i) for i in summary.sample_ids]
    assert np.allclose(summary.sample_probability, scores.probability[rows])
    store = ArtifactStore(tmp_path)
    assert write_summary(store, summary) == "health/churn/run-a.json"
    back = read_summary(store, "churn", "run-a")
    assert back is not None and back.sample_ids == summary.sample_ids
    assert back.profiles == 3_000 and back.as_of == scores.as_of
    assert set(back.features) == {f.code for f in scores.features}
    assert read_summary(store, "churn", "missing") is None
    # The same run against itself: no drift; against a run with busier profiles: drift.
    assert drift_between(back, summary).score_psi < 1e-6
    later = summarize(
        make_scores(3_000, run_id="run-b", seed=1),
        [sketch_columns(X + RNG.poisson(3.0, size=X.shape))],
        sample_size=500,
    )
    drift = drift_between(summary, later)
    assert drift.previous_run_id == "run-a" and drift.same_model
    assert drift.score_psi < 0.05  # both runs' probabilities are uniform
    assert len(drift.top()) == 5 and all(f.psi > 0.25 for f in drift.top())
    assert [f.psi for f in drift.features] == sorted((f.psi for f in drift.features), reverse=True)


# --- the evaluation page's section ----------------------------------------------------------


def _plain_run(day: str, auc: float | None, score_psi: float | None) -> dict[str, object]:
    return {
        "run": {"run_id": f"run-{day}", "as_of": f"{day}T00:00:00+00:00", "model_version": 1},
        "window_closed": auc is not None,
        "window_end": f"{day}T00:00:00+00:00",
        "validation_auc": 0.8,
        "realized": {"auc": auc, "lift_top_decile": 2.5, "ece": 0.03} if auc else None,
        "drift": {"score_psi": score_psi, "top_features": [{"code": "count_30d", "psi": 0.31}]}
        if score_psi is not None
        else None,
        "note": "",
    }


def test_evaluation_page_has_the_model_health_section(tmp_path: Path) -> None:
    from foresight.tools.reports import write_report

    health = {
        "runs": [
            _plain_run("2024-12-31", None, 0.4),
            _plain_run("2024-11-15", 0.62, 0.05),
            _plain_run("2024-10-01", 0.79, None),
        ],
        "psi_threshold": 0.25,
        "retrain_recommended": True,
        "reasons": ["score PSI 0.400 between the runs as of 2024-12-31 and the one before"],
    }
    page, pngs = write_report({"auc": 0.8}, tmp_path / "with", health)
    text = page.read_text()
    assert [p.name for p in pngs] == ["model_health.png"]
    assert "Model health over time" in text and "Retrain recommended" in text
    assert "score PSI 0.400" in text and "count_30d 0.310" in text and "0.620" in text
    assert text.index("Model health over time") < text.index('data-chart="model_health"')
    plain, none = write_report({"auc": 0.8}, tmp_path / "without")
    assert none == [] and "Model health" not in plain.read_text()
