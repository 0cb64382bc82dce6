"""Wire models. Field names are the protocol's JSON names exactly (hence the camelCase)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StringConstraints,
    WithJsonSchema,
    with_config,
)
from typing_extensions import TypedDict

MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MetaValue = Annotated[str, StringConstraints(max_length=1024)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
EnvValue = Annotated[str, StringConstraints(max_length=32 * 1024)]
MAX_METADATA_KEYS = 64  # a sandbox's; a list's metadata filters are as many at most
# A key and its value together, in UTF-8: the database indexes them as one B-tree entry, which
# PostgreSQL caps at 2704 bytes (a 1024-character value of CJK text is 3072: a 500 there).
METADATA_ENTRY_BYTES = 2048


def _entries_fit(metadata: dict[str, str]) -> dict[str, str]:
    for key, value in metadata.items():
        if len(key.encode()) + len(value.encode()) > METADATA_ENTRY_BYTES:
            raise ValueError(
                f"metadata {key[:40]!r}: a key and its value may take {METADATA_ENTRY_BYTES} "
                "bytes of UTF-8 together"
            )
    return metadata


Metadata = Annotated[
    dict[MetaKey, MetaValue], Field(max_length=MAX_METADATA_KEYS), AfterValidator(_entries_fit)
]
EnvVars = Annotated[dict[EnvName, EnvValue], Field(max_length=256)]

# An optional response string E2B declares as a plain string (not nullable): omitted when unset,
# never sent as null (the SDK's generated model types it ``Unset | str``).
OmittedIfNone = Annotated[
    str | None,
    WithJsonSchema({"type": "string"}),
    Field(exclude_if=lambda v: v is None),
]


# Request shapes exactly as E2B's generated models send them (``e2b/api/client/models``), validated
# and documented as such. They are TypedDicts so the routes keep reading plain dicts.


@with_config(ConfigDict(extra="forbid"))
class SandboxAutoResumeConfig(TypedDict):
    enabled: bool


@with_config(ConfigDict(extra="forbid"))
class SandboxVolumeMount(TypedDict):
    name: str
    path: str


@with_config(ConfigDict(extra="allow", strict=True))  # unknown options: the route refuses
class SandboxNetworkConfig(TypedDict, total=False):
    allowPublicTraffic: bool | None
    allowOut: list[str]
    denyOut: list[str]
    dnsServers: list[str]
    egressProxy: dict[str, Any] | None
    maskRequestHost: str
    httpsPorts: list[int]
    rules: dict[str, list[dict[str, Any]]]


# typed ``dict`` for the routes (which pass it on as one), validated as ``SandboxNetworkConfig``
NetworkConfig = Annotated[dict[str, Any], GetPydanticSchema(lambda _, h: h(SandboxNetworkConfig))]


@with_config(ConfigDict(extra="allow", strict=True))  # unknown options: the route refuses
class SandboxNetworkUpdateConfig(TypedDict, total=False):
    """``PUT /sandboxes/{id}/network``: replaces the rules; an omitted field is cleared."""

    allowOut: list[str]
    denyOut: list[str]
    dnsServers: list[str]
    egressProxy: dict[str, Any] | None
    rules: dict[str, list[dict[str, Any]]]
    allow_internet_access: bool


NetworkUpdate = Annotated[
    dict[str, Any], GetPydanticSchema(lambda _, h: h(SandboxNetworkUpdateConfig))
]


@with_config(ConfigDict(extra="forbid"))
class SandboxIamToken(TypedDict):
    audience: str
    tokenType: str


@with_config(ConfigDict(extra="forbid"))
class SandboxIam(TypedDict, total=False):
    tokens: dict[str, SandboxIamToken]


class RequestBody(BaseModel):
    """A request body. Strict: ``"no"`` is not ``false`` nor ``"2"`` or ``true`` a count (the
    SDKs send JSON's own types), so a wrong type is a 400 rather than a guess. A field we do
    not know is a 400 too: an option a newer SDK sends would otherwise be ignored silently."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Error(BaseModel):
    code: int = Field(description="Equal to the HTTP status.")
    message: str
    error_code: OmittedIfNone = Field(default=None, description="Machine-readable reason, if any.")


class NewSandboxV2(RequestBody):
    """``POST /v2/sandboxes``. Fields we accept but cannot honour are refused with 501."""

    templateID: str = Field(min_length=1, max_length=200)
    timeout: int | None = Field(default=None, description="Seconds to live; default 300.")
    metadata: Metadata | None = None
    envVars: EnvVars | None = None
    autoPause: bool | None = None
    autoPauseMemory: bool | None = None
    autoResume: SandboxAutoResumeConfig | None = None
    allow_internet_access: bool | None = None
    network: NetworkConfig | None = None
    mcp: dict[str, Any] | None = None
    iam: SandboxIam | None = None
    volumeMounts: list[SandboxVolumeMount] | None = None


class NewSandbox(NewSandboxV2):
    """``POST /sandboxes`` (older SDKs): same fields plus ``secure``; default timeout 15 s."""

    secure: bool | None = None


class ConnectSandbox(RequestBody):
    """``POST /v2/sandboxes/{id}/connect`` and ``/sandboxes/{id}/connect`` (E2B requires
    ``timeout`` on the v1 path; we accept its absence, as on v2)."""

    timeout: int | None = None
    memory: bool | None = None


class ResumedSandbox(RequestBody):
    """``POST /sandboxes/{id}/resume`` (SDKs before ~2.6): E2B's ``ResumedSandbox``."""

    timeout: int | None = None
    autoPause: bool | None = None
    memory: bool | None = None


class TimeoutRequest(RequestBody):
    timeout: int


class PauseRequest(RequestBody):
    memory: bool | None = None
    requireHealthyGuest: bool | None = None


class Sandbox(BaseModel):
    templateID: str
    sandboxID: str
    clientID: str
    envdVersion: str
    alias: OmittedIfNone = None
    envdAccessToken: OmittedIfNone = None
    trafficAccessToken: str | None = None
    domain: str | None = None


class ListedSandbox(BaseModel):
    templateID: str
    sandboxID: str
    clientID: str
    envdVersion: str
    alias: OmittedIfNone = None
    startedAt: dt.datetime
    endAt: dt.datetime
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    state: Literal["running", "paused"]
    metadata: dict[str, str] = Field(default_factory=dict)
    # E2B's: a paused sandbox whose envd did not answer at its pause resumes only from files.
    envdUnresponsiveAtPause: Annotated[bool | None, Field(exclude_if=lambda v: v is None)] = None
    # Our extension: disk a paused sandbox's saved memory takes (counted in the snapshot quota).
    pausedBytes: Annotated[int | None, Field(exclude_if=lambda v: v is None)] = None
    volumeMounts: Annotated[
        list[SandboxVolumeMount] | None, Field(exclude_if=lambda v: v is None)
    ] = None


class Lifecycle(BaseModel):
    autoResume: bool = False
    onTimeout: Literal["kill", "pause"] = "kill"


class SandboxDetail(ListedSandbox):
    envdAccessToken: OmittedIfNone = None
    domain: str | None = None
    allowInternetAccess: bool | None = None
    # ``SandboxNetworkConfig`` of what is in force (allowOut, denyOut, allowPublicTraffic).
    network: Annotated[dict[str, Any] | None, Field(exclude_if=lambda v: v is None)] = None
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    # What a paused sandbox's pause kept: "full" (memory and files) or "filesystem".
    pauseMode: Annotated[
        Literal["full", "filesystem"] | None, Field(exclude_if=lambda v: v is None)
    ] = None


class SandboxMetric(BaseModel):
    timestamp: dt.datetime
    timestampUnix: int
    cpuCount: int
    cpuUsedPct: float
    memUsed: int
    memTotal: int
    memCache: int
    diskUsed: int
    diskTotal: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class SandboxLog(BaseModel):
    timestamp: dt.datetime
    line: str


# E2B's LogLevel, least severe first.
LogLevel = Literal["debug", "info", "warn", "error"]


class SandboxLogEntry(BaseModel):
    timestamp: dt.datetime
    level: LogLevel
    message: str
    fields: dict[str, str] = Field(default_factory=dict)


class SandboxLogs(BaseModel):
    """``GET /sandboxes/{id}/logs``: lifecycle events, then what envd recorded inside."""

    logs: list[SandboxLog]
    logEntries: list[SandboxLogEntry]


class SandboxLogsV2(BaseModel):
    """``GET /v2/sandboxes/{id}/logs`` (E2B's ``SandboxLogsV2Response``)."""

    logs: list[SandboxLogEntry]


class EgressRecord(BaseModel):
    """One entry of ``GET /sandboxes/{id}/egress`` (our extension): a connection the sandbox
    opened to the outside, or a DNS question the node answered for it."""

    seq: int  # its place in the sandbox's log: as ``nextToken``, what comes after it
    timestamp: dt.datetime  # when it opened
    endedAt: dt.datetime | None  # None while open (and for a refusal: nothing was carried)
    protocol: Literal["tcp", "udp", "icmp", "http", "https", "tls", "dns"] | str
    name: str | None  # TLS server name, HTTP Host or DNS question, where one was seen
    ip: str | None
    port: int
    method: str | None  # of the connection's first HTTP request, where visible
    path: str | None
    bytesOut: int | None  # sandbox to destination; None until it ended
    bytesIn: int | None
    verdict: Literal["allowed", "denied"]
    rule: str  # what decided: internet, allowOut, denyOut, internal, ipv6, name, rules, request


class SnapshotRequest(RequestBody):
    """``POST /sandboxes/{id}/snapshots`` (E2B's ``SandboxSnapshotRequest``)."""

    name: str | None = None  # its rule is the service's alone (SNAPSHOT_NAME)
    memory: bool | None = None


class SnapshotInfo(BaseModel):
    """E2B's ``SnapshotInfo`` plus our extensions (``id``, ``sandboxID``, ``sizeBytes``,
    ``createdAt``), which the SDKs keep as additional properties."""

    snapshotID: str
    names: list[str]
    id: str = Field(
        description="This snapshot itself: snapshotID is its name when it has one, which a "
        "newer snapshot taking the name over then names."
    )
    sandboxID: str
    sizeBytes: int = Field(description="Disk the snapshot takes on its node.")
    createdAt: dt.datetime


class ForkRequest(RequestBody):
    """``POST /sandboxes/{id}/fork`` (E2B's ``SandboxForkRequest``)."""

    timeout: int | None = Field(default=None, description="Seconds the forks live; default 15.")
    count: int | None = Field(default=None, description="How many forks (1-100); default 1.")


class ForkResult(BaseModel):
    """One fork: the sandbox, or why it could not start (E2B's ``SandboxForkResult``)."""

    sandbox: Sandbox | None = Field(default=None, exclude_if=lambda v: v is None)
    error: Error | None = Field(default=None, exclude_if=lambda v: v is None)


class RollbackRequest(RequestBody):
    """``POST /sandboxes/{id}/rollback`` (our extension): one of this sandbox's snapshots."""

    snapshotID: str = Field(min_length=1, max_length=220)
