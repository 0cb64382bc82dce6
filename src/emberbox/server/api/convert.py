"""Database rows → wire models."""

from __future__ import annotations

import datetime as dt

from ..._proto.node import node_pb2 as pb
from ..db.models import Sandbox as Row
from ..lifecycle.states import State, public_state
from .models import ListedSandbox, Sandbox, SandboxDetail, SandboxMetric

CLIENT_ID = "emberbox"


def to_sandbox(row: Row, domain: str | None) -> Sandbox:
    return Sandbox(
        templateID=row.template_id,
        sandboxID=row.id,
        clientID=CLIENT_ID,
        envdVersion=row.envd_version,
        alias=row.alias,
        envdAccessToken=row.envd_access_token,
        domain=domain,
    )


def to_listed(row: Row) -> ListedSandbox:
    return ListedSandbox(
        templateID=row.template_id,
        sandboxID=row.id,
        clientID=CLIENT_ID,
        envdVersion=row.envd_version,
        alias=row.alias,
        startedAt=row.started_at,
        endAt=row.end_at,
        cpuCount=row.cpu_count,
        memoryMB=row.memory_mb,
        diskSizeMB=row.disk_mb,
        state=public_state(State(row.state)),
        metadata=row.metadata_dict,
    )


def to_detail(row: Row, domain: str | None) -> SandboxDetail:
    return SandboxDetail(
        **to_listed(row).model_dump(),
        envdAccessToken=row.envd_access_token,
        domain=domain,
        allowInternetAccess=row.allow_internet,
    )


def to_metric(stats: pb.StatsResponse, now: dt.datetime) -> SandboxMetric:
    return SandboxMetric(
        timestamp=now,
        timestampUnix=int(now.timestamp()),
        cpuCount=stats.cpu_count,
        cpuUsedPct=stats.cpu_used_pct,
        memUsed=stats.mem_used,
        memTotal=stats.mem_total,
        memCache=0,
        diskUsed=stats.disk_used,
        diskTotal=stats.disk_total,
    )
