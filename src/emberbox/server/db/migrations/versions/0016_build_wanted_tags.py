"""The tags a build's request asked for, kept with the build until it is ready (they were in
the server's memory only: a restart between the request and the start lost them).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("template_builds") as batch:
        batch.add_column(sa.Column("wanted_tags", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("template_builds") as batch:
        batch.drop_column("wanted_tags")
