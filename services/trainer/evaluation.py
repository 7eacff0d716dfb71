"""Model evaluation on the time-based held-out cutoff, and its report pages.

`evaluate_model` turns labels, probabilities and TreeSHAP contributions into
a `ModelEvaluation` (foresight/evaluation_report.py), stored as
``evaluation.json`` next to the model and served by GetEvaluation: ranking
metrics, lift and cumulative gains by decile, calibration (curve, and ECE and
Brier before and after the calibrator), the score distribution, a quality
flag with suggestions, global influential factors (mean |SHAP|) and the top
factors per score bucket.

Contributions come from LightGBM's ``predict(pred_contrib=True)``: exact
TreeSHAP in C++, far faster than the shap package on the same trees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from foresight.calibration import Calibrator, brier, expected_calibration_error
from foresight.evaluation_report import (
    BucketFactors,
    BucketRate,
    CalibrationBin,
    CalibrationSummary,
    DecileRow,
    FactorWeight,
    HistogramBin,
    ModelEvaluation,
)
from foresight.features.spec import FeatureDef

__all__ = [
    "BUCKETS",
    "POOR_AUC",
    "TOP_FACTORS_PER_BUCKET",
    "EvaluationContext",
    "bucket_of",
    "calibration_summary",
    "evaluate_model",
    "scores_from_probabilities",
]
POOR_AUC = 0.65
TOP_FACTORS_PER_BUCKET = 10
TOP_GLOBAL_FACTORS = 25
# A profile's "top factors" (for the share columns) are its largest |SHAP| values.
TOP_FACTORS_PER_PROFILE = 5
# (name, lowest score, highest score) on the 0–100 scale.
BUCKETS: tuple[tuple[str, int, int], ...] = (("LOW", 0, 24), ("MEDIUM", 25, 74), ("HIGH", 75, 100))


@dataclass(frozen=True)
class EvaluationContext:
    """What the suggestions of a POOR model may refer to."""

    window_days: int = 30
    custom_events: int = 0
    profile_attributes: int = 0
    train_positives: int = 0
    train_negatives: int = 0


def scores_from_probabilities(p: np.ndarray) -> np.ndarray:
    """The 0–100 score: round(100·p), as integers."""
    return np.clip(np.rint(np.asarray(p, dtype=np.float64) * 100.0), 0, 100).astype(np.int64)


def bucket_of(score: int) -> str:
    """LOW below 25, MEDIUM 25–74, HIGH 75 and above."""
    if score >= 75:
        return "HIGH"
    if score >= 25:
        return "MEDIUM"
    return "LOW"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------ metrics


def _deciles(y: np.ndarray, p: np.ndarray) -> list[DecileRow]:
    """Ten groups by descending probability (ties broken stably), lift and cumulative gain."""
    order = np.argsort(-p, kind="stable")
    total_pos = float(y.sum())
    base_rate = total_pos / len(y) if len(y) else 0.0
    out: list[DecileRow] = []
    captured = 0.0
    for i, idx in enumerate(np.array_split(order, 10), start=1):
        rows = len(idx)
        positives = float(y[idx].sum()) if rows else 0.0
        captured += positives
        rate = positives / rows if rows else 0.0
        out.append(
            DecileRow(
                decile=i,
                rows=rows,
                positives=int(positives),
                positive_rate=rate,
                lift=rate / base_rate if base_rate > 0 else 0.0,
                cumulative_gain=captured / total_pos if total_pos > 0 else 0.0,
                min_probability=float(p[idx].min()) if rows else 0.0,
                max_probability=float(p[idx].max()) if rows else 0.0,
            )
        )
    return out


def _calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[CalibrationBin]:
    """Equal-width probability bins (empty ones omitted): mean predicted vs observed rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    out: list[CalibrationBin] = []
    for b in range(bins):
        mask = which == b
        rows = int(mask.sum())
        if rows == 0:
            continue
        out.append(
            CalibrationBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                predicted=float(p[mask].mean()),
                observed=float(y[mask].mean()),
                rows=rows,
            )
        )
    return out


def _histogram(scores: np.ndarray, width: int = 5) -> list[HistogramBin]:
    """Score counts in bins [low, high); the last bin includes 100."""
    out: list[HistogramBin] = []
    for low in range(0, 100, width):
        high = low + width
        mask = (scores >= low) & ((scores < high) if high < 100 else (scores <= 100))
        out.append(HistogramBin(low=float(low), high=float(high), count=int(mask.sum())))
    return out


def _suggestions(
    auc: float, positives: int, negatives: int, positive_rate: float, ctx: EvaluationContext
) -> list[str]:
    """Concrete changes that tend to help a POOR model, most promising first."""
    out: list[str] = []
    smaller = min(positives + ctx.train_positives, negatives + ctx.train_negatives)
    if smaller < 5_000:
        out.append(
            f"More examples would help (the smaller class has {smaller:,} rows over all cutoffs): "
            "widen the eligible population (conditions, look-back) or import more history."
        )
    if ctx.custom_events == 0:
        out.append(
            "Add custom events that describe behaviour leading to the goal "
            "(e.g. views or cart adds in the goal's product category); they become features."
        )
    if ctx.profile_attributes == 0:
        out.append(
            "Add profile attributes that plausibly relate to the goal "
            "(e.g. loyalty tier, signup date, region)."
        )
    if ctx.window_days < 14:
        out.append(
            f"Lengthen the outcome window (now {ctx.window_days} days): over short windows "
            "the goal happens close to at random."
        )
    if positive_rate < 0.01 or positive_rate > 0.99:
        out.append(
            f"The goal is very {'rare' if positive_rate < 0.01 else 'common'} "
            f"({positive_rate:.1%} of eligible profiles): loosen or tighten the goal conditions."
        )
    out.append(
        "Check the goal conditions and exclusions: a goal driven by things the events do not "
        f"record cannot be predicted from them (AUC {auc:.2f}, below {POOR_AUC})."
    )
    return out


# ------------------------------------------------------------------ factors


def _factor_table(
    contributions: np.ndarray, features: Sequence[FeatureDef], top: int
) -> list[FactorWeight]:
    """Features ranked by mean |SHAP| over the rows given, with signed mean and share."""
    if contributions.shape[0] == 0:
        return []
    magnitude = np.abs(contributions)
    mean_abs = magnitude.mean(axis=0)
    mean_signed = contributions.mean(axis=0)
    k = min(TOP_FACTORS_PER_PROFILE, contributions.shape[1])
    top_idx = np.argpartition(-magnitude, k - 1, axis=1)[:, :k]
    in_top = np.zeros(contributions.shape[1], dtype=np.int64)
    np.add.at(in_top, top_idx.ravel(), 1)
    # Only features that moved at least one prediction are factors.
    ranked = [int(i) for i in np.argsort(-mean_abs, kind="stable") if mean_abs[i] > 0][:top]
    return [
        FactorWeight(
            code=features[i].code,
            description=features[i].description,
            weight=float(mean_abs[i]),
            mean_impact=float(mean_signed[i]),
            share=float(in_top[i] / contributions.shape[0]),
        )
        for i in ranked
    ]


# ------------------------------------------------------------------ evaluate


def calibration_summary(
    y_true: np.ndarray,
    raw: np.ndarray,
    calibrator: Calibrator,
    cv_brier: dict[str, float] | None = None,
) -> CalibrationSummary:
    """ECE and Brier of the model's own probabilities and of the calibrated ones."""
    calibrated = calibrator.apply(raw)
    return CalibrationSummary(
        method=calibrator.method,
        cv_brier=dict(cv_brier or {}),
        ece_before=_finite(expected_calibration_error(y_true, raw)),
        ece_after=_finite(expected_calibration_error(y_true, calibrated)),
        brier_before=_finite(brier(y_true, raw)),
        brier_after=_finite(brier(y_true, calibrated)),
    )


def _bucket_tables(
    y: np.ndarray,
    p: np.ndarray,
    scores: np.ndarray,
    shap: np.ndarray,
    explained_scores: np.ndarray,
    features: Sequence[FeatureDef],
) -> tuple[list[BucketRate], list[BucketFactors]]:
    """Per bucket: expected vs observed rate over every row, top factors over the explained rows."""
    buckets: list[BucketRate] = []
    bucket_factors: list[BucketFactors] = []
    for name, low, high in BUCKETS:
        mask = (scores >= low) & (scores <= high)
        rows = int(mask.sum())
        buckets.append(
            BucketRate(
                bucket=name,
                profiles=rows,
                expected_rate=float(p[mask].mean()) if rows else None,
                observed_rate=float(y[mask].mean()) if rows else None,
            )
        )
        in_bucket = (explained_scores >= low) & (explained_scores <= high)
        bucket_factors.append(
            BucketFactors(
                bucket=name,
                profiles=rows,
                factors=_factor_table(shap[in_bucket], features, TOP_FACTORS_PER_BUCKET),
            )
        )
    return buckets, bucket_factors


def evaluate_model(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    contributions: np.ndarray,
    features: Sequence[FeatureDef],
    context: EvaluationContext | None = None,
    explained_rows: np.ndarray | None = None,
) -> ModelEvaluation:
    """The evaluation of a model on its held-out rows (probabilities as served).

    `contributions` is LightGBM's pred_contrib output with the expected value
    (raw log-odds) in the last column: [N, F + 1] for every row, or for the
    rows indexed by `explained_rows` only (factors need far fewer rows than
    the metrics, and TreeSHAP is the expensive part).
    """
    ctx = context or EvaluationContext()
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    contrib = np.asarray(contributions, dtype=np.float64)
    explained = (
        np.arange(len(y)) if explained_rows is None else np.asarray(explained_rows, dtype=np.int64)
    )
    if contrib.shape != (len(explained), len(features) + 1):
        raise ValueError(
            f"contributions have shape {contrib.shape}, expected {(len(explained), len(features) + 1)}"
        )
    n = len(y)
    positives = int(y.sum())
    negatives = n - positives
    both = 0 < positives < n
    auc = float(roc_auc_score(y, p)) if both else float("nan")
    pr_auc = float(average_precision_score(y, p)) if both else float("nan")
    eps = 1e-15
    loss = float(log_loss(y, np.clip(p, eps, 1 - eps), labels=[0, 1])) if n else float("nan")
    brier_score = float(brier_score_loss(y, p)) if n else float("nan")
    positive_rate = positives / n if n else 0.0
    scores = scores_from_probabilities(p)
    poor = not (auc >= POOR_AUC)  # NaN (one class only) is POOR too
    shap = contrib[:, :-1]
    buckets, bucket_factors = _bucket_tables(y, p, scores, shap, scores[explained], features)
    return ModelEvaluation(
        auc=_finite(auc),
        pr_auc=_finite(pr_auc),
        log_loss=_finite(loss),
        brier=_finite(brier_score),
        validation_rows=n,
        positives=positives,
        negatives=negatives,
        positive_rate=positive_rate,
        mean_probability=float(p.mean()) if n else None,
        deciles=_deciles(y, p) if n else [],
        calibration=_calibration(y, p),
        score_histogram=_histogram(scores),
        quality="POOR" if poor else "GOOD",
        suggestions=_suggestions(auc, positives, negatives, positive_rate, ctx) if poor else [],
        global_factors=_factor_table(shap, features, TOP_GLOBAL_FACTORS),
        bucket_factors=bucket_factors,
        buckets=buckets,
        expected_value=float(contrib[0, -1]) if len(contrib) else None,
        explained_rows=len(explained),
    )
