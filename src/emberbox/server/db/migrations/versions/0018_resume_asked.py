"""What a resume asked for (its timeout, the legacy resume's autoPause), kept on the row until
the sandbox runs: a resume recorded from the node's listing (its answer lost, or given up on)
gets them, not E2B's connect default and the end time's old action.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("resume_timeout_s", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("resume_on_timeout", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("resume_on_timeout")
        batch.drop_column("resume_timeout_s")
