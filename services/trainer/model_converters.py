"""Protobuf conversion of the model domain (versions, evaluations, goal checks, progress).

The only trainer module besides `converters` that touches generated code;
the domain modules (training, registry, evaluation, export) stay free of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from foresight.api.common.v1 import common_pb2 as cpb
from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.convert import status_to_pb
from services.trainer.registry import ModelVersionInfo
from services.trainer.training import GoalCheck

__all__ = [
    "evaluation_to_pb",
    "goal_check_to_pb",
    "model_version_to_pb",
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
    )
    message.cutoff.FromDatetime(check.cutoff)
    return message


def progress_event(stage: str, fraction: float, message: str) -> pb.TrainModelEvent:
    """One progress message of the TrainModel stream."""
    return pb.TrainModelEvent(
        progress=cpb.Progress(stage=stage, fraction=float(fraction), message=message)
    )


def version_event(info: ModelVersionInfo) -> pb.TrainModelEvent:
    """The final message of the TrainModel stream."""
    return pb.TrainModelEvent(version=model_version_to_pb(info))


def _factor(raw: Mapping[str, Any]) -> cpb.FactorWeight:
    return cpb.FactorWeight(
        code=str(raw["code"]),
        description=str(raw.get("description", "")),
        weight=float(raw.get("weight", 0.0)),
        share=float(raw.get("share", 0.0)),
    )


def evaluation_to_pb(evaluation: Mapping[str, Any]) -> pb.Evaluation:
    """A stored evaluation.json as the Evaluation message (extra keys are dropped)."""
    return pb.Evaluation(
        instance=str(evaluation.get("instance", "")),
        version=int(evaluation.get("version", 0)),
        auc=float(evaluation.get("auc") or 0.0),
        pr_auc=float(evaluation.get("pr_auc") or 0.0),
        log_loss=float(evaluation.get("log_loss") or 0.0),
        brier=float(evaluation.get("brier") or 0.0),
        validation_rows=int(evaluation.get("validation_rows", 0)),
        positive_rate=float(evaluation.get("positive_rate") or 0.0),
        deciles=[
            pb.DecileRow(
                decile=int(d["decile"]),
                positive_rate=float(d["positive_rate"]),
                lift=float(d["lift"]),
                cumulative_gain=float(d["cumulative_gain"]),
            )
            for d in evaluation.get("deciles", [])
        ],
        calibration=[
            pb.CalibrationBin(
                predicted=float(c["predicted"]), observed=float(c["observed"]), rows=int(c["rows"])
            )
            for c in evaluation.get("calibration", [])
        ],
        score_histogram=[
            pb.HistogramBin(low=float(h["low"]), high=float(h["high"]), count=int(h["count"]))
            for h in evaluation.get("score_histogram", [])
        ],
        quality=_QUALITY.get(str(evaluation.get("quality")), pb.QUALITY_UNSPECIFIED),
        suggestions=[str(s) for s in evaluation.get("suggestions", [])],
        global_factors=[_factor(f) for f in evaluation.get("global_factors", [])],
        bucket_factors=[
            pb.BucketFactors(
                bucket=_BUCKET.get(str(b["bucket"]), cpb.BUCKET_UNSPECIFIED),
                profiles=int(b.get("profiles", 0)),
                factors=[_factor(f) for f in b.get("factors", [])],
            )
            for b in evaluation.get("bucket_factors", [])
        ],
        parameters={str(k): str(v) for k, v in (evaluation.get("parameters") or {}).items()},
    )
