"""Volumes: a team's persistent directories (a size-capped filesystem on the node), and which
sandboxes mount them (so a mounted volume is not deleted).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "team_id", sa.String(32), sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("size_mb", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("team_id", "name", name="uq_volumes_team_name"),
    )
    op.create_table(
        "sandbox_volumes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "sandbox_id",
            sa.String(32),
            sa.ForeignKey("sandboxes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "volume_id",
            sa.String(32),
            sa.ForeignKey("volumes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("path", sa.String(1024), nullable=False),
    )
    op.create_index("ix_sandbox_volumes_volume", "sandbox_volumes", ["volume_id"])


def downgrade() -> None:
    op.drop_index("ix_sandbox_volumes_volume", "sandbox_volumes")
    op.drop_table("sandbox_volumes")
    op.drop_table("volumes")
