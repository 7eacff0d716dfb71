"""Training Customer AI propensity models: the trainer's model facade.

One job (`ModelTrainer.train`) goes:

1. **cutoffs** — rolling cutoffs one outcome window apart; the latest is the
   validation cutoff (time-based split: no training label window overlaps it).
2. **labels** — per shard: eligible profiles and their labels at every cutoff
   (negatives kept). The minimum data gate runs on these counts.
3. **features** — the feature spec (vocabularies) is fitted once, then each
   shard is featurized as of every cutoff. Each shard also runs a leakage
   audit: features of sampled profiles must be identical whether or not the
   featurizer is given the events at or after the cutoff.
4. **train** — LightGBM with class weighting (its prior shift is removed
   again from the first tree, so probabilities stay calibrated), a small
   search over tree shape and learning rate, early stopping on half of the
   validation-cutoff profiles (tuning half). Trees are bounded (≤ 31 leaves,
   depth ≤ 6, ≤ 300 rounds) so TreeSHAP stays cheap for the scorer.
5. **evaluate** — on the other half (held out from every choice).
6. **export** — ONNX + parity check, atomic bundle, then READY and current.

Shard work is done by pure module-level functions over one shard (all events
of a profile live in one shard) run in a process pool; the same functions can
run as Dask tasks. No grpc here: the servicer calls `ModelTrainer`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import lightgbm as lgb
import numpy as np
import polars as pl
from sqlalchemy import select

from foresight import instance as inst
from foresight.errors import FailedPrecondition, ForesightError, InvalidArgument, NotFound
from foresight.events.store import EventStore, parts_by_shard, shard_of
from foresight.features.labels import (
    LabelCounts,
    choose_cutoffs,
    require_enough_labels,
)
from foresight.features.spec import fit_feature_spec
from foresight.instance import InstanceConfig
from foresight.shards import ShardRunner
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow
from foresight.storage.profiles import profile_attributes
from services.trainer.evaluation import EvaluationContext, evaluate_model
from services.trainer.export import (
    check_parity,
    rescale_log_odds,
    snap_thresholds_to_float32,
    to_onnx,
    write_bundle,
)
from services.trainer.registry import OWNER, ModelRegistry, ModelVersionInfo, bundle_path
from services.trainer.sampling import DEFAULT_SAMPLE_ROWS, sample_training_rows
from services.trainer.shards import LeakageDetected, ShardJob, shard_features, shard_labels

__all__ = [
    "MAX_TRIALS",
    "GoalCheck",
    "LeakageDetected",
    "ModelTrainer",
    "ModelVersionInfo",
    "Progress",
    "ShardJob",
    "TrialResult",
    "search_space",
    "shard_features",
    "shard_labels",
    "train_lightgbm",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]
T = TypeVar("T")

N_CUTOFFS = 4
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
# Events read to fit the vocabularies (whole shards, in shard order).
SPEC_SAMPLE_ROWS = 2_000_000
SEED = 20_240_601


def _noop_progress(stage: str, fraction: float, message: str) -> None:
    return None


# ------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class GoalCheck:
    """The ValidateGoal dry run at the validation cutoff training would use."""

    cutoff: datetime
    eligible: int
    positives: int
    negatives: int
    enough_data: bool
    message: str


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


def fit_platt(raw: np.ndarray, y: np.ndarray, prior: float = 0.0) -> tuple[float, float]:
    """(a, b) so that sigmoid(a·raw + b) is calibrated on (raw, y): 1-D logistic regression.

    Newton's method from (1, prior); falls back to (1, prior), the pure class-weight
    correction, when the rows hold one class only or the fit leaves sane bounds.
    """
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return 1.0, prior
    a, b = 1.0, prior
    for _ in range(50):
        z = np.clip(a * raw + b, -35, 35)
        p = 1.0 / (1.0 + np.exp(-z))
        w = p * (1 - p) + 1e-12
        r = p - y
        g = np.array([np.dot(r, raw), r.sum()])
        h = np.array([[np.dot(w * raw, raw), np.dot(w, raw)], [np.dot(w, raw), w.sum()]])
        h += np.eye(2) * 1e-9 * len(y)
        step = np.linalg.solve(h, g)
        a, b = a - float(step[0]), b - float(step[1])
        if np.max(np.abs(step)) < 1e-10:
            break
    if not (math.isfinite(a) and math.isfinite(b)) or not 0.1 <= a <= 10.0:
        return 1.0, prior
    return a, b


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
    """Search, train and calibrate; returns (booster ready to export, trials, chosen params).

    The returned booster has the class-weighting prior shift removed and its
    thresholds snapped to float32 (exact for float32 inputs, see export.py).
    """
    weight = class_weight(y_train)
    # Threads only pay off on enough rows; on small data they mostly wait on each other.
    threads = max(1, min(threads, len(y_train) // ROWS_PER_THREAD))
    base = _base_params(threads, weight)
    names = (
        [f"f{i}" for i in range(X_train.shape[1])] if feature_names is None else list(feature_names)
    )
    # LightGBM wants plain names: codes like "count_7d__commerce.purchases" are fine,
    # but some characters (e.g. JSON specials) are not, so the booster uses positions.
    lgb_names = [f"f{i}" for i in range(len(names))]
    rng = np.random.default_rng(SEED)
    search_rows = np.arange(len(y_train))
    if len(search_rows) > SEARCH_SAMPLE_ROWS and max_trials > 1:
        search_rows = np.sort(rng.choice(len(y_train), SEARCH_SAMPLE_ROWS, replace=False))

    def dataset(rows: np.ndarray) -> tuple[lgb.Dataset, lgb.Dataset]:
        dataset_params = {"feature_pre_filter": False, "verbosity": -1, "max_bin": 255}
        train_set = lgb.Dataset(
            X_train[rows] if len(rows) < len(y_train) else X_train,
            label=y_train[rows] if len(rows) < len(y_train) else y_train,
            feature_name=lgb_names,
            params=dataset_params,
            free_raw_data=False,
        )
        tune_set = lgb.Dataset(
            X_tune,
            label=y_tune,
            reference=train_set,
            feature_name=lgb_names,
            params=dataset_params,
            free_raw_data=False,
        )
        return train_set, tune_set

    def fit(
        params: dict[str, Any], sets: tuple[lgb.Dataset, lgb.Dataset]
    ) -> tuple[lgb.Booster, float, int]:
        booster = lgb.train(
            {**base, **params},
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

    sets = dataset(search_rows)
    candidates = search_space(max_trials)
    trials: list[TrialResult] = []
    best_booster: lgb.Booster | None = None
    best_auc = -math.inf
    best_params = candidates[0]
    for k, params in enumerate(candidates):
        started = time.perf_counter()
        booster, auc, iteration = fit(params, sets)
        result = TrialResult(dict(params), auc, iteration, time.perf_counter() - started)
        trials.append(result)
        if on_trial is not None:
            on_trial(k + 1, len(candidates), result)
        if auc > best_auc or best_booster is None:
            best_auc, best_booster, best_params = auc, booster, params
    assert best_booster is not None
    if len(search_rows) < len(y_train):
        best_booster, _, _ = fit(best_params, dataset(np.arange(len(y_train))))
    # Keep only the trees up to the best iteration.
    trimmed = lgb.Booster(
        model_str=best_booster.model_to_string(num_iteration=best_booster.best_iteration or -1)
    )
    # Class weighting (and early stopping) skew the raw scores; a Platt fit on
    # the tuning rows maps them back to calibrated log-odds, baked into the trees.
    raw_tune = np.asarray(trimmed.predict(X_tune, raw_score=True), dtype=np.float64)
    scale, shift = fit_platt(raw_tune, y_tune, prior=-math.log(weight))
    final = snap_thresholds_to_float32(rescale_log_odds(trimmed, scale, shift))
    chosen = {
        **{k: v for k, v in base.items() if k not in ("num_threads", "verbosity")},
        **best_params,
        "num_trees": final.num_trees(),
        "calibration_scale": scale,
        "calibration_shift": shift,
    }
    return final, trials, chosen


# ------------------------------------------------------------------ the facade


@dataclass
class _Plan:
    config: InstanceConfig
    dataset: str
    jobs: list[ShardJob]
    cutoffs: list[datetime]
    data_start: datetime
    data_end: datetime
    timings: dict[str, float] = field(default_factory=dict)


class ModelTrainer:
    """Validates goals, trains, evaluates, exports and registers propensity models."""

    def __init__(
        self,
        db: Database,
        event_store: EventStore,
        artifacts: ArtifactStore,
        workers: int = 0,
        scheduler: str | None = None,
        sample_rows: int = DEFAULT_SAMPLE_ROWS,
    ) -> None:
        self.db = db
        self.sample_rows = sample_rows
        self.store = event_store
        self.artifacts = artifacts
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self.registry = ModelRegistry(db, artifacts)
        self.runner = ShardRunner(self.workers, keep_alive=True, scheduler=scheduler)

    def close(self) -> None:
        """Release the worker processes (call at shutdown)."""
        self.runner.close()

    # ------------------------------------------------------------ registry pass-through

    def recover_interrupted(self) -> list[tuple[str, int]]:
        """At trainer start: fail TRAINING rows of a killed trainer (see ModelRegistry)."""
        return self.registry.recover_interrupted()

    def get_version(self, instance: str, version: int = 0) -> ModelVersionInfo:
        """One model version (0 = current); NotFound when absent."""
        return self.registry.get(instance, version)

    def list_versions(self, instance: str) -> list[ModelVersionInfo]:
        """Every model version of an instance, newest first."""
        return self.registry.list(instance)

    def get_evaluation(self, instance: str, version: int = 0) -> dict[str, Any]:
        """The stored evaluation.json of a version (0 = current)."""
        return self.registry.read_evaluation(instance, version)

    # ------------------------------------------------------------ planning

    def _instance(self, name: str) -> tuple[InstanceConfig, str]:
        if not name:
            raise InvalidArgument("instance", "must not be empty")
        with self.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == name))
            if row is None:
                raise NotFound(f"instance {name!r} does not exist")
            return inst.from_dict(row.config), row.dataset

    def _plan(self, config: InstanceConfig, dataset: str) -> _Plan:
        catalog.get_dataset(self.db, dataset)  # NotFound for an unknown dataset
        parts = catalog.catalogued_parts(self.db, dataset)
        span = catalog.time_range(self.db, dataset)
        if not parts or span is None:
            raise FailedPrecondition(f"dataset {dataset!r} has no events; import some first")
        start, latest = span
        end = latest + timedelta(microseconds=1)
        window = config.goal.window_days
        cutoffs = choose_cutoffs(end, window, n=N_CUTOFFS, data_start=start)
        by_shard = parts_by_shard(parts)
        jobs = [
            ShardJob(self.store.url, self.store.shards, dataset, shard, tuple(paths))
            for shard, paths in sorted(by_shard.items())
        ]
        return _Plan(config, dataset, jobs, cutoffs, start, end)

    @staticmethod
    def _history_message(plan: _Plan) -> str | None:
        """Why there is no training cutoff before the validation one, if so."""
        if len(plan.cutoffs) >= 2:
            return None
        days = (plan.data_end - plan.data_start).days
        need = 2 * plan.config.goal.window_days + 30
        return (
            f"the dataset covers {days} days, too little for a training and a validation cutoff: "
            f"with a {plan.config.goal.window_days}-day outcome window at least {need} days are needed "
            "(two outcome windows plus 30 days of history); shorten the outcome window or import more history"
        )

    def _profiles(self, config: InstanceConfig) -> pl.DataFrame | None:
        """Profile attributes the instance uses, one column each (None when it uses none)."""
        if not config.profile_attributes:
            return None
        profiles = profile_attributes(self.db, config.profile_attributes)
        if profiles is None:
            raise FailedPrecondition(
                "the instance uses profile attributes but no profiles were imported; run ImportProfiles"
            )
        return profiles

    # ------------------------------------------------------------ ValidateGoal

    def validate_goal(self, config: InstanceConfig, dataset: str) -> GoalCheck:
        """Eligible / positive / negative counts at the validation cutoff, and the gate's verdict."""
        inst.validate_config(config)
        plan = self._plan(config, dataset)
        validation = plan.cutoffs[-1]
        args = [(job, inst.to_dict(config), [validation]) for job in plan.jobs]
        frames = self.runner.map(shard_labels, args)
        labels = pl.concat(frames) if frames else pl.DataFrame()
        positives = int(labels.get_column("label").sum() or 0) if labels.height else 0
        counts = LabelCounts(validation, labels.height, positives, labels.height - positives)
        message = ""
        enough = True
        try:
            require_enough_labels(
                counts, config.min_positives, config.min_negatives, config.goal.occurrence
            )
        except FailedPrecondition as exc:
            enough, message = False, exc.message
        history = self._history_message(plan)
        if history is not None:
            enough = False
            message = f"{message}; {history}" if message else history
        return GoalCheck(
            validation, counts.eligible, counts.positives, counts.negatives, enough, message
        )

    # ------------------------------------------------------------ TrainModel

    def train(
        self,
        instance_name: str,
        max_trials: int = DEFAULT_TRIALS,
        progress: Progress | None = None,
    ) -> ModelVersionInfo:
        """Train, evaluate, export and publish a new version of an instance (blocking).

        Progress goes to `progress(stage, fraction 0–1, message)`. Any failure
        leaves the version FAILED with the error and re-raises it; the data
        gate raises FailedPrecondition with the counts and what to change.
        """
        if max_trials < 0 or max_trials > MAX_TRIALS:
            raise InvalidArgument("max_trials", f"must be between 0 (default) and {MAX_TRIALS}")
        trials = max_trials or DEFAULT_TRIALS
        report = progress or _noop_progress
        config, dataset = self._instance(instance_name)
        version = self.registry.create_training(instance_name)
        try:
            report("prepare", 0.01, f"training {instance_name} v{version}")
            return self._train(config, dataset, version, trials, report)
        except BaseException as exc:
            if not isinstance(exc, ForesightError):
                log.exception("training %s v%d failed", instance_name, version)
            try:
                self.registry.end(instance_name, version, exc)
            except Exception:  # the original error matters more
                log.exception("could not end %s v%d", instance_name, version)
            raise

    def _train(
        self, config: InstanceConfig, dataset: str, version: int, max_trials: int, report: Progress
    ) -> ModelVersionInfo:
        name = config.name
        clock = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = round(now - clock, 3)
            clock = now

        plan = self._plan(config, dataset)
        history = self._history_message(plan)
        if history is not None:
            raise FailedPrecondition(history)
        cutoffs = plan.cutoffs
        config_dict = inst.to_dict(config)
        jobs = plan.jobs
        report("labels", 0.03, f"{len(cutoffs)} cutoffs, {len(jobs)} shards")
        # -- labels and the data gate
        label_frames = self.runner.map(
            shard_labels,
            [(job, config_dict, cutoffs) for job in jobs],
            lambda done, total: report(
                "labels", 0.03 + 0.10 * done / total, f"shard {done}/{total}"
            ),
        )
        labels = pl.concat(label_frames)
        self._gate(config, labels, cutoffs)
        del labels
        # Features only for a bounded stratified sample of the training cutoffs (sampling.py).
        label_frames, sample = sample_training_rows(
            label_frames, len(cutoffs) - 1, self.sample_rows
        )
        lap("labels")
        # -- feature spec and features
        report("features", 0.14, "fitting the feature vocabulary")
        profiles = self._profiles(config)
        spec = fit_feature_spec(self._spec_sample(jobs), profiles, config, cutoffs[-1])
        spec_dict = spec.to_dict()
        shard_profiles = self._split_profiles(profiles, len(jobs), [j.shard for j in jobs])
        feature_args = [
            (job, spec_dict, cutoffs, frame, shard_profiles[i])
            for i, (job, frame) in enumerate(zip(jobs, label_frames, strict=True))
        ]
        del label_frames
        parts = self.runner.map(
            shard_features,
            feature_args,
            lambda done, total: report(
                "features", 0.15 + 0.40 * done / total, f"featurized shard {done}/{total}"
            ),
        )
        lap("features")
        X = np.vstack([p.X for p in parts])
        y = np.concatenate([p.y for p in parts])
        cut = np.concatenate([p.cutoff for p in parts])
        ids = np.concatenate([p.profile_ids for p in parts])
        audited = sum(p.audited for p in parts)
        del parts
        validation_index = len(cutoffs) - 1
        train_mask = cut < validation_index
        val_rows = np.flatnonzero(~train_mask)
        # Deterministic half split of the validation cutoff's profiles: one half
        # tunes (early stopping, trial choice), the other is never looked at
        # until the final evaluation.
        order = val_rows[np.argsort(ids[val_rows], kind="stable")]
        shuffled = order[np.random.default_rng(SEED).permutation(len(order))]
        tune_rows = np.sort(shuffled[: len(shuffled) // 2])
        eval_rows = np.sort(shuffled[len(shuffled) // 2 :])
        X_train, y_train = X[train_mask], y[train_mask]
        report(
            "train",
            0.56,
            f"{len(y_train):,} training rows, {X.shape[1]} features, {max_trials} trials",
        )

        def on_trial(k: int, total: int, result: TrialResult) -> None:
            report(
                "train",
                0.56 + 0.30 * k / total,
                f"trial {k}/{total}: AUC {result.auc:.4f} at {result.best_iteration} trees "
                f"({', '.join(f'{a}={b}' for a, b in result.params.items())})",
            )

        booster, trial_results, params = train_lightgbm(
            X_train,
            y_train,
            X[tune_rows],
            y[tune_rows],
            max_trials=max_trials,
            threads=self.workers,
            feature_names=spec.codes,
            on_trial=on_trial,
        )
        lap("train")
        # -- evaluation on the held-out half
        report("evaluate", 0.87, f"evaluating on {len(eval_rows):,} held-out profiles")
        X_eval, y_eval = X[eval_rows], y[eval_rows]
        p_eval = np.asarray(booster.predict(X_eval, num_threads=self.workers), dtype=np.float64)
        explained = explanation_sample(p_eval)
        contributions = np.asarray(
            booster.predict(X_eval[explained], pred_contrib=True, num_threads=self.workers),
            dtype=np.float64,
        )
        train_pos = int(y_train.sum())
        context = EvaluationContext(
            window_days=config.goal.window_days,
            custom_events=len(config.custom_events),
            profile_attributes=len(config.profile_attributes),
            train_positives=train_pos,
            train_negatives=len(y_train) - train_pos,
        )
        evaluation = evaluate_model(
            y_eval, p_eval, contributions, spec.features, context, explained_rows=explained
        )
        lap("evaluate")
        # -- export
        report("export", 0.92, "converting to ONNX and checking parity")
        onnx_model = to_onnx(booster, X.shape[1])
        parity = check_parity(onnx_model, booster, X_eval)
        evaluation.update(
            {
                "instance": name,
                "version": version,
                "dataset": dataset,
                "validation_cutoff": cutoffs[-1].isoformat(),
                "cutoffs": [c.isoformat() for c in cutoffs],
                "parameters": {k: str(v) for k, v in sorted(params.items())},
                "trials": [
                    {
                        "params": t.params,
                        "tuning_auc": t.auc,
                        "best_iteration": t.best_iteration,
                        "seconds": round(t.seconds, 3),
                    }
                    for t in trial_results
                ],
                "training": {
                    "train_rows": len(y_train),
                    "train_rows_before_sample": sample.training_rows,
                    "train_positives": train_pos,
                    "tuning_rows": len(tune_rows),
                    "evaluation_rows": len(eval_rows),
                    "features": X.shape[1],
                    "leakage_audit_profiles": audited,
                    "seconds": timings,
                },
                "parity": {
                    "rows": parity.rows,
                    "threshold_rows": parity.threshold_rows,
                    "max_abs_diff": parity.max_abs_diff,
                },
            }
        )
        relative = bundle_path(name, version)
        lap("export")
        evaluation["training"]["seconds"] = dict(timings)
        write_bundle(
            self.artifacts,
            relative,
            owner=OWNER,
            onnx_model=onnx_model,
            booster=booster,
            feature_spec=spec_dict,
            instance=config_dict,
            evaluation=evaluation,
            metadata={
                "kind": "propensity_model",
                "instance": name,
                "version": version,
                "dataset": dataset,
                "feature_count": X.shape[1],
                "validation_cutoff": cutoffs[-1].isoformat(),
            },
        )
        report("publish", 0.99, f"publishing {relative}")
        info = self.registry.mark_ready(
            name,
            version,
            auc=float(evaluation["auc"] or 0.0),
            feature_count=X.shape[1],
            validation_cutoff=cutoffs[-1],
        )
        report(
            "done",
            1.0,
            f"{name} v{version}: AUC {evaluation['auc'] or float('nan'):.3f} ({evaluation['quality']}), "
            f"parity {parity.max_abs_diff:.1e}",
        )
        return info

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _gate(config: InstanceConfig, labels: pl.DataFrame, cutoffs: Sequence[datetime]) -> None:
        """The minimum data gate at the validation cutoff and over the training cutoffs."""
        last = len(cutoffs) - 1
        val = labels.filter(pl.col("cutoff") == last)
        train = labels.filter(pl.col("cutoff") < last)
        for frame, cutoff in ((val, cutoffs[-1]), (train, cutoffs[-2])):
            positives = int(frame.get_column("label").sum() or 0) if frame.height else 0
            counts = LabelCounts(cutoff, frame.height, positives, frame.height - positives)
            require_enough_labels(
                counts, config.min_positives, config.min_negatives, config.goal.occurrence
            )

    def _spec_sample(self, jobs: Iterable[ShardJob]) -> pl.DataFrame:
        """Whole shards, in shard order, until SPEC_SAMPLE_ROWS events (vocabulary fitting)."""
        frames: list[pl.DataFrame] = []
        rows = 0
        for job in jobs:
            frame = job.read()
            frames.append(frame)
            rows += frame.height
            if rows >= SPEC_SAMPLE_ROWS:
                break
        return pl.concat(frames)

    def _split_profiles(
        self, profiles: pl.DataFrame | None, count: int, shards: Sequence[int]
    ) -> list[pl.DataFrame | None]:
        """Each shard's own profile rows (the store's hash), so workers get only theirs."""
        if profiles is None:
            return [None] * count
        placed = profiles.with_columns(
            shard_of(profiles.get_column("profile_id"), self.store.shards).alias("__shard")
        )
        return [placed.filter(pl.col("__shard") == s).drop("__shard") for s in shards]
