"""Index segment members by probability for keyset paging.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_segment_members_segment_probability",
        "segment_members",
        ["segment_id", "probability"],
    )


def downgrade() -> None:
    op.drop_index("ix_segment_members_segment_probability", table_name="segment_members")
