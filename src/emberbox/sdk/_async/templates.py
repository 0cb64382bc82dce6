"""Template builds through the control plane (E2B's build system v2): request a build, upload
each COPY step's files by content hash (only those the server lacks), start it with its steps,
and follow its log until it is ready. The steps are the wire's (``{type, args, filesHash?}``);
``emberbox template build`` makes them from a Dockerfile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .. import _errors
from ..exceptions import TemplateException
from .api import AsyncApi

POLL_S = 0.2


@dataclass(frozen=True)
class BuildLogEntry:
    level: str
    message: str
    step: str | None


@dataclass(frozen=True)
class TemplateBuild:
    template_id: str
    build_id: str


async def _ok(api: AsyncApi, method: str, path: str, status: int, what: str,
              body: dict[str, Any] | None = None, idempotent: bool = True) -> Any:  # fmt: skip
    response = await api.request(method, path, json_body=body, idempotent=idempotent, what=what)
    if response.status_code != status:
        raise _errors.from_http(response, what=what)
    return response.json() if response.content else None


async def upload_files(api: AsyncApi, template_id: str, files: Mapping[str, bytes]) -> None:
    """Each archive (by its content hash) unless the server has it already."""
    for files_hash, archive in files.items():
        link = await _ok(api, "GET", f"/templates/{template_id}/files/{files_hash}", 201,
                         f"template file {files_hash[:12]}")  # fmt: skip
        if link.get("present") or not link.get("url"):
            continue
        try:
            response = await api.http.put(link["url"], content=archive, timeout=3600)
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, "template file upload") from exc
        if response.status_code >= 300:
            raise _errors.from_http(response, what="template file upload")


async def build_template(
    api: AsyncApi,
    name: str,
    start: Mapping[str, Any],
    files: Mapping[str, bytes],
    *,
    on_log: Callable[[BuildLogEntry], None] | None = None,
    cpu_count: int | None = None,
    memory_mb: int | None = None,
) -> TemplateBuild:
    """Build ``name`` (``name:tag`` tags the build) from ``start`` (the v2 build body: from,
    steps, start/ready commands); raises :class:`TemplateException` with the server's reason
    (which names the failing step) when the build fails."""
    request: dict[str, Any] = {"name": name}
    if cpu_count is not None:
        request["cpuCount"] = cpu_count
    if memory_mb is not None:
        request["memoryMB"] = memory_mb
    created = await _ok(api, "POST", "/v3/templates", 202, f"template build of {name}", request,
                        idempotent=False)  # fmt: skip
    build = TemplateBuild(created["templateID"], created["buildID"])
    await upload_files(api, build.template_id, files)
    where = f"/templates/{build.template_id}/builds/{build.build_id}"
    await _ok(api, "POST", f"/v2{where}", 202, f"template build of {name}", dict(start),
              idempotent=False)  # fmt: skip
    offset = 0
    while True:
        status = await _ok(api, "GET", f"{where}/status?logsOffset={offset}", 200,
                           f"template build of {name}")  # fmt: skip
        entries = status.get("logEntries") or []
        offset += len(entries)
        for e in entries:
            if on_log is not None:
                on_log(BuildLogEntry(e.get("level", "info"), e.get("message", ""), e.get("step")))
        if status["status"] in ("ready", "error") and not entries:
            if status["status"] == "error":
                reason = status.get("reason") or {}
                raise TemplateException(reason.get("message") or "the template build failed")
            return build
        if not entries:
            await asyncio.sleep(POLL_S)
