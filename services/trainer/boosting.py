"""LightGBM for propensity models: a small search, the validation model, the served refit.

Class weighting balances rare goals; its prior shift is removed again from
the first tree, so outputs are probabilities before calibration. The search
tries a few tree shapes and learning rates with early stopping on the tuning
rows. Trees are bounded (≤ 31 leaves, depth ≤ 6, ≤ 300 rounds) so TreeSHAP
stays cheap for the scorer. `refit_lightgbm` fits the served model with the
chosen parameters on every cutoff, the validation one included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from services.trainer.export import rescale_log_odds, snap_thresholds_to_float32

__all__ = [
    "DEFAULT_TRIALS",
    "MAX_DEPTH",
    "MAX_LEAVES",
    "MAX_ROUNDS",
    "MAX_TRIALS",
    "TrialResult",
    "class_weight",
    "explanation_sample",
    "refit_lightgbm",
    "search_space",
    "train_lightgbm",
]

MAX_TRIALS = 20
DEFAULT_TRIALS = 4
MAX_ROUNDS = 300
EARLY_STOPPING_ROUNDS = 30
MAX_LEAVES = 31
MAX_DEPTH = 6
# Class weights beyond this ratio only add noise.
MAX_CLASS_WEIGHT = 50.0
# Above this many training rows the search runs on a sample, the winner on all rows.
SEARCH_SAMPLE_ROWS = 250_000
# LightGBM threads: one per this many training rows, up to the workers.
ROWS_PER_THREAD = 25_000
# Held-out rows per score bucket whose TreeSHAP values the factors are computed from.
EXPLAIN_ROWS_PER_BUCKET = 5_000
SEED = 20_240_601


@dataclass(frozen=True, slots=True)
class TrialResult:
    """One hyper-parameter trial of the search."""

    params: dict[str, Any]
    auc: float
    best_iteration: int
    seconds: float


# ------------------------------------------------------------------ LightGBM


def search_space(max_trials: int) -> list[dict[str, Any]]:
    """The hyper-parameter candidates, most promising first (deterministic)."""
    curated: list[dict[str, Any]] = [
        {"num_leaves": 15, "min_data_in_leaf": 50, "learning_rate": 0.08},
        {"num_leaves": 31, "min_data_in_leaf": 100, "learning_rate": 0.05},
        {"num_leaves": 7, "min_data_in_leaf": 30, "learning_rate": 0.12},
        {"num_leaves": 31, "min_data_in_leaf": 300, "learning_rate": 0.08},
    ]
    rng = np.random.default_rng(SEED)
    seen = {tuple(sorted(c.items())) for c in curated}
    while len(curated) < MAX_TRIALS:
        candidate = {
            "num_leaves": int(rng.choice([7, 11, 15, 23, 31])),
            "min_data_in_leaf": int(rng.choice([20, 50, 100, 200, 400])),
            "learning_rate": float(rng.choice([0.03, 0.05, 0.08, 0.12])),
        }
        key = tuple(sorted(candidate.items()))
        if key not in seen:
            seen.add(key)
            curated.append(candidate)
    return curated[: max(1, min(max_trials, MAX_TRIALS))]


def _base_params(threads: int, scale_pos_weight: float) -> dict[str, Any]:
    return {
        "objective": "binary",
        "metric": "auc",
        "max_depth": MAX_DEPTH,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "scale_pos_weight": scale_pos_weight,
        "num_threads": max(1, threads),
        "seed": SEED,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


def class_weight(y: np.ndarray) -> float:
    """Weight of positives that balances the classes (bounded)."""
    positives = float(np.sum(y))
    negatives = float(len(y) - positives)
    if positives == 0 or negatives == 0:
        return 1.0
    return float(np.clip(negatives / positives, 1.0 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT))


def explanation_sample(probabilities: np.ndarray) -> np.ndarray:
    """Rows whose TreeSHAP values the evaluation's factors use, sorted.

    Up to EXPLAIN_ROWS_PER_BUCKET per score bucket: enough for stable mean
    |SHAP| rankings, and small buckets (often HIGH) are kept whole.
    """
    scores = np.clip(np.rint(np.asarray(probabilities) * 100.0), 0, 100)
    rng = np.random.default_rng(SEED)
    chosen: list[np.ndarray] = []
    for low, high in ((0, 24), (25, 74), (75, 100)):
        rows = np.flatnonzero((scores >= low) & (scores <= high))
        if len(rows) > EXPLAIN_ROWS_PER_BUCKET:
            rows = rng.choice(rows, EXPLAIN_ROWS_PER_BUCKET, replace=False)
        chosen.append(rows)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


@dataclass(frozen=True)
class _Fitter:
    """LightGBM datasets of the training and tune rows, and one fit with early stopping."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_tune: np.ndarray
    y_tune: np.ndarray
    names: list[str]
    """Positional names for the booster (see `train_lightgbm`)."""
    base: dict[str, Any]
    """LightGBM parameters every trial shares."""

    def datasets(self, rows: np.ndarray) -> tuple[lgb.Dataset, lgb.Dataset]:
        """(training set of `rows`, tune set binned like it)."""
        dataset_params = {"feature_pre_filter": False, "verbosity": -1, "max_bin": 255}
        every = len(rows) >= len(self.y_train)
        train_set = lgb.Dataset(
            self.X_train if every else self.X_train[rows],
            label=self.y_train if every else self.y_train[rows],
            feature_name=self.names,
            params=dataset_params,
            free_raw_data=False,
        )
        tune_set = lgb.Dataset(
            self.X_tune,
            label=self.y_tune,
            reference=train_set,
            feature_name=self.names,
            params=dataset_params,
            free_raw_data=False,
        )
        return train_set, tune_set

    def fit(
        self, params: dict[str, Any], sets: tuple[lgb.Dataset, lgb.Dataset]
    ) -> tuple[lgb.Booster, float, int]:
        """(booster, tune AUC at its best iteration, best iteration)."""
        booster = lgb.train(
            {**self.base, **params},
            sets[0],
            num_boost_round=MAX_ROUNDS,
            valid_sets=[sets[1]],
            valid_names=["tune"],
            callbacks=[
                lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)
            ],
        )
        best = booster.best_iteration or booster.current_iteration()
        score = booster.best_score.get("tune", {}).get("auc", float("nan"))
        return booster, float(score), int(best)


def _search(
    fitter: _Fitter,
    sets: tuple[lgb.Dataset, lgb.Dataset],
    candidates: list[dict[str, Any]],
    on_trial: Callable[[int, int, TrialResult], None] | None,
) -> tuple[lgb.Booster, dict[str, Any], list[TrialResult]]:
    """Fit every candidate; (best booster by tune AUC, its parameters, every trial)."""
    trials: list[TrialResult] = []
    best_booster: lgb.Booster | None = None
    best_auc = -math.inf
    best_params = candidates[0]
    for k, params in enumerate(candidates):
        started = time.perf_counter()
        booster, auc, iteration = fitter.fit(params, sets)
        result = TrialResult(dict(params), auc, iteration, time.perf_counter() - started)
        trials.append(result)
        if on_trial is not None:
            on_trial(k + 1, len(candidates), result)
        if auc > best_auc or best_booster is None:
            best_auc, best_booster, best_params = auc, booster, params
    assert best_booster is not None
    return best_booster, best_params, trials


def train_lightgbm(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_tune: np.ndarray,
    y_tune: np.ndarray,
    *,
    max_trials: int = DEFAULT_TRIALS,
    threads: int = 1,
    feature_names: Sequence[str] | None = None,
    on_trial: Callable[[int, int, TrialResult], None] | None = None,
) -> tuple[lgb.Booster, list[TrialResult], dict[str, Any]]:
    """Search and train; returns (booster ready to export, trials, chosen params).

    The returned booster has the class-weighting prior shift removed and its
    thresholds snapped to float32 (exact for float32 inputs, see export.py);
    calibration is a separate step (foresight/calibration.py).
    """
    weight = class_weight(y_train)
    # Threads only pay off on enough rows; on small data they mostly wait on each other.
    threads = max(1, min(threads, len(y_train) // ROWS_PER_THREAD))
    base = _base_params(threads, weight)
    n_features = X_train.shape[1] if feature_names is None else len(list(feature_names))
    # LightGBM wants plain names: codes like "count_7d__commerce.purchases" are fine,
    # but some characters (e.g. JSON specials) are not, so the booster uses positions.
    fitter = _Fitter(X_train, y_train, X_tune, y_tune, [f"f{i}" for i in range(n_features)], base)
    rng = np.random.default_rng(SEED)
    search_rows = np.arange(len(y_train))
    if len(search_rows) > SEARCH_SAMPLE_ROWS and max_trials > 1:
        search_rows = np.sort(rng.choice(len(y_train), SEARCH_SAMPLE_ROWS, replace=False))
    candidates = search_space(max_trials)
    best_booster, best_params, trials = _search(
        fitter, fitter.datasets(search_rows), candidates, on_trial
    )
    if len(search_rows) < len(y_train):
        best_booster, _, _ = fitter.fit(best_params, fitter.datasets(np.arange(len(y_train))))
    # Keep only the trees up to the best iteration.
    trimmed = lgb.Booster(
        model_str=best_booster.model_to_string(num_iteration=best_booster.best_iteration or -1)
    )
    final = _remove_prior_shift(trimmed, weight)
    chosen = {
        **{k: v for k, v in base.items() if k not in ("num_threads", "verbosity")},
        **best_params,
        "num_trees": final.num_trees(),
        "prior_shift": -math.log(weight),
    }
    return final, trials, chosen


def _remove_prior_shift(booster: lgb.Booster, weight: float) -> lgb.Booster:
    """Undo the class weighting's prior shift (log-odds − log weight); thresholds to float32.

    The calibrator (foresight/calibration.py) then corrects what is left on
    out-of-time rows; the export stays a plain tree ensemble.
    """
    return snap_thresholds_to_float32(rescale_log_odds(booster, 1.0, -math.log(weight)))


def refit_lightgbm(
    X: np.ndarray,
    y: np.ndarray,
    chosen: dict[str, Any],
    *,
    threads: int = 1,
) -> lgb.Booster:
    """The served model: the chosen parameters and tree count, fitted on every row given.

    No early stopping (there is no later data to stop on): the number of trees
    the validation model stopped at is kept.
    """
    weight = class_weight(y)
    threads = max(1, min(threads, len(y) // ROWS_PER_THREAD))
    params = {**_base_params(threads, weight)}
    params.update({k: chosen[k] for k in ("num_leaves", "min_data_in_leaf", "learning_rate")})
    rounds = max(1, int(chosen["num_trees"]))
    names = [f"f{i}" for i in range(X.shape[1])]
    data = lgb.Dataset(
        X,
        label=y,
        feature_name=names,
        params={"feature_pre_filter": False, "verbosity": -1, "max_bin": 255},
    )
    booster = lgb.train(params, data, num_boost_round=rounds)
    return _remove_prior_shift(booster, weight)
