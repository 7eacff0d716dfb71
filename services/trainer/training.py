"""Training Customer AI propensity models: the trainer's model facade.

One job (`ModelTrainer.train`) goes:

1. **cutoffs** — rolling midnight cutoffs whose number and spacing adapt to
   the history (labels.choose_cutoffs); the latest one whose outcome window
   has closed validates out of time.
2. **labels** — per shard: eligible profiles and their labels at every cutoff
   (negatives kept), and how many profiles each population rule excluded.
   The minimum data gate runs on these counts.
3. **features** — the feature spec (vocabularies) is fitted once, then each
   shard is featurized as of every cutoff, with a leakage audit per shard
   (services/trainer/shards.py); matrix.py assembles the rows.
   Above `sample_rows` only a bounded stratified sample of each cutoff's
   rows is featurized into the matrix (sampling.py).
4. **validation model** — LightGBM (boosting.py) on the cutoffs whose windows
   end before the validation cutoff, tuned on half of the validation
   cutoff's rows in the matrix; a calibrator (isotonic or Platt, chosen by
   cross-validation) is fitted on that tuning half.
5. **evaluate** — on every other eligible profile of the validation cutoff,
   held out from every choice, streamed shard by shard (streaming.py):
   metrics, factors, calibration error before and after.
6. **served model** — refit with the chosen parameters on every cutoff,
   the validation one included, so it has seen the newest behaviour.
7. **export** — ONNX + parity check, atomic bundle with the calibrator, then
   READY and current.

Shard work is done by pure module-level functions over one shard run in a
process pool (foresight.shards); no grpc here: the servicer calls `ModelTrainer`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from datetime import datetime

import polars as pl
from sqlalchemy import select

from foresight import instance as inst
from foresight.errors import FailedPrecondition, ForesightError, InvalidArgument, NotFound
from foresight.evaluation_report import (
    ModelEvaluation,
)
from foresight.events.store import EventStore
from foresight.features.labels import (
    LabelCounts,
    PopulationFunnel,
    require_enough_labels,
)
from foresight.features.spec import FeatureSpec
from foresight.features.spec_fit import fit_feature_spec
from foresight.instance import InstanceConfig
from foresight.shards import ShardRunner
from foresight.storage import bundles
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow
from foresight.storage.profiles import profile_attributes
from services.trainer.boosting import (
    DEFAULT_TRIALS,
    MAX_TRIALS,
)
from services.trainer.export import check_parity, to_onnx, write_bundle
from services.trainer.matrix import RowSplit, TrainingMatrix, assemble, split_rows
from services.trainer.modelling import (
    FittedModels,
    Progress,
    StageClock,
    evaluate_validation_model,
    fit_models,
    record_run,
    training_summary,
)
from services.trainer.planning import (
    TrainingPlan,
    combined_funnel,
    combined_labels,
    data_gate,
    history_message,
    make_plan,
    spec_sample,
    split_profiles,
)
from services.trainer.registry import OWNER, ModelRegistry, ModelVersionInfo, bundle_path
from services.trainer.sampling import DEFAULT_SAMPLE_ROWS, SampleSummary, sample_training_rows
from services.trainer.shards import (
    LeakageDetected,
    ShardJob,
    ShardLabels,
    shard_features,
    shard_labels,
)
from services.trainer.streaming import HeldOut, held_out

__all__ = [
    "GoalCheck",
    "LeakageDetected",
    "ModelTrainer",
    "ModelVersionInfo",
    "Progress",
    "ShardJob",
]

log = logging.getLogger(__name__)


def _noop_progress(stage: str, fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class GoalCheck:
    """The ValidateGoal dry run at the validation cutoff training would use."""

    cutoff: datetime
    eligible: int
    positives: int
    negatives: int
    enough_data: bool
    message: str
    population: PopulationFunnel = field(default_factory=PopulationFunnel)


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

    def get_evaluation(self, instance: str, version: int = 0) -> ModelEvaluation:
        """The stored evaluation of a version (0 = current)."""
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
        """Counts at the validation cutoff, what each population rule excluded, and the verdict."""
        inst.validate_config(config)
        plan = make_plan(self.db, self.store, config, dataset)
        validation = plan.cutoffs.validation
        args = [(job, config, [validation]) for job in plan.jobs]
        shards: list[ShardLabels] = self.runner.map(shard_labels, args)
        labels = combined_labels(shards)
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
        history = history_message(plan)
        if history is not None:
            enough = False
            message = f"{message}; {history}" if message else history
        return GoalCheck(
            validation,
            counts.eligible,
            counts.positives,
            counts.negatives,
            enough,
            message,
            combined_funnel(shards),
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
        clock = StageClock()
        plan = make_plan(self.db, self.store, config, dataset)
        history = history_message(plan)
        if history is not None:
            raise FailedPrecondition(history)
        shards, validation, sample = self._label_stage(plan, report)
        clock.lap("labels")
        profiles = self._profiles(plan.config)
        shard_profiles = split_profiles(profiles, self.store.shards, [j.shard for j in plan.jobs])
        spec, matrix = self._feature_stage(plan, shards, profiles, shard_profiles, sample, report)
        clock.lap("features")
        split = split_rows(matrix, plan.cutoffs.training, plan.cutoffs.validation_index)
        fitted = fit_models(matrix, split, spec, max_trials, report, self.workers)
        clock.lap("train")
        held = self._held_out(plan, validation, matrix, split, spec, shard_profiles, fitted, report)
        evaluation = evaluate_validation_model(
            plan.config, matrix, split, spec, fitted, held, self.workers
        )
        evaluation.population = combined_funnel(shards).counts()
        clock.lap("evaluate")
        return self._publish(
            plan, version, spec, matrix, split, fitted, held, evaluation, clock, report
        )

    # ------------------------------------------------------------ stages

    def _label_stage(
        self, plan: TrainingPlan, report: Progress
    ) -> tuple[list[ShardLabels], list[pl.DataFrame], SampleSummary]:
        """Labels at every cutoff, per shard; the data gate; the population funnel reported.

        Returns each shard's sampled labels, its validation-cutoff (profile_id,
        label) rows, all of them, for the evaluation, and what the sample kept.
        """
        cutoffs = plan.cutoffs.cutoffs
        report("labels", 0.03, f"{len(cutoffs)} cutoffs, {len(plan.jobs)} shards")
        shards: list[ShardLabels] = self.runner.map(
            shard_labels,
            [(job, plan.config, list(cutoffs)) for job in plan.jobs],
            lambda done, total: report(
                "labels", 0.03 + 0.10 * done / total, f"shard {done}/{total}"
            ),
        )
        data_gate(plan.config, combined_labels(shards), plan.cutoffs)
        funnel = combined_funnel(shards)
        report(
            "labels",
            0.13,
            f"population at {plan.cutoffs.validation.date().isoformat()}: "
            f"{funnel.with_history:,} profiles with history, {funnel.excluded_by_lookback:,} "
            f"excluded by the look-back, {funnel.excluded_by_conditions:,} by the conditions, "
            f"{funnel.eligible:,} eligible",
        )
        # Features only for a bounded stratified sample of every cutoff (sampling.py);
        # the evaluation still covers the whole validation cutoff.
        index = plan.cutoffs.validation_index
        validation = [
            s.labels.filter(pl.col("cutoff") == index).select("profile_id", "label") for s in shards
        ]
        frames, sample = sample_training_rows(
            [s.labels for s in shards], index, self.sample_rows, sample_validation=True
        )
        shards = [replace(s, labels=f) for s, f in zip(shards, frames, strict=True)]
        return shards, validation, sample

    def _feature_stage(
        self,
        plan: TrainingPlan,
        shards: list[ShardLabels],
        profiles: pl.DataFrame | None,
        shard_profiles: list[pl.DataFrame | None],
        sample: SampleSummary,
        report: Progress,
    ) -> tuple[FeatureSpec, TrainingMatrix]:
        """The feature vocabulary, then every shard's sampled rows featurized as of their cutoff."""
        report("features", 0.14, "fitting the feature vocabulary")
        cutoffs = list(plan.cutoffs.cutoffs)
        spec = fit_feature_spec(
            spec_sample(plan.jobs), profiles, plan.config, plan.cutoffs.validation
        )
        feature_args = [
            (job, spec, cutoffs, labelled.labels, shard_profiles[i])
            for i, (job, labelled) in enumerate(zip(plan.jobs, shards, strict=True))
        ]
        parts = self.runner.map(
            shard_features,
            feature_args,
            lambda done, total: report(
                "features", 0.15 + 0.40 * done / total, f"featurized shard {done}/{total}"
            ),
        )
        return spec, assemble(parts, rows_before_sample=sample.training_rows)

    def _held_out(
        self,
        plan: TrainingPlan,
        validation: list[pl.DataFrame],
        matrix: TrainingMatrix,
        split: RowSplit,
        spec: FeatureSpec,
        shard_profiles: list[pl.DataFrame | None],
        fitted: FittedModels,
        report: Progress,
    ) -> HeldOut:
        """Every validation-cutoff profile the tuning rows did not use, predicted shard by shard."""
        tuned = pl.Series(matrix.profile_ids[split.tune], dtype=pl.String).implode()
        held = [frame.filter(~pl.col("profile_id").is_in(tuned)) for frame in validation]
        report("evaluate", 0.82, f"evaluating on {sum(f.height for f in held):,} held-out profiles")
        return held_out(
            self.runner,
            plan.jobs,
            spec,
            plan.cutoffs.validation,
            held,
            shard_profiles,
            fitted.validation_model,
            fitted.calibrator,
            report,
        )

    def _publish(
        self,
        plan: TrainingPlan,
        version: int,
        spec: FeatureSpec,
        matrix: TrainingMatrix,
        split: RowSplit,
        fitted: FittedModels,
        held: HeldOut,
        evaluation: ModelEvaluation,
        clock: StageClock,
        report: Progress,
    ) -> ModelVersionInfo:
        """ONNX export of the served model with its parity check, the bundle, READY."""
        name, cutoffs = plan.config.name, plan.cutoffs
        report("export", 0.92, "converting to ONNX and checking parity")
        n_features = matrix.X.shape[1]
        onnx_model = to_onnx(fitted.served_model, n_features)
        parity = check_parity(onnx_model, fitted.served_model, held.X_explained)
        relative = bundle_path(name, version)
        clock.lap("export")
        record_run(
            evaluation, plan, version, fitted, training_summary(matrix, split, held, clock), parity
        )
        write_bundle(
            self.artifacts,
            relative,
            owner=OWNER,
            onnx_model=onnx_model,
            booster=fitted.served_model,
            feature_spec=spec,
            instance=plan.config,
            evaluation=evaluation,
            calibrator=fitted.calibrator,
            factor_groups=fitted.factor_groups,
            metadata=bundles.model_metadata(
                name, version, plan.dataset, n_features, cutoffs.validation
            ),
        )
        report("publish", 0.99, f"publishing {relative}")
        info = self.registry.mark_ready(
            name,
            version,
            auc=float(evaluation.auc or 0.0),
            feature_count=n_features,
            validation_cutoff=cutoffs.validation,
        )
        report(
            "done",
            1.0,
            f"{name} v{version}: AUC {evaluation.auc or float('nan'):.3f} ({evaluation.quality}), "
            f"calibration {fitted.calibrator.method}, parity {parity.max_abs_diff:.1e}",
        )
        return info

    # ------------------------------------------------------------ helpers
