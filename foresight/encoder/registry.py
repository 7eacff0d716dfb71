"""Encoder versions: published through the shared lifecycle, listed and looked up.

Rows live in ``encoder_versions``, bundles in ``encoders/v<N>/`` (layout owned
by `foresight.storage.bundles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from sqlalchemy import select

from foresight.errors import FailedPrecondition, NotFound
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import encoder_metadata, write_encoder_bundle
from foresight.storage.db import Database
from foresight.storage.lifecycle import Lifecycle, Status
from foresight.storage.models import EncoderVersionRow

if TYPE_CHECKING:
    from foresight.encoder.fitting import EncoderBundle

__all__ = [
    "OWNER",
    "EncoderVersionInfo",
    "encoder_lifecycle",
    "get_encoder_version",
    "list_encoder_versions",
    "publish_encoder",
]

OWNER: Final[str] = "trainer"
"""The service that writes encoders/ (its temporary folders carry this name)."""


@dataclass(frozen=True)
class EncoderVersionInfo:
    """An encoder version as the API shows it."""

    version: int
    status: Status
    dataset: str
    dimensions: int
    kind: str | None
    metrics: dict[str, float]
    artifact_path: str | None
    """Bundle folder relative to the artifact root, e.g. ``encoders/v3``."""
    error: str | None
    created_at: datetime


def _info(row: EncoderVersionRow) -> EncoderVersionInfo:
    return EncoderVersionInfo(
        version=row.version,
        status=Status(row.status),
        dataset=row.dataset,
        dimensions=row.dimensions,
        kind=row.kind,
        metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        artifact_path=row.artifact_path,
        error=row.error,
        created_at=row.created_at,
    )


def encoder_lifecycle(db: Database, artifacts: ArtifactStore) -> Lifecycle[EncoderVersionRow]:
    """The versioned-artifact lifecycle of encoders (rows in encoder_versions, folders in encoders/)."""
    return Lifecycle(db, artifacts, EncoderVersionRow, root="encoders", owner=OWNER, noun="encoder")


def publish_encoder(
    db: Database,
    artifacts: ArtifactStore,
    bundle: EncoderBundle,
    dataset: str,
    version: int | None = None,
) -> EncoderVersionInfo:
    """Write `encoders/v<N>/` atomically, then mark the version READY.

    `version` is a RUNNING row made earlier (the facade makes one so a failure
    can be recorded against it); None allocates one now.
    """
    lifecycle = encoder_lifecycle(db, artifacts)
    if version is None:
        version = lifecycle.allocate(dataset=dataset, dimensions=bundle.dimensions, metrics={})
    metadata = encoder_metadata(version, bundle.kind, bundle.dimensions, dataset, bundle.chosen_by)
    with lifecycle.writing(version, metadata=metadata) as folder:
        write_encoder_bundle(
            folder,
            onnx_model=bundle.onnx_model,
            behaviour_spec_json=bundle.spec.to_json(),
            metrics=bundle.metrics,
            chosen_by=bundle.chosen_by,
        )
    row = lifecycle.mark_ready(
        version, kind=bundle.kind, dimensions=bundle.dimensions, metrics=dict(bundle.metrics)
    )
    return _info(row)


def list_encoder_versions(db: Database) -> list[EncoderVersionInfo]:
    """Every encoder version, newest first."""
    with db.session() as s:
        rows = s.scalars(select(EncoderVersionRow).order_by(EncoderVersionRow.version.desc()))
        return [_info(r) for r in rows]


def get_encoder_version(db: Database, version: int = 0) -> EncoderVersionInfo:
    """One version; 0 = the latest READY one."""
    with db.session() as s:
        query = select(EncoderVersionRow)
        if version:
            query = query.where(EncoderVersionRow.version == version)
        else:
            query = query.where(EncoderVersionRow.status == Status.READY.value).order_by(
                EncoderVersionRow.version.desc()
            )
        row = s.scalars(query.limit(1)).first()
        if row is None and version:
            raise NotFound(f"encoder version {version} does not exist")
        if row is None:
            raise FailedPrecondition("there is no READY encoder; train one with TrainEncoder")
        return _info(row)
