"""Snapshots: a sandbox's memory and files saved on its node, usable as a template.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(48), primary_key=True),
        sa.Column("team_id", sa.String(32), sa.ForeignKey("teams.id", ondelete="CASCADE")),
        sa.Column("name", sa.String(200), nullable=True, index=True),
        sa.Column("source_sandbox_id", sa.String(32), index=True),
        sa.Column("template_id", sa.String(200)),
        sa.Column("alias", sa.String(200), nullable=True),
        sa.Column("cpu_count", sa.Integer()),
        sa.Column("memory_mb", sa.Integer()),
        sa.Column("disk_mb", sa.Integer()),
        sa.Column("allow_internet", sa.Boolean()),
        sa.Column("node_id", sa.String(200)),
        sa.Column("runtime", sa.String(32)),
        sa.Column("path", sa.String(500)),
        sa.Column("size_bytes", sa.BigInteger()),
        sa.Column("envd_access_token", sa.String(128)),
        sa.Column("internal", sa.Boolean()),
        sa.Column("created_at", sa.DateTime()),
    )
    op.create_index("ix_snapshots_team_created", "snapshots", ["team_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_snapshots_team_created", "snapshots")
    op.drop_table("snapshots")
