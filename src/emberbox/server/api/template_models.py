"""Wire models of the template API, named and shaped as the SDK's generated models
(``e2b/api/client/models/template_*.py``). Requests refuse fields we do not know (400), so an
option we do not implement is never silently dropped."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .models import OmittedIfNone

BuildStatus = Literal["building", "waiting", "ready", "error"]
LogLevel = Literal["debug", "info", "warn", "error"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateBuildRequestV3(_Strict):
    name: str | None = None
    tags: list[str] | None = None
    alias: str | None = None
    teamID: str | None = None
    cpuCount: int | None = None
    memoryMB: int | None = None
    minFreeDiskMb: int | None = None


class TemplateBuildRequestLegacy(_Strict):
    """``POST /v2/templates`` and ``/templates``: older clients; a ``dockerfile`` (the v1 build)
    is refused, since builds take steps now."""

    alias: str | None = None
    name: str | None = None
    teamID: str | None = None
    cpuCount: int | None = None
    memoryMB: int | None = None
    dockerfile: str | None = None
    startCmd: str | None = None
    readyCmd: str | None = None


class TemplateRequestResponseV3(BaseModel):
    templateID: str
    buildID: str
    public: bool
    names: list[str]
    tags: list[str]
    aliases: list[str]


class TemplateBuildFileUpload(BaseModel):
    present: bool
    url: OmittedIfNone = None


class TemplateStep(_Strict):
    type: str
    args: list[str] = Field(default_factory=list)
    filesHash: str | None = None
    force: bool = False
    # The SDK's own: it uploads again (to the URL files/{hash} always gives) before the
    # build, whose step then carries force as well. Nothing left to do with it here.
    forceUpload: bool | None = None


class TemplateBuildStartV2(_Strict):
    fromImage: str | None = None
    fromTemplate: str | None = None
    fromImageRegistry: dict[str, Any] | None = None
    force: bool = False
    steps: list[TemplateStep] = Field(default_factory=list)
    startCmd: str | None = None
    readyCmd: str | None = None


class BuildLogEntry(BaseModel):
    timestamp: dt.datetime
    message: str
    level: LogLevel
    step: OmittedIfNone = None


class BuildStatusReason(BaseModel):
    message: str
    step: OmittedIfNone = None
    logEntries: list[BuildLogEntry] = Field(default_factory=list)


class TemplateBuildInfo(BaseModel):
    logs: list[str]
    logEntries: list[BuildLogEntry]
    templateID: str
    buildID: str
    status: BuildStatus
    reason: BuildStatusReason | None = Field(default=None, exclude_if=lambda v: v is None)


class TemplateBuildLogsResponse(BaseModel):
    logs: list[BuildLogEntry]


class TemplateBuild(BaseModel):
    buildID: str
    status: BuildStatus
    createdAt: dt.datetime
    updatedAt: dt.datetime
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    envdVersion: str
    finishedAt: dt.datetime | None = Field(default=None, exclude_if=lambda v: v is None)


class Template(BaseModel):
    templateID: str
    buildID: str
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    public: bool
    aliases: list[str]
    names: list[str]
    createdAt: dt.datetime
    updatedAt: dt.datetime
    createdBy: None = None
    lastSpawnedAt: dt.datetime | None
    spawnCount: int
    buildCount: int
    envdVersion: str
    buildStatus: BuildStatus


class TemplateWithBuilds(Template):
    builds: list[TemplateBuild]


class TemplateAliasResponse(BaseModel):
    templateID: str
    public: bool


class TemplateUpdateRequest(_Strict):
    public: bool | None = None


class TemplateUpdateResponse(BaseModel):
    names: list[str]


class AssignTemplateTagsRequest(_Strict):
    target: str
    tags: list[str]


class AssignedTemplateTags(BaseModel):
    tags: list[str]
    buildID: str


class DeleteTemplateTagsRequest(_Strict):
    name: str
    tags: list[str]


class TemplateTag(BaseModel):
    tag: str
    buildID: str
    createdAt: dt.datetime
