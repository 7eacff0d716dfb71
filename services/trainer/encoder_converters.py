"""Protobuf conversion of the journey encoder (TrainEncoder, ListEncoderVersions).

The encoder itself lives in the shared `foresight.encoder` (the trainer fits
it, the segmenter runs it); only its messages are converted here.
"""

from __future__ import annotations

from typing import Literal

from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.convert import progress_to_pb, status_to_pb, to_timestamp
from foresight.encoder.registry import EncoderVersionInfo
from foresight.errors import InvalidArgument

__all__ = [
    "encoder_progress_event",
    "encoder_version_event",
    "encoder_version_to_pb",
    "encoder_versions_to_pb",
    "kind_from_pb",
]

_KIND = {"pca": pb.ENCODER_KIND_PCA, "autoencoder": pb.ENCODER_KIND_AUTOENCODER}


def kind_from_pb(kind: int) -> Literal["auto", "pca", "autoencoder"]:
    """EncoderKind → the encoder module's kind ("auto" when unspecified)."""
    if kind == pb.ENCODER_KIND_UNSPECIFIED:
        return "auto"
    if kind == pb.ENCODER_KIND_PCA:
        return "pca"
    if kind == pb.ENCODER_KIND_AUTOENCODER:
        return "autoencoder"
    raise InvalidArgument("kind", f"unknown encoder kind {kind}")


def encoder_version_to_pb(info: EncoderVersionInfo) -> pb.EncoderVersion:
    """EncoderVersion message."""
    return pb.EncoderVersion(
        version=info.version,
        status=status_to_pb(info.status),
        dataset=info.dataset,
        dimensions=info.dimensions,
        kind=_KIND.get(info.kind or "", pb.ENCODER_KIND_UNSPECIFIED),
        metrics={k: float(v) for k, v in info.metrics.items()},
        artifact_path=info.artifact_path or "",
        error=info.error or "",
        created_at=to_timestamp(info.created_at),
    )


def encoder_versions_to_pb(infos: list[EncoderVersionInfo]) -> pb.ListEncoderVersionsResponse:
    """ListEncoderVersionsResponse (newest first, as given)."""
    return pb.ListEncoderVersionsResponse(versions=[encoder_version_to_pb(i) for i in infos])


def encoder_progress_event(stage: str, fraction: float, message: str) -> pb.TrainEncoderEvent:
    """One progress message of the TrainEncoder stream."""
    return pb.TrainEncoderEvent(progress=progress_to_pb(stage, fraction, message))


def encoder_version_event(info: EncoderVersionInfo) -> pb.TrainEncoderEvent:
    """The last message of the TrainEncoder stream."""
    return pb.TrainEncoderEvent(version=encoder_version_to_pb(info))
