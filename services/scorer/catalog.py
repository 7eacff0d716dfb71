"""Read access to the shared stores: event parts of an instance's dataset and profiles.

Only catalogued parts (`dataset_parts`) are ever read, so a part written by an
import that has not been catalogued yet stays invisible, as the event store
requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
from sqlalchemy import select

from foresight.errors import FailedPrecondition, NotFound
from foresight.events.partitions import shard_for_profile
from foresight.events.store import EventStore
from foresight.storage.db import Database
from foresight.storage.models import DatasetPartRow, DatasetRow, InstanceRow
from foresight.storage.profiles import profile_attributes
from services.scorer.history import ProfileHistory


@dataclass(frozen=True)
class DatasetParts:
    """The catalogued parts of one dataset."""

    dataset: str
    paths: tuple[str, ...]
    shards: tuple[int, ...]
    end: datetime  # exclusive end of the data: latest event + 1 µs

    def paths_of(self, shard: int) -> list[str]:
        """The parts of one shard."""
        return [p for p, s in zip(self.paths, self.shards, strict=True) if s == shard]


class Catalog:
    """Events and profiles as the scorer reads them."""

    def __init__(self, db: Database, events: EventStore, cache_dir: Path | None = None) -> None:
        self.db = db
        self.events = events
        # Instance → its dataset's parts, for real-time scoring; `forget` empties it.
        self._serving: dict[str, DatasetParts] = {}
        # Indexed local copies of the parts for one-profile reads (None: filter the parts).
        local = cache_dir is not None and not events.remote
        self.history = ProfileHistory(events, cache_dir) if local and cache_dir else None

    def dataset_of(self, instance: str) -> str:
        """The dataset an instance trains and scores on."""
        with self.db.session() as session:
            dataset = session.scalar(
                select(InstanceRow.dataset).where(InstanceRow.name == instance)
            )
        if dataset is None:
            raise NotFound(f"instance '{instance}' not found")
        return dataset

    def parts(self, dataset: str) -> DatasetParts:
        """Catalogued parts of a dataset; FailedPrecondition when it holds no events."""
        with self.db.session() as session:
            rows = session.execute(
                select(DatasetPartRow.path, DatasetPartRow.shard, DatasetPartRow.max_ts)
                .join(DatasetRow, DatasetRow.id == DatasetPartRow.dataset_id)
                .where(DatasetRow.name == dataset)
                .order_by(DatasetPartRow.shard, DatasetPartRow.id)
            ).all()
        if not rows:
            raise FailedPrecondition(f"dataset '{dataset}' has no events")
        end = max(r[2] for r in rows) + timedelta(microseconds=1)
        return DatasetParts(dataset, tuple(r[0] for r in rows), tuple(r[1] for r in rows), end)

    def serving_parts(self, instance: str) -> DatasetParts:
        """`parts(dataset_of(instance))`, remembered until `forget`.

        Real-time scoring reads them on every call; two catalog queries would
        cost more than the scoring. The scorer forgets them when it polls the
        registry, so an import shows within one poll interval.
        """
        parts = self._serving.get(instance)
        if parts is None:
            parts = self.parts(self.dataset_of(instance))
            self._serving = {**self._serving, instance: parts}  # one swap: no lock for readers
        return parts

    def forget(self) -> None:
        """Read the catalog again on the next `serving_parts` (called on every registry poll)."""
        self._serving = {}

    def read_shard(self, parts: DatasetParts, shard: int) -> pl.DataFrame:
        """All events of one shard."""
        return self.events.read_shard(parts.dataset, shard, parts.paths_of(shard))

    def scan(self, parts: DatasetParts) -> pl.LazyFrame:
        """Every event of the dataset, lazily."""
        return self.events.scan(parts.dataset, parts.paths)

    def profile_events(
        self, parts: DatasetParts, profile_id: str, columns: Sequence[str]
    ) -> pl.DataFrame:
        """The stored events of one profile, its `columns` (in EVENT_SCHEMA's order), through
        the indexed copies when there is a cache."""
        if self.history is not None:
            return self.history.events(parts.dataset, list(parts.paths), profile_id, columns)
        shard = shard_for_profile(profile_id, self.events.shards)
        return (
            self.events.scan(parts.dataset, parts.paths_of(shard))
            .filter(pl.col("profile_id") == profile_id)
            .select(columns)
            .collect()
        )

    def profiles(
        self, names: Sequence[str], ids: Sequence[str] | None = None
    ) -> pl.DataFrame | None:
        """Profile attributes `names` as a frame keyed by profile_id (None: no profile table).

        Attribute values keep their JSON types (numbers, text), the same frame
        the trainer fits the attribute encodings on.
        """
        return profile_attributes(self.db, names, ids)
