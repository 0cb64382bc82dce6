"""Server settings, read once from ``EMBERBOX_*`` environment variables.

Everything has a default so that ``emberbox server`` with no configuration works: SQLite in the
data directory, the API on port 3000 and the sandbox proxy on port 3002.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..host.meminfo import meminfo_bytes
from ..node.builds import BuildSettings
from ..node.env import seconds
from ..node.offload import OffloadSettings
from ..node.pool import PoolSettings
from ..vocabulary import PAUSE_KEEP_S


def _node_memory_mb() -> int:
    """Total RAM of this machine (the scheduler's default capacity); 4096 if unreadable."""
    total = meminfo_bytes("MemTotal")
    return total >> 20 if total else 4096


@dataclass(frozen=True)
class Limits:
    """Per-team and per-sandbox limits; a request over any of them changes nothing."""

    max_concurrent_sandboxes: int = 20
    max_timeout_s: int = 24 * 3600
    max_cpu_count: int = 8
    max_memory_mb: int = 8192
    max_disk_mb: int = 64 * 1024  # a sandbox's disk (a template's minFreeDiskMb and more)
    rate_per_s: float = 50.0
    rate_burst: int = 100
    bad_key_rate_per_s: float = 2.0  # per client address, for requests without a valid key
    bad_key_burst: int = 60
    max_body_bytes: int = 1 << 20
    max_snapshot_bytes: int = 50 << 30  # disk all of one team's snapshots may take (0: any)
    max_volumes: int = 20  # volumes per team
    max_secrets: int = 100  # secrets per team
    max_template_files_bytes: int = 20 << 30  # all of one team's COPY archives (0: any)
    volume_mb: int = 1024  # each volume's size (a sparse filesystem: blocks used when written)


@dataclass(frozen=True)
class TlsSettings:
    """Inbound TLS as configured (``server/tls.py`` checks it and makes the local CA):
    ``mode`` is ``EMBERBOX_TLS`` (``local`` or empty), ``cert``/``key`` the operator's files."""

    mode: str = ""
    cert: str = ""
    key: str = ""

    @property
    def local(self) -> bool:
        return self.mode == "local"

    @property
    def enabled(self) -> bool:
        return bool(self.mode or self.cert or self.key)


@dataclass(frozen=True)
class Capacity:
    """What the node offers; ``*_overcommit`` multiplies it (1.0 = never overcommit)."""

    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = field(default_factory=_node_memory_mb)
    cpu_overcommit: float = 8.0
    memory_overcommit: float = 1.0


@dataclass(frozen=True)
class Settings:
    """All knobs of one server process.

    **Parameters:**
    * data_dir - where SQLite and sandbox state live (``EMBERBOX_DATA_DIR``, /var/lib/emberbox).
    * database_url - SQLAlchemy async URL (``EMBERBOX_DATABASE_URL``); default SQLite in data_dir.
    * host, api_port, proxy_port - where the two listeners bind.
    * domain - the sandbox domain returned to SDKs (``<port>-<id>.<domain>`` for ``get_host``),
      with ``:<port>`` when clients reach the proxy on another port than 80/443.
    * tls - serve both listeners over HTTPS (``EMBERBOX_TLS=local`` or ``EMBERBOX_TLS_CERT`` +
      ``EMBERBOX_TLS_KEY``; needs ``domain``), see ``server/tls.py``.
    * runtime - what the embedded node runs sandboxes with (``EMBERBOX_RUNTIME``; the older
      ``EMBERBOX_BACKEND`` is read too, ``local`` meaning ``process``): ``gvisor`` (isolated),
      ``process`` (dev/test: plain envd processes, **no isolation**) or ``auto``.
    * node_url - a separate ``emberbox node`` to use (``EMBERBOX_NODE_URL``); empty runs the
      node inside the server. node_token is their shared secret (``EMBERBOX_NODE_TOKEN``).
    * node_host, node_port - where ``emberbox node`` listens.
    * envd_command - the envd the process runtime starts (``EMBERBOX_LOCAL_ENVD_COMMAND``).
    * templates - JSON sizes per template (``EMBERBOX_TEMPLATES``).
    * runsc - the runsc binary (``EMBERBOX_RUNSC``); default: the one on PATH.
    * egress_dns - the resolvers the node's egress gateway asks for sandboxes with domain rules
      (``EMBERBOX_EGRESS_DNS``, comma-separated IPv4 addresses; default: the host's).
    * secrets_key - the key that seals secret values at rest (``EMBERBOX_SECRETS_KEY``, 32
      bytes URL-safe base64); default: ``<data_dir>/secrets.key``, made on first start.
    * egress_ca - extra CA certificates (PEM file) the egress gateway trusts when it opens
      HTTPS to a domain with header rules (``EMBERBOX_EGRESS_CA``); the system's are trusted.
    * template_snapshots - gVisor creates restore a snapshot of their template taken once
      (``EMBERBOX_TEMPLATE_SNAPSHOTS``, default on; ``0`` boots every sandbox).
    * pause_keep_s - how long the node keeps a paused gVisor sandbox's processes, stopped,
      for a resume that continues them (``EMBERBOX_PAUSE_KEEP_S``; 0: every resume restores).
    * builds - how the node runs template builds (``node.builds.BuildSettings``).
    * max_upload_bytes - the largest file upload for a build (``EMBERBOX_MAX_UPLOAD_BYTES``).
    """

    data_dir: Path = Path("/var/lib/emberbox")
    database_url: str = ""
    host: str = "127.0.0.1"
    api_port: int = 3000
    proxy_port: int = 3002
    domain: str | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    runtime: str = "auto"
    node_url: str = ""
    node_token: str = ""
    node_host: str = "127.0.0.1"
    node_port: int = 3003
    envd_command: tuple[str, ...] = ()
    templates: str = ""
    runsc: str = ""
    template_snapshots: bool = True
    egress_dns: tuple[str, ...] = ()
    egress_ca: str = ""
    secrets_key: str = field(default="", repr=False)
    reap_interval_s: float = 0.2
    shutdown_grace_s: float = 10.0
    reconcile_interval_s: float = 2.0
    dead_check_interval_s: float = 2.0
    warm_pool: PoolSettings = field(default_factory=PoolSettings)
    offload: OffloadSettings = field(default_factory=OffloadSettings)
    pause_keep_s: float = PAUSE_KEEP_S
    limits: Limits = field(default_factory=Limits)
    capacity: Capacity = field(default_factory=Capacity)
    builds: BuildSettings = field(default_factory=BuildSettings)
    max_upload_bytes: int = 4 << 30

    @property
    def resolved_runtime(self) -> str:
        from ..runtimes import resolve_name

        return resolve_name(self.runtime)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'emberbox.db'}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"

    @property
    def sandbox_domain(self) -> str:
        """Domain for ``get_host``; by default the proxy itself, which *.localhost resolves to."""
        return self.domain or f"localhost:{self.proxy_port}"

    @property
    def sandbox_host(self) -> str:
        """:attr:`sandbox_domain` without its port: the name certificates and resolvers see."""
        from .proxy.routing import hostname

        return hostname(self.sandbox_domain)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env

        def num(name: str, default: float) -> float:
            raw = e.get(name)
            return float(raw) if raw not in (None, "") else default

        def whole(name: str, default: int) -> int:
            return int(num(name, default))

        limits = Limits(
            max_concurrent_sandboxes=whole("EMBERBOX_MAX_SANDBOXES_PER_TEAM", 20),
            max_timeout_s=whole("EMBERBOX_MAX_TIMEOUT_S", 24 * 3600),
            max_cpu_count=whole("EMBERBOX_MAX_CPU_COUNT", 8),
            max_memory_mb=whole("EMBERBOX_MAX_MEMORY_MB", 8192),
            max_disk_mb=whole("EMBERBOX_MAX_DISK_MB", Limits.max_disk_mb),
            rate_per_s=num("EMBERBOX_RATE_PER_S", 50.0),
            rate_burst=whole("EMBERBOX_RATE_BURST", 100),
            bad_key_rate_per_s=num("EMBERBOX_BAD_KEY_RATE_PER_S", 2.0),
            bad_key_burst=whole("EMBERBOX_BAD_KEY_BURST", 60),
            max_body_bytes=whole("EMBERBOX_MAX_BODY_BYTES", 1 << 20),
            max_snapshot_bytes=whole("EMBERBOX_MAX_SNAPSHOT_BYTES_PER_TEAM", 50 << 30),
            max_volumes=whole("EMBERBOX_MAX_VOLUMES_PER_TEAM", 20),
            max_secrets=whole("EMBERBOX_MAX_SECRETS_PER_TEAM", Limits.max_secrets),
            max_template_files_bytes=whole(
                "EMBERBOX_MAX_TEMPLATE_FILES_BYTES_PER_TEAM", Limits.max_template_files_bytes
            ),
            volume_mb=whole("EMBERBOX_VOLUME_SIZE_MB", 1024),
        )
        default_cap = Capacity()
        capacity = Capacity(
            cpus=whole("EMBERBOX_NODE_CPUS", default_cap.cpus),
            memory_mb=whole("EMBERBOX_NODE_MEMORY_MB", default_cap.memory_mb),
            cpu_overcommit=num("EMBERBOX_CPU_OVERCOMMIT", 8.0),
            memory_overcommit=num("EMBERBOX_MEMORY_OVERCOMMIT", 1.0),
        )
        return cls(
            data_dir=Path(e.get("EMBERBOX_DATA_DIR") or "/var/lib/emberbox"),
            database_url=e.get("EMBERBOX_DATABASE_URL", ""),
            host=e.get("EMBERBOX_HOST", "127.0.0.1"),
            api_port=whole("EMBERBOX_API_PORT", 3000),
            proxy_port=whole("EMBERBOX_PROXY_PORT", 3002),
            domain=e.get("EMBERBOX_DOMAIN") or None,
            tls=TlsSettings(
                mode="" if e.get("EMBERBOX_TLS", "") in ("", "0", "off") else e["EMBERBOX_TLS"],
                cert=e.get("EMBERBOX_TLS_CERT", ""),
                key=e.get("EMBERBOX_TLS_KEY", ""),
            ),
            runtime=_runtime_name(e.get("EMBERBOX_RUNTIME") or e.get("EMBERBOX_BACKEND")),
            node_url=e.get("EMBERBOX_NODE_URL", ""),
            node_token=e.get("EMBERBOX_NODE_TOKEN", ""),
            node_host=e.get("EMBERBOX_NODE_HOST", "127.0.0.1"),
            node_port=whole("EMBERBOX_NODE_PORT", 3003),
            envd_command=tuple(shlex.split(e.get("EMBERBOX_LOCAL_ENVD_COMMAND", ""))),
            templates=e.get("EMBERBOX_TEMPLATES", ""),
            runsc=e.get("EMBERBOX_RUNSC", ""),
            template_snapshots=e.get("EMBERBOX_TEMPLATE_SNAPSHOTS", "1") not in ("0", "false"),
            egress_dns=tuple(
                a.strip() for a in e.get("EMBERBOX_EGRESS_DNS", "").split(",") if a.strip()
            ),
            egress_ca=e.get("EMBERBOX_EGRESS_CA", ""),
            secrets_key=e.get("EMBERBOX_SECRETS_KEY", ""),
            reap_interval_s=num("EMBERBOX_REAP_INTERVAL_S", 0.2),
            shutdown_grace_s=num("EMBERBOX_SHUTDOWN_GRACE_S", 10.0),
            reconcile_interval_s=num("EMBERBOX_RECONCILE_INTERVAL_S", 2.0),
            dead_check_interval_s=num("EMBERBOX_DEAD_CHECK_INTERVAL_S", 2.0),
            warm_pool=PoolSettings.from_env(e),
            offload=OffloadSettings.from_env(e),
            pause_keep_s=seconds(e, "EMBERBOX_PAUSE_KEEP_S", PAUSE_KEEP_S),
            limits=limits,
            capacity=capacity,
            builds=BuildSettings.from_env(e),
            max_upload_bytes=whole("EMBERBOX_MAX_UPLOAD_BYTES", 4 << 30),
        )


def _runtime_name(raw: str | None) -> str:
    """``local`` and ``orchestrator`` are the names the first releases used."""
    name = (raw or "auto").lower()
    return {"local": "process", "orchestrator": "auto"}.get(name, name)
