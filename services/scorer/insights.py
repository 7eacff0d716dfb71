"""Insights of a scoring run: distribution, buckets and their factors, evaluation, outcomes.

All of it is arithmetic over the run's column arrays. Expected vs actual needs
the outcome window after the run's as-of time to be in the event data; then
each bucket's mean predicted probability is set next to the goal rate that
really happened, with the same labelling function training uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

from foresight.conditions.compile import to_polars
from foresight.evaluation_report import ModelEvaluation
from foresight.features.labels import as_utc, day_start, goal_labels, window_end
from foresight.instance import Goal
from services.scorer.records import (
    Bucket,
    BucketInsight,
    EvaluationSummary,
    ExpectedActual,
    FactorWeight,
    ScoreBin,
)
from services.scorer.snapshot import RunScores

HISTOGRAM_BINS = 10
TOP_FACTORS_PER_BUCKET = 10
POOR_AUC = 0.65


def histogram(score: np.ndarray, bins: int = HISTOGRAM_BINS) -> list[ScoreBin]:
    """Counts of scores in `bins` equal bins over 0–100; the last bin includes 100."""
    width = 100 // bins
    index = np.minimum(np.asarray(score, dtype=np.int64) // width, bins - 1)
    counts = np.bincount(index, minlength=bins)
    return [ScoreBin(i * width, (i + 1) * width, int(counts[i])) for i in range(bins)]


def bucket_insights(scores: RunScores, top: int = TOP_FACTORS_PER_BUCKET) -> list[BucketInsight]:
    """Per bucket: size, mean probability and the factors most often among its profiles' top factors.

    share = fraction of the bucket's profiles with the factor in their top
    factors; weight = its mean |impact| where it appears.
    """
    n_features = len(scores.features)
    out: list[BucketInsight] = []
    for bucket in Bucket:
        rows = np.flatnonzero(scores.bucket == bucket)
        n = len(rows)
        factors: list[FactorWeight] = []
        mean_probability = float(scores.probability[rows].astype(np.float64).mean()) if n else 0.0
        if n:
            codes = scores.factors.codes[rows].ravel()
            impacts = np.abs(scores.factors.impacts[rows].ravel().astype(np.float64))
            present = codes >= 0
            counts = np.bincount(codes[present], minlength=n_features)
            weights = np.bincount(codes[present], weights=impacts[present], minlength=n_features)
            order = np.lexsort((-weights, -counts))  # most frequent first, ties by weight
            for code in order[:top]:
                if counts[code] == 0:
                    break
                feature = scores.features[code]
                factors.append(
                    FactorWeight(
                        code=feature.code,
                        description=feature.description,
                        weight=float(weights[code] / counts[code]),
                        share=float(counts[code] / n),
                    )
                )
        out.append(BucketInsight(bucket, n, mean_probability, factors))
    return out


def evaluation_summary(
    evaluation: ModelEvaluation | None, model_version: int
) -> EvaluationSummary | None:
    """Headline numbers of the bundle's evaluation (None when the bundle has none).

    An evaluation that does not state its quality is judged by its AUC."""
    if evaluation is None:
        return None
    auc = evaluation.auc or 0.0
    quality: str = evaluation.quality
    if "quality" not in evaluation.model_fields_set:
        quality = "POOR" if auc < POOR_AUC else "GOOD"
    return EvaluationSummary(model_version, auc, evaluation.pr_auc or 0.0, quality)


def outcome_available(as_of: datetime, window_days: int, data_end: datetime) -> bool:
    """Whether the whole outcome window after `as_of` lies within the data (`data_end` exclusive).

    The window is whole days, both ends inclusive (`window_end`), and the day of
    the latest event counts as complete: the rule training uses for its
    validation cutoff (`choose_cutoffs`).
    """
    last_day = day_start(data_end - timedelta(microseconds=1))
    return window_end(as_of, window_days) <= last_day + timedelta(days=1)


def observed_labels(
    events: pl.LazyFrame, goal: Goal, as_of: datetime, ids: pa.Array | Sequence[str]
) -> np.ndarray:
    """Per profile of `ids`: 1 if the goal happened as stated in the outcome window, else 0.

    The events are narrowed to the window and the goal before they are read;
    the label itself comes from training's `goal_labels`.
    """
    as_of = as_utc(as_of)
    end = window_end(as_of, goal.window_days)
    window = (
        events.filter((pl.col("timestamp") >= as_of) & (pl.col("timestamp") < end))
        .filter(to_polars(goal.conditions))
        .collect()
    )
    profiles = pl.Series("profile_id", ids, dtype=pl.String)
    labels = goal_labels(window, goal, as_of, profiles)
    ordered = pl.DataFrame({"profile_id": profiles}).join(
        labels, on="profile_id", how="left", maintain_order="left"
    )
    return ordered.get_column("label").fill_null(0).to_numpy().astype(np.int8)


def expected_vs_actual(scores: RunScores, labels: np.ndarray) -> list[ExpectedActual]:
    """Mean predicted probability vs observed goal rate, per bucket."""
    out: list[ExpectedActual] = []
    for bucket in Bucket:
        rows = scores.bucket == bucket
        n = int(np.count_nonzero(rows))
        expected = float(scores.probability[rows].astype(np.float64).mean()) if n else 0.0
        actual = float(labels[rows].mean()) if n else 0.0
        out.append(ExpectedActual(bucket, expected, actual, n))
    return out
