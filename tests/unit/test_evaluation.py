"""Evaluation metrics, factors (TreeSHAP), quality flag and the report pages."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from foresight.features.spec import FeatureDef, Unit
from foresight.tools.reports import write_report
from services.trainer.evaluation import (
    POOR_AUC,
    EvaluationContext,
    bucket_of,
    evaluate_model,
    scores_from_probabilities,
)

pytestmark = pytest.mark.unit

FEATURES = [FeatureDef(f"f{i}", f"Feature number {i}", Unit.COUNT) for i in range(6)]


def _model(seed: int = 0) -> tuple[lgb.Booster, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4_000, 6)).astype(np.float32)
    logit = 2.0 * X[:, 0] - 1.0 * X[:, 1] + 0.2 * X[:, 2]
    y = (rng.random(4_000) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 15,
            "max_depth": 6,
            "verbosity": -1,
            "num_threads": 1,
        },
        lgb.Dataset(X[:3_000], y[:3_000]),
        num_boost_round=60,
    )
    return booster, X[3_000:], y[3_000:]


def _evaluate(booster: lgb.Booster, X: np.ndarray, y: np.ndarray) -> dict:
    p = np.asarray(booster.predict(X))
    contributions = np.asarray(booster.predict(X, pred_contrib=True))
    return evaluate_model(y, p, contributions, FEATURES)


def test_scores_and_buckets() -> None:
    assert list(scores_from_probabilities(np.array([0.0, 0.244, 0.246, 0.745, 0.75, 1.0]))) == [
        0,
        24,
        25,
        74,
        75,
        100,
    ]
    assert [bucket_of(s) for s in (0, 24, 25, 74, 75, 100)] == [
        "LOW",
        "LOW",
        "MEDIUM",
        "MEDIUM",
        "HIGH",
        "HIGH",
    ]


def test_metrics_deciles_calibration_and_histogram() -> None:
    booster, X, y = _model()
    ev = _evaluate(booster, X, y)
    p = booster.predict(X)
    assert ev["auc"] == pytest.approx(roc_auc_score(y, p))
    assert ev["auc"] > 0.8 and ev["quality"] == "GOOD" and ev["suggestions"] == []
    assert 0 < ev["pr_auc"] <= 1 and ev["log_loss"] > 0 and 0 < ev["brier"] < 0.25
    assert ev["validation_rows"] == len(y) == ev["positives"] + ev["negatives"]
    deciles = ev["deciles"]
    assert [d["decile"] for d in deciles] == list(range(1, 11))
    assert sum(d["rows"] for d in deciles) == len(y)
    assert deciles[-1]["cumulative_gain"] == pytest.approx(1.0)
    gains = [d["cumulative_gain"] for d in deciles]
    assert gains == sorted(gains)
    assert deciles[0]["lift"] > 1.5 > deciles[-1]["lift"]
    assert sum(c["rows"] for c in ev["calibration"]) == len(y)
    assert all(c["low"] <= c["predicted"] <= c["high"] for c in ev["calibration"])
    assert sum(h["count"] for h in ev["score_histogram"]) == len(y)
    assert ev["score_histogram"][0]["low"] == 0 and ev["score_histogram"][-1]["high"] == 100
    assert sum(b["profiles"] for b in ev["buckets"]) == len(y)


def test_factors_rank_the_planted_signal() -> None:
    booster, X, y = _model()
    ev = _evaluate(booster, X, y)
    codes = [f["code"] for f in ev["global_factors"]]
    assert codes[:2] == ["f0", "f1"]
    top = ev["global_factors"][0]
    assert top["description"] == "Feature number 0" and top["weight"] > 0 and 0 < top["share"] <= 1
    assert [b["bucket"] for b in ev["bucket_factors"]] == ["LOW", "MEDIUM", "HIGH"]
    for entry in ev["bucket_factors"]:
        assert len(entry["factors"]) <= 10
        if entry["profiles"]:
            assert entry["factors"][0]["code"] in {"f0", "f1"}
    # High scores come from a large f0: its mean impact there is positive.
    high = next(b for b in ev["bucket_factors"] if b["bucket"] == "HIGH")
    assert next(f for f in high["factors"] if f["code"] == "f0")["mean_impact"] > 0


@pytest.mark.filterwarnings("ignore:LightGBM binary classifier with TreeExplainer")
def test_lightgbm_contributions_match_shap_tree_explainer() -> None:
    shap = pytest.importorskip("shap")
    booster, X, _ = _model()
    ours = np.asarray(booster.predict(X[:200], pred_contrib=True))
    theirs = shap.TreeExplainer(booster).shap_values(X[:200])
    theirs = theirs[1] if isinstance(theirs, list) else theirs
    np.testing.assert_allclose(ours[:, :-1], theirs, atol=1e-6)
    # Local accuracy: contributions plus the expected value give the raw score.
    np.testing.assert_allclose(
        ours.sum(axis=1), booster.predict(X[:200], raw_score=True), atol=1e-6
    )


def test_poor_models_are_flagged_with_suggestions() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(2_000) < 0.3).astype(np.int8)
    p = rng.random(2_000) * 0.6
    contributions = rng.normal(size=(2_000, len(FEATURES) + 1)) * 0.01
    ev = evaluate_model(y, p, contributions, FEATURES, EvaluationContext(window_days=7))
    assert ev["auc"] < POOR_AUC and ev["quality"] == "POOR"
    text = " ".join(ev["suggestions"])
    assert "custom events" in text and "profile attributes" in text
    assert "Lengthen the outcome window (now 7 days)" in text


def test_one_class_validation_is_poor_not_an_error() -> None:
    y = np.zeros(50, dtype=np.int8)
    ev = evaluate_model(y, np.full(50, 0.1), np.zeros((50, len(FEATURES) + 1)), FEATURES)
    assert ev["auc"] is None and ev["quality"] == "POOR" and ev["global_factors"] == []


def test_contribution_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="contributions"):
        evaluate_model(np.zeros(3), np.zeros(3), np.zeros((3, 2)), FEATURES)


def test_report_is_self_contained_html_with_png_charts(tmp_path: Path) -> None:
    booster, X, y = _model()
    ev = {**_evaluate(booster, X, y), "instance": "churn <test>", "version": 2}
    html_path, pngs = write_report(ev, tmp_path / "report")
    assert {p.name for p in pngs} == {
        "gains.png",
        "calibration.png",
        "score_histogram.png",
        "factors.png",
    }
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html_path.read_text()
    assert "churn &lt;test&gt; v2" in page  # escaped
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(inlined) == len(pngs)
    assert base64.b64decode(inlined[0])[:4] == b"\x89PNG"
    # No network: nothing is fetched from elsewhere.
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "Feature number 0" in page and "Cumulative gain" in page


def test_factors_may_come_from_a_sample_of_rows() -> None:
    booster, X, y = _model()
    p = np.asarray(booster.predict(X))
    explained = np.arange(0, len(y), 3)
    contributions = np.asarray(booster.predict(X[explained], pred_contrib=True))
    ev = evaluate_model(y, p, contributions, FEATURES, explained_rows=explained)
    assert ev["validation_rows"] == len(y) and ev["explained_rows"] == len(explained)
    assert ev["auc"] == pytest.approx(roc_auc_score(y, p))
    assert [f["code"] for f in ev["global_factors"][:2]] == ["f0", "f1"]
    assert sum(b["profiles"] for b in ev["bucket_factors"]) == len(y)
