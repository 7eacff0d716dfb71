"""Storage on SQLite and PostgreSQL: migrations, catalog, bulk loads, UTC round trips, artifacts."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from foresight.errors import FailedPrecondition, NotFound
from foresight.storage import ArtifactStore, Database, catalog
from foresight.storage.models import ProfileRow, ProfileScoreRow, ScoringRunRow

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_catalog_publishes_parts_and_counts(database: Database) -> None:
    assert catalog.catalogued_parts(database, "shop") == []
    with pytest.raises(NotFound):
        catalog.get_dataset(database, "shop")
    parts = [
        catalog.CataloguedPart("shop/shard=0/part-a.parquet", 0, 10, T0, T0 + timedelta(days=1)),
        catalog.CataloguedPart("shop/shard=3/part-b.parquet", 3, 5, T0 - timedelta(days=2), T0),
    ]
    catalog.record_import(database, "shop", parts, [("shop/_quarantine/r.parquet", 2)])
    row = catalog.get_dataset(database, "shop")
    assert (row.rows, row.quarantined_rows) == (15, 2)
    assert catalog.catalogued_parts(database, "shop") == [p.path for p in parts]
    assert catalog.catalogued_parts(database, "shop", shard=3) == ["shop/shard=3/part-b.parquet"]
    assert catalog.time_range(database, "shop") == (T0 - timedelta(days=2), T0 + timedelta(days=1))
    assert catalog.dataset_names(database) == ["shop"]


def test_bulk_load_and_utc_round_trip(database: Database) -> None:
    with database.session() as s:
        s.add(
            ScoringRunRow(
                run_id="r1", instance_name="churn", model_version=1, status="RUNNING", as_of=T0
            )
        )
    rows = [("r1", f"p{i}", i / 1000, i % 100, (i % 100) + 1, "LOW", "[]") for i in range(2_000)]
    cols = ["run_id", "profile_id", "probability", "score", "percentile", "bucket", "factors"]
    data = dict(zip(cols, zip(*rows, strict=True), strict=True))
    assert database.bulk_load(ProfileScoreRow.__table__, data) == 2_000  # type: ignore[arg-type]
    with database.session() as s:
        run = s.scalar(select(ScoringRunRow).where(ScoringRunRow.run_id == "r1"))
        assert run is not None and run.as_of == T0 and run.as_of.tzinfo is not None
        got = s.scalar(select(ProfileScoreRow).where(ProfileScoreRow.profile_id == "p1234"))
        assert got is not None and got.score == 34 and got.probability == pytest.approx(1.234)
    if not database.is_postgres:
        # The load's larger page cache is given back to the pooled connection, failed or not.
        duplicate = {name: values[:1] for name, values in data.items()}
        with pytest.raises(IntegrityError):
            database.bulk_load(ProfileScoreRow.__table__, duplicate)  # type: ignore[arg-type]
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -2_000


def test_artifact_publish_is_atomic_and_verified(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(RuntimeError), store.publish("models/churn/v1", owner="trainer") as folder:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not store.path("models/churn/v1").exists()
    assert not list((tmp_path / "artifacts" / "models" / "churn").iterdir())

    with store.publish("models/churn/v1", {"version": 1}, owner="trainer") as folder:
        (folder / "model.onnx").write_bytes(b"onnx bytes")
    manifest = store.verify("models/churn/v1")
    assert manifest["version"] == 1 and "model.onnx" in manifest["files"]
    with pytest.raises(FailedPrecondition), store.publish("models/churn/v1", owner="trainer"):
        pass
    store.path("models/churn/v1/model.onnx").write_bytes(b"tampered")
    with pytest.raises(FailedPrecondition, match="corrupt"):
        store.verify("models/churn/v1")


def test_sweep_removes_only_its_owners_leftovers(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(RuntimeError), store.publish("models/x/v1", owner="trainer"):
        raise RuntimeError("failed")
    (tmp_path / "a" / "models" / ".tmp-trainer-dead-v2").mkdir(parents=True)
    (tmp_path / "a" / "indexes" / ".tmp-segmenter-live-v3").mkdir(parents=True)
    assert store.sweep_temporary("trainer") == 1
    assert not (tmp_path / "a" / "models" / ".tmp-trainer-dead-v2").exists()
    # Another service's write in flight survives the trainer's start.
    assert (tmp_path / "a" / "indexes" / ".tmp-segmenter-live-v3").is_dir()
    assert store.sweep_temporary("segmenter", under="indexes") == 1


def _migrate_concurrently(url: str) -> list[BaseException]:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            Database(url).migrate()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_services_starting_together_migrate_once_sqlite(tmp_path: Path) -> None:
    assert _migrate_concurrently(f"sqlite:///{tmp_path / 'fresh.db'}") == []


def test_services_starting_together_migrate_once_postgres(pg_url: str) -> None:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        assert _migrate_concurrently(pg_url.rsplit("/", 1)[0] + f"/{name}") == []
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_bulk_replace_of_json_rows_is_an_upsert(database: Database) -> None:
    cols = ["profile_id", "attributes", "updated_at"]
    table = ProfileRow.__table__
    first = [(f"p{i}", {"tier": "gold", "n": i}, T0) for i in range(100)]
    data = dict(zip(cols, zip(*first, strict=True), strict=True))
    database.bulk_load(table, data, replace=("profile_id", data["profile_id"]))  # type: ignore[arg-type]
    second = [(f"p{i}", {"tier": "silver"}, T0) for i in range(50, 150)]
    data = dict(zip(cols, zip(*second, strict=True), strict=True))
    database.bulk_load(table, data, replace=("profile_id", data["profile_id"]))  # type: ignore[arg-type]
    with database.session() as s:
        rows = {r.profile_id: r.attributes for r in s.scalars(select(ProfileRow))}
    assert len(rows) == 150
    assert rows["p10"] == {"tier": "gold", "n": 10} and rows["p60"] == {"tier": "silver"}


def test_migrations_produce_exactly_the_models(database: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from foresight.storage.models import Base

    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ; add a migration: {diff}"
