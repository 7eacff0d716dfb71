"""The out-of-time evaluation, streamed shard by shard.

The held-out profiles of the validation cutoff (every eligible one the tuning
rows did not use) are never one matrix: each shard task featurizes its own
and predicts them with the validation model, and returns only the raw
probabilities and labels (9 bytes a row). The trainer then chooses the rows
whose TreeSHAP values the factors use (boosting.explanation_sample, at most a
few thousand per score bucket), and a second pass brings back just those
feature rows. So the evaluation covers the whole cutoff while the trainer's
memory grows only with the sample; with the population below the sample
bound the rows, their order and so every figure are those of the in-memory
matrix's validation rows outside the tuning half (services/trainer/matrix.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import lightgbm as lgb
import numpy as np
import polars as pl

from foresight.calibration import Calibrator
from foresight.features.spec import FeatureSpec
from foresight.progress import Progress
from foresight.shards import ShardRunner
from services.trainer.boosting import explanation_sample
from services.trainer.shards import ShardJob, shard_features

__all__ = ["HeldOut", "held_out", "shard_predictions", "shard_rows"]


@dataclass(frozen=True, slots=True)
class HeldOut:
    """The held-out rows as the validation model sees them, in shard then profile order."""

    y: np.ndarray  # int8 labels
    raw: np.ndarray  # float64 probabilities before calibration
    probability: np.ndarray  # the same, calibrated
    explained: np.ndarray  # sorted row indices whose TreeSHAP values the factors use
    X_explained: np.ndarray  # float32 feature rows of `explained`, in that order


def _features(
    job: ShardJob,
    spec: FeatureSpec,
    cutoff: datetime,
    labels: pl.DataFrame,
    profiles: pl.DataFrame | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of `labels`' profiles (sorted by id) as of `cutoff`, without the leakage audit."""
    rows = labels.select("profile_id", "label").with_columns(pl.lit(0, pl.Int16).alias("cutoff"))
    part = shard_features(job, spec, [cutoff], rows, profiles, audit_profiles=0)
    return part.X, part.y


def shard_predictions(
    job: ShardJob,
    spec: FeatureSpec,
    cutoff: datetime,
    labels: pl.DataFrame,
    profiles: pl.DataFrame | None,
    model: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(raw probabilities, labels) of one shard's held-out profiles, sorted by profile id."""
    X, y = _features(job, spec, cutoff, labels, profiles)
    if not len(y):
        return np.zeros(0, np.float64), y
    raw = lgb.Booster(model_str=model).predict(X, num_threads=1)
    return np.asarray(raw, dtype=np.float64), y


def shard_rows(
    job: ShardJob,
    spec: FeatureSpec,
    cutoff: datetime,
    labels: pl.DataFrame,
    profiles: pl.DataFrame | None,
) -> np.ndarray:
    """Feature rows of `labels`' profiles, sorted by profile id."""
    return _features(job, spec, cutoff, labels, profiles)[0]


def held_out(
    runner: ShardRunner,
    jobs: Sequence[ShardJob],
    spec: FeatureSpec,
    cutoff: datetime,
    labels: Sequence[pl.DataFrame],
    profiles: Sequence[pl.DataFrame | None],
    model: lgb.Booster,
    calibrator: Calibrator,
    report: Progress,
) -> HeldOut:
    """Predictions of every held-out profile, shard by shard, and the explained rows' features.

    `labels[i]` are the (profile_id, label) rows of `jobs[i]` to evaluate.
    """
    ordered = [frame.sort("profile_id") for frame in labels]
    text = model.model_to_string()
    parts = runner.map(
        shard_predictions,
        [
            (job, spec, cutoff, frame, shard_profiles, text)
            for job, frame, shard_profiles in zip(jobs, ordered, profiles, strict=True)
        ],
        lambda done, total: report(
            "evaluate", 0.82 + 0.06 * done / total, f"predicted held-out shard {done}/{total}"
        ),
    )
    raw = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float64)
    y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int8)
    probability = calibrator.apply(raw)
    explained = explanation_sample(probability)
    starts = np.cumsum([0] + [len(p[1]) for p in parts])
    wanted: list[tuple[int, np.ndarray]] = []
    for i in range(len(parts)):
        local = explained[(explained >= starts[i]) & (explained < starts[i + 1])] - starts[i]
        if len(local):
            wanted.append((i, local))
    rows = runner.map(
        shard_rows,
        [(jobs[i], spec, cutoff, ordered[i][local], profiles[i]) for i, local in wanted],
    )
    X_explained = np.vstack(rows) if rows else np.zeros((0, len(spec.features)), dtype=np.float32)
    return HeldOut(y, raw, probability, explained, X_explained)
