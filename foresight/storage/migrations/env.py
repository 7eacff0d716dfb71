"""Alembic environment: runs on the connection handed over by `Database.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from foresight.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    """Run migrations online (we never generate offline SQL)."""
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("set sqlalchemy.url or pass a connection")
        with create_engine(url).begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
