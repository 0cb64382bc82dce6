"""Sandboxes remember the Idempotency-Key they were created with (unique per team while alive).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.create_unique_constraint(
            "uq_sandboxes_team_idempotency_key", ["team_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_constraint("uq_sandboxes_team_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
