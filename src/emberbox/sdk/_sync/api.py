# Generated from ../_async/api.py by scripts/unasync.py; edit that file instead.
"""The control-plane REST API (E2B's schema): create, connect, list, kill, timeouts, metrics.

Idempotent calls are retried on 429/502/503/504, honouring ``Retry-After``; creates are not.
"""

from __future__ import annotations

import time
import builtins
import json
import random
import urllib.parse
from datetime import datetime
from typing import Any

import httpx

from .. import _errors
from .._base import tls_context
from .._config import ConnectionConfig
from ..exceptions import AuthenticationException, InvalidArgumentException, NotFoundException
from ..models import (
    Lifecycle,
    NetworkOptions,
    OnResume,
    PauseMode,
    SandboxInfo,
    SandboxMetrics,
    lifecycle_body,
    network_body,
    network_info,
)

RETRY_STATUSES = {429, 502, 503, 504}
MAX_RETRIES = 3


def _ts(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None


def sandbox_info(item: dict[str, Any]) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=item["sandboxID"],
        template_id=item.get("templateID", ""),
        state=item.get("state", "running"),
        started_at=_ts(item.get("startedAt")),
        end_at=_ts(item.get("endAt")),
        metadata=dict(item.get("metadata") or {}),
        cpu_count=item.get("cpuCount"),
        memory_mb=item.get("memoryMB"),
        envd_version=item.get("envdVersion"),
        paused_bytes=item.get("pausedBytes"),
        pause_mode=item.get("pauseMode"),
        envd_unresponsive_at_pause=item.get("envdUnresponsiveAtPause"),
        network=network_info(item.get("network")),
    )


def http_client() -> httpx.Client:
    """One client per sandbox object (or per class-level call): its own keep-alive pool."""
    return httpx.Client(
        verify=tls_context(),
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_keepalive_connections=20, keepalive_expiry=300),
    )


def encode_metadata_query(metadata: dict[str, str]) -> str:
    """The API takes metadata filters as one ``k=v&k2=v2`` string with each key and value
    escaped, the whole escaped again (the official SDKs' encoding, which the server undoes
    twice: escaped once, a '+', '&', '=' or '%' in a value was read as something else)."""
    quoted = {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in metadata.items()}
    return urllib.parse.urlencode(quoted)


class Api:
    def __init__(self, config: ConnectionConfig, http: httpx.Client) -> None:
        self.config = config
        self.http = http

    def _headers(self) -> dict[str, str]:
        if not self.config.api_key:
            raise AuthenticationException(
                "no API key: pass api_key= or set EMBERBOX_API_KEY (or E2B_API_KEY)"
            )
        return {"X-API-KEY": self.config.api_key}

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
        what: str = "request",
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    method,
                    f"{self.config.api_url}{path}",
                    content=json.dumps(json_body).encode() if json_body is not None else None,
                    params=params,
                    headers={
                        **self._headers(),
                        **({"Content-Type": "application/json"} if json_body is not None else {}),
                    },
                    timeout=self.config.request_timeout,
                )
            except httpx.HTTPError as exc:
                raise _errors.from_transport(exc, what) from exc
            retryable = response.status_code in RETRY_STATUSES and (
                idempotent or response.headers.get("should-retry") == "true"
            )
            if response.status_code < 300 or not retryable or attempt >= MAX_RETRIES:
                return response
            attempt += 1
            wait = _errors.retry_after(response)
            time.sleep(
                wait if wait is not None else min(10.0, 0.1 * 2**attempt * random.uniform(1, 2))
            )

    def create(
        self,
        template: str,
        timeout: int,
        metadata: dict[str, str] | None,
        envs: dict[str, str] | None,
        allow_internet_access: bool,
        network: NetworkOptions | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "templateID": template,
            "timeout": timeout,
            "metadata": metadata or {},
            "envVars": envs or {},
            "allow_internet_access": allow_internet_access,
        }
        if network:
            body["network"] = network_body(network)
        if lifecycle:
            body.update(lifecycle_body(lifecycle))
        response = self.request(
            "POST", "/v2/sandboxes", json_body=body, idempotent=False, what="create sandbox"
        )
        if response.status_code != 201:
            raise _errors.from_http(response, what="create sandbox")
        created: dict[str, Any] = response.json()
        return created

    def connect(
        self, sandbox_id: str, timeout: int | None, on_resume: OnResume = "restore"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        if on_resume not in ("restore", "reboot"):
            raise InvalidArgumentException(f"on_resume: 'restore' or 'reboot' (got {on_resume!r})")
        if on_resume == "reboot":
            body["memory"] = False
        response = self.request(
            "POST", f"/v2/sandboxes/{sandbox_id}/connect", json_body=body, what="connect"
        )
        if response.status_code not in (200, 201):
            raise _errors.from_http(response, what=f"connect to {sandbox_id}")
        connected: dict[str, Any] = response.json()
        return connected

    def get(self, sandbox_id: str) -> SandboxInfo:
        response = self.request("GET", f"/sandboxes/{sandbox_id}", what="get_info")
        if response.status_code != 200:
            raise _errors.from_http(response, what=f"sandbox {sandbox_id}")
        return sandbox_info(response.json())

    def list(
        self,
        metadata: dict[str, str] | None = None,
        state: list[str] | None = None,
        limit: int | None = None,
    ) -> list[SandboxInfo]:
        """Every page, following ``X-Next-Token`` until the server says there is no more."""
        params: dict[str, str] = {}
        if metadata:
            params["metadata"] = encode_metadata_query(metadata)
        if state:
            params["state"] = ",".join(state)
        if limit:
            params["limit"] = str(limit)
        found: list[SandboxInfo] = []
        while True:
            response = self.request("GET", "/v2/sandboxes", params=params, what="list")
            if response.status_code != 200:
                raise _errors.from_http(response, what="list sandboxes")
            found += [sandbox_info(item) for item in response.json()]
            token = response.headers.get("x-next-token")
            if not token or (limit and len(found) >= limit):
                return found
            params["nextToken"] = token

    def kill(self, sandbox_id: str) -> bool:
        response = self.request("DELETE", f"/sandboxes/{sandbox_id}", what="kill")
        if response.status_code == 404:
            return False
        if response.status_code >= 300:
            raise _errors.from_http(response, what=f"kill {sandbox_id}")
        return True

    def set_timeout(self, sandbox_id: str, timeout: int) -> None:
        response = self.request(
            "POST", f"/sandboxes/{sandbox_id}/timeout", json_body={"timeout": timeout}
        )
        if response.status_code >= 300:
            raise _errors.from_http(response, what=f"set_timeout {sandbox_id}")

    def update_network(self, sandbox_id: str, network: NetworkOptions) -> None:
        """Replace the sandbox's egress rules (omitted ones are cleared)."""
        response = self.request(
            "PUT", f"/sandboxes/{sandbox_id}/network", json_body=network_body(network)
        )
        if response.status_code >= 300:
            raise _errors.from_http(response, what=f"update_network {sandbox_id}")

    def pause(self, sandbox_id: str, mode: PauseMode = "full") -> bool:
        if mode not in ("full", "filesystem"):
            raise InvalidArgumentException(f"pause mode: 'full' or 'filesystem' (got {mode!r})")
        body = {"memory": False} if mode == "filesystem" else {}
        response = self.request(
            "POST", f"/sandboxes/{sandbox_id}/pause", json_body=body, idempotent=False
        )
        if response.status_code == 409:
            return False
        if response.status_code >= 300:
            raise _errors.from_http(response, what=f"pause {sandbox_id}")
        return True

    def metrics(self, sandbox_id: str) -> builtins.list[SandboxMetrics]:
        response = self.request("GET", f"/sandboxes/{sandbox_id}/metrics", what="metrics")
        if response.status_code == 404:
            raise NotFoundException(f"sandbox {sandbox_id} not found")
        if response.status_code >= 300:
            raise _errors.from_http(response, what=f"metrics {sandbox_id}")
        return [
            SandboxMetrics(
                timestamp=_ts(m["timestamp"]) or datetime.now(),
                cpu_count=m["cpuCount"],
                cpu_used_pct=m["cpuUsedPct"],
                mem_used=m["memUsed"],
                mem_total=m["memTotal"],
                disk_used=m["diskUsed"],
                disk_total=m["diskTotal"],
            )
            for m in response.json()
        ]

    def logs(self, sandbox_id: str, start: int = 0) -> builtins.list[dict[str, Any]]:
        """Entries (``timestamp``, ``level``, ``message``, ``fields``) from ``start`` (ms) on."""
        response = self.request(
            "GET", f"/sandboxes/{sandbox_id}/logs", params={"start": str(start)}, what="logs"
        )
        if response.status_code != 200:
            raise _errors.from_http(response, what=f"logs of {sandbox_id}")
        entries: builtins.list[dict[str, Any]] = response.json()["logEntries"]
        return entries
