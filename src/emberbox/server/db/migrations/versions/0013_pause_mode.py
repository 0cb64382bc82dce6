"""Filesystem-only pauses: whether a sandbox's end time keeps its memory, what its pause kept,
and whether its envd answered then.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(
            sa.Column("auto_pause_memory", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("pause_mode", sa.String(16), nullable=True))
        unresponsive: sa.Column[bool] = sa.Column(
            "envd_unresponsive_at_pause", sa.Boolean(), nullable=False, server_default=sa.false()
        )
        batch.add_column(unresponsive)


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("envd_unresponsive_at_pause")
        batch.drop_column("pause_mode")
        batch.drop_column("auto_pause_memory")
