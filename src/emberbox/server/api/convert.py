"""Database rows → wire models."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from ..._proto.node import node_pb2 as pb
from ...egress import proxy_dict, rules_dict
from ..db.models import Sandbox as Row
from ..lifecycle.egress import Egress
from ..lifecycle.states import HOLDS_SAVED_MEMORY, State, public_state
from .models import Lifecycle, ListedSandbox, Sandbox, SandboxDetail, SandboxMetric

CLIENT_ID = "emberbox"


def to_sandbox(row: Row, domain: str | None) -> Sandbox:
    return Sandbox(
        templateID=row.shown_template_id,
        sandboxID=row.id,
        clientID=CLIENT_ID,
        envdVersion=row.envd_version,
        alias=row.alias,
        envdAccessToken=row.envd_access_token,
        trafficAccessToken=row.traffic_access_token,
        domain=domain,
    )


def to_listed(row: Row) -> ListedSandbox:
    return ListedSandbox(
        templateID=row.shown_template_id,
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
        envdUnresponsiveAtPause=(
            True if row.envd_unresponsive_at_pause and State(row.state) == State.PAUSED else None
        ),
        pausedBytes=row.paused_bytes if State(row.state) in HOLDS_SAVED_MEMORY else None,
        volumeMounts=[
            {"name": m.volume.name, "path": m.path} for m in row.volume_mounts if m.volume
        ]
        or None,
    )


def to_detail(row: Row, domain: str | None) -> SandboxDetail:
    return SandboxDetail(
        **to_listed(row).model_dump(),
        envdAccessToken=row.envd_access_token,
        domain=domain,
        allowInternetAccess=row.allow_internet,
        network=network_config(row),
        lifecycle=Lifecycle(
            autoResume=bool(row.auto_resume),
            onTimeout="pause" if row.on_timeout == "pause" else "kill",
        ),
        pauseMode=_pause_mode(row),
    )


def _pause_mode(row: Row) -> Literal["full", "filesystem"] | None:
    """Shown for a paused sandbox once its pause finished (E2B)."""
    if State(row.state) != State.PAUSED:
        return None
    return "filesystem" if row.pause_mode == "filesystem" else "full"


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


def network_config(row: Row) -> dict[str, Any] | None:
    """What is in force, as E2B's ``SandboxNetworkConfig``; None with no rules at all."""
    egress = Egress.of(row)
    out: dict[str, Any] = {}
    if egress.allow_out:
        out["allowOut"] = list(egress.allow_out)
    if egress.deny_out:
        out["denyOut"] = list(egress.deny_out)
    if egress.rewrites:
        out["rules"] = rules_dict(egress.rewrites)
    if egress.dns_servers:
        out["dnsServers"] = list(egress.dns_servers)
    if egress.proxy is not None:  # E2B's SandboxEgressProxyInfo: never the password
        out["egressProxy"] = proxy_dict(egress.proxy)
    if row.traffic_access_token is not None:
        out["allowPublicTraffic"] = False
    if row.mask_request_host is not None:
        out["maskRequestHost"] = row.mask_request_host
    return out or None
