"""Tables of API-built templates (migration 0007): a template is a team's name; each build of it
is one attempt with its own log; a tag names one build (``default`` = the newest ready one).

What a build produced lives in the node's template store under ``store_name``; the database owns
who may see it, its status and its log.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, UTCDateTime, utcnow


class TeamTemplate(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_templates_team_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    spawn_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_spawned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class TemplateBuild(Base):
    __tablename__ = "template_builds"
    __table_args__ = (Index("ix_template_builds_template", "template_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # waiting | building | ready | error
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason_step: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cpu_count: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    store_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The tags its request asked for (a JSON list), given to it once it is ready: kept here,
    # not in the server's memory, so a restart between the request and the start keeps them.
    wanted_tags: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BuildLogLine(Base):
    __tablename__ = "template_build_logs"
    __table_args__ = (UniqueConstraint("build_id", "seq", name="uq_template_build_logs_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("template_builds.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    step: Mapped[str | None] = mapped_column(String(32), nullable=True)


class TemplateTag(Base):
    __tablename__ = "template_tags"
    __table_args__ = (UniqueConstraint("template_id", "tag", name="uq_template_tags_tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(128))
    build_id: Mapped[str] = mapped_column(ForeignKey("template_builds.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


async def holding_name(s: AsyncSession, team_id: str, name: str) -> TeamTemplate | None:
    """The team's template whose name, or id, is ``name``: snapshot names share that
    namespace, as E2B's do (a create or a delete naming it must mean one thing)."""
    query = select(TeamTemplate).where(
        TeamTemplate.team_id == team_id, or_(TeamTemplate.name == name, TeamTemplate.id == name)
    )
    return (await s.execute(query.limit(1))).scalar_one_or_none()
