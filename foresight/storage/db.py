"""Database access: engine, sessions, migrations and bulk loads."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, Engine, Table, create_engine, delete, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# SQLite's page cache during a bulk load (the connection's own is restored after it).
_BULK_CACHE_KIB = 65_536
# Arbitrary constant naming Foresight's migration lock among PostgreSQL advisory locks.
_MIGRATION_LOCK_KEY = 0x466F7265


def default_database_url(data_dir: Path) -> str:
    """The embedded SQLite file under the data directory."""
    return f"sqlite:///{(data_dir / 'foresight.db').resolve()}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the three services read while one writes; foreign keys are off by default.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    """One engine and session factory for a service's process."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("postgresql://"):
            # psycopg 3 is the driver we ship.
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        """Whether the backend is PostgreSQL."""
        return self.engine.dialect.name == "postgresql"

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision.

        The three services migrate at start, possibly at the same moment: an
        advisory lock (PostgreSQL) or a file lock (SQLite) lets one run at a time.
        """
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self._migration_lock(), self.engine.begin() as conn:
            if self.is_postgres:
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def bulk_load(
        self,
        table: Table,
        data: Mapping[str, Sequence[Any]],
        replace: tuple[str, Sequence[Any]] | None = None,
    ) -> int:
        """Insert many rows fast, given column by column: COPY on PostgreSQL, the DB-API's
        executemany elsewhere. Returns the number of rows.

        `data` maps every column to its values, one per row. Give every column:
        Python-side column defaults are not applied (as with COPY). Values are
        bound as SQLAlchemy binds them (JSON dumped, …), a column at a time, and
        the rows are put together once. `replace=(column, keys)` first deletes the
        rows whose `column` is in `keys`, in the same transaction, so an upsert
        is all or nothing.
        """
        columns = list(data)
        values = [data[c] for c in columns]
        n = len(values[0]) if values else 0
        if any(len(column) != n for column in values):
            raise ValueError("bulk_load needs one value per row in every column")
        if self.is_postgres:
            values = [
                [json.dumps(v) for v in column] if isinstance(table.c[c].type, JSON) else column
                for c, column in zip(columns, values, strict=True)
            ]
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                if replace is not None:
                    column, keys = replace
                    cur.execute(f"DELETE FROM {table.name} WHERE {column} = ANY(%s)", (list(keys),))
                cols = ", ".join(columns)
                with cur.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
                    for row in zip(*values, strict=True):
                        copy.write_row(row)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                raw.close()
            return n
        with self.engine.begin() as conn:
            if replace is not None:
                column, keys = replace
                for start in range(0, len(keys), 5_000):
                    chunk = list(keys[start : start + 5_000])
                    conn.execute(delete(table).where(table.c[column].in_(chunk)))
            if n:
                # The DB-API's executemany on tuples: about half the CPU of insert() with a
                # dict per row.
                dialect = self.engine.dialect
                for i, c in enumerate(columns):
                    process = table.c[c].type.dialect_impl(dialect).bind_processor(dialect)
                    if process is not None:
                        values[i] = list(map(process, values[i]))
                marks = ", ".join("?" * len(columns))
                # A page cache for the load (64 MiB, not 2): index pages are rewritten
                # from memory (1M score rows: ~10% less insert time), then given back.
                cache = int(conn.exec_driver_sql("PRAGMA cache_size").scalar_one())
                conn.exec_driver_sql(f"PRAGMA cache_size=-{_BULK_CACHE_KIB}")
                try:
                    conn.exec_driver_sql(
                        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})",
                        list(zip(*values, strict=True)),
                    )
                finally:
                    with contextlib.suppress(Exception):  # the insert's error is the one to see
                        conn.exec_driver_sql(f"PRAGMA cache_size={cache}")
        return n

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
