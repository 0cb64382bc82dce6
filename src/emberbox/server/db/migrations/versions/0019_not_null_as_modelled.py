"""Columns the models require (and the code always writes) made NOT NULL: the snapshot and
template migrations created them nullable, so the database took rows the models cannot read.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from emberbox.server.db.models import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_COLUMNS: dict[str, dict[str, sa.types.TypeEngine[Any]]] = {
    "snapshots": {
        "team_id": sa.String(32),
        "source_sandbox_id": sa.String(32),
        "template_id": sa.String(200),
        "cpu_count": sa.Integer(),
        "memory_mb": sa.Integer(),
        "disk_mb": sa.Integer(),
        "allow_internet": sa.Boolean(),
        "node_id": sa.String(200),
        "runtime": sa.String(32),
        "path": sa.String(500),
        "size_bytes": sa.BigInteger(),
        "envd_access_token": sa.String(128),
        "internal": sa.Boolean(),
        "created_at": UTCDateTime(),
    },
    "templates": {
        "team_id": sa.String(32),
        "created_at": UTCDateTime(),
        "updated_at": UTCDateTime(),
    },
    "template_builds": {
        "template_id": sa.String(32),
        "created_at": UTCDateTime(),
        "updated_at": UTCDateTime(),
    },
    "template_build_logs": {"build_id": sa.String(36), "timestamp": UTCDateTime()},
    "template_tags": {
        "template_id": sa.String(32),
        "build_id": sa.String(36),
        "created_at": UTCDateTime(),
    },
}


def _set_nullable(nullable: bool) -> None:
    for table, columns in _COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for name, type_ in columns.items():
                batch.alter_column(name, existing_type=type_, nullable=nullable)


def upgrade() -> None:
    _set_nullable(False)


def downgrade() -> None:
    _set_nullable(True)
