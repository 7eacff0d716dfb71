"""Protobuf conversion of the model domain (versions, evaluations, goal checks, progress).

The only trainer module besides `converters` that touches generated code;
the domain modules (training, registry, evaluation, export) stay free of it.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from foresight.api.common.v1 import common_pb2 as cpb
from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.convert import progress_to_pb, status_to_pb
from foresight.evaluation_report import FactorWeight, ModelEvaluation, PopulationCounts
from services.trainer.registry import ModelVersionInfo
from services.trainer.training import GoalCheck

__all__ = [
    "evaluation_to_pb",
    "goal_check_to_pb",
    "model_version_to_pb",
    "population_to_pb",
    "progress_event",
    "version_event",
    "versions_to_pb",
]

_QUALITY = {"GOOD": pb.QUALITY_GOOD, "POOR": pb.QUALITY_POOR}
_BUCKET = {"LOW": cpb.BUCKET_LOW, "MEDIUM": cpb.BUCKET_MEDIUM, "HIGH": cpb.BUCKET_HIGH}


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def model_version_to_pb(info: ModelVersionInfo) -> pb.ModelVersion:
    """A `ModelVersionInfo` as the ModelVersion message."""
    message = pb.ModelVersion(
        instance=info.instance,
        version=info.version,
        status=status_to_pb(info.status),
        current=info.current,
        error=info.error or "",
        artifact_path=info.artifact_path or "",
        auc=info.auc or 0.0,
        feature_count=info.feature_count or 0,
    )
    for name, moment in (
        ("validation_cutoff", info.validation_cutoff),
        ("created_at", info.created_at),
        ("finished_at", info.finished_at),
    ):
        ts = _timestamp(moment)
        if ts is not None:
            getattr(message, name).CopyFrom(ts)
    return message


def versions_to_pb(infos: list[ModelVersionInfo]) -> pb.ListModelVersionsResponse:
    """ListModelVersions response (already newest first)."""
    return pb.ListModelVersionsResponse(versions=[model_version_to_pb(i) for i in infos])


def goal_check_to_pb(check: GoalCheck) -> pb.ValidateGoalResponse:
    """The ValidateGoal dry run as its response."""
    message = pb.ValidateGoalResponse(
        eligible=check.eligible,
        positives=check.positives,
        negatives=check.negatives,
        enough_data=check.enough_data,
        message=check.message,
        population=population_to_pb(check.population.counts()),
    )
    message.cutoff.FromDatetime(check.cutoff)
    return message


def progress_event(stage: str, fraction: float, message: str) -> pb.TrainModelEvent:
    """One progress message of the TrainModel stream."""
    return pb.TrainModelEvent(progress=progress_to_pb(stage, fraction, message))


def version_event(info: ModelVersionInfo) -> pb.TrainModelEvent:
    """The final message of the TrainModel stream."""
    return pb.TrainModelEvent(version=model_version_to_pb(info))


def _factor(f: FactorWeight) -> cpb.FactorWeight:
    return cpb.FactorWeight(code=f.code, description=f.description, weight=f.weight, share=f.share)


def population_to_pb(counts: PopulationCounts) -> pb.PopulationCounts:
    """What each population rule excluded."""
    return pb.PopulationCounts(
        with_history=counts.with_history,
        excluded_by_lookback=counts.excluded_by_lookback,
        excluded_by_conditions=counts.excluded_by_conditions,
        eligible=counts.eligible,
    )


def evaluation_to_pb(evaluation: ModelEvaluation) -> pb.Evaluation:
    """A stored evaluation as the Evaluation message."""
    e = evaluation
    calibrator = e.calibrator
    return pb.Evaluation(
        instance=e.instance,
        version=e.version,
        auc=e.auc or 0.0,
        pr_auc=e.pr_auc or 0.0,
        log_loss=e.log_loss or 0.0,
        brier=e.brier or 0.0,
        validation_rows=e.validation_rows,
        positive_rate=e.positive_rate,
        deciles=[
            pb.DecileRow(
                decile=d.decile,
                positive_rate=d.positive_rate,
                lift=d.lift,
                cumulative_gain=d.cumulative_gain,
            )
            for d in e.deciles
        ],
        calibration=[
            pb.CalibrationBin(predicted=c.predicted, observed=c.observed, rows=c.rows)
            for c in e.calibration
        ],
        score_histogram=[
            pb.HistogramBin(low=h.low, high=h.high, count=h.count) for h in e.score_histogram
        ],
        quality=_QUALITY.get(e.quality, pb.QUALITY_UNSPECIFIED),
        suggestions=list(e.suggestions),
        global_factors=[_factor(f) for f in e.global_factors],
        bucket_factors=[
            pb.BucketFactors(
                bucket=_BUCKET.get(b.bucket, cpb.BUCKET_UNSPECIFIED),
                profiles=b.profiles,
                factors=[_factor(f) for f in b.factors],
            )
            for b in e.bucket_factors
        ],
        parameters=dict(e.parameters),
        population=population_to_pb(e.population),
        calibration_method=calibrator.method,
        ece_before=calibrator.ece_before or 0.0,
        ece_after=calibrator.ece_after or 0.0,
        brier_before=calibrator.brier_before or 0.0,
        training_cutoffs=[_iso_timestamp(c) for c in e.training_cutoffs],
    )


def _iso_timestamp(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text))
    return stamp
