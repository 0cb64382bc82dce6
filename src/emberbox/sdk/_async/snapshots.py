"""Snapshots, forks and rollback on the control plane: E2B's calls plus our ``/rollback``.

E2B files snapshots under templates: one is deleted with ``DELETE /templates/{id}`` and started
by naming it as the template of a create.
"""

from __future__ import annotations

import builtins
from typing import Any

from .. import _errors
from .._config import ConnectionConfig
from ..exceptions import InvalidArgumentException, SandboxException
from ..models import PauseMode, SnapshotInfo
from .api import AsyncApi, _ts, http_client
from .paging import AsyncPaginator


def snapshot_info(item: dict[str, Any]) -> SnapshotInfo:
    size = item.get("sizeBytes")
    return SnapshotInfo(
        snapshot_id=item["snapshotID"],
        names=list(item.get("names") or []),
        sandbox_id=item.get("sandboxID"),
        size_bytes=int(size) if size is not None else None,
        created_at=_ts(item.get("createdAt")),
        id=item.get("id"),
    )


async def create_snapshot(
    api: AsyncApi, sandbox_id: str, name: str | None, mode: PauseMode = "full"
) -> SnapshotInfo:
    if mode not in ("full", "filesystem"):
        raise InvalidArgumentException(f"snapshot mode: 'full' or 'filesystem' (got {mode!r})")
    body: dict[str, Any] = {"name": name} if name is not None else {}
    if mode == "filesystem":
        body["memory"] = False
    # Not retried: a retry after a lost answer would save a second snapshot.
    response = await api.request(
        "POST",
        f"/sandboxes/{sandbox_id}/snapshots",
        json_body=body,
        idempotent=False,
        what=f"snapshot of {sandbox_id}",
    )
    if response.status_code != 201:
        raise _errors.from_http(response, what=f"snapshot of {sandbox_id}")
    return snapshot_info(response.json())


async def snapshot_page(
    api: AsyncApi,
    *,
    sandbox_id: str | None,
    name: str | None,
    limit: int | None,
    next_token: str | None,
) -> tuple[list[SnapshotInfo], str | None]:
    """One page of ``GET /snapshots`` and the token of the next (None: this was the last)."""
    params = {
        key: value
        for key, value in {
            "sandboxID": sandbox_id,
            "name": name,
            "limit": str(limit) if limit else None,
            "nextToken": next_token,
        }.items()
        if value
    }
    response = await api.request("GET", "/snapshots", params=params, what="list snapshots")
    if response.status_code != 200:
        raise _errors.from_http(response, what="list snapshots")
    items = [snapshot_info(item) for item in response.json()]
    return items, response.headers.get("x-next-token") or None


async def delete_snapshot(api: AsyncApi, snapshot_id: str) -> bool:
    response = await api.request(
        "DELETE", f"/templates/{snapshot_id}", what=f"delete snapshot {snapshot_id}"
    )
    if response.status_code == 404:
        return False
    if response.status_code >= 300:
        raise _errors.from_http(response, what=f"delete snapshot {snapshot_id}")
    return True


async def fork(
    api: AsyncApi, sandbox_id: str, count: int, timeout: int | None
) -> builtins.list[dict[str, Any] | SandboxException]:
    """One entry per fork: the new sandbox's create answer, or its error as an exception."""
    body: dict[str, Any] = {"count": count}
    if timeout is not None:
        body["timeout"] = timeout
    response = await api.request(
        "POST",
        f"/sandboxes/{sandbox_id}/fork",
        json_body=body,
        idempotent=False,
        what=f"fork of {sandbox_id}",
    )
    if response.status_code != 201:
        raise _errors.from_http(response, what=f"fork of {sandbox_id}")
    out: builtins.list[dict[str, Any] | SandboxException] = []
    for entry in response.json():
        if entry.get("sandbox"):
            out.append(entry["sandbox"])
            continue
        error = entry.get("error") or {}
        out.append(
            _errors.from_status(
                int(error.get("code", 500)),
                f"fork of {sandbox_id}: {error.get('message', 'no sandbox and no error given')}",
            )
        )
    return out


async def rollback(api: AsyncApi, sandbox_id: str, snapshot_id: str) -> None:
    # Not retried: a rollback that landed but whose answer was lost must not run twice over
    # work done after it.
    response = await api.request(
        "POST",
        f"/sandboxes/{sandbox_id}/rollback",
        json_body={"snapshotID": snapshot_id},
        idempotent=False,
        what=f"rollback of {sandbox_id}",
    )
    if response.status_code != 200:
        raise _errors.from_http(response, what=f"rollback of {sandbox_id}")


class AsyncSnapshotPaginator(AsyncPaginator[SnapshotInfo]):
    """The team's snapshots, newest first, a page per request (E2B's paginator: ``has_next``,
    ``next_token``, ``next_items()``); iterating it walks every remaining page.

    **Parameters:** ``sandbox_id`` and ``name`` filter; ``limit`` is the page size (1-100);
    ``next_token`` resumes from a page an earlier paginator stopped at.
    """

    what = "snapshots"

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        sandbox_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> None:
        super().__init__(config, limit, next_token)
        self.sandbox_id = sandbox_id
        self.name = name

    async def _page(self) -> tuple[builtins.list[SnapshotInfo], str | None]:
        async with http_client() as http:
            return await snapshot_page(
                AsyncApi(self._config, http),
                sandbox_id=self.sandbox_id,
                name=self.name,
                limit=self.limit,
                next_token=self._next_token,
            )
