"""Team volumes behind E2B's volume API: create, list, get and delete them, check the content
API's bearer token, and turn a create's ``volumeMounts`` into volumes for the node.

A volume belongs to one team (another team gets 404). Its name is unique in the team; a
sandbox mounts it by name. A volume that a live sandbox mounts cannot be deleted (409). The
control plane owns names, teams and tokens; the node (embedded or remote) owns the disks and
serves the content calls (``node.volumes``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._connect.errors import Code
from ...node.client import NodeClient, NodeError
from ...runtimes.base import check_mount_path
from ...vocabulary import is_volume_id, new_volume_id
from ..auth.store import Principal
from ..config import Limits
from ..db import volumes as q
from ..db.models import SandboxVolume, Volume
from ..lifecycle.errors import (
    Conflict,
    Invalid,
    NodeFailed,
    NotFound,
    QuotaExceeded,
    Unsupported,
)
from ..lifecycle.states import State

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Where a volume may not be mounted: the guest's own system trees, and what we mount ourselves.
RESERVED = ("/proc", "/sys", "/dev", "/tmp", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64",
            "/boot", "/opt/emberbox", "/.e2b")  # fmt: skip
MAX_MOUNTS = 8
# A sandbox in these states may still have the volume bound in.
LIVE = frozenset(s for s in State if s not in (State.KILLED, State.FAILED))


@dataclass(frozen=True)
class Mount:
    """One entry of a create's ``volumeMounts``, resolved: the volume and where it goes."""

    volume_id: str
    path: str


class VolumeService:
    """**Parameters:** refusal - why this deployment serves no volumes ("" when its node keeps
    them; the process runtime binds none)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        node: NodeClient,
        limits: Limits,
        refusal: str = "",
    ) -> None:
        self.sessions = sessions
        self.node = node
        self.limits = limits
        self.refusal = refusal
        # Held by a delete from its check to its commit, and by a create that mounts volumes
        # until its mounts are committed: so a delete never removes a volume being mounted.
        self.lock = asyncio.Lock()
        # Around each create's count and its row (with the disk made in between): two creates
        # counted at once would each miss the other and both land over the team's limit.
        self._creating = asyncio.Lock()

    def _serving(self) -> None:
        if self.refusal:
            raise Unsupported(self.refusal)

    # ---- the volume API ----------------------------------------------------------------

    async def create(self, who: Principal, name: str) -> Volume:
        self._serving()
        if not NAME.match(name):
            raise Invalid("a volume name is 1-128 characters of [A-Za-z0-9._-], not starting "
                          "with '.', '_' or '-'")  # fmt: skip
        async with self._creating, self.sessions.begin() as s:
            if await q.by_name(s, who.team_id, name) is not None:
                raise Conflict(f"volume '{name}' exists already")
            if len(await q.list_for_team(s, who.team_id)) >= self.limits.max_volumes:
                raise QuotaExceeded(
                    f"volume limit reached ({self.limits.max_volumes} per team); delete one first"
                )
            row = Volume(
                id=new_volume_id(),
                team_id=who.team_id,
                name=name,
                token=secrets.token_urlsafe(32),
                size_mb=self.limits.volume_mb,
            )
            s.add(row)
            try:
                await s.flush()
            except IntegrityError:  # the same name, created at the same moment
                raise Conflict(f"volume '{name}' exists already") from None
            # Made inside the transaction: a failure leaves neither a row nor a disk.
            try:
                await self.node.create_volume(row.id, row.size_mb)
            except NodeError as e:
                raise NodeFailed(f"the node could not make the volume: {e.message}") from None
        return row

    async def of_team(self, who: Principal) -> Sequence[Volume]:
        self._serving()
        async with self.sessions() as s:
            return await q.list_for_team(s, who.team_id)

    async def get(self, who: Principal, volume_id: str) -> Volume:
        self._serving()
        async with self.sessions() as s:
            row = await q.get(s, who.team_id, volume_id)
        if row is None:
            raise NotFound(f"volume '{volume_id}' not found")
        return row

    async def delete(self, who: Principal, volume_id: str) -> None:
        self._serving()
        async with self.lock, self.sessions.begin() as s:
            row = await q.get(s, who.team_id, volume_id)
            if row is None:
                raise NotFound(f"volume '{volume_id}' not found")
            users = await q.mounted_by(s, volume_id, LIVE)
            if users:
                raise Conflict(
                    f"volume '{row.name}' is mounted by sandbox {', '.join(sorted(users))}; "
                    "kill it first"
                )
            try:  # before the row goes: a failure keeps both
                await self.node.delete_volume(volume_id)
            except NodeError as e:
                if e.code == Code.FAILED_PRECONDITION:
                    raise Conflict(f"volume '{row.name}' is in use: {e.message}") from None
                if e.code != Code.NOT_FOUND:  # not there: nothing to free
                    raise NodeFailed(f"the node could not delete it: {e.message}") from None
            await s.delete(row)

    # ---- the content API -------------------------------------------------------------

    async def authorize(self, volume_id: str, authorization: str | None) -> str:
        """The volume's id, if ``authorization`` is ``Bearer <its token>``."""
        self._serving()
        token = (authorization or "").removeprefix("Bearer ").strip()
        row = None
        if is_volume_id(volume_id):
            async with self.sessions() as s:
                row = await s.get(Volume, volume_id)
        # One answer for "no such volume" and "wrong token": ids cannot be probed.
        if row is None or not token or not hmac.compare_digest(row.token.encode(), token.encode()):
            raise NotFound(f"volume '{volume_id}' not found, or the token is not its own")
        return volume_id

    # ---- sandboxes -------------------------------------------------------------------

    async def mounts_for(self, team_id: str, wanted: Sequence[Mapping[str, str]]) -> list[Mount]:
        """A create's ``volumeMounts`` ({name, path}), checked and resolved."""
        self._serving()
        if len(wanted) > MAX_MOUNTS:
            raise Invalid(f"at most {MAX_MOUNTS} volume mounts per sandbox")
        out: list[Mount] = []
        async with self.sessions() as s:
            for item in wanted:
                name, path = item.get("name", ""), item.get("path", "")
                try:
                    check_mount_path(path)
                except ValueError:
                    raise Invalid(
                        f"volume mount path must be absolute and normalised: {path!r}"
                    ) from None
                if any(path == r or path.startswith(r + "/") or r.startswith(path + "/")
                       for r in RESERVED):  # fmt: skip
                    raise Invalid(f"volumes cannot be mounted at {path} (a system directory)")
                if any(path == m.path or path.startswith(m.path + "/")
                       or m.path.startswith(path + "/") for m in out):  # fmt: skip
                    raise Invalid(f"volume mount paths overlap: {path}")
                row = await q.by_name(s, team_id, name)
                if row is None:
                    raise NotFound(f"volume '{name}' not found")
                out.append(Mount(row.id, path))
        return out

    async def record(self, session: AsyncSession, sandbox_id: str, mounts: Sequence[Mount]) -> None:
        """Note which volumes the sandbox mounts, in the transaction that adds its row (with
        ``lock`` held): from then on a delete of them is refused; one deleted since
        ``mounts_for`` is not found (the node mounts the others as it creates the sandbox)."""
        for m in mounts:
            if await session.get(Volume, m.volume_id) is None:
                raise NotFound(f"volume '{m.volume_id}' was deleted")
            session.add(SandboxVolume(sandbox_id=sandbox_id, volume_id=m.volume_id, path=m.path))
