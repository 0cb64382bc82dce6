"""The name each snapshot was taken under, kept once a newer snapshot took the name over: a
delete by that name deletes them all (they were unreachable by name, yet held disk and quota).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("taken_as", sa.String(200), nullable=True))
        batch.create_index("ix_snapshots_taken_as", ["taken_as"])
    # (one that lost its name before this revision cannot be told apart: it stays unnamed)
    op.execute("UPDATE snapshots SET taken_as = name")


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_index("ix_snapshots_taken_as")
        batch.drop_column("taken_as")
