"""The id the API shows for a sandbox's (and a snapshot's) template when it is not the one its
node starts from: a team template's id, where the node knows its build's store name.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("sandboxes", "snapshots"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("public_template_id", sa.String(200), nullable=True))


def downgrade() -> None:
    for table in ("sandboxes", "snapshots"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("public_template_id")
