"""Wire models. Field names are the protocol's JSON names exactly (hence the camelCase)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MetaValue = Annotated[str, StringConstraints(max_length=1024)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
EnvValue = Annotated[str, StringConstraints(max_length=32 * 1024)]
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=64)]
EnvVars = Annotated[dict[EnvName, EnvValue], Field(max_length=256)]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Error(BaseModel):
    code: int = Field(description="Equal to the HTTP status.")
    message: str
    error_code: str | None = Field(default=None, description="Machine-readable reason, if any.")


class NewSandboxV2(_In):
    """``POST /v2/sandboxes``. Fields we accept but cannot honour are refused with 501."""

    templateID: str = Field(min_length=1, max_length=200)
    timeout: int | None = Field(default=None, description="Seconds to live; default 300.")
    metadata: Metadata | None = None
    envVars: EnvVars | None = None
    autoPause: bool | None = None
    autoPauseMemory: bool | None = None
    autoResume: dict[str, Any] | None = None
    allow_internet_access: bool | None = None
    network: dict[str, Any] | None = None
    mcp: dict[str, Any] | None = None
    volumeMounts: list[dict[str, Any]] | None = None


class NewSandbox(NewSandboxV2):
    """``POST /sandboxes`` (older SDKs): same fields plus ``secure``; default timeout 15 s."""

    secure: bool | None = None


class ConnectSandbox(_In):
    timeout: int | None = None
    memory: bool | None = None


class TimeoutRequest(_In):
    timeout: int


class PauseRequest(_In):
    memory: bool | None = None
    requireHealthyGuest: bool | None = None


class Sandbox(BaseModel):
    templateID: str
    sandboxID: str
    clientID: str
    envdVersion: str
    alias: str | None = None
    envdAccessToken: str | None = None
    trafficAccessToken: str | None = None
    domain: str | None = None


class ListedSandbox(BaseModel):
    templateID: str
    sandboxID: str
    clientID: str
    envdVersion: str
    alias: str | None = None
    startedAt: dt.datetime
    endAt: dt.datetime
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    state: Literal["running", "paused"]
    metadata: dict[str, str] = Field(default_factory=dict)


class Lifecycle(BaseModel):
    autoResume: bool = False
    onTimeout: Literal["kill", "pause"] = "kill"


class SandboxDetail(ListedSandbox):
    envdAccessToken: str | None = None
    domain: str | None = None
    allowInternetAccess: bool | None = None
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)


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


class SandboxLogEntry(BaseModel):
    timestamp: dt.datetime
    level: Literal["debug", "info", "warn", "error"]
    message: str
    fields: dict[str, str] = Field(default_factory=dict)


class SandboxLogs(BaseModel):
    """``GET /sandboxes/{id}/logs``: lifecycle events, then what envd recorded inside."""

    logs: list[SandboxLog]
    logEntries: list[SandboxLogEntry]
