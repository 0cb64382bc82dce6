"""Templates built through the API: templates (team-scoped names), their builds, build logs
and tags (a tag names one build of a template).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("team_id", sa.String(32), sa.ForeignKey("teams.id", ondelete="CASCADE")),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("spawn_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_spawned_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime()),
        sa.UniqueConstraint("team_id", "name", name="uq_templates_team_name"),
    )
    op.create_table(
        "template_builds",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("template_id", sa.String(32), sa.ForeignKey("templates.id", ondelete="CASCADE")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reason_step", sa.String(32), nullable=True),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_mb", sa.Integer(), nullable=False),
        sa.Column("store_name", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_template_builds_template", "template_builds", ["template_id"])
    op.create_table(
        "template_build_logs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "build_id", sa.String(36), sa.ForeignKey("template_builds.id", ondelete="CASCADE")
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime()),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("step", sa.String(32), nullable=True),
        sa.UniqueConstraint("build_id", "seq", name="uq_template_build_logs_seq"),
    )
    op.create_table(
        "template_tags",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("template_id", sa.String(32), sa.ForeignKey("templates.id", ondelete="CASCADE")),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column(
            "build_id", sa.String(36), sa.ForeignKey("template_builds.id", ondelete="CASCADE")
        ),
        sa.Column("created_at", sa.DateTime()),
        sa.UniqueConstraint("template_id", "tag", name="uq_template_tags_tag"),
    )


def downgrade() -> None:
    op.drop_table("template_tags")
    op.drop_table("template_build_logs")
    op.drop_index("ix_template_builds_template", "template_builds")
    op.drop_table("template_builds")
    op.drop_table("templates")
