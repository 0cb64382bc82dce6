"""Sandboxes remember their egress rules (E2B's ``network.allowOut``/``denyOut``, as JSON) and,
when their ports are private (``allowPublicTraffic: false``), the traffic access token.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("egress", sa.Text(), nullable=True))
        batch.add_column(sa.Column("traffic_access_token", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("traffic_access_token")
        batch.drop_column("egress")
