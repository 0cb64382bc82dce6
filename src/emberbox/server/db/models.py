"""Tables of the control plane. Times are stored as timezone-aware UTC datetimes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Naive UTC on disk, aware UTC in Python: SQLite has no time zones; comparisons must agree."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not accepted; use UTC-aware ones")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 is kept, plus a short prefix to find the row quickly."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def wakeable(auto_resume: bool, pause_mode: str | None, envd_unresponsive_at_pause: bool) -> bool:
    """Traffic through the proxy may resume a paused sandbox: its lifecycle says so, and its
    resume restores memory (one that boots afresh from its files is resumed only when asked)."""
    return bool(auto_resume) and pause_mode != "filesystem" and not envd_unresponsive_at_pause


class Sandbox(Base):
    """One sandbox and its persisted lifecycle state (:mod:`emberbox.server.lifecycle.states`)."""

    __tablename__ = "sandboxes"
    __table_args__ = (
        Index("ix_sandboxes_state_end_at", "state", "end_at"),
        Index("ix_sandboxes_team_state_started", "team_id", "state", "started_at"),
        UniqueConstraint("team_id", "idempotency_key", name="uq_sandboxes_team_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    template_id: Mapped[str] = mapped_column(String(200))  # what its node started it from
    # The id the API shows when it differs (a team template's; TemplateInfo.public_id).
    public_template_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    alias: Mapped[str | None] = mapped_column(String(200), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cpu_count: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    envd_version: Mapped[str] = mapped_column(String(32))
    envd_access_token: Mapped[str] = mapped_column(String(128))
    envd_url: Mapped[str | None] = mapped_column(String(300), nullable=True)
    host_address: Mapped[str | None] = mapped_column(String(200), nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    allow_internet: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Egress rules as given (``{"allowOut": [...], "denyOut": [...]}`` JSON); None: no rules.
    egress: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set when its ports answer only requests carrying it (``allowPublicTraffic: false``).
    traffic_access_token: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The Host header the proxy sends to its ports (``${PORT}`` = the port); None: unchanged.
    mask_request_host: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # What its end time does ("kill" or "pause") and whether traffic through the proxy wakes it
    # when paused (E2B's lifecycle); timeout_s is the lifetime an auto-resume gives it again.
    on_timeout: Mapped[str] = mapped_column(String(8), default="kill", server_default="kill")
    auto_resume: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    timeout_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What the last resume asked for once the sandbox runs (its lifetime from then, and what
    # its end time does: the legacy resume's autoPause; None: as before), kept from the resume's
    # start until it runs: a resume whose answer was lost, or that this server gave up on, may
    # be finished by the node and recorded from its listing.
    resume_timeout_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resume_on_timeout: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # Disk its saved memory takes while paused (0 otherwise): shown, and under the snapshot quota.
    paused_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Its end time's pause keeps the memory (False: only the files, E2B's autoPauseMemory).
    auto_pause_memory: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # While paused: what the pause kept ("full" or "filesystem", E2B's pauseMode), and whether
    # envd did not answer then (a resume must then boot from the files).
    pause_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    envd_unresponsive_at_pause: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # Cleared when the sandbox ends, so a key protects against duplicates only while it lives.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When the create was admitted (None: before 2026-12-06); started_at moves to its run.
    admitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    metadata_items: Mapped[list[SandboxMetadata]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )
    volume_mounts: Mapped[list[SandboxVolume]] = relationship(lazy="selectin", viewonly=True)

    @property
    def metadata_dict(self) -> dict[str, str]:
        return {m.key: m.value for m in self.metadata_items}

    @property
    def wakeable(self) -> bool:
        return wakeable(self.auto_resume, self.pause_mode, self.envd_unresponsive_at_pause)

    @property
    def shown_template_id(self) -> str:
        """The template id the API shows: ``public_template_id``, else ``template_id``."""
        return self.public_template_id or self.template_id


class SandboxMetadata(Base):
    """User metadata, one row per key, so listing can filter in SQL on any database."""

    __tablename__ = "sandbox_metadata"
    __table_args__ = (
        UniqueConstraint("sandbox_id", "key"),
        Index("ix_sandbox_metadata_kv", "key", "value"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(256))
    value: Mapped[str] = mapped_column(Text)


class Snapshot(Base):
    """A sandbox's memory and files saved on its node; sandboxes start from it (create, fork)
    and its source can be rolled back to it. It outlives its source sandbox."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_team_created", "team_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # Set by the user; a newer snapshot with the same name takes it over (E2B's rule).
    name: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # The name it was taken under, kept once a newer one took the name over: E2B's name is a
    # template whose builds these are, and a delete by the name deletes every one of them.
    taken_as: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    source_sandbox_id: Mapped[str] = mapped_column(String(32), index=True)
    template_id: Mapped[str] = mapped_column(String(200))
    public_template_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    alias: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cpu_count: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    allow_internet: Mapped[bool] = mapped_column(Boolean, default=True)
    # Where it lives: the node that took it, the runtime, and the path on that node.
    node_id: Mapped[str] = mapped_column(String(200))
    runtime: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # envd's token inside the saved memory; a sandbox started from it needs it to take its own.
    envd_access_token: Mapped[str] = mapped_column(String(128))
    # False: only the files the sandbox had changed (E2B's memory: false); sandboxes boot.
    memory: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Taken for a fork rather than by the user: not listed, deleted with its last fork.
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Volume(Base):
    """A team's persistent directory: a size-capped filesystem on the node (``server/volumes``)
    that sandboxes mount read-write and the content API reads and writes with its token."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_volumes_team_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    # Bearer token of the content API (E2B's VolumeAndToken.token).
    token: Mapped[str] = mapped_column(String(128))
    size_mb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SandboxVolume(Base):
    """A volume a sandbox mounts, and where: a volume some live sandbox mounts is not deleted."""

    __tablename__ = "sandbox_volumes"
    __table_args__ = (Index("ix_sandbox_volumes_volume", "volume_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id", ondelete="CASCADE"))
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    volume: Mapped[Volume | None] = relationship(lazy="selectin", viewonly=True)


class Secret(Base):
    """A team's named secret (E2B's ``/secrets``): metadata here, each value a
    :class:`SecretVersion`, sealed under the server key (``server/secrets``)."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_secrets_team_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    current_version: Mapped[int] = mapped_column(Integer)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SecretVersion(Base):
    """One value of a secret, encrypted (nonce + AES-GCM ciphertext); never stored in clear."""

    __tablename__ = "secret_versions"

    secret_id: Mapped[str] = mapped_column(
        ForeignKey("secrets.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
