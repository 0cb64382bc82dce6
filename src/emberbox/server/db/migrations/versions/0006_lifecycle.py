"""Sandboxes remember their lifecycle policy (E2B's ``autoPause`` / ``autoResume``) and the
timeout they were created with (the lifetime an auto-resume gives them again).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(
            sa.Column("on_timeout", sa.String(8), nullable=False, server_default="kill")
        )
        batch.add_column(
            sa.Column("auto_resume", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("timeout_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("timeout_s")
        batch.drop_column("auto_resume")
        batch.drop_column("on_timeout")
