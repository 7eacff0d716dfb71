"""Model registry: the lifecycle of an instance's model versions.

A version row is created TRAINING (with the pid of the process that owns the
job), and ends READY (only after its artifact bundle was published and
verified) or FAILED (with the reason). One READY version per instance is
current. A trainer killed mid-job leaves a TRAINING row behind;
`recover_interrupted` at the next start turns it into FAILED, removes any
bundle it may have left, and unpoints READY rows whose files are gone, so the
registry never points at missing files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.storage.artifacts import MANIFEST, ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow, ModelVersionRow, utcnow

__all__ = [
    "EVALUATION_FILE",
    "INTERRUPTED",
    "ModelRegistry",
    "ModelVersionInfo",
    "VersionStatus",
    "bundle_path",
]

EVALUATION_FILE = "evaluation.json"
INTERRUPTED = "interrupted: trainer restarted"
_TMP_PREFIX = ".tmp-"
_VERSION_DIR = re.compile(r"v(\d+)\Z")


class VersionStatus(Enum):
    """Lifecycle of a model version."""

    TRAINING = "TRAINING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    """A model version as the API shows it."""

    instance: str
    version: int
    status: VersionStatus
    current: bool
    error: str | None
    artifact_path: str | None
    """Bundle folder relative to the artifact root, e.g. ``models/churn/v3``."""
    auc: float | None
    feature_count: int | None
    validation_cutoff: datetime | None
    created_at: datetime
    finished_at: datetime | None


def bundle_path(instance: str, version: int) -> str:
    """Relative artifact path of a model bundle."""
    return f"models/{instance}/v{version}"


def _info(row: ModelVersionRow, current: int | None) -> ModelVersionInfo:
    return ModelVersionInfo(
        instance=row.instance_name,
        version=row.version,
        status=VersionStatus(row.status),
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

    def _highest_on_disk(self, instance: str) -> int:
        """Highest version folder under models/<instance> (a deleted and re-created
        instance keeps its old bundles, and versions are never overwritten)."""
        folder = self.artifacts.path(f"models/{instance}")
        if not folder.is_dir():
            return 0
        found = [
            int(m.group(1))
            for p in folder.iterdir()
            if (m := _VERSION_DIR.match(p.name)) is not None
        ]
        return max(found, default=0)

    # ------------------------------------------------------------ lifecycle

    def create_training(self, instance: str, owner_pid: int | None = None) -> int:
        """Add a TRAINING row with the next version number; returns the version.

        Refuses a second concurrent job for the same instance.
        """
        pid = os.getpid() if owner_pid is None else owner_pid
        for _attempt in range(3):
            try:
                with self.db.session() as s:
                    self._instance_row(s, instance)
                    running = s.scalar(
                        select(ModelVersionRow.version).where(
                            ModelVersionRow.instance_name == instance,
                            ModelVersionRow.status == VersionStatus.TRAINING.value,
                        )
                    )
                    if running is not None:
                        raise FailedPrecondition(
                            f"instance {instance!r} is already training version {running}; "
                            "wait for it to finish"
                        )
                    highest = s.scalar(
                        select(func.max(ModelVersionRow.version)).where(
                            ModelVersionRow.instance_name == instance
                        )
                    )
                    version = max(int(highest or 0), self._highest_on_disk(instance)) + 1
                    s.add(
                        ModelVersionRow(
                            instance_name=instance,
                            version=version,
                            status=VersionStatus.TRAINING.value,
                            owner_pid=pid,
                            created_at=utcnow(),
                        )
                    )
                return version
            except IntegrityError:
                continue  # another writer took the number; pick the next one
        raise FailedPrecondition(f"could not allocate a model version for {instance!r}")

    def mark_ready(
        self,
        instance: str,
        version: int,
        *,
        artifact_path: str,
        auc: float,
        feature_count: int,
        validation_cutoff: datetime,
        make_current: bool = True,
    ) -> ModelVersionInfo:
        """Publish a version: verify its bundle, set READY and (by default) current.

        Raises FailedPrecondition (and changes nothing) when the bundle is missing
        or does not match its checksums: a READY row always has its files.
        """
        self.artifacts.verify(artifact_path)
        with self.db.session() as s:
            row = self._version_row(s, instance, version)
            if row.status != VersionStatus.TRAINING.value:
                raise FailedPrecondition(
                    f"model version {instance} v{version} is {row.status}, not TRAINING"
                )
            row.status = VersionStatus.READY.value
            row.artifact_path = artifact_path
            row.auc = float(auc)
            row.feature_count = int(feature_count)
            row.validation_cutoff = validation_cutoff
            row.error = None
            row.finished_at = utcnow()
            inst = self._instance_row(s, instance)
            if make_current:
                inst.current_version = version
                inst.updated_at = utcnow()
            s.flush()
            return _info(row, inst.current_version)

    def mark_failed(self, instance: str, version: int, error: str) -> ModelVersionInfo:
        """Set FAILED with the reason (a READY version is left alone)."""
        with self.db.session() as s:
            row = self._version_row(s, instance, version)
            if row.status != VersionStatus.READY.value:
                row.status = VersionStatus.FAILED.value
                row.error = error[:4000]
                row.artifact_path = None
                row.finished_at = utcnow()
            inst = s.scalar(select(InstanceRow).where(InstanceRow.name == instance))
            s.flush()
            return _info(row, None if inst is None else inst.current_version)

    def set_current(self, instance: str, version: int) -> ModelVersionInfo:
        """Make a READY version the instance's current one."""
        with self.db.session() as s:
            row = self._version_row(s, instance, version)
            if row.status != VersionStatus.READY.value:
                raise FailedPrecondition(
                    f"model version {instance} v{version} is {row.status}; only READY versions can be current"
                )
            inst = self._instance_row(s, instance)
            inst.current_version = version
            inst.updated_at = utcnow()
            return _info(row, version)

    def recover_interrupted(self) -> list[tuple[str, int]]:
        """Fail every TRAINING row left by a killed trainer; returns (instance, version) pairs.

        Call once at trainer start, before serving. One trainer owns a registry,
        so every TRAINING row found then belongs to a dead job. Bundles such a
        job may have published are removed (the row never became READY),
        temporary bundle folders are swept, and a READY row whose bundle
        vanished is failed and unset as current.
        """
        recovered: list[tuple[str, int]] = []
        with self.db.session() as s:
            rows = s.scalars(
                select(ModelVersionRow).where(
                    ModelVersionRow.status == VersionStatus.TRAINING.value
                )
            ).all()
            for row in rows:
                row.status = VersionStatus.FAILED.value
                row.error = INTERRUPTED
                row.artifact_path = None
                row.finished_at = utcnow()
                recovered.append((row.instance_name, row.version))
            ready = s.scalars(
                select(ModelVersionRow).where(ModelVersionRow.status == VersionStatus.READY.value)
            ).all()
            for row in ready:
                path = row.artifact_path
                if path and (self.artifacts.path(path) / MANIFEST).is_file():
                    continue
                row.status = VersionStatus.FAILED.value
                row.error = f"artifact bundle {path} is missing"
                row.artifact_path = None
                inst = s.scalar(select(InstanceRow).where(InstanceRow.name == row.instance_name))
                if inst is not None and inst.current_version == row.version:
                    inst.current_version = None
        for instance, version in recovered:
            self.artifacts.remove(bundle_path(instance, version))
        models = self.artifacts.path("models")
        if models.is_dir():
            # Only the trainer writes under models/, so these are a dead writer's leftovers.
            for tmp in models.rglob(f"{_TMP_PREFIX}*"):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
        return recovered

    # ------------------------------------------------------------ reads

    def get(self, instance: str, version: int = 0) -> ModelVersionInfo:
        """One version; 0 means the current one. NotFound when absent."""
        if version < 0:
            raise InvalidArgument("version", "must be 0 (current) or a version number")
        with self.db.session() as s:
            inst = self._instance_row(s, instance)
            if version == 0:
                if inst.current_version is None:
                    raise NotFound(f"instance {instance!r} has no trained model yet")
                version = inst.current_version
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

    def read_evaluation(self, instance: str, version: int = 0) -> dict[str, Any]:
        """The stored evaluation.json of a READY version (0 = current)."""
        info = self.get(instance, version)
        if info.status is not VersionStatus.READY or not info.artifact_path:
            raise FailedPrecondition(
                f"model version {instance} v{info.version} is {info.status.value}; "
                "only READY versions have an evaluation"
            )
        path = self.artifacts.path(info.artifact_path) / EVALUATION_FILE
        if not path.is_file():
            raise NotFound(f"model version {instance} v{info.version} has no evaluation file")
        data: dict[str, Any] = json.loads(path.read_text())
        return data
