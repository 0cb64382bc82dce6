"""Plain data the SDK returns: results, entries, events, sandbox descriptions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Literal, Protocol, TypedDict, runtime_checkable

from .._proto.filesystem import filesystem_pb2 as fs_pb
from .exceptions import InvalidArgumentException


@dataclass(frozen=True)
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None


@dataclass(frozen=True)
class PtySize:
    rows: int = 24
    cols: int = 80


class FileType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class EntryInfo:
    name: str
    type: FileType | None
    path: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: datetime | None
    symlink_target: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, entry: fs_pb.EntryInfo) -> EntryInfo:
        kinds = {
            fs_pb.FILE_TYPE_FILE: FileType.FILE,
            fs_pb.FILE_TYPE_DIRECTORY: FileType.DIR,
            fs_pb.FILE_TYPE_SYMLINK: FileType.SYMLINK,
        }
        return cls(
            name=entry.name,
            type=FileType.SYMLINK if entry.is_symlink else kinds.get(entry.type),
            path=entry.path,
            size=entry.size,
            mode=entry.mode,
            permissions=entry.permissions,
            owner=entry.owner,
            group=entry.group,
            modified_time=entry.modified_time.ToDatetime()
            if entry.HasField("modified_time")
            else None,
            symlink_target=entry.symlink_target if entry.HasField("symlink_target") else None,
            metadata=dict(entry.metadata),
        )


@dataclass(frozen=True)
class WriteInfo:
    name: str
    path: str
    type: FileType | None = FileType.FILE


@runtime_checkable
class SupportsRead(Protocol):
    """Anything with ``read(size) -> bytes``: open files, sockets, custom streams."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class WriteEntry:
    """One file of :meth:`Filesystem.write_files`; ``data`` may be a stream (never buffered)."""

    path: str
    data: str | bytes | IO[bytes]


class FilesystemEventType(enum.StrEnum):
    CREATE = "create"
    WRITE = "write"
    REMOVE = "remove"
    RENAME = "rename"
    CHMOD = "chmod"


@dataclass(frozen=True)
class FilesystemEvent:
    name: str
    type: FilesystemEventType

    @classmethod
    def from_proto(cls, event: fs_pb.FilesystemEvent) -> FilesystemEvent | None:
        kinds = {
            fs_pb.EVENT_TYPE_CREATE: FilesystemEventType.CREATE,
            fs_pb.EVENT_TYPE_WRITE: FilesystemEventType.WRITE,
            fs_pb.EVENT_TYPE_REMOVE: FilesystemEventType.REMOVE,
            fs_pb.EVENT_TYPE_RENAME: FilesystemEventType.RENAME,
            fs_pb.EVENT_TYPE_CHMOD: FilesystemEventType.CHMOD,
        }
        kind = kinds.get(event.type)
        return cls(event.name, kind) if kind is not None else None


@dataclass(frozen=True)
class SandboxInfo:
    sandbox_id: str
    template_id: str
    state: str
    started_at: datetime | None
    end_at: datetime | None
    metadata: dict[str, str]
    cpu_count: int | None = None
    memory_mb: int | None = None
    envd_version: str | None = None
    # Disk a paused sandbox's saved memory takes (Emberbox's addition; None when running).
    paused_bytes: int | None = None
    # A paused sandbox's pause kept "full" (memory and files) or "filesystem" (a resume boots
    # it afresh); True when envd did not answer at its pause (resume with on_resume="reboot").
    pause_mode: str | None = None
    envd_unresponsive_at_pause: bool | None = None
    # The network policy in force, with E2B's SDK names (``allow_out``, ``deny_out``,
    # ``allow_public_traffic``, ``mask_request_host``); None: no rules.
    network: dict[str, Any] | None = None


@dataclass(frozen=True)
class SandboxMetrics:
    timestamp: datetime
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A saved sandbox (memory and files). ``snapshot_id`` (its name when it has one) is a
    template for ``create``; ``sandbox_id``, ``size_bytes`` (disk on its node),
    ``created_at`` and ``id`` (this snapshot itself, whichever a name later names) are
    Emberbox's additions to E2B's ``{snapshotID, names}``."""

    snapshot_id: str
    names: list[str] = field(default_factory=list)
    sandbox_id: str | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None
    id: str | None = None


@dataclass(frozen=True)
class SecretInfo:
    """A team secret's metadata (E2B's ``SecretInfo``); the value is never returned."""

    secret_id: str
    name: str
    version: int
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class EgressRecord:
    """One connection a sandbox opened to the outside, or a DNS question the node answered
    for it (``Sandbox.egress_log()``). ``rule`` says what decided: ``internet``,
    ``allowOut``, ``denyOut``, ``internal``, ``ipv6``, ``name``, ``rules`` (a header rule's
    domain) or ``request`` (an intercepted request refused). Bytes and ``ended_at`` are None
    while it is open and for a refusal. ``seq`` orders a sandbox's records; passed as
    ``next_token`` it asks for the ones after it."""

    seq: int
    timestamp: datetime
    ended_at: datetime | None
    protocol: str  # tcp, udp, icmp, http, https, tls, dns
    name: str | None  # TLS server name, HTTP Host or DNS question, where one was seen
    ip: str | None
    port: int
    method: str | None  # of the connection's first HTTP request, where visible
    path: str | None
    bytes_out: int | None
    bytes_in: int | None
    verdict: str  # allowed, denied
    rule: str


class NetworkOptions(TypedDict, total=False):
    """Egress rules and port privacy, with E2B's SDK names: ``allow_out`` (CIDR blocks, IPv4
    addresses or domains, ``*.example.com`` for every name below it; allowed entries win) /
    ``deny_out`` (CIDR blocks or IPv4 addresses), ``allow_public_traffic`` (create only; False
    makes the sandbox's ports need its ``traffic_access_token``), ``mask_request_host`` (create
    only; the Host its servers see through the proxy, ``${PORT}`` for the port) and
    ``allow_internet_access`` (update only; False is ``deny_out=["0.0.0.0/0"]``). ``rules``
    set headers on the sandbox's HTTP(S) requests to a domain (``{"api.example.com":
    [{"transform": {"headers": {"Authorization": "Bearer " + Secret.fill("key")}}}]}``); the
    domain must also be reachable by ``allow_out`` or the address rules. ``egress_proxy``
    (``{"address": "host:port", "username": ..., "password": ...}``) tunnels the sandbox's
    allowed TCP through a SOCKS5 proxy; an update without it stops tunneling."""

    allow_out: list[str]
    deny_out: list[str]
    allow_public_traffic: bool
    mask_request_host: str
    allow_internet_access: bool
    rules: dict[str, list[dict[str, Any]]]
    egress_proxy: dict[str, str]
    dns_servers: list[str]


_WIRE_NAMES = {
    "allow_out": "allowOut",
    "deny_out": "denyOut",
    "allow_public_traffic": "allowPublicTraffic",
    "mask_request_host": "maskRequestHost",
    "allow_internet_access": "allow_internet_access",
    "egress_proxy": "egressProxy",
    "dns_servers": "dnsServers",
}


def network_info(wire: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``network`` the API reports, with the SDK's names."""
    if not wire:
        return None
    names = {v: k for k, v in _WIRE_NAMES.items()}
    return {names.get(k, k): v for k, v in wire.items()}


# What a pause keeps, and how a paused sandbox comes back (E2B's SDK names).
PauseMode = Literal["full", "filesystem"]
OnResume = Literal["restore", "reboot"]


class Lifecycle(TypedDict, total=False):
    """What the end time does, with E2B's SDK names: ``on_timeout`` ``"kill"`` (the default),
    ``"pause"``, or ``{"action": "pause", "mode": "filesystem"}`` (keep only the files; a
    resume boots afresh from them); ``auto_resume`` True lets traffic through the proxy
    resume a paused sandbox (not with ``mode: "filesystem"``)."""

    on_timeout: str | dict[str, str]
    auto_resume: bool


def lifecycle_body(lifecycle: Lifecycle) -> dict[str, Any]:
    """The create fields (``autoPause``, ``autoPauseMemory``, ``autoResume``) it stands for."""
    on_timeout = lifecycle.get("on_timeout", "kill")
    if isinstance(on_timeout, dict):
        action, mode = on_timeout.get("action", "pause"), on_timeout.get("mode", "full")
    else:
        action, mode = on_timeout, "full"
    if action not in ("kill", "pause") or mode not in ("full", "filesystem"):
        raise InvalidArgumentException(
            f"lifecycle on_timeout: action 'kill' or 'pause', mode 'full' or 'filesystem' "
            f"(got {on_timeout!r})"
        )
    body: dict[str, Any] = {"autoPause": action == "pause"}
    if mode == "filesystem":
        body["autoPauseMemory"] = False
    if "auto_resume" in lifecycle:
        body["autoResume"] = {"enabled": bool(lifecycle["auto_resume"])}
    return body


def network_body(network: NetworkOptions) -> dict[str, Any]:
    """The JSON the API takes (unknown keys pass through, so the server names them in a 501)."""
    return {_WIRE_NAMES.get(k, k): v for k, v in network.items()}
