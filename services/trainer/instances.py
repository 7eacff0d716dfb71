"""Prediction instances: create, read, list, update, delete (the registry's front door)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from foresight import instance as inst
from foresight.errors import AlreadyExists, InvalidArgument, NotFound
from foresight.instance import InstanceConfig
from foresight.storage import catalog
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow, utcnow


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A stored instance with its registry state."""

    config: InstanceConfig
    dataset: str
    current_version: int
    created_at: datetime
    updated_at: datetime


def _record(row: InstanceRow) -> InstanceRecord:
    return InstanceRecord(
        config=inst.from_dict(row.config),
        dataset=row.dataset,
        current_version=row.current_version or 0,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class Instances:
    """CRUD over prediction instances."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _check_dataset(self, dataset: str) -> None:
        if not dataset:
            raise InvalidArgument("instance.dataset", "must name the dataset to train on")
        if dataset not in catalog.dataset_names(self.db):
            raise InvalidArgument("instance.dataset", f"dataset {dataset!r} does not exist")

    def create(self, config: InstanceConfig, dataset: str) -> InstanceRecord:
        """Validate and store a new instance."""
        inst.validate_config(config)
        self._check_dataset(dataset)
        with self.db.session() as s:
            if s.scalar(select(InstanceRow.id).where(InstanceRow.name == config.name)):
                raise AlreadyExists(f"instance {config.name!r} already exists")
            row = InstanceRow(name=config.name, dataset=dataset, config=inst.to_dict(config))
            s.add(row)
            s.flush()
            return _record(row)

    def get(self, name: str) -> InstanceRecord:
        """One instance, or NotFound."""
        if not name:
            raise InvalidArgument("name", "must not be empty")
        with self.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == name))
            if row is None:
                raise NotFound(f"instance {name!r} does not exist")
            return _record(row)

    def list(self) -> list[InstanceRecord]:
        """Every instance, by name."""
        with self.db.session() as s:
            return [_record(r) for r in s.scalars(select(InstanceRow).order_by(InstanceRow.name))]

    def update(self, config: InstanceConfig, dataset: str) -> InstanceRecord:
        """Replace an instance's configuration (the name selects it)."""
        inst.validate_config(config)
        with self.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == config.name))
            if row is None:
                raise NotFound(f"instance {config.name!r} does not exist")
            if dataset != row.dataset:
                self._check_dataset(dataset)
                row.dataset = dataset
            row.config = inst.to_dict(config)
            row.updated_at = utcnow()
            s.flush()
            return _record(row)

    def delete(self, name: str) -> None:
        """Remove an instance from the registry (bundles on disk stay for audit)."""
        with self.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == name))
            if row is None:
                raise NotFound(f"instance {name!r} does not exist")
            s.delete(row)
