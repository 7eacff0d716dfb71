"""Model registry: the lifecycle of an instance's model versions.

A version row is created RUNNING (with the pid of the process that owns the
job), and ends READY (only after its artifact bundle was published and
verified), FAILED or CANCELLED (with the reason): the steps are the shared
`Lifecycle`. One READY version per instance is current. A trainer killed
mid-job leaves a RUNNING row behind; `recover_interrupted` at the next start
turns it into FAILED "interrupted", removes any bundle it may have left and
the trainer's own temporary folders, and unpoints READY rows whose files are
gone, so the registry never points at missing files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.evaluation_report import ModelEvaluation
from foresight.storage.artifacts import MANIFEST, ArtifactStore
from foresight.storage.bundles import EVALUATION_FILE, serving_versions
from foresight.storage.db import Database
from foresight.storage.lifecycle import INTERRUPTED, Lifecycle, Status
from foresight.storage.models import InstanceRow, ModelVersionRow, utcnow

__all__ = [
    "INTERRUPTED",
    "OWNER",
    "ModelRegistry",
    "ModelVersionInfo",
    "bundle_path",
]

OWNER = "trainer"
"""The service that writes models/ (its temporary folders carry this name)."""


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    """A model version as the API shows it."""

    instance: str
    version: int
    status: Status
    current: bool
    error: str | None
    artifact_path: str | None
    """Bundle folder relative to the artifact root, e.g. ``models/churn/v3``."""
    auc: float | None
    feature_count: int | None
    validation_cutoff: datetime | None
    created_at: datetime
    finished_at: datetime | None


MODELS_ROOT = "models/{scope}"
"""Where an instance's model bundles live (``{scope}`` is the instance name)."""


def bundle_path(instance: str, version: int) -> str:
    """Relative artifact path of a model bundle."""
    return f"{MODELS_ROOT.format(scope=instance)}/v{version}"


def _info(row: ModelVersionRow, current: int | None) -> ModelVersionInfo:
    return ModelVersionInfo(
        instance=row.instance_name,
        version=row.version,
        status=Status(row.status),
        current=current is not None and row.version == current,
        error=row.error,
        artifact_path=row.artifact_path,
        auc=row.auc,
        feature_count=row.feature_count,
        validation_cutoff=row.validation_cutoff,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


class ModelRegistry:
    """Model version rows in the SQL registry plus their bundles in the artifact store."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts
        self.lifecycle = Lifecycle(
            db,
            artifacts,
            ModelVersionRow,
            root=MODELS_ROOT,
            owner=OWNER,
            noun="model version",
            scope_column="instance_name",
        )

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _instance_row(s: Session, instance: str) -> InstanceRow:
        row = s.scalar(select(InstanceRow).where(InstanceRow.name == instance))
        if row is None:
            raise NotFound(f"instance {instance!r} does not exist")
        return row

    @staticmethod
    def _version_row(s: Session, instance: str, version: int) -> ModelVersionRow:
        row = s.scalar(
            select(ModelVersionRow).where(
                ModelVersionRow.instance_name == instance, ModelVersionRow.version == version
            )
        )
        if row is None:
            raise NotFound(f"instance {instance!r} has no model version {version}")
        return row

    # ------------------------------------------------------------ lifecycle

    def create_training(self, instance: str, owner_pid: int | None = None) -> int:
        """Add a RUNNING row with the next version number; returns the version.

        Refuses a second concurrent job for the same instance.
        """

        def instance_exists(s: Session) -> None:
            self._instance_row(s, instance)

        return self.lifecycle.allocate(
            instance,
            exclusive=True,
            check=instance_exists,
            owner_pid=os.getpid() if owner_pid is None else owner_pid,
        )

    def mark_ready(
        self,
        instance: str,
        version: int,
        *,
        auc: float,
        feature_count: int,
        validation_cutoff: datetime,
        make_current: bool = True,
    ) -> ModelVersionInfo:
        """Publish a version: verify its bundle, set READY and (by default) current.

        Raises FailedPrecondition (and changes nothing) when the bundle is missing
        or does not match its checksums: a READY row always has its files.
        """
        current: list[int | None] = [None]

        def point(s: Session, row: ModelVersionRow) -> None:
            inst = self._instance_row(s, instance)
            if make_current:
                inst.current_version = version
                inst.updated_at = utcnow()
            current[0] = inst.current_version

        row = self.lifecycle.mark_ready(
            version,
            instance,
            point,
            auc=float(auc),
            feature_count=int(feature_count),
            validation_cutoff=validation_cutoff,
        )
        return _info(row, current[0])

    def end(self, instance: str, version: int, exc: BaseException) -> Status:
        """End a RUNNING version as FAILED or CANCELLED, as `exc` says (READY is kept)."""
        return self.lifecycle.end_with(version, exc, instance)

    def mark_failed(self, instance: str, version: int, error: str) -> ModelVersionInfo:
        """Set FAILED with the reason (a READY version is left alone)."""
        self.lifecycle.end(version, Status.FAILED, error, instance)
        return self.get(instance, version)

    def set_current(self, instance: str, version: int) -> ModelVersionInfo:
        """Make a READY version the instance's current one."""
        with self.db.session() as s:
            row = self._version_row(s, instance, version)
            if row.status != Status.READY.value:
                raise FailedPrecondition(
                    f"model version {instance} v{version} is {row.status}; only READY versions can be current"
                )
            inst = self._instance_row(s, instance)
            inst.current_version = version
            inst.updated_at = utcnow()
            return _info(row, version)

    def recover_interrupted(self) -> list[tuple[str, int]]:
        """Fail every RUNNING row left by a killed trainer; returns (instance, version) pairs.

        Call once at trainer start, before serving. One trainer owns a registry,
        so every RUNNING row found then belongs to a dead job (see
        `Lifecycle.recover`). A READY row whose bundle vanished is failed and
        unset as current.
        """
        recovered = [(str(i), v) for i, v in self.lifecycle.recover()]
        with self.db.session() as s:
            ready = s.scalars(
                select(ModelVersionRow).where(ModelVersionRow.status == Status.READY.value)
            ).all()
            for row in ready:
                path = row.artifact_path
                if path and (self.artifacts.path(path) / MANIFEST).is_file():
                    continue
                row.status = Status.FAILED.value
                row.error = f"artifact bundle {path} is missing"
                row.artifact_path = None
                inst = s.scalar(select(InstanceRow).where(InstanceRow.name == row.instance_name))
                if inst is not None and inst.current_version == row.version:
                    inst.current_version = None
        return recovered

    # ------------------------------------------------------------ reads

    def get(self, instance: str, version: int = 0) -> ModelVersionInfo:
        """One version; 0 means the one served (see `serving_versions`). NotFound when absent."""
        if version < 0:
            raise InvalidArgument("version", "must be 0 (current) or a version number")
        with self.db.session() as s:
            inst = self._instance_row(s, instance)
            if version == 0:
                served = serving_versions(s, instance).get(instance)
                if served is None:
                    raise NotFound(f"instance {instance!r} has no trained model yet")
                version = served.version
            return _info(self._version_row(s, instance, version), inst.current_version)

    def list(self, instance: str) -> list[ModelVersionInfo]:
        """Every version of an instance, newest first."""
        with self.db.session() as s:
            inst = self._instance_row(s, instance)
            rows = s.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.instance_name == instance)
                .order_by(ModelVersionRow.version.desc())
            ).all()
            return [_info(r, inst.current_version) for r in rows]

    def read_evaluation(self, instance: str, version: int = 0) -> ModelEvaluation:
        """The stored evaluation.json of a READY version (0 = current)."""
        info = self.get(instance, version)
        if info.status is not Status.READY or not info.artifact_path:
            raise FailedPrecondition(
                f"model version {instance} v{info.version} is {info.status.value}; "
                "only READY versions have an evaluation"
            )
        path = self.artifacts.path(info.artifact_path) / EVALUATION_FILE
        if not path.is_file():
            raise NotFound(f"model version {instance} v{info.version} has no evaluation file")
        return ModelEvaluation.from_json(json.loads(path.read_text()))
