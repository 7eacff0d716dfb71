"""Start-up cleanup of the event store after a killed import."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresight.events.store import EventStore
from foresight.storage import Database
from services.trainer.ingest import Ingestor

pytestmark = pytest.mark.unit


def test_a_killed_first_import_leaves_nothing_behind(sqlite_db: Database, tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events", shards=2)
    shard = tmp_path / "events" / "never-catalogued" / "shard=1"
    shard.mkdir(parents=True)
    (shard / ".part-abc.parquet.1234.tmp").write_bytes(b"half a file")
    (shard / "part-def.parquet").write_bytes(b"a whole part nothing names")
    stray = tmp_path / "events" / ".not-a-dataset"
    stray.mkdir()
    (stray / "keep.txt").write_text("not ours")
    removed = Ingestor(sqlite_db, store, tmp_path / "imports").cleanup()
    assert removed == 2 and not any(shard.iterdir())
    assert (stray / "keep.txt").exists()
