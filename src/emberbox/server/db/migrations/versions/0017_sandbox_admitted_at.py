"""When a sandbox was admitted: its ``started_at`` moves to when it runs (after envd's boot),
and its logs leave out what envd recorded before it (a checkpoint's source, the warm pool).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from emberbox.server.db.models import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("admitted_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("admitted_at")
