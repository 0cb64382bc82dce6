"""Teams, API keys, sandboxes and their metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from emberbox.server.db.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "team_id", sa.String(32), sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "team_id", sa.String(32), sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("template_id", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(200), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_mb", sa.Integer(), nullable=False),
        sa.Column("envd_version", sa.String(32), nullable=False),
        sa.Column("envd_access_token", sa.String(128), nullable=False),
        sa.Column("envd_url", sa.String(300), nullable=True),
        sa.Column("host_address", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("end_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_sandboxes_state_end_at", "sandboxes", ["state", "end_at"])
    op.create_index(
        "ix_sandboxes_team_state_started", "sandboxes", ["team_id", "state", "started_at"]
    )
    op.create_table(
        "sandbox_metadata",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "sandbox_id",
            sa.String(32),
            sa.ForeignKey("sandboxes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.UniqueConstraint("sandbox_id", "key"),
    )
    op.create_index("ix_sandbox_metadata_kv", "sandbox_metadata", ["key", "value"])


def downgrade() -> None:
    op.drop_table("sandbox_metadata")
    op.drop_table("sandboxes")
    op.drop_table("api_keys")
    op.drop_table("teams")
