"""Snapshots, forks and rollback: a sandbox's memory and files saved on its node, then used.

A snapshot is taken with the sandbox running (runsc checkpoints and leaves it running); it
belongs to the team, outlives its source, and is a template for creates (by id or name). A
fork is a snapshot nobody named, started ``count`` times and deleted once they run. A rollback
puts the source sandbox itself back to one of its snapshots, keeping its id and address.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import re
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._proto.node import node_pb2 as pb
from ...node.client import (
    NodeConflict,
    NodeError,
    NodeSandboxNotFound,
    NodeUnsupported,
)
from ...vocabulary import is_snapshot_id, new_snapshot_id
from ..auth.store import Principal
from ..db import cursors
from ..db import snapshots as snaps
from ..db import templates as team_templates
from ..db.models import Sandbox, Snapshot, utcnow
from ..db.sandboxes import paused_bytes_used
from .egress import Egress
from .errors import (
    Conflict,
    Invalid,
    LifecycleError,
    NodeFailed,
    NotFound,
    QuotaExceeded,
    SandboxFailed,
    Unsupported,
)
from .service import CreateRequest, SandboxService, answer_lost, snapshot_message
from .states import State

log = logging.getLogger("emberbox.snapshots")

MAX_FORKS = 100
# No '/': this server has one namespace, and a template reference drops a ``team/`` prefix
# (``acme/myapp`` is the template ``myapp``), so a snapshot so named would be taken for it.
SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Names the API's own paths take: ``DELETE /templates/tags`` removes tags.
RESERVED_NAMES = frozenset({"tags"})


@dataclass(frozen=True)
class SnapshotPage:
    items: list[Snapshot]
    next_token: str | None


class SnapshotService:
    """**Parameters:** sandboxes - the sandbox service (admission, node, database);
    max_bytes_per_team - disk all of a team's snapshots may take (0: no limit)."""

    def __init__(self, sandboxes: SandboxService, max_bytes_per_team: int = 0) -> None:
        self.sandboxes = sandboxes
        self.max_bytes_per_team = max_bytes_per_team
        # Around each quota check and the row it admits: two snapshots checked at once would
        # each see the other's bytes missing, and both land over the limit.
        self._quota = asyncio.Lock()

    @property
    def _sessions(self) -> async_sessionmaker[AsyncSession]:
        return self.sandboxes.sessions

    async def _running(self, who: Principal, sandbox_id: str) -> Sandbox:
        row = await self.sandboxes.get(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            raise Conflict(f"sandbox '{sandbox_id}' is {row.state}, not running")
        if not self.sandboxes.facts.capabilities.snapshot:
            raise self.sandboxes._unsupported("cannot snapshot sandboxes")
        await self.sandboxes.refuse_if_volumes(sandbox_id, "snapshotted, forked or rolled back")
        return row

    # ---- snapshots ----------------------------------------------------------------------------

    async def create(
        self,
        who: Principal,
        sandbox_id: str,
        name: str | None = None,
        *,
        internal: bool = False,
        memory: bool = True,
    ) -> Snapshot:
        """Save a running sandbox, which keeps running: its memory and files, or (without
        ``memory``) only the files it changed, from which sandboxes then boot."""
        if not memory:
            self.sandboxes.check_can_pause_files("memory: false")
        if name is not None and not SNAPSHOT_NAME.fullmatch(name.removesuffix(snaps.DEFAULT_TAG)):
            raise Invalid(
                "a snapshot name is 1-128 characters of [A-Za-z0-9._-], starting with a letter "
                "or digit (no 'team/' prefix: this server has one namespace)"
            )
        name = name.removesuffix(snaps.DEFAULT_TAG) if name else None
        if name in RESERVED_NAMES:
            raise Invalid(f"'{name}' is a path of the API; choose another snapshot name")
        if name is not None and is_snapshot_id(name):
            raise Invalid(f"'{name}' has the shape of a snapshot id; choose another snapshot name")
        if name is not None and await self._template_named(who, name):
            raise Invalid(f"'{name}' is a template's name; choose another snapshot name")
        row = await self._running(who, sandbox_id)
        # A checkpoint disturbs the sandbox (its output streams end, its proxied connections
        # close) even when the snapshot is then refused for its size: a full team is refused
        # before one.
        await self.sandboxes.check_saved_disk(
            who.team_id, f"no snapshot of sandbox '{sandbox_id}' was taken", self.max_bytes_per_team
        )
        snapshot_id = new_snapshot_id()
        try:
            ref = await self._checkpoint(row, snapshot_id, memory)
        except NodeSandboxNotFound as e:
            raise NotFound(f"sandbox '{sandbox_id}' no longer exists on its node") from e
        except NodeConflict as e:  # paused by another caller since the check above
            raise Conflict(f"sandbox '{sandbox_id}' is not running: {e.message}") from e
        except NodeError as e:
            if answer_lost(e):
                lose_track(self.sandboxes, snapshot_id, saving=True)  # taken anyway: no row
                raise NodeFailed(
                    f"snapshot of '{sandbox_id}': the node did not answer ({e}); no snapshot "
                    "was recorded"
                ) from e
            raise SandboxFailed(f"snapshot of '{sandbox_id}' failed (it keeps running): {e}") from e
        except BaseException:  # cut off (cancelled): it may be taken, with no row to name it
            lose_track(self.sandboxes, snapshot_id, saving=True)
            raise
        snapshot = Snapshot(
            id=snapshot_id,
            team_id=who.team_id,
            name=name,
            taken_as=name,
            source_sandbox_id=sandbox_id,
            template_id=row.template_id,
            public_template_id=row.public_template_id,
            alias=row.alias,
            cpu_count=row.cpu_count,
            memory_mb=row.memory_mb,
            disk_mb=row.disk_mb,
            allow_internet=row.allow_internet,
            node_id=row.node_id or self.sandboxes.facts.node_id,
            runtime=ref.runtime,
            path=ref.path,
            size_bytes=ref.size_bytes,
            # A sandbox started from its files boots a fresh envd, which holds no token.
            envd_access_token=row.envd_access_token if memory else "",
            memory=memory,
            internal=internal,
            created_at=utcnow(),
        )
        try:
            async with self._quota, self._sessions.begin() as s:
                used = await snaps.bytes_used(s, who.team_id)
                used += await paused_bytes_used(s, who.team_id)
                over = self.max_bytes_per_team and used + ref.size_bytes > self.max_bytes_per_team
                # A template may have taken the name while the checkpoint ran.
                clash = name is not None and await team_templates.holding_name(s, who.team_id, name)
                if not over and not clash:
                    if name is not None:  # a newer snapshot takes the name over (E2B's rule)
                        for older in await snaps.list_page(
                            s, who.team_id, source_sandbox_id=None, name=name, limit=1000
                        ):
                            older.name = None
                    s.add(snapshot)
        except BaseException:
            # Taken, but its row was not written (the database failed, or the call was
            # cancelled): the reconciliation deletes it, unless a row names it after all (a
            # commit whose answer was lost), rather than leave it hidden on the node's disk.
            lose_track(self.sandboxes, snapshot_id, saving=False)
            raise
        if clash:
            await self._delete_on_node(snapshot)
            raise Invalid(f"'{name}' became a template's name meanwhile; choose another name")
        if over:
            await self._delete_on_node(snapshot)
            raise QuotaExceeded(
                f"snapshots and paused sandboxes of this team would take {used + ref.size_bytes} "
                f"bytes, over the limit of {self.max_bytes_per_team}; delete snapshots or kill "
                "paused sandboxes first"
            )
        return snapshot

    async def _checkpoint(self, row: Sandbox, snapshot_id: str, memory: bool) -> pb.Snapshot:
        if not memory:  # files hold no connection: streams go on
            return await self.sandboxes.node.checkpoint(row.id, snapshot_id, memory=False)
        async with self.sandboxes.saving_memory(row):
            return await self.sandboxes.node.checkpoint(row.id, snapshot_id, memory=True)

    async def list(
        self,
        who: Principal,
        *,
        sandbox_id: str | None,
        name: str | None,
        limit: int,
        next_token: str | None,
    ) -> SnapshotPage:
        if not 1 <= limit <= 100:
            raise Invalid("limit must be between 1 and 100")
        try:
            after = cursors.decode(next_token) if next_token else None
        except cursors.BadCursor:
            raise Invalid("nextToken is not one this server gave out") from None
        async with self._sessions() as s:
            rows = await snaps.list_page(
                s, who.team_id, source_sandbox_id=sandbox_id, name=name, limit=limit, after=after
            )
        more, rows = len(rows) > limit, rows[:limit]
        last = rows[-1] if more else None
        return SnapshotPage(rows, cursors.encode(last.created_at, last.id) if last else None)

    async def find(self, who: Principal, ref: str) -> Snapshot | None:
        async with self._sessions() as s:
            return await snaps.find(s, who.team_id, ref)

    async def delete(self, who: Principal, ref: str) -> None:
        """Delete the snapshot ``ref`` names: by id, that one; by name, every snapshot taken
        under the name (E2B's name is a template, and they are its builds)."""
        async with self._sessions.begin() as s:
            rows = await snaps.deletable(s, who.team_id, ref)
            if not rows:
                raise NotFound(f"snapshot '{ref}' not found")
            for row in rows:
                await s.delete(row)
        for row in rows:
            await self._delete_on_node(row)

    async def _delete_on_node(self, snapshot: Snapshot) -> None:
        await _delete_on_node(self.sandboxes, snapshot_message(snapshot))

    # ---- fork ---------------------------------------------------------------------------------

    async def fork(
        self, who: Principal, sandbox_id: str, count: int, timeout_s: int
    ) -> builtins.list[Sandbox | LifecycleError]:
        """``count`` new sandboxes from one checkpoint of a running one, which keeps running
        with its id and end time. One result per fork: a sandbox or why it failed."""
        if not 1 <= count <= MAX_FORKS:
            raise Invalid(f"count must be between 1 and {MAX_FORKS}")
        self.sandboxes.check_timeout(timeout_s, minimum=1)
        if not self.sandboxes.facts.capabilities.fork:
            raise self.sandboxes._unsupported("cannot fork sandboxes")
        await self.sandboxes.check_sandbox_cap(
            who.team_id, f"sandbox '{sandbox_id}' was not forked"
        )
        snapshot = await self.create(who, sandbox_id, internal=True)
        try:  # (the source may be killed meanwhile: its checkpoint goes all the same)
            source = await self.sandboxes.get(who, sandbox_id)
            secrets = self.sandboxes.secret_service
            req = CreateRequest(
                template=snapshot.id,
                timeout_s=timeout_s,
                metadata=source.metadata_dict,
                allow_internet=source.allow_internet,
                source=snapshot,
                # A fork has its source's network policy (never more egress); its own token.
                allow_out=Egress.of(source).allow_out,
                deny_out=Egress.of(source).deny_out,
                header_rules=Egress.of(source).rewrites,
                egress_proxy=Egress.of(source).with_password(secrets, who.team_id).proxy,
                dns_servers=Egress.of(source).dns_servers,
                allow_public_traffic=source.traffic_access_token is None,
                mask_request_host=source.mask_request_host,
            )
            results = await asyncio.gather(
                *(self.sandboxes.create(who, req) for _ in range(count)), return_exceptions=True
            )
        finally:
            # Every fork has its own copy of the memory once it runs: the image can go.
            async with self._sessions.begin() as s:
                row = await snaps.get(s, snapshot.id)
                if row is not None:
                    await s.delete(row)
            await self._delete_on_node(snapshot)
        out: builtins.list[Sandbox | LifecycleError] = []
        for result in results:
            if isinstance(result, Sandbox | LifecycleError):
                out.append(result)
            elif isinstance(result, Exception):
                out.append(SandboxFailed(f"fork failed: {result}"))
            else:
                raise result
        return out

    async def _template_named(self, who: Principal, name: str) -> bool:
        """Whether a template, built-in or the team's own, holds ``name``."""
        if self.sandboxes.templates.resolve(name) is not None:
            return True
        async with self._sessions() as s:
            return await team_templates.holding_name(s, who.team_id, name) is not None

    # ---- rollback -----------------------------------------------------------------------------

    async def rollback(self, who: Principal, sandbox_id: str, ref: str) -> Sandbox:
        """Put the sandbox back to one of its own snapshots, in place (our extension)."""
        row = await self._running(who, sandbox_id)
        snapshot = await self.find(who, ref)
        if snapshot is None:
            raise NotFound(f"snapshot '{ref}' not found")
        if snapshot.source_sandbox_id != sandbox_id:  # (whatever it holds: never allowed)
            raise Invalid(
                f"snapshot '{ref}' was taken of sandbox '{snapshot.source_sandbox_id}'; a sandbox "
                "rolls back only to its own snapshots (start a new one from it instead)"
            )
        if not snapshot.memory:
            raise Unsupported(
                f"snapshot '{ref}' holds only files: a rollback to it is not supported (start "
                "a new sandbox from it instead)"
            )
        try:
            with self.sandboxes.switch(sandbox_id):  # (reconciliation leaves it alone)
                async with self.sandboxes.saving_memory(row):  # (its memory is replaced)
                    await self.sandboxes.node.restore(sandbox_id, snapshot_message(snapshot))
        except NodeUnsupported as e:
            raise self.sandboxes._unsupported("cannot roll sandboxes back") from e
        except NodeConflict as e:  # paused by another caller since the check above; untouched
            raise Conflict(f"sandbox '{sandbox_id}' is not running: {e.message}") from e
        except NodeError as e:
            if answer_lost(e):
                # Rolled back or not, it is as the node holds it: never recorded on a guess
                # (reconciliation records it as the node holds it).
                raise NodeFailed(
                    f"rollback of '{sandbox_id}': the node did not answer ({e}); the sandbox "
                    "may or may not be rolled back"
                ) from e
            raise await self._failed_rollback(sandbox_id, e) from e
        return row

    async def _failed_rollback(self, sandbox_id: str, e: NodeError) -> LifecycleError:
        """Where a rollback the node failed left the sandbox, recorded: paused at the
        snapshot (a resume tries again), running as it was, or gone."""
        failed = f"rollback of '{sandbox_id}' failed: {e.message}"
        try:
            held = await self.sandboxes.node_view(sandbox_id)
        except NodeError as lost:
            return NodeFailed(f"{failed}; the node did not say where it left it ({lost})")
        if held is None:
            await self.sandboxes.mark_crashed(sandbox_id, oom=False)
            return SandboxFailed(f"{failed}; the sandbox is lost")
        if held.status == pb.SANDBOX_STATUS_PAUSED:
            await self.sandboxes.record_paused_by_node(sandbox_id, held)
            return SandboxFailed(
                f"{failed}; the sandbox is paused at the snapshot, and a resume (connect) "
                "tries again"
            )
        if isinstance(e, NodeSandboxNotFound):  # (the snapshot's files, not the sandbox)
            return NotFound(f"{failed}; the sandbox runs on as it was")
        return SandboxFailed(f"{failed}; the sandbox runs on as it was")


async def remove_leftover_snapshots(sandboxes: SandboxService) -> list[str]:
    """Remove the checkpoints a crash left behind on this server's node; returns their ids.
    Called as the server starts, when no snapshot or fork of its own is under way (one server
    per data dir, and so per node).

    Two kinds. A fork's checkpoint (``internal``) lives only for its call, which deletes it in
    the end: one a crash cut off is hidden from every list, so no one could delete it, yet
    counted in its team's snapshot quota and held on the node's disk. And a checkpoint the
    node holds with no row at all: the server died between the node's answer and the row's
    commit, or between a delete's commit and its call to the node (or that call failed). The
    rows of every node are asked, not only this one's: a node renamed since keeps its files
    (and a fork's row names the node its source started on).
    """
    try:
        held: builtins.list[pb.Snapshot] | None = await sandboxes.node.list_snapshots()
    except NodeError:  # (a node too old to list them, or down: the next start tries again)
        log.exception("the node did not list its snapshots; leftovers stay for now")
        held = None
    async with sandboxes.sessions.begin() as s:
        ids = [h.snapshot_id for h in held or []]
        rows = await snaps.internal_on_node(s, sandboxes.facts.node_id, ids)
        for row in rows:
            await s.delete(row)
    for row in rows:
        log.warning("removing the checkpoint %s of a fork a crash cut off", row.id)
        await _delete_on_node(sandboxes, snapshot_message(row))
    removed = [row.id for row in rows]
    if held is None:
        return removed
    gone = set(removed)
    _, deleted = await _delete_unnamed(
        sandboxes,
        [h for h in held if h.snapshot_id not in gone],
        "no record of it (a crash cut off its save or delete)",
    )
    return removed + deleted


async def _delete_unnamed(
    sandboxes: SandboxService, held: builtins.list[pb.Snapshot], why: str
) -> tuple[set[str], builtins.list[str]]:
    """Delete the checkpoints of ``held`` that no row names; the ids a row names, and the ids
    deleted."""
    async with sandboxes.sessions() as s:
        known = await snaps.known(s, [snapshot.snapshot_id for snapshot in held])
    deleted = []
    for snapshot in held:
        if snapshot.snapshot_id in known:
            continue
        log.warning("removing snapshot %s: %s", snapshot.snapshot_id, why)
        if await _delete_on_node(sandboxes, snapshot):
            deleted.append(snapshot.snapshot_id)
    return known, deleted


async def _delete_on_node(sandboxes: SandboxService, snapshot: pb.Snapshot) -> bool:
    """Whether the node freed the checkpoint; a failure is logged for the operator, and the
    checkpoint (whose row is gone) is deleted once the node answers (``lose_track``)."""
    try:
        await sandboxes.node.delete_snapshot(snapshot)
    except NodeError:
        log.exception("deleting snapshot %s on its node failed", snapshot.snapshot_id)
        lose_track(sandboxes, snapshot.snapshot_id, saving=False)
        return False
    return True


# How long reconciliation looks for a checkpoint the server lost track of: a save whose answer
# was lost may still be under way on the node (a listing shows it only once it is complete).
UNTRACKED_LOOK_S = 600.0


def lose_track(sandboxes: SandboxService, snapshot_id: str, *, saving: bool) -> None:
    """``snapshot_id`` may be on the node with no row naming it: a save whose answer was lost
    (taken or not), a save whose row was not written, or a checkpoint whose delete did not
    reach the node. Reconciliation deletes it there (``remove_untracked_snapshots``) rather
    than leaving it, hidden from every list, on the node's disk until the server's next start.

    ``saving``: a save that may still be under way, looked for ``UNTRACKED_LOOK_S`` (its
    checkpoint is listed only once complete). Else the checkpoint is complete, and is looked
    for until a listing no longer shows it, however long the node stays unreachable."""
    until = time.monotonic() + UNTRACKED_LOOK_S if saving else math.inf
    sandboxes.untracked_snapshots[snapshot_id] = until


async def remove_untracked_snapshots(sandboxes: SandboxService) -> list[str]:
    """Delete those of ``lose_track``'s checkpoints that the node holds and no row names;
    returns their ids. Only those: a periodic sweep of every unnamed checkpoint would race
    saves under way (the node holds one before its row commits)."""
    looking = sandboxes.untracked_snapshots
    now = time.monotonic()
    for snapshot_id, until in list(looking.items()):
        if until < now:
            del looking[snapshot_id]
    if not looking:
        return []
    # Complete before the listing was asked for: one it does not show is gone (one lost
    # track of meanwhile may have been renamed into place after the node's scan).
    complete = {i for i, until in looking.items() if until == math.inf}
    try:
        listed = await sandboxes.node.list_snapshots()
    except NodeUnsupported:  # a node that keeps no snapshots holds none of these either
        looking.clear()
        return []
    except NodeError:  # (down still: the next reconciliation asks again)
        return []
    held = [s for s in listed if s.snapshot_id in looking]
    for snapshot_id in complete - {s.snapshot_id for s in held}:  # nothing to look for
        looking.pop(snapshot_id, None)
    known, deleted = await _delete_unnamed(
        sandboxes, held, "its save's answer or its delete was lost"
    )
    for snapshot_id in known | set(deleted):  # (one a row names after all stays, unsought)
        looking.pop(snapshot_id, None)
    return deleted


__all__ = [
    "MAX_FORKS",
    "SnapshotPage",
    "SnapshotService",
    "lose_track",
    "remove_leftover_snapshots",
    "remove_untracked_snapshots",
]
