"""Bad files, bad attribute values and a bad database URL get clear answers (issue 11.6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from foresight.errors import InvalidArgument, NotFound
from foresight.events.store import EventStore
from foresight.storage.db import Database
from foresight.storage.models import ProfileRow
from services.trainer.ingest import Ingestor

pytestmark = pytest.mark.integration


def _ingestor(db: Database, tmp_path: Path) -> Ingestor:
    (tmp_path / "imports").mkdir(exist_ok=True)
    return Ingestor(db, EventStore(tmp_path / "events", shards=2), tmp_path / "imports")


def test_non_finite_profile_attributes_are_rejected_on_every_backend(
    database: Database, tmp_path: Path
) -> None:
    ingestor = _ingestor(database, tmp_path)
    pl.DataFrame(
        {
            "profile_id": ["a", "b", "c", "d"],
            "ltv": [1.5, float("nan"), float("inf"), None],
            "tier": ["gold", "silver", "bronze", "none"],
        }
    ).write_parquet(tmp_path / "imports" / "profiles.parquet")
    summary = ingestor.import_profiles("profiles.parquet")
    assert (summary.rows_read, summary.profiles, summary.rejected) == (4, 2, 2)
    with database.session() as s:
        stored = {row.profile_id: row.attributes for row in s.query(ProfileRow)}
    assert stored == {"a": {"ltv": 1.5, "tier": "gold"}, "d": {"tier": "none"}}


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("events.parquet", b"PAR1 this is not parquet", "Parquet"),
        ("events.jsonl", b"\xff\xfe\x00 not utf-8 \xff\n", None),
    ],
)
def test_unreadable_files_are_invalid_argument_without_server_paths(
    sqlite_db: Database, tmp_path: Path, name: str, content: bytes, kind: str | None
) -> None:
    ingestor = _ingestor(sqlite_db, tmp_path)
    (tmp_path / "imports" / name).write_bytes(content)
    if kind is None:
        # A JSON Lines line that is not JSON is a rejected row, not a failed import.
        summary = ingestor.import_dataset("clicks", name)
        assert (summary.rows_read, summary.rejected) == (1, 1)
        return
    with pytest.raises(InvalidArgument) as caught:
        ingestor.import_dataset("clicks", name)
    assert caught.value.field == "path"
    assert kind in caught.value.reason
    assert str(tmp_path) not in caught.value.message
    with pytest.raises(NotFound) as missing:
        ingestor.import_dataset("clicks", "nope.parquet")
    assert str(tmp_path) not in missing.value.message


def _start(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FORESIGHT_DATA_DIR": str(tmp_path / "var"),
        "FORESIGHT_DATABASE_URL": url,
        "FORESIGHT_TRAINER_PORT": "0",
        "FORESIGHT_LOG_JSON": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "services.trainer.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unreachable_database_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    done = _start("postgresql://nobody:secret@127.0.0.1:1/nodb", tmp_path)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "Event loop is closed" not in done.stderr
    assert "FORESIGHT_DATABASE_URL" in done.stderr
    assert "secret" not in done.stderr
