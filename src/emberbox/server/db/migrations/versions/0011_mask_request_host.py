"""Sandboxes remember E2B's ``network.maskRequestHost``: the Host header the proxy sends to
their ports (``${PORT}`` replaced by the port), for servers that check it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("mask_request_host", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("mask_request_host")
