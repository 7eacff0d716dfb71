"""Shared fixtures: databases (SQLite and PostgreSQL) and in-process gRPC servers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from moto.server import ThreadedMotoServer
from s3fs import S3FileSystem

from foresight.storage.db import Database

# In-process services for the request fuzzer and the bounded-input fault tests.
pytest_plugins = ["tests.faults.inprocess"]

PG_ADMIN_URL = os.environ.get("FORESIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped afterwards).

    Skips when PostgreSQL is not reachable — except in CI, where it fails.
    """
    if not _pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    name = f"foresight_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'foresight.db'}")
        db.migrate()
        yield db
        db.dispose()
        return
    url = request.getfixturevalue("pg_url")
    db = Database(url)
    db.migrate()
    from foresight.storage.models import Base

    try:
        yield db
    finally:
        with db.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
        db.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in a temporary folder."""
    db = Database(f"sqlite:///{tmp_path / 'foresight.db'}")
    db.migrate()
    yield db
    db.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of a module marked `in_file_order` keep their file order under random order.

    Only for modules whose tests are steps over one stateful world (the e2e mission,
    the segmenter's journaled index): the module's place among the others stays random.
    """
    slots: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        if item.get_closest_marker("in_file_order"):
            slots.setdefault(str(item.path), []).append(n)
    for positions in slots.values():
        steps = sorted((items[n] for n in positions), key=lambda item: item.location[1] or 0)
        for n, step in zip(positions, steps, strict=True):
            items[n] = step


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """An S3 endpoint on a free port; the AWS_* variables point at it while the module runs."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    wanted = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    # fsspec keeps filesystems by their arguments: one made for an earlier server would stay.
    S3FileSystem.clear_instance_cache()
    try:
        yield wanted["AWS_ENDPOINT_URL"]
    finally:
        S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
