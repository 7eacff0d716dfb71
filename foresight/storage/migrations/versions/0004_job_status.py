"""One status vocabulary for jobs and versions; every versioned table records a reason.

TRAINING / BUILDING become RUNNING and a scoring run's SUCCEEDED becomes
READY (foresight.storage.lifecycle.Status); index versions and discoveries
get the `error` column the other versioned tables have.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_RENAMES = (
    ("model_versions", "TRAINING", "RUNNING"),
    ("encoder_versions", "TRAINING", "RUNNING"),
    ("index_versions", "BUILDING", "RUNNING"),
    ("scoring_runs", "SUCCEEDED", "READY"),
)


def _rename(table: str, old: str, new: str) -> None:
    op.execute(
        sa.text(f"UPDATE {table} SET status = :new WHERE status = :old").bindparams(
            old=old, new=new
        )
    )


def upgrade() -> None:
    op.add_column("index_versions", sa.Column("error", sa.Text(), nullable=True))
    op.add_column("discoveries", sa.Column("error", sa.Text(), nullable=True))
    for table, old, new in _RENAMES:
        _rename(table, old, new)


def downgrade() -> None:
    for table, old, new in _RENAMES:
        _rename(table, new, old)
    with op.batch_alter_table("discoveries") as batch:
        batch.drop_column("error")
    with op.batch_alter_table("index_versions") as batch:
        batch.drop_column("error")
