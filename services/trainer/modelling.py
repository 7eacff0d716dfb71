"""The models of one training job: the validation model, its calibrator, the served refit.

`fit_models` trains the validation model on the cutoffs whose outcome windows
end before the validation cutoff (boosting.py), chooses and fits the
calibrator on the tuning half of the validation cutoff's rows in the matrix
(isotonic or Platt or none, by cross-validated Brier score:
foresight/calibration.py), then refits the served model with the chosen
parameters on every row of the matrix, the validation cutoff's included.
`evaluate_validation_model` measures the validation model, as calibrated, on
every other profile of the validation cutoff, held out from every choice
(streamed shard by shard: streaming.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from foresight.calibration import Calibrator, choose_calibrator
from foresight.evaluation_report import (
    ModelEvaluation,
    ParityEvidence,
    TrainingSummary,
    TrialSummary,
)
from foresight.factor_groups import FactorGroups, fit_factor_groups
from foresight.features.spec import FeatureSpec
from foresight.instance import InstanceConfig
from foresight.progress import Progress
from services.trainer.boosting import (
    TrialResult,
    refit_lightgbm,
    train_lightgbm,
)
from services.trainer.evaluation import EvaluationContext, calibration_summary, evaluate_model
from services.trainer.export import ParityReport
from services.trainer.matrix import RowSplit, TrainingMatrix
from services.trainer.planning import TrainingPlan
from services.trainer.streaming import HeldOut

__all__ = [
    "FittedModels",
    "Progress",
    "StageClock",
    "evaluate_validation_model",
    "fit_models",
    "record_run",
    "training_summary",
]


@dataclass(frozen=True, slots=True)
class FittedModels:
    """The validation model, its calibrator and the served refit."""

    validation_model: lgb.Booster
    served_model: lgb.Booster
    calibrator: Calibrator
    cv_brier: dict[str, float]
    factor_groups: FactorGroups
    trials: list[TrialResult]
    params: dict[str, object]


class StageClock:
    """Seconds per stage."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 3)
        self._last = now


def fit_models(
    matrix: TrainingMatrix,
    split: RowSplit,
    spec: FeatureSpec,
    max_trials: int,
    report: Progress,
    threads: int = 1,
) -> FittedModels:
    """Validation model and calibrator on out-of-time rows, then the served refit on all."""
    X, y = matrix.X, matrix.y
    report(
        "train",
        0.56,
        f"{len(split.train):,} training rows, {X.shape[1]} features, {max_trials} trials",
    )

    def on_trial(k: int, total: int, result: TrialResult) -> None:
        report(
            "train",
            0.56 + 0.24 * k / total,
            f"trial {k}/{total}: AUC {result.auc:.4f} at {result.best_iteration} trees "
            f"({', '.join(f'{a}={b}' for a, b in result.params.items())})",
        )

    booster, trials, params = train_lightgbm(
        X[split.train],
        y[split.train],
        X[split.tune],
        y[split.tune],
        max_trials=max_trials,
        threads=threads,
        feature_names=spec.codes,
        on_trial=on_trial,
    )
    tune_p = np.asarray(booster.predict(X[split.tune], num_threads=threads))
    calibrator, cv_brier = choose_calibrator(tune_p, y[split.tune])
    report("train", 0.81, f"calibration: {calibrator.method}; refitting on every cutoff")
    served = refit_lightgbm(X, y, params, threads=threads)
    # Near-identical features become one reason (led by the most important one).
    groups = fit_factor_groups(X, booster.feature_importance("gain"))
    return FittedModels(booster, served, calibrator, cv_brier, groups, trials, params)


def evaluate_validation_model(
    config: InstanceConfig,
    matrix: TrainingMatrix,
    split: RowSplit,
    spec: FeatureSpec,
    fitted: FittedModels,
    held: HeldOut,
    threads: int = 1,
) -> ModelEvaluation:
    """Metrics and factors of the validation model on the held-out profiles (streaming.py)."""
    booster = fitted.validation_model
    contributions = np.asarray(
        booster.predict(held.X_explained, pred_contrib=True, num_threads=threads),
        dtype=np.float64,
    ).reshape(len(held.explained), len(spec.features) + 1)
    contributions[:, :-1] = fitted.factor_groups.merge(contributions[:, :-1])
    train_pos = int(matrix.y[split.train].sum())
    context = EvaluationContext(
        window_days=config.goal.window_days,
        custom_events=len(config.custom_events),
        profile_attributes=len(config.profile_attributes),
        train_positives=train_pos,
        train_negatives=len(split.train) - train_pos,
    )
    evaluation = evaluate_model(
        held.y,
        held.probability,
        contributions,
        spec.features,
        context,
        explained_rows=held.explained,
    )
    evaluation.calibrator = calibration_summary(
        held.y, held.raw, fitted.calibrator, fitted.cv_brier
    )
    return evaluation


def training_summary(
    matrix: TrainingMatrix, split: RowSplit, held: HeldOut, clock: StageClock
) -> TrainingSummary:
    return TrainingSummary(
        train_rows=len(split.train),
        train_rows_before_sample=matrix.rows_before_sample,
        train_positives=int(matrix.y[split.train].sum()),
        tuning_rows=len(split.tune),
        evaluation_rows=len(held.y),
        served_rows=matrix.rows,
        served_positives=int(matrix.y.sum()),
        features=matrix.X.shape[1],
        leakage_audit_profiles=matrix.audited,
        seconds=dict(clock.laps),
    )


def record_run(
    evaluation: ModelEvaluation,
    plan: TrainingPlan,
    version: int,
    fitted: FittedModels,
    summary: TrainingSummary,
    parity: ParityReport,
) -> None:
    """Fill in what the run was: instance, cutoffs, parameters, trials, rows, parity."""
    name, cutoffs = plan.config.name, plan.cutoffs
    evaluation.instance, evaluation.version, evaluation.dataset = name, version, plan.dataset
    evaluation.validation_cutoff = cutoffs.validation.isoformat()
    evaluation.cutoffs = [c.isoformat() for c in cutoffs.cutoffs]
    evaluation.training_cutoffs = [cutoffs.cutoffs[i].isoformat() for i in cutoffs.training]
    evaluation.parameters = {k: str(v) for k, v in sorted(fitted.params.items())}
    evaluation.trials = [
        TrialSummary(
            params=t.params,
            tuning_auc=t.auc,
            best_iteration=t.best_iteration,
            seconds=round(t.seconds, 3),
        )
        for t in fitted.trials
    ]
    evaluation.training = summary
    evaluation.parity = ParityEvidence(
        rows=parity.rows, threshold_rows=parity.threshold_rows, max_abs_diff=parity.max_abs_diff
    )
