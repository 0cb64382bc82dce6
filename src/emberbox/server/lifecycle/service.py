"""Sandbox operations as the API sees them: admission, node calls, persisted state changes.

The database is the one owner of lifecycle state and end times; the node (reached only through
its client) owns what exists on the host. Every operation is scoped by team: another team's
sandbox is "not found", never "forbidden". Creates are admitted under one lock (concurrency cap
+ node resources + the ``creating`` row are decided together), and a refused request leaves no
row and no process behind. Failures are raised as domain errors (``errors.py``).
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._proto.node import node_pb2 as pb
from ...egress import EgressProxy, HeaderRule
from ...envd_client import EnvdClient, sandbox_http
from ...node.client import (
    NodeClient,
    NodeError,
    NodeFull,
    NodeSandboxNotFound,
    NodeUnavailable,
    NodeUnsupported,
)
from ...vocabulary import ENVD_TOKEN_HEADER, GUEST_UNRESPONSIVE_ERROR, new_sandbox_id
from ..auth.store import Principal
from ..config import Limits
from ..db import sandboxes as q
from ..db import snapshots as snaps
from ..db import volumes as vols
from ..db.cursors import BadCursor
from ..db.models import Sandbox, SandboxMetadata, Snapshot, utcnow
from ..limits.scheduler import ResourceScheduler, Usage
from .egress import Egress, header_rules_message
from .errors import (
    Busy,
    Conflict,
    GuestUnhealthy,
    Invalid,
    NoCapacity,
    NodeFailed,
    NotFound,
    QuotaExceeded,
    SandboxFailed,
    Unreachable,
    Unsupported,
)
from .states import COUNTS_TOWARD_QUOTA, HOLDS_RESOURCES, VISIBLE, EndReason, State
from .templates import TeamTemplates, TemplateCatalog, TemplateInfo

if TYPE_CHECKING:
    from ..secrets.service import SecretService
    from ..volumes.service import VolumeService

log = logging.getLogger("emberbox.lifecycle")

# E2B's ``ConnectSandboxV2.timeout`` default: the end time (from now) a connect without
# ``timeout`` gives, extending a running sandbox or resuming a paused one.
DEFAULT_RESUME_TIMEOUT_S = 300
# How long a request that wakes a sandbox waits for a pause or resume already under way.
WAKE_WAIT_S = 60.0
# How long traffic leaves a sandbox whose wake failed before it tries again (a connect does
# not wait): a client retrying in a loop would otherwise have the node restore it each time.
WAKE_RETRY_S = 10.0
# States a connect or traffic resumes from, once another caller's pause or resume is done.
_NOT_RUNNING_YET = frozenset({State.PAUSED, State.PAUSING, State.RESUMING})
# envd's journal (``GET /logs``): 1000 entries a page at most, each a line of its log.
JOURNAL_MAX_BYTES = 8 << 20  # all pages together
JOURNAL_PAGE = 1000  # entries envd answers at most at once
JOURNAL_PAGES = 3  # its ring holds 2000 (envd/journal.py), and more may come meanwhile
JOURNAL_READ_S = 10.0
_LOST = "the node did not answer; the sandbox is recorded as the node reports it once it does"


def answer_lost(e: BaseException) -> bool:
    """The node was not reached, or its answer was lost: what it did is unknown."""
    return isinstance(e, NodeUnavailable) and e.unreached


_CONNECT_TRIES = 3  # reads of a sandbox whose state changed under a connect


@dataclass(frozen=True)
class NodeFacts:
    """What the control plane knows of the node it schedules on (from ``Node.Info``)."""

    node_id: str
    runtime: str
    capabilities: pb.Capabilities


@dataclass(frozen=True)
class CreateRequest:
    template: str
    timeout_s: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    env_vars: Mapping[str, str] = field(default_factory=dict)
    allow_internet: bool = True
    auto_pause: bool = False
    # With auto_pause: False keeps only the files at the end time (a resume boots from them).
    auto_pause_memory: bool = True
    # With auto_pause: traffic through the proxy resumes the paused sandbox.
    auto_resume: bool = False
    idempotency_key: str | None = None
    # Start from this snapshot's memory and files instead of booting the template.
    source: Snapshot | None = None
    # Egress rules (``egress.parse_list``-checked CIDRs) and whether its ports are public.
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    # Header rules (E2B's network.rules), placeholders unresolved.
    header_rules: tuple[HeaderRule, ...] = ()
    # E2B's egressProxy (SOCKS5), its password in clear (sealed on the row).
    egress_proxy: EgressProxy | None = None
    dns_servers: tuple[str, ...] = ()  # E2B's dnsServers
    allow_public_traffic: bool = True
    # The Host header its ports get from the proxy (maskRequestHost; ``${PORT}``: the port).
    mask_request_host: str | None = None
    # E2B's volumeMounts: [{name, path}], the team's volumes bound read-write at those paths.
    volume_mounts: Sequence[Mapping[str, str]] = ()


class SandboxTraffic(Protocol):
    """The traffic between callers and sandboxes (the proxy's), as a checkpoint of a
    sandbox's memory needs it quiet (``saving_memory``)."""

    async def close_connections(self, sandbox_id: str) -> None:
        """Close every connection to the sandbox: one saved in a checkpoint would come back
        in every sandbox started from it (see runtimes/gvisor/runsc.py)."""

    async def settle(self, sandbox_id: str) -> object:
        """Wait until the ends of the process streams envd ended (``detach``) are relayed."""

    def holding_streams(self, sandbox_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold new process streams to the sandbox while its memory is saved."""
        ...


class NoTraffic:
    """Where nothing relays traffic to sandboxes (a service without a proxy in front)."""

    async def close_connections(self, sandbox_id: str) -> None:
        return None

    async def settle(self, sandbox_id: str) -> object:
        return None

    @contextlib.asynccontextmanager
    async def holding_streams(self, sandbox_id: str) -> AsyncIterator[None]:
        yield


@dataclass(frozen=True)
class Woken:
    """What a wake by traffic came to: running, or why not (``refused``: a reason fit for the
    proxy's answer to anyone; None when it runs or its lifecycle does not let traffic wake
    it)."""

    running: bool
    refused: str | None = None


def snapshot_message(row: Snapshot) -> pb.Snapshot:
    """What the node needs to start from (or delete) a snapshot."""
    return pb.Snapshot(
        snapshot_id=row.id,
        runtime=row.runtime,
        path=row.path,
        template_id=row.template_id,
        access_token=row.envd_access_token,
        size_bytes=row.size_bytes,
        filesystem_only=not row.memory,
    )


def pause_mode_of(keep_memory: bool) -> str:
    """E2B's ``pauseMode`` of what a pause kept (the row's ``pause_mode`` while paused)."""
    return "full" if keep_memory else "filesystem"


def running_as_resumed(timeout_s: int | None, on_timeout: str | None) -> dict[str, Any]:
    """A resumed row's fields, as its resume asked: its lifetime counts from now (its old end
    time may have passed while it was paused; None: ``DEFAULT_RESUME_TIMEOUT_S``), and its end
    time does ``on_timeout`` (None: as before; "kill" ends auto-resume too, which only a
    sandbox that pauses at its end time may have, as a create is told). Nothing saved is left;
    what the resume asked is spent."""
    timeout_s = DEFAULT_RESUME_TIMEOUT_S if timeout_s is None else timeout_s
    end_at = utcnow() + dt.timedelta(seconds=timeout_s)
    ends: dict[str, Any] = {"on_timeout": on_timeout} if on_timeout else {}
    if on_timeout == "kill":
        ends["auto_resume"] = False
    spent = {"resume_timeout_s": None, "resume_on_timeout": None}
    return {"end_at": end_at, **ends, "paused_bytes": 0, "pause_mode": None, **spent}


def paused_as_held(held: pb.Sandbox) -> dict[str, Any]:
    """A paused row's fields as its node holds the sandbox: the disk its save takes (what the
    team's quota counts) and what it kept (traffic does not wake a sandbox of files only)."""
    return {"paused_bytes": held.paused_bytes, "pause_mode": pause_mode_of(not held.files_only)}


async def _envd_answers(row: Sandbox) -> bool:
    """Asked before a pause: a probe that changes nothing in the guest it checkpoints."""
    if not row.envd_url:
        return False
    async with EnvdClient(row.envd_url) as envd:
        return await envd.health(timeout=2.0, probe=True)


class SandboxService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        node: NodeClient,
        facts: NodeFacts,
        templates: TemplateCatalog,
        limits: Limits,
        scheduler: ResourceScheduler,
        on_gone: Callable[[str], None] = lambda _id: None,
        on_running: Callable[[Sandbox], None] = lambda _row: None,
        traffic: SandboxTraffic | None = None,
        team_templates: TeamTemplates | None = None,
        volumes: VolumeService | None = None,
        secret_service: SecretService | None = None,
    ) -> None:
        self.sessions = sessions
        self.node = node
        self.facts = facts
        self.templates = templates
        self.limits = limits
        self.scheduler = scheduler
        self.on_gone = on_gone
        # Told of every sandbox a create made running, so its first proxied request needs no
        # lookup (the proxy's resolver caches where it answers).
        self.on_running = on_running
        # Quieted around every checkpoint of a sandbox's memory (``saving_memory``).
        self.traffic: SandboxTraffic = traffic or NoTraffic()
        # Templates teams built through the API (server/builds), looked up before built-ins.
        self.team_templates = team_templates
        self.volumes = volumes  # None: this deployment serves no volumes
        self.secret_service = secret_service  # None: header rules cannot name secrets
        # Held while a sandbox's network policy changes on its node and in the database.
        self.network_lock = asyncio.Lock()
        # Held by every admission from its quota check to its commit, which for a warm-pool
        # claim includes the node handing the sandbox over: the reaper reads the database
        # under it before it calls a sandbox an orphan (see reaper.reconcile).
        self.admission = asyncio.Lock()
        # One resume per paused sandbox, however many requests arrive to wake it (see wake).
        self._waking: dict[str, asyncio.Task[Woken]] = {}
        # Sandboxes whose wake failed, until when traffic does not try again and why.
        self._wake_failed: dict[str, tuple[float, str]] = {}
        # Pauses and resumes under way in this process, per sandbox: a row left pausing or
        # resuming by none of them (the node's answer was lost) is settled from the node's
        # listing (``Reaper.reconcile``).
        self._switches: collections.Counter[str] = collections.Counter()
        # Checkpoints the node may hold that no row names (``snapshots.lose_track``): snapshot
        # id -> until when (monotonic) reconciliation looks for them to delete them.
        self.untracked_snapshots: dict[str, float] = {}

    # ---- create -------------------------------------------------------------------------------

    def check_timeout(self, timeout_s: int, minimum: int = 0) -> None:
        """Up to the deployment's maximum (which may exceed a day). A new sandbox needs at least
        a second; moving a live one's end to now (0) ends it at the reaper's next tick."""
        if timeout_s < minimum or timeout_s > self.limits.max_timeout_s:
            raise Invalid(
                f"timeout must be between {minimum} and {self.limits.max_timeout_s} seconds"
            )

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"the {self.facts.runtime} runtime {what}")

    async def _template_of(self, who: Principal, req: CreateRequest) -> CreateRequest:
        """A template name, else one of the team's snapshots (by id or name)."""
        if req.source is not None:
            return req
        async with self.sessions() as s:
            source = await snaps.find(s, who.team_id, req.template)
        if source is None:
            raise NotFound(f"template '{req.template}' not found")
        if not self.facts.capabilities.snapshot:
            raise self._unsupported("cannot start sandboxes from snapshots")
        return dataclasses.replace(req, source=source)

    async def _resolve(self, who: Principal, ref: str) -> TemplateInfo | None:
        if self.team_templates is not None:
            found = await self.team_templates(who.team_id, ref)
            if found is not None:
                return found
        return self.templates.resolve(ref)

    async def create(self, who: Principal, req: CreateRequest) -> Sandbox:
        tpl = await self._resolve(who, req.template) if req.source is None else None
        if tpl is None:
            req = await self._template_of(who, req)
            assert req.source is not None
            src = req.source
            tpl = TemplateInfo(
                src.template_id,
                src.alias,
                src.cpu_count,
                src.memory_mb,
                src.disk_mb,
                public_id=src.public_template_id,
            )
        self._check_request(req, tpl)
        egress = Egress(req.allow_internet, req.allow_out, req.deny_out, req.header_rules,
                        req.egress_proxy, dns_servers=req.dns_servers)  # fmt: skip
        egress_column = egress.to_json(self.secret_service, who.team_id)
        header_rules = await header_rules_message(
            self.secret_service, who.team_id, req.header_rules
        )
        mounts = await self._volume_mounts(who, req)

        token = secrets.token_urlsafe(32)
        spec = pb.SandboxSpec(
            template_id=tpl.template_id,
            cpu_count=tpl.cpu_count,
            memory_mb=tpl.memory_mb,
            disk_mb=tpl.disk_mb,
            env_vars=dict(req.env_vars),
            access_token=token,
            allow_internet=req.allow_internet,
            allow_out=egress.node_allow_out,
            deny_out=req.deny_out,
            header_rules=header_rules,
            egress_proxy=egress.proxy_message(self.secret_service, who.team_id),
        )
        if req.source is not None:
            spec.snapshot.CopyFrom(snapshot_message(req.source))
        spec.volume_mounts.extend(
            pb.VolumeMount(volume_id=m.volume_id, path=m.path) for m in mounts
        )
        # A volume delete waits for this admission to commit (or sees its mount and refuses).
        volumes_held = self.volumes.lock if mounts and self.volumes else contextlib.nullcontext()
        handed = pb.Sandbox()  # a warm-pool sandbox the node handed over: it runs already
        try:
            async with volumes_held, self.admission, self.sessions.begin() as s:
                if req.idempotency_key:
                    same = await q.by_idempotency_key(s, who.team_id, req.idempotency_key)
                    if same is not None and State(same.state) == State.CREATING:
                        raise Busy(
                            "a create with this Idempotency-Key is still in progress",
                            error_code="idempotency_in_progress",
                        )
                    if same is not None:
                        return same
                await self._check_room(s, who.team_id, tpl.cpu_count, tpl.memory_mb)
                if not mounts:  # a pooled sandbox was made without volumes: theirs always boot
                    claimed = await self._claim(spec)
                    if claimed.HasField("sandbox"):
                        # Its envd holds a token nobody has seen: keep it.
                        handed, token = claimed.sandbox, claimed.access_token
                sandbox_id = handed.sandbox_id or new_sandbox_id()
                spec.sandbox_id, spec.access_token = sandbox_id, token
                row = self._new_row(who, req, tpl, sandbox_id, token, handed, egress_column)
                s.add(row)
                if mounts and self.volumes is not None:
                    await self.volumes.record(s, sandbox_id, mounts)
        except BaseException:
            if handed.sandbox_id:  # its row never committed: nothing else would end it
                with contextlib.suppress(Exception):
                    await self.node.kill(handed.sandbox_id)
            raise
        if handed.sandbox_id:  # its end time counts from the claim, now
            self.on_running(row)
            return row
        return await self._start(spec, row, req)

    async def _check_room(
        self, s: AsyncSession, team_id: str, cpu_count: int, memory_mb: int, resuming: str = ""
    ) -> None:
        """Under the admission lock: the team's sandbox cap, then the node's cpu and memory.
        ``resuming``: a paused sandbox admitted back, whose row (resuming) counts already."""
        running = await q.count_for_team(s, team_id, COUNTS_TOWARD_QUOTA)
        cpus, mem = await q.resources_in_use(s, HOLDS_RESOURCES)
        if resuming:
            running, cpus, mem = running - 1, cpus - cpu_count, mem - memory_mb
        stays = f"sandbox '{resuming}' stays paused" if resuming else ""
        if (over := self._over_cap(running)) is not None:
            raise QuotaExceeded(f"{over}{': ' + stays if stays else ''}; kill a sandbox first")
        refusal = self.scheduler.refusal(Usage(cpus, mem), cpu_count, memory_mb)
        if refusal is not None:
            raise NoCapacity(f"{stays}: {refusal}" if stays else refusal,
                             error_code="sandbox_capacity_unavailable")  # fmt: skip

    def _check_request(self, req: CreateRequest, tpl: TemplateInfo) -> None:
        """Refuse, before anything is admitted, what the limits or the node cannot honour."""
        self.check_timeout(req.timeout_s, minimum=1)
        if tpl.cpu_count > self.limits.max_cpu_count or tpl.memory_mb > self.limits.max_memory_mb:
            raise Invalid(
                f"template '{req.template}' needs {tpl.cpu_count} vCPUs and {tpl.memory_mb} MiB; "
                f"the limit per sandbox is {self.limits.max_cpu_count} vCPUs and "
                f"{self.limits.max_memory_mb} MiB"
            )
        if req.auto_pause or req.auto_resume:
            self.check_can_pause("autoPause" if req.auto_pause else "autoResume")
        if req.auto_resume and not req.auto_pause:
            raise Invalid("autoResume needs autoPause: only a paused sandbox can be woken")
        if not req.auto_pause_memory:
            if req.auto_resume:
                raise Invalid(
                    "autoResume cannot go with autoPauseMemory: false: traffic never wakes a "
                    "sandbox that must boot afresh; resume it with connect"
                )
            self.check_can_pause_files("autoPauseMemory: false")
        if not req.allow_internet and not self.facts.capabilities.no_internet:
            raise self._unsupported("cannot restrict internet access")
        if (req.allow_out or req.deny_out) and not self.facts.capabilities.egress_rules:
            raise self._unsupported("cannot enforce egress rules (network.allowOut/denyOut)")
        if req.dns_servers and not self.facts.capabilities.egress_rules:
            raise self._unsupported("cannot enforce egress rules (network.dnsServers)")
        if req.header_rules and not self.facts.capabilities.header_rules:
            raise self._unsupported("cannot apply header rules (network.rules)")
        if req.egress_proxy is not None and not self.facts.capabilities.egress_proxy:
            raise self._unsupported("cannot tunnel through a proxy (network.egressProxy)")

    def _new_row(
        self,
        who: Principal,
        req: CreateRequest,
        tpl: TemplateInfo,
        sandbox_id: str,
        token: str,
        handed: pb.Sandbox,
        egress_column: str | None,
    ) -> Sandbox:
        """The create's row: running already when the node ``handed`` over a pooled sandbox,
        its end time counting from now."""
        now = utcnow()
        return Sandbox(
            id=sandbox_id,
            team_id=who.team_id,
            template_id=tpl.template_id,
            public_template_id=tpl.public_id,
            alias=tpl.alias,
            state=str(State.RUNNING if handed.sandbox_id else State.CREATING),
            cpu_count=tpl.cpu_count,
            memory_mb=tpl.memory_mb,
            disk_mb=tpl.disk_mb,
            envd_version=handed.envd_version,
            envd_url=handed.envd_url or None,
            host_address=handed.host or None,
            envd_access_token=token,
            idempotency_key=req.idempotency_key,
            allow_internet=req.allow_internet,
            egress=egress_column,
            traffic_access_token=(None if req.allow_public_traffic else secrets.token_urlsafe(32)),
            mask_request_host=req.mask_request_host,
            on_timeout="pause" if req.auto_pause else "kill",
            auto_pause_memory=req.auto_pause_memory,
            auto_resume=req.auto_resume,
            timeout_s=req.timeout_s,
            node_id=self.facts.node_id,
            admitted_at=now,
            started_at=now,
            end_at=now + dt.timedelta(seconds=req.timeout_s),
            metadata_items=[SandboxMetadata(key=k, value=v) for k, v in req.metadata.items()],
        )

    async def _start(self, spec: pb.SandboxSpec, row: Sandbox, req: CreateRequest) -> Sandbox:
        """Start the admitted sandbox on the node; a failure ends its row with the reason."""
        sandbox_id = row.id
        try:
            started = await self.node.create(spec)
        except BaseException as e:  # cancellation too: never leave a half-made sandbox behind
            log.warning("create of %s failed: %s", sandbox_id, e)
            if not await self._fail(
                sandbox_id, EndReason.CREATE_FAILED, str(e) or type(e).__name__, [State.CREATING]
            ):
                with contextlib.suppress(Exception):
                    await self.node.kill(sandbox_id)
            if not isinstance(e, Exception):
                raise
            if isinstance(e, NodeFull):
                raise NoCapacity(e.message, error_code="sandbox_capacity_unavailable") from e
            if isinstance(e, NodeUnsupported):
                raise Unsupported(e.message) from e
            if isinstance(e, NodeSandboxNotFound):  # at create: the node lacks the template
                raise NotFound(f"template '{req.template}' not found on its node") from e
            if answer_lost(e):  # (one the node made anyway is an orphan reconciliation kills)
                raise NodeFailed(
                    f"sandbox could not be started: the node did not answer ({e})",
                    error_code="sandbox_create_failed",
                ) from e
            raise SandboxFailed(
                f"sandbox could not be started: {e}", error_code="sandbox_create_failed"
            ) from e
        return await self._mark_running(row, started, req.timeout_s)

    async def _volume_mounts(self, who: Principal, req: CreateRequest) -> list[Any]:
        """The create's volumes, resolved; refused where they cannot be honoured."""
        if not req.volume_mounts:
            return []
        if self.volumes is None:
            raise Unsupported("volumes are not served by this deployment")
        if req.source is not None:
            raise Unsupported("a sandbox started from a snapshot cannot mount volumes")
        if req.auto_pause:
            raise Unsupported("a sandbox with volumes cannot be paused (autoPause)")
        return await self.volumes.mounts_for(who.team_id, req.volume_mounts)

    async def refuse_if_volumes(self, sandbox_id: str, what: str) -> None:
        """No pause, snapshot, fork or rollback of a sandbox with volumes: gVisor's restore
        looks up again every volume file the sandbox holds open, and fails for good when
        another writer removed one meanwhile (measured), so the sandbox would be lost."""
        async with self.sessions() as s:
            if await vols.has_volumes(s, sandbox_id):
                raise Unsupported(f"sandbox '{sandbox_id}' mounts volumes and cannot be {what}")

    async def _claim(self, spec: pb.SandboxSpec) -> pb.ClaimResponse:
        """A warm-pool sandbox for this create, or an empty answer (the node has none that
        fits, or cannot pool: the create then starts one of its own, so a failed claim costs
        nothing)."""
        try:
            return await self.node.claim(spec)
        except NodeError as e:
            log.debug("no warm-pool claim: %s", e)
            return pb.ClaimResponse()

    async def _mark_running(self, row: Sandbox, b: pb.Sandbox, timeout_s: int) -> Sandbox:
        """Record the started sandbox; ``row`` is the admitted one (detached), which is what
        the create answers."""
        now = utcnow()
        async with self.sessions.begin() as s:
            ok = await q.set_row_state(
                s, row, [State.CREATING], State.RUNNING,
                envd_url=b.envd_url, host_address=b.host, envd_version=b.envd_version,
                started_at=now, end_at=now + dt.timedelta(seconds=timeout_s),
            )  # fmt: skip
        if not ok:  # killed while it was starting
            await self.node.kill(row.id)
            raise SandboxFailed("sandbox was stopped while starting")
        self.on_running(row)
        return row

    async def _fail(
        self, sandbox_id: str, reason: EndReason, error: str, from_states: list[State]
    ) -> bool:
        """Record the failure first (so nobody else acts on it), then clean up on the node."""
        async with self.sessions.begin() as s:
            ok = await q.set_state(
                s,
                sandbox_id,
                from_states,
                State.FAILED,
                end_reason=str(reason),
                error=error[:2000],
                ended_at=utcnow(),
            )
        if ok:
            self.on_gone(sandbox_id)
            try:
                await self.node.kill(sandbox_id)
            except Exception:
                log.exception("cleanup kill of %s failed", sandbox_id)
        return ok

    # ---- lookups ------------------------------------------------------------------------------

    async def get(self, who: Principal, sandbox_id: str) -> Sandbox:
        async with self.sessions() as s:
            row = await q.get_for_team(s, who.team_id, sandbox_id, VISIBLE)
        if row is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return row

    async def list(
        self,
        who: Principal,
        states: set[State],
        *,
        metadata: Mapping[str, str],
        template: str | None = None,
        started_after: dt.datetime | None = None,
        descending: bool = True,
        limit: int = 100,
        cursor: str | None = None,
    ) -> q.Page:
        """One page of the caller's sandboxes (keyset pagination, see ``db.sandboxes``)."""
        async with self.sessions() as s:
            try:
                return await q.list_page(
                    s,
                    team_id=who.team_id,
                    states=states,
                    metadata=metadata,
                    template=template,
                    started_after=started_after,
                    descending=descending,
                    limit=limit,
                    cursor=cursor,
                )
            except BadCursor as e:
                raise Invalid(str(e)) from e

    async def stats(
        self, who: Principal, sandbox_id: str
    ) -> tuple[Sandbox, pb.StatsResponse | None]:
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            return row, None
        try:
            return row, await self.node.stats(sandbox_id)
        except NodeError:
            return row, None

    async def envd_journal(
        self, who: Principal, sandbox_id: str
    ) -> tuple[Sandbox, builtins.list[dict[str, Any]]]:
        """The sandbox row and envd's journal (empty when the sandbox no longer runs)."""
        row = await self.get(who, sandbox_id)
        if State(row.state) != State.RUNNING or not row.envd_url:
            return row, []
        # What answers on envd's port is the guest's to choose: its answer is read within a
        # time and a size, so a guest cannot hold or fill the control plane's memory. envd
        # answers a page at a time, oldest first: every page, or the newest would never show.
        entries: builtins.list[dict[str, Any]] = []
        left = JOURNAL_MAX_BYTES
        try:
            async with (
                asyncio.timeout(JOURNAL_READ_S),
                sandbox_http(timeout=JOURNAL_READ_S) as http,
            ):
                after = 0
                for _ in range(JOURNAL_PAGES):
                    page, left = await self._journal_page(http, row, after, left)
                    entries += page
                    last = page[-1] if page else None
                    if len(page) < JOURNAL_PAGE or not isinstance(last, dict):
                        break
                    seq = last.get("seq")
                    if not isinstance(seq, int):
                        break
                    after = seq
        except (httpx.HTTPError, TimeoutError, ValueError, AttributeError) as exc:
            raise Unreachable(f"sandbox '{sandbox_id}' did not answer its journal: {exc}") from exc
        return row, entries

    @staticmethod
    async def _journal_page(
        http: httpx.AsyncClient, row: Sandbox, after: int, left: int
    ) -> tuple[builtins.list[Any], int]:
        """One page of envd's journal after ``after``, read within ``left`` bytes; the page
        and the bytes still left."""
        body = bytearray()
        async with http.stream(
            "GET",
            f"{row.envd_url}/logs",
            params={"after": after, "limit": JOURNAL_PAGE},
            headers={ENVD_TOKEN_HEADER: row.envd_access_token},
        ) as response:
            if response.status_code != 200:
                raise Unreachable(f"sandbox '{row.id}' answered {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > left:
                    raise Unreachable(f"sandbox '{row.id}' answered too much")
        page = json.loads(body).get("entries", [])
        if not isinstance(page, list):
            raise Unreachable(f"sandbox '{row.id}' answered no journal")
        return page, left - len(body)

    # ---- changes ------------------------------------------------------------------------------

    async def set_timeout(self, who: Principal, sandbox_id: str, timeout_s: int) -> None:
        """Only a running sandbox has an end time to move: one paused (or on its way there or
        back) gets its end time from the connect that resumes it, so a timeout set now would
        be dropped without a word."""
        self.check_timeout(timeout_s)
        await self.get(who, sandbox_id)  # (the team's own, or a 404)
        end_at = utcnow() + dt.timedelta(seconds=timeout_s)
        async with self.sessions.begin() as s:
            if await q.update_fields(s, sandbox_id, [State.RUNNING], end_at=end_at):
                return
            row = await q.get_for_team(s, who.team_id, sandbox_id, VISIBLE)
        if row is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        raise Conflict(
            f"sandbox '{sandbox_id}' is {row.state}: it has no end time until it runs again; "
            "give the timeout to connect, which resumes it"
        )

    def check_can_pause(self, option: str) -> None:
        """Refuse a lifecycle ``option`` (autoPause, autoResume) the runtime cannot honour."""
        if not self.facts.capabilities.pause:
            raise self._unsupported(f"cannot pause sandboxes ({option})")

    def check_can_pause_files(self, option: str) -> None:
        """Refuse a filesystem-only pause or a boot from the files (``option``) the runtime
        cannot do."""
        if not self.facts.capabilities.filesystem_pause:
            raise self._unsupported(f"cannot pause sandboxes keeping only their files ({option})")

    async def connect(
        self,
        who: Principal,
        sandbox_id: str,
        timeout_s: int | None,
        with_memory: bool = True,
        resume_only: bool = False,
        on_timeout: str | None = None,
    ) -> tuple[Sandbox, bool]:
        """Extend (never shorten) a running sandbox's end time to now + ``timeout_s`` (None:
        ``DEFAULT_RESUME_TIMEOUT_S``, as E2B's connect), or resume a paused one.

        Returns the sandbox and whether it was resumed (the API answers 201 then, else 200).
        A pause or resume another caller has under way is waited out (up to ``WAKE_WAIT_S``,
        as traffic waking a sandbox does): the caller wants the sandbox running, whoever
        asked first. ``with_memory`` False boots a paused sandbox afresh from its files (E2B's
        ``memory: false``, the SDK's ``on_resume="reboot"``); nothing for a running one.
        ``resume_only`` (the legacy ``/resume``): a sandbox that is running, or that another
        caller resumed meanwhile, is a :class:`Conflict` and its end time is left alone.
        ``on_timeout`` (its ``autoPause``): what the end time of a sandbox this call resumes
        does, set as it runs again (by a call that did not resume it, it would undo what the
        resuming call set).
        """
        timeout_s = DEFAULT_RESUME_TIMEOUT_S if timeout_s is None else timeout_s
        self.check_timeout(timeout_s, minimum=1)  # E2B's minimum: 0 would end it at once
        for _ in range(_CONNECT_TRIES):
            row = await self.get(who, sandbox_id)
            if State(row.state) in _NOT_RUNNING_YET:
                if not with_memory:
                    self.check_can_pause_files("memory: false")
                row, resumed = await self._resume_once_settled(
                    lambda: self.get(who, sandbox_id), timeout_s, with_memory,
                    on_timeout=on_timeout,
                )  # fmt: skip
                if resumed:
                    return row, True
            if resume_only:
                raise Conflict(f"sandbox '{sandbox_id}' is already running")
            wanted = utcnow() + dt.timedelta(seconds=timeout_s)
            if wanted <= row.end_at:
                return row, False
            async with self.sessions.begin() as s:
                if await q.extend_end(s, sandbox_id, wanted):
                    row.end_at = wanted
                    return row, False
            # No longer running since it was read (its end time's pause or kill got there
            # first), or another caller set a later end time meanwhile: answered from what it
            # is now, never with an end time it does not have.
        raise Busy(f"sandbox '{sandbox_id}' keeps changing state; retry")

    async def pause(
        self,
        who: Principal,
        sandbox_id: str,
        keep_memory: bool = True,
        require_healthy_guest: bool = False,
    ) -> None:
        """Save the sandbox and stop it: its memory and files, or (without ``keep_memory``)
        only its files, which a resume then boots from. With ``require_healthy_guest``, and
        for a filesystem-only pause, envd must answer first. A resume under way (traffic
        waking it, say) is waited out, as long as a wake is: a 409 would tell the SDKs it was
        paused already, and it would run on."""
        row = await self._past_resume(who, sandbox_id)
        if State(row.state) != State.RUNNING:
            raise Conflict(f"sandbox '{sandbox_id}' is {row.state}, not running")
        if not keep_memory:
            self.check_can_pause_files("memory: false")
        if not self.facts.capabilities.pause:
            raise self._unsupported("cannot pause sandboxes")
        await self.refuse_if_volumes(sandbox_id, "paused")
        # envd is asked only where its answer decides: a probe that timed out under load, or
        # while another caller's checkpoint held the sandbox, marked busy sandboxes
        # unresponsive (CI's stress test), and their plain resume was then refused.
        if (require_healthy_guest or not keep_memory) and not await _envd_answers(row):
            what = "not paused" if keep_memory else "a filesystem-only pause needs it"
            raise GuestUnhealthy(f"sandbox '{sandbox_id}' envd does not answer; {what}")
        await self.check_saved_disk(row.team_id, f"sandbox '{sandbox_id}' was not paused")
        # What it will be is known now: traffic must not wake it, a restart must not lose it.
        with self.switch(sandbox_id):
            async with self.sessions.begin() as s:
                if not await q.set_state(s, sandbox_id, [State.RUNNING], State.PAUSING,
                                         pause_mode=pause_mode_of(keep_memory)):  # fmt: skip
                    raise Conflict(
                        f"sandbox '{sandbox_id}' is being paused or resumed, not running"
                    )
            try:
                async with self.saving_memory(row) if keep_memory else contextlib.nullcontext():
                    self.on_gone(sandbox_id)
                    size = await self.node.pause(sandbox_id, memory=keep_memory)
            except BaseException as e:  # cancellation too: never leave the row half-way
                log.warning("pause of %s failed: %s", sandbox_id, e)
                if answer_lost(e):  # left pausing: the node's listing settles it
                    raise NodeFailed(f"pause of '{sandbox_id}': {_LOST}") from e
                if (held := await self._paused_meanwhile(sandbox_id, e)) is not None:
                    if await self.record_paused_by_node(sandbox_id, held, was=State.PAUSING):
                        return
                    raise NotFound(f"sandbox '{sandbox_id}' was killed while it paused") from e
                async with self.sessions.begin() as s:
                    await q.set_state(s, sandbox_id, [State.PAUSING], State.RUNNING,
                                      pause_mode=None)  # fmt: skip
                if not isinstance(e, Exception):
                    raise
                if isinstance(e, NodeSandboxNotFound):  # killed meanwhile (or died)
                    raise NotFound(f"sandbox '{sandbox_id}' no longer exists on its node") from e
                raise SandboxFailed(f"pause failed: {e}") from e
            async with self.sessions.begin() as s:
                await q.set_state(s, sandbox_id, [State.PAUSING], State.PAUSED, paused_bytes=size)

    async def _past_resume(self, who: Principal, sandbox_id: str) -> Sandbox:
        """The sandbox once no resume of it is under way (``WAKE_WAIT_S`` at most: then
        :class:`Busy`)."""
        deadline = asyncio.get_running_loop().time() + WAKE_WAIT_S
        while State((row := await self.get(who, sandbox_id)).state) == State.RESUMING:
            if asyncio.get_running_loop().time() > deadline:
                raise Busy(f"sandbox '{sandbox_id}' is being resumed; retry")
            await asyncio.sleep(0.05)
        return row

    @contextlib.contextmanager
    def switch(self, sandbox_id: str) -> Iterator[None]:
        self._switches[sandbox_id] += 1
        try:
            yield
        finally:
            self._switches[sandbox_id] -= 1
            if not self._switches[sandbox_id]:
                del self._switches[sandbox_id]

    def switching(self, sandbox_id: str) -> bool:
        """Whether this process has a pause, resume or rollback of the sandbox under way."""
        return sandbox_id in self._switches

    @contextlib.asynccontextmanager
    async def saving_memory(self, row: Sandbox) -> AsyncIterator[None]:
        """Around a checkpoint of the sandbox's memory: envd ends its process output streams
        whole and the proxy relays their ends, so nothing is on the wire when it is saved (a
        stream the checkpoint cut lost the output in flight; what the processes print next
        waits in envd for the client's Connect), then the proxy's connections to it close (a
        connection saved in memory would come back in every sandbox started from it), and new
        streams wait until it is saved. Best effort: an envd that does not answer in time, or
        predates ``/detach``, is saved as before."""
        async with self.traffic.holding_streams(row.id):
            if row.envd_url:
                async with EnvdClient(row.envd_url, row.envd_access_token) as envd:
                    ended = await envd.detach()
                if ended:
                    await self.traffic.settle(row.id)
            await self.traffic.close_connections(row.id)
            yield

    async def saved_disk_used(self, team_id: str) -> int:
        """Disk the team's snapshots and paused sandboxes take: what the quota limits."""
        async with self.sessions() as s:
            return await snaps.bytes_used(s, team_id) + await q.paused_bytes_used(s, team_id)

    async def check_sandbox_cap(self, team_id: str, refused: str) -> None:
        """Refuse ahead of a checkpoint (which disturbs its sandbox) when the team runs as many
        sandboxes as it may: none it starts from it could run. A hint; creates are admitted
        under the admission lock."""
        async with self.sessions() as s:
            running = await q.count_for_team(s, team_id, COUNTS_TOWARD_QUOTA)
        if (over := self._over_cap(running)) is not None:
            raise QuotaExceeded(f"{refused}: {over}; kill a sandbox first")

    def _over_cap(self, running: int) -> str | None:
        """Why a team running ``running`` sandboxes may start no other; None: it may."""
        if running < self.limits.max_concurrent_sandboxes:
            return None
        return f"concurrent sandbox limit reached ({self.limits.max_concurrent_sandboxes} per team)"

    async def check_saved_disk(self, team_id: str, refused: str, limit: int | None = None) -> None:
        """Refuse to save more memory once the team's saved disk reached its quota, ``limit``
        (None: ``Limits.max_snapshot_bytes``). A save's size is known only after it, so the
        quota is checked before (a pause's, and a snapshot's that would disturb the sandbox)."""
        limit = self.limits.max_snapshot_bytes if limit is None else limit
        if limit and (used := await self.saved_disk_used(team_id)) >= limit:
            raise QuotaExceeded(
                f"{refused}: this team's snapshots and paused sandboxes take {used} bytes, at the "
                f"limit of {limit}; delete snapshots or kill paused sandboxes first"
            )

    async def pause_at_end(self, sandbox_id: str) -> bool:
        """The end time of a sandbox created with ``autoPause``: pause it instead of killing it.

        False if another actor got there first (a kill, an end time moved later). A memory
        pause that fails keeps the sandbox's files instead (``_keep_files_at_end``); one that
        keeps nothing kills the sandbox, as its end time asked for it to stop running: it is
        never left running past its end nor half-paused.
        """
        async with self.sessions() as s:
            row = await q.get(s, sandbox_id)
        keep_memory = row is None or row.auto_pause_memory
        with self.switch(sandbox_id):
            return await self._pause_at_end(sandbox_id, row, keep_memory)

    async def _pause_at_end(self, sandbox_id: str, row: Sandbox | None, keep_memory: bool) -> bool:
        async with self.sessions.begin() as s:
            mode = pause_mode_of(keep_memory)
            if not await q.set_state(s, sandbox_id, [State.RUNNING], State.PAUSING,
                                     ended_by=utcnow(), pause_mode=mode):  # fmt: skip
                return False
        saving = self.saving_memory(row) if row is not None and keep_memory else None
        try:  # never refused for the disk quota: the end time's pause keeps the user's work
            async with saving or contextlib.nullcontext():
                self.on_gone(sandbox_id)
                size = await self.node.pause(sandbox_id, memory=keep_memory)
        except Exception as e:
            if answer_lost(e):  # left pausing: the node's listing settles it (then a tick)
                log.warning("pause at the end time of %s: %s (%s)", sandbox_id, _LOST, e)
                return True
            if (held := await self._paused_meanwhile(sandbox_id, e)) is not None:
                await self.record_paused_by_node(sandbox_id, held, was=State.PAUSING)
                return True
            try:
                saved = await self._keep_files_at_end(sandbox_id, e) if keep_memory else None
            except NodeError as lost:  # left pausing, as above: the node may have kept them
                log.warning("files-only pause at the end time of %s: %s (%s)",
                            sandbox_id, _LOST, lost)  # fmt: skip
                return True
            if saved is None:
                # A pause can fail after the runtime saved the sandbox (the node then failing
                # to record it): what the node holds paused is kept, never killed.
                with contextlib.suppress(NodeError):
                    if (held := await self.node_paused(sandbox_id)) is not None:
                        await self.record_paused_by_node(sandbox_id, held, was=State.PAUSING)
                        return True
                log.error("pause at the end time of %s failed (%s); killing it", sandbox_id, e)
                await self.end(sandbox_id, EndReason.TIMEOUT)
                return True
            size = saved
        except BaseException:  # cancelled (shutdown): put back, the next tick pauses it again
            async with self.sessions.begin() as s:
                await q.set_state(s, sandbox_id, [State.PAUSING], State.RUNNING, pause_mode=None)
            raise
        async with self.sessions.begin() as s:
            await q.set_state(s, sandbox_id, [State.PAUSING], State.PAUSED, paused_bytes=size)
        log.info("sandbox %s paused at its end time", sandbox_id)
        return True

    async def _paused_meanwhile(self, sandbox_id: str, failed: BaseException) -> pb.Sandbox | None:
        """The sandbox as its node holds it, if it holds it paused although the pause failed:
        a rollback that failed while the pause waited for it left it paused at its snapshot
        (a conflict), or the node saved it and then failed (to record it, say). None
        otherwise: a pause that failed without the node's answer leaves nothing to ask."""
        if not isinstance(failed, NodeError):
            return None
        try:
            return await self.node_paused(sandbox_id)
        except NodeError:
            return None

    async def _keep_files_at_end(self, sandbox_id: str, failed: Exception) -> int | None:
        """The files of a sandbox whose memory could not be saved at its end time, its bytes
        on disk; None if they could not be saved either (or the runtime cannot). A lost
        answer (``answer_lost``) is raised: the node may have saved them.

        runsc refuses every checkpoint of some sandboxes for minutes (docs/stateful.md, Known
        limits); killing them would lose the user's work. The row says ``filesystem`` first,
        so traffic does not wake it and a restart meanwhile records it as what it became.
        """
        if not self.facts.capabilities.filesystem_pause:
            return None
        log.warning("saving the memory of %s at its end time failed (%s); keeping its files",
                    sandbox_id, failed)  # fmt: skip
        async with self.sessions.begin() as s:
            await q.update_fields(s, sandbox_id, [State.PAUSING],
                                  pause_mode=pause_mode_of(keep_memory=False))  # fmt: skip
        try:
            return await self.node.pause(sandbox_id, memory=False)
        except Exception as e:
            if answer_lost(e):  # what the node did is unknown: the caller leaves it pausing
                raise
            log.error("saving the files of %s at its end time failed too (%s)", sandbox_id, e)
            return None

    async def wake(self, sandbox_id: str) -> Woken:
        """Resume a paused sandbox whose lifecycle lets traffic wake it: whether it runs now,
        else why not (the proxy's answer says it).

        The proxy calls this for every request that finds such a sandbox paused; concurrent
        callers share one resume (a task per id, shielded so a caller that gives up does not
        cancel a resume others wait for).
        """
        task = self._waking.get(sandbox_id)
        failed = self._wake_failed.get(sandbox_id)
        if task is None and failed is not None and failed[0] > time.monotonic():
            return Woken(False, failed[1])
        if task is None:
            log.info("waking sandbox %s on traffic", sandbox_id)
            task = asyncio.create_task(self._wake(sandbox_id), name=f"wake-{sandbox_id}")
            self._waking[sandbox_id] = task
            task.add_done_callback(lambda _t: self._waking.pop(sandbox_id, None))
        return await asyncio.shield(task)

    async def _wake(self, sandbox_id: str) -> Woken:
        """Waits out a pause or resume already under way; the new end time is now plus the
        timeout the sandbox was created with."""

        async def read() -> Sandbox:
            async with self.sessions() as s:
                row = await q.get(s, sandbox_id)
            if row is None:
                raise NotFound(f"sandbox '{sandbox_id}' not found")
            return row

        try:
            row = await read()
            if not row.wakeable:
                return Woken(State(row.state) == State.RUNNING)
            timeout = row.timeout_s or DEFAULT_RESUME_TIMEOUT_S
            row, resumed = await self._resume_once_settled(read, timeout, by_traffic=True)
        except (NotFound, Busy) as e:  # gone meanwhile, or still mid-way after WAKE_WAIT_S
            return Woken(False, str(e))
        except Exception as e:  # refused (the team's limits, the node's memory) or failed
            log.warning("auto-resume of %s failed: %s", sandbox_id, e)
            # A failure's detail is for the log only: anyone who can reach the proxy sees this
            # (nor the team's limit or the node's load: a refusal says which, no figures).
            if isinstance(e, QuotaExceeded):  # (asked again at no cost)
                return Woken(False, "its team's concurrent sandbox limit is reached")
            if isinstance(e, NoCapacity):
                return Woken(False, "its node has no room for it now")
            if not isinstance(e, SandboxFailed):  # (a lost answer: the resume may have worked)
                return Woken(False, "its resume failed")
            refused = f"its resume failed; traffic tries again in {WAKE_RETRY_S:g} s, a connect now"
            self._wake_failing(sandbox_id, refused)
            return Woken(False, refused)
        if resumed:
            log.info("sandbox %s resumed by traffic", sandbox_id)
        return Woken(State(row.state) == State.RUNNING)

    def _wake_failing(self, sandbox_id: str, refused: str) -> None:
        now = time.monotonic()
        for stale in [i for i, (until, _) in self._wake_failed.items() if until <= now]:
            del self._wake_failed[stale]
        self._wake_failed[sandbox_id] = (now + WAKE_RETRY_S, refused)

    async def _resume_once_settled(
        self,
        read: Callable[[], Awaitable[Sandbox]],
        timeout_s: int | None,
        with_memory: bool = True,
        by_traffic: bool = False,
        on_timeout: str | None = None,
    ) -> tuple[Sandbox, bool]:
        """The sandbox once no pause or resume is under way, resumed here if that left it
        paused (True), else as ``read`` gives it (False): a connect and traffic waking a
        sandbox both want it running, whoever asked first. Waits up to ``WAKE_WAIT_S``, then
        raises :class:`Busy`. Traffic (``by_traffic``) leaves a sandbox that is not
        ``wakeable`` paused: the pause it waited for may have kept only the files."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAKE_WAIT_S
        while True:
            row = await read()
            state = State(row.state)
            if state not in _NOT_RUNNING_YET:
                return row, False
            if state == State.PAUSED and by_traffic and not row.wakeable:
                return row, False
            if state == State.PAUSED:
                with contextlib.suppress(Busy):  # another caller's resume began: wait for it
                    return await self._resume(row, timeout_s, with_memory, on_timeout), True
            if loop.time() > deadline:
                raise Busy(f"sandbox '{row.id}' is being paused or resumed; retry")
            await asyncio.sleep(0.05)

    async def _resume(
        self,
        row: Sandbox,
        timeout_s: int | None,
        with_memory: bool = True,
        on_timeout: str | None = None,
    ) -> Sandbox:
        if not self.facts.capabilities.pause:
            raise self._unsupported("cannot resume sandboxes")
        if with_memory and row.envd_unresponsive_at_pause and row.pause_mode == "full":
            raise Conflict(
                f"sandbox '{row.id}' was paused while its envd did not answer: restoring that "
                "memory would bring it back so; resume it without memory (memory: false)",
                error_code=GUEST_UNRESPONSIVE_ERROR,
            )
        # A paused sandbox holds no CPU or memory and is outside the team's cap, so its resume
        # is admitted like a create: never past the cap, never onto a full node.
        # (A refusal raises inside the transaction: it rolls back, the sandbox stays paused.)
        with self.switch(row.id):
            return await self._resume_admitted(row, timeout_s, with_memory, on_timeout)

    async def _resume_admitted(
        self, row: Sandbox, timeout_s: int | None, with_memory: bool, on_timeout: str | None
    ) -> Sandbox:
        # (kept on the row from the start: a resume whose answer is lost, or that is given up
        # on here, may still be finished by the node, and is then recorded from its listing)
        asked: dict[str, Any] = {"resume_timeout_s": timeout_s, "resume_on_timeout": on_timeout}
        async with self.admission, self.sessions.begin() as s:
            if not await q.set_state(s, row.id, [State.PAUSED], State.RESUMING, **asked):
                raise Busy(f"sandbox '{row.id}' is being paused or resumed; retry")
            await self._check_room(s, row.team_id, row.cpu_count, row.memory_mb, resuming=row.id)
        # (traffic meanwhile waits for this resume, not for an earlier one's failure to age)
        self._wake_failed.pop(row.id, None)
        try:
            resumed = await self.node.resume(row.id, row.envd_access_token, memory=with_memory)
            b = resumed.sandbox
        except BaseException as e:  # cancellation too: never leave the row half-way
            log.warning("resume of %s failed: %s", row.id, e)
            if answer_lost(e):  # left resuming: the node's listing settles it
                raise NodeFailed(f"resume of '{row.id}': {_LOST}") from e
            # (what it asked stays on the row: a node that failed to record the resume may
            # run the sandbox all the same, and the next resume to begin overwrites it)
            saved = await self._saved_size(row.id) if isinstance(e, Exception) else {}
            async with self.sessions.begin() as s:
                await q.set_state(s, row.id, [State.RESUMING], State.PAUSED, **saved)
            if not isinstance(e, Exception):
                raise
            if isinstance(e, NodeSandboxNotFound):
                await self.mark_crashed(row.id, oom=False)
                raise NotFound(f"sandbox '{row.id}' no longer exists on its node") from e
            raise SandboxFailed(f"resume failed: {e}") from e
        async with self.sessions.begin() as s:
            ok = await q.set_row_state(
                s, row, [State.RESUMING], State.RUNNING, envd_url=b.envd_url,
                host_address=b.host, envd_version=b.envd_version or row.envd_version,
                **running_as_resumed(timeout_s, on_timeout),
            )  # fmt: skip
        if not ok:  # killed meanwhile (its kill stops it on the node once this is done)
            raise NotFound(f"sandbox '{row.id}' was killed while it resumed")
        return row

    async def _saved_size(self, sandbox_id: str) -> dict[str, Any]:
        """``paused_bytes`` and ``pause_mode`` as the node holds them now: a resume that failed
        once the sandbox ran saved it again (its files alone, if its memory could not be),
        which takes other disk than the pause before, and traffic must not wake it if only
        its files were kept. Empty when the node cannot say."""
        try:
            held = await self.node_paused(sandbox_id)
        except NodeError:
            return {}
        return {} if held is None else paused_as_held(held)

    async def node_view(self, sandbox_id: str) -> pb.Sandbox | None:
        """The sandbox as its node holds it now; None when it holds no such sandbox."""
        listing = await self.node.list()
        return next((b for b in listing.sandboxes if b.sandbox_id == sandbox_id), None)

    async def node_paused(self, sandbox_id: str) -> pb.Sandbox | None:
        """The sandbox as its node holds it, if it holds it paused."""
        held = await self.node_view(sandbox_id)
        return held if held is not None and held.status == pb.SANDBOX_STATUS_PAUSED else None

    async def record_paused_by_node(
        self, sandbox_id: str, held: pb.Sandbox, was: State = State.RUNNING
    ) -> bool:
        """A row in ``was`` whose node holds the sandbox paused (a rollback that failed, or
        was cut off, leaves it paused at its snapshot; a pause that waited for that rollback
        finds it so): recorded paused, its disk counted, so a resume tries again. False if
        the row was not in ``was``."""
        async with self.sessions.begin() as s:
            moved = await q.set_state(s, sandbox_id, [was], State.PAUSED, **paused_as_held(held))
        if moved:
            self.on_gone(sandbox_id)  # (the proxy forgets where it ran)
            log.warning("sandbox %s recorded paused, as its node holds it", sandbox_id)
        return moved

    async def kill(self, who: Principal, sandbox_id: str) -> None:
        await self.get(who, sandbox_id)
        if not await self.end(sandbox_id, EndReason.KILLED_BY_USER):
            raise NotFound(f"sandbox '{sandbox_id}' not found")

    async def end(self, sandbox_id: str, reason: EndReason) -> bool:
        """Kill on the node and record why; False if another actor already ended it."""
        from_states = [State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING, State.CREATING]
        # An end time moved later since the reaper saw it (set_timeout, connect) wins.
        ended_by = utcnow() if reason is EndReason.TIMEOUT else None
        async with self.sessions.begin() as s:
            if not await q.set_state(s, sandbox_id, from_states, State.KILLING, ended_by=ended_by):
                return False
        self.on_gone(sandbox_id)
        try:
            await self.node.kill(sandbox_id)
        except (NodeError, OSError) as e:
            log.exception("kill of %s failed", sandbox_id)
            async with self.sessions.begin() as s:
                await q.set_state(
                    s,
                    sandbox_id,
                    [State.KILLING],
                    State.FAILED,
                    end_reason=str(reason),
                    error=f"kill failed: {e}",
                    ended_at=utcnow(),
                )
            return True
        async with self.sessions.begin() as s:
            await q.set_state(
                s,
                sandbox_id,
                [State.KILLING],
                State.KILLED,
                end_reason=str(reason),
                ended_at=utcnow(),
            )
        log.info("sandbox %s ended: %s", sandbox_id, reason)
        return True

    async def mark_crashed(self, sandbox_id: str, oom: bool) -> bool:
        reason = EndReason.OUT_OF_MEMORY if oom else EndReason.RUNTIME_CRASH
        live = [State.CREATING, State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING]
        return await self._fail(sandbox_id, reason, "sandbox stopped outside the server", live)


__all__ = ["CreateRequest", "NodeFacts", "SandboxService"]
