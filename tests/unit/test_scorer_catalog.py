"""The parts real-time scoring reads are remembered between registry polls, and only then."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from foresight.events.store import EventStore
from foresight.storage import catalog
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow
from services.scorer.catalog import Catalog

pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _part(name: str, day: int) -> catalog.CataloguedPart:
    stamp = T0.replace(day=day)
    return catalog.CataloguedPart(f"ds/shard=0/part-{name}.parquet", 0, 10, T0, stamp)


def test_serving_parts_are_read_once_until_forgotten(sqlite_db: Database, tmp_path: Path) -> None:
    catalog.record_import(sqlite_db, "ds", [_part("a" * 32, 2)])
    with sqlite_db.session() as s:
        s.add(InstanceRow(name="churn", dataset="ds", config={}))
    reader = Catalog(sqlite_db, EventStore(tmp_path / "events", shards=1))
    first = reader.serving_parts("churn")
    assert first == reader.parts("ds")
    catalog.record_import(sqlite_db, "ds", [_part("b" * 32, 3)])
    # Until the next poll real-time scoring keeps the parts it knows ...
    assert reader.serving_parts("churn") is first
    # ... and batch scoring always reads the catalog.
    assert len(reader.parts("ds").paths) == 2
    reader.forget()
    again = reader.serving_parts("churn")
    assert len(again.paths) == 2 and again.end > first.end
