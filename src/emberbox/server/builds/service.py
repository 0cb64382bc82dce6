"""Team-scoped template operations behind the template API: request a build, hand out upload
URLs, start, watch, tag, list, update and delete templates, and resolve a name at create.

A template belongs to one team; another team neither sees nor uses it (404), unless it is public
(then its id works for anyone). A name without a tag means the ``default`` tag, else the newest
ready build.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._proto.node import node_pb2 as pb
from ...node.client import NodeError
from ...templates import sdk_steps
from ...vocabulary import DEFAULT_CPU_COUNT, DEFAULT_DISK_MB, DEFAULT_MEMORY_MB
from ..auth.store import Principal
from ..config import Limits
from ..db import snapshots as snaps
from ..db.models import Sandbox, Snapshot, utcnow
from ..db.templates import BuildLogLine, TeamTemplate, TemplateBuild, TemplateTag
from ..lifecycle.errors import Conflict, Invalid, NotFound, Unsupported
from ..lifecycle.states import State
from ..lifecycle.templates import TemplateCatalog, TemplateInfo
from .names import (
    DEFAULT_TAG,
    check_name,
    check_tag,
    is_store_name,
    new_template_id,
    split_ref,
    store_name,
)
from .runner import BuildJob, BuildRunner
from .uploads import TeamShare, Uploads

log = logging.getLogger("emberbox.builds")

# What the SDK's from_base_image() asks for: our `base` template.
BASE_IMAGES = frozenset({"e2bdev/base", "e2bdev/base:latest", "docker.io/e2bdev/base"})
LOG_PAGE = 100

BuiltinResolver = Callable[[str], TemplateInfo | None]


def _login(registry: Mapping[str, Any]) -> pb.RegistryLogin:
    """``fromImageRegistry``: a registry login; AWS and GCP registries are refused."""
    kind = registry.get("type")
    if kind != "registry":
        raise Unsupported(
            f"images from {kind!r} registries are not supported; use a registry login "
            "(from_image(..., username=, password=))"
        )
    username, password = registry.get("username"), registry.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise Invalid("fromImageRegistry needs username and password")
    return pb.RegistryLogin(username=username, password=password)


class BuiltinTemplates:
    """The node's own templates (``base``, ``code-interpreter``, ...) without the manifests of
    API builds, which only their team reaches, through :meth:`TemplateService.resolve`."""

    def __init__(self, catalog: TemplateCatalog) -> None:
        self.catalog = catalog

    def resolve(self, name: str) -> TemplateInfo | None:
        if is_store_name(name):
            return None
        return self.catalog.resolve(split_ref(name)[0])  # (the name the check above read)


@dataclass
class Requested:
    template: TeamTemplate
    build: TemplateBuild
    tags: list[str]


@dataclass
class BuildStatus:
    build: TemplateBuild
    entries: list[BuildLogLine]


@dataclass
class Listed:
    template: TeamTemplate
    builds: list[TemplateBuild]  # newest first
    tags: dict[str, str] = field(default_factory=dict)  # tag -> build id

    @property
    def current(self) -> TemplateBuild | None:
        ready = [b for b in self.builds if b.status == "ready"]
        default = self.tags.get(DEFAULT_TAG)
        return next((b for b in ready if b.id == default), ready[0] if ready else None) or (
            self.builds[0] if self.builds else None
        )


class TemplateService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        uploads: Uploads,
        runner: BuildRunner,
        builtin: BuiltinResolver,
        limits: Limits,
    ) -> None:
        self.sessions = sessions
        self.uploads = uploads
        self.runner = runner  # hands builds to the node, which runs them where templates live
        self.builtin = builtin
        self.limits = limits

    async def recover(self) -> None:
        await self.runner.recover()

    async def close(self) -> None:
        await self.runner.close()

    # ---- lookups ------------------------------------------------------------------------------

    async def _template(self, s: AsyncSession, who: Principal, ref: str) -> TeamTemplate:
        """The caller's template by id or name (a namespace and tag are dropped)."""
        name, _ = split_ref(ref)
        q = select(TeamTemplate).where(
            TeamTemplate.team_id == who.team_id,
            or_(TeamTemplate.id == name, TeamTemplate.name == name),
        )
        row = (await s.execute(q)).scalars().first()
        if row is None:
            raise NotFound(f"template '{ref}' not found")
        return row

    async def _build(
        self, s: AsyncSession, who: Principal, template_ref: str, build_id: str
    ) -> tuple[TeamTemplate, TemplateBuild]:
        tpl = await self._template(s, who, template_ref)
        build = await s.get(TemplateBuild, build_id)
        if build is None or build.template_id != tpl.id:
            raise NotFound(f"build '{build_id}' of template '{template_ref}' not found")
        return tpl, build

    async def _tags(self, s: AsyncSession, template_id: str) -> dict[str, str]:
        rows = await s.execute(select(TemplateTag).where(TemplateTag.template_id == template_id))
        return {t.tag: t.build_id for t in rows.scalars()}

    async def _tagged_build(
        self, s: AsyncSession, tpl: TeamTemplate, tag: str | None
    ) -> TemplateBuild | None:
        tags = await self._tags(s, tpl.id)
        if tag is not None and tag != DEFAULT_TAG:
            build_id = tags.get(tag)
            return await s.get(TemplateBuild, build_id) if build_id else None
        if DEFAULT_TAG in tags:
            return await s.get(TemplateBuild, tags[DEFAULT_TAG])
        q = (
            select(TemplateBuild)
            .where(TemplateBuild.template_id == tpl.id, TemplateBuild.status == "ready")
            .order_by(TemplateBuild.created_at.desc())
        )
        return (await s.execute(q)).scalars().first()

    async def resolve(self, team_id: str, ref: str) -> TemplateInfo | None:
        """What a create naming ``ref`` boots: the team's template (or a public one by id),
        its build for the tag; None when it is not an API-built template."""
        name, tag = split_ref(ref)
        async with self.sessions() as s:
            q = select(TeamTemplate).where(
                or_(
                    (TeamTemplate.team_id == team_id)
                    & or_(TeamTemplate.name == name, TeamTemplate.id == name),
                    (TeamTemplate.public.is_(True)) & (TeamTemplate.id == name),
                )
            )
            tpl = (await s.execute(q)).scalars().first()
            if tpl is None:
                return None
            build = await self._tagged_build(s, tpl, tag)
            if build is None or build.status != "ready" or not build.store_name:
                raise NotFound(
                    f"template '{ref}' has no ready build" + (f" tagged '{tag}'" if tag else "")
                )
            return TemplateInfo(build.store_name, tpl.name, build.cpu_count, build.memory_mb,
                                build.disk_mb, public_id=tpl.id)  # fmt: skip

    # ---- request, upload, start ---------------------------------------------------------------

    def _check_size(self, cpu: int | None, memory: int | None) -> tuple[int, int]:
        cpu = DEFAULT_CPU_COUNT if cpu is None else cpu
        memory = DEFAULT_MEMORY_MB if memory is None else memory
        if not 1 <= cpu <= self.limits.max_cpu_count:
            raise Invalid(f"cpuCount must be between 1 and {self.limits.max_cpu_count}")
        if not 128 <= memory <= self.limits.max_memory_mb:
            raise Invalid(f"memoryMB must be between 128 and {self.limits.max_memory_mb}")
        return cpu, memory

    async def request_build(
        self,
        who: Principal,
        name: str,
        tags: Sequence[str] = (),
        cpu_count: int | None = None,
        memory_mb: int | None = None,
        min_free_disk_mb: int | None = None,
    ) -> Requested:
        base, tag = split_ref(name)
        check_name(base)
        wanted = [check_tag(t) for t in ([tag] if tag else []) + list(tags)] or [DEFAULT_TAG]
        if self.builtin(base) is not None:
            raise Conflict(f"'{base}' is a built-in template's name; choose another")
        cpu, memory = self._check_size(cpu_count, memory_mb)
        if min_free_disk_mb is not None and min_free_disk_mb < 0:
            raise Invalid("minFreeDiskMb must not be negative")
        disk = max(DEFAULT_DISK_MB, (min_free_disk_mb or 0) + DEFAULT_DISK_MB // 2)
        if disk > self.limits.max_disk_mb:
            room = self.limits.max_disk_mb - DEFAULT_DISK_MB // 2
            raise Invalid(f"minFreeDiskMb must be at most {room} (a sandbox's disk is at most "
                          f"{self.limits.max_disk_mb} MiB here)")  # fmt: skip
        try:
            return await self._requested(who, base, wanted, cpu, memory, disk)
        except IntegrityError:  # the name's template made by a request at the same moment
            return await self._requested(who, base, wanted, cpu, memory, disk)

    async def _requested(
        self, who: Principal, base: str, wanted: list[str], cpu: int, memory: int, disk: int
    ) -> Requested:
        """A build of the team's template ``base``, made first if the team has none."""
        now = utcnow()
        async with self.sessions.begin() as s:
            q = select(TeamTemplate).where(
                TeamTemplate.team_id == who.team_id, TeamTemplate.name == base
            )
            tpl = (await s.execute(q)).scalars().first()
            if tpl is None and await snaps.find(s, who.team_id, base) is not None:
                raise Conflict(f"'{base}' is a snapshot's name; choose another (or delete it)")
            if tpl is None:
                tpl = TeamTemplate(
                    id=new_template_id(), team_id=who.team_id, name=base, public=False,
                    spawn_count=0, created_at=now, updated_at=now,
                )  # fmt: skip
                s.add(tpl)
                await s.flush()
            tags = list(dict.fromkeys(wanted))
            build = TemplateBuild(id=str(uuid.uuid4()), template_id=tpl.id, status="waiting",
                                  cpu_count=cpu, memory_mb=memory, disk_mb=disk,
                                  wanted_tags=json.dumps(tags), created_at=now,
                                  updated_at=now)  # fmt: skip
            s.add(build)
        return Requested(tpl, build, tags)

    async def upload_link(
        self, who: Principal, template_ref: str, files_hash: str
    ) -> tuple[bool, str]:
        """Whether the file is already there, and the path of a signed URL to upload it to:
        given either way, since the SDK's ``force_upload`` sends the files again only when
        it gets one (an upload replaces what is stored)."""
        async with self.sessions() as s:
            tpl = await self._template(s, who, template_ref)
        return self.uploads.present(tpl.id, files_hash), self.uploads.upload_path(
            tpl.id, files_hash
        )

    async def receive_upload(
        self, template_id: str, files_hash: str, chunks: AsyncIterator[bytes]
    ) -> None:
        """Store an archive sent to a signed upload URL, within its team's quota (the URL
        names the template; the template names the team)."""
        async with self.sessions() as s:
            owner = await s.scalar(
                select(TeamTemplate.team_id).where(TeamTemplate.id == template_id)
            )
            if owner is None:
                raise NotFound(f"template '{template_id}' not found")
            ids = (
                await s.scalars(select(TeamTemplate.id).where(TeamTemplate.team_id == owner))
            ).all()
        share = TeamShare(owner, ids, self.limits.max_template_files_bytes)
        await self.uploads.receive(template_id, files_hash, chunks, share)

    async def start_build(
        self, who: Principal, template_ref: str, build_id: str, body: Mapping[str, Any]
    ) -> None:
        async with self.sessions() as s:
            tpl, build = await self._build(s, who, template_ref, build_id)
            if build.status != "waiting" or self.runner.busy(build.id):
                raise Conflict(f"build '{build_id}' was already started (status {build.status})")
            steps = body.get("steps") or []
            try:
                sdk_steps.check_steps(steps)
            except sdk_steps.InvalidStep as exc:
                raise Invalid(str(exc)) from None
            files: dict[str, Path] = {}
            for number, raw in enumerate(steps, 1):
                files_hash = raw.get("filesHash")
                if str(raw.get("type")).upper() != "COPY":
                    continue
                if not self.uploads.present(tpl.id, str(files_hash)):
                    raise Invalid(f"step {number}: COPY {raw['args'][0]}: its files "
                                  f"({files_hash}) were not uploaded")  # fmt: skip
                files[str(files_hash)] = self.uploads.path(tpl.id, str(files_hash))
            request = await self._parent(s, who, body)
        request.MergeFrom(
            pb.StartBuildRequest(
                build_id=build.id, template_id=tpl.id, store_name=store_name(build.id),
                label=f"{tpl.name} ({tpl.id})",
                steps=[pb.BuildStep(type=str(raw.get("type")), args=raw.get("args") or [],
                                    files_hash=str(raw.get("filesHash") or ""),
                                    force=bool(raw.get("force"))) for raw in steps],
                start_cmd=body.get("startCmd") or "", ready_cmd=body.get("readyCmd") or "",
                force=bool(body.get("force")), memory_mb=max(build.memory_mb, 1024),
            )
        )  # fmt: skip
        tags = json.loads(build.wanted_tags) if build.wanted_tags else [DEFAULT_TAG]

        async def on_ready(done_id: str) -> None:
            await self._assign(tpl.id, done_id, tags)

        await self.runner.submit(BuildJob(request, files, on_ready))

    async def _parent(
        self, s: AsyncSession, who: Principal, body: Mapping[str, Any]
    ) -> pb.StartBuildRequest:
        """What the build starts from: a template on the node, or an image it pulls."""
        image, template = body.get("fromImage"), body.get("fromTemplate")
        registry = body.get("fromImageRegistry")
        if bool(image) == bool(template):
            raise Invalid("give exactly one of fromImage and fromTemplate")
        if registry and not image:
            raise Invalid("fromImageRegistry applies only with fromImage")
        login = _login(registry) if registry else None
        if image and image not in BASE_IMAGES:
            return pb.StartBuildRequest(from_image=str(image), registry=login)
        name = "base" if image else await self._parent_template(s, who, str(template))
        return pb.StartBuildRequest(from_template=name)

    async def _parent_template(self, s: AsyncSession, who: Principal, ref: str) -> str:
        info = await self.resolve(who.team_id, ref)
        if info is None:
            info = self.builtin(ref)
        if info is None:
            raise NotFound(f"template '{ref}' not found")
        return info.template_id

    async def _assign(self, template_id: str, build_id: str, tags: Sequence[str]) -> None:
        """Point each tag at the build (moving it if it named another)."""
        now = utcnow()
        async with self.sessions.begin() as s:
            await s.execute(
                delete(TemplateTag).where(
                    TemplateTag.template_id == template_id, TemplateTag.tag.in_(list(tags))
                )
            )
            for tag in tags:
                s.add(TemplateTag(template_id=template_id, tag=tag, build_id=build_id,
                                  created_at=now))  # fmt: skip
            tpl = await s.get(TeamTemplate, template_id)
            if tpl is not None:
                tpl.updated_at = now

    # ---- status and logs ----------------------------------------------------------------------

    async def status(
        self,
        who: Principal,
        template_ref: str,
        build_id: str,
        offset: int = 0,
        limit: int = LOG_PAGE,
        level: str | None = None,
    ) -> BuildStatus:
        async with self.sessions() as s:
            _, build = await self._build(s, who, template_ref, build_id)
            q = (
                select(BuildLogLine)
                .where(BuildLogLine.build_id == build.id, BuildLogLine.seq >= max(offset, 0))
                .order_by(BuildLogLine.seq)
                .limit(max(0, min(limit, LOG_PAGE)))
            )
            if level:
                q = q.where(BuildLogLine.level.in_(_levels_from(level)))
            entries = list((await s.execute(q)).scalars())
        return BuildStatus(build, entries)

    async def logs(
        self,
        who: Principal,
        template_ref: str,
        build_id: str,
        at: dt.datetime | None,
        limit: int,
        forward: bool,
        level: str | None,
    ) -> list[BuildLogLine]:
        async with self.sessions() as s:
            _, build = await self._build(s, who, template_ref, build_id)
            q = select(BuildLogLine).where(BuildLogLine.build_id == build.id)
            if at is not None:
                q = q.where(
                    BuildLogLine.timestamp >= at if forward else BuildLogLine.timestamp <= at
                )
            if level:
                q = q.where(BuildLogLine.level.in_(_levels_from(level)))
            order = BuildLogLine.seq if forward else BuildLogLine.seq.desc()
            q = q.order_by(order).limit(max(0, min(limit, 1000)))
            return list((await s.execute(q)).scalars())

    # ---- list, get, update, delete ------------------------------------------------------------

    async def _listed(self, s: AsyncSession, tpl: TeamTemplate) -> Listed:
        q = (
            select(TemplateBuild)
            .where(TemplateBuild.template_id == tpl.id)
            .order_by(TemplateBuild.created_at.desc(), TemplateBuild.id.desc())
        )
        builds = list((await s.execute(q)).scalars())
        return Listed(tpl, builds, await self._tags(s, tpl.id))

    async def list_templates(self, who: Principal) -> list[Listed]:
        async with self.sessions() as s:
            q = (
                select(TeamTemplate)
                .where(TeamTemplate.team_id == who.team_id)
                .order_by(TeamTemplate.created_at, TeamTemplate.id)
            )
            return [await self._listed(s, t) for t in (await s.execute(q)).scalars()]

    async def get(self, who: Principal, template_ref: str) -> Listed:
        async with self.sessions() as s:
            return await self._listed(s, await self._template(s, who, template_ref))

    async def owns(self, who: Principal, template_ref: str) -> bool:
        async with self.sessions() as s:
            try:
                await self._template(s, who, template_ref)
            except NotFound:
                return False
        return True

    async def update(self, who: Principal, template_ref: str, public: bool | None) -> Listed:
        async with self.sessions.begin() as s:
            tpl = await self._template(s, who, template_ref)
            if public is not None:
                tpl.public = public
                tpl.updated_at = utcnow()
        return await self.get(who, tpl.id)

    async def delete(self, who: Principal, template_ref: str) -> None:
        """The template, its builds, tags, logs and uploaded files; sandboxes running from it
        keep running (their layers stay until ``gc``)."""
        async with self.sessions.begin() as s:
            tpl = await self._template(s, who, template_ref)
            listed = await self._listed(s, tpl)
            if any(self.runner.busy(b.id) for b in listed.builds):
                raise Conflict(f"template '{template_ref}' has a build in progress")
            for b in listed.builds:
                await s.execute(delete(BuildLogLine).where(BuildLogLine.build_id == b.id))
            await s.execute(delete(TemplateTag).where(TemplateTag.template_id == tpl.id))
            await s.execute(delete(TemplateBuild).where(TemplateBuild.template_id == tpl.id))
            await s.delete(tpl)
        unused = [b.store_name for b in listed.builds
                  if b.store_name and not await self._in_use(b.store_name)]  # fmt: skip
        try:
            await self.runner.node.delete_template(tpl.id, unused)
        except NodeError as exc:  # the rows are gone; the node keeps its copies (logged)
            log.warning("template %s: the node kept its files: %s", tpl.id, exc.message)
        self.uploads.drop_template(tpl.id)

    async def _in_use(self, store: str) -> bool:
        """Whether a sandbox that has not ended, or a snapshot, was made from this build: they
        need its manifest (a fork or a create from a snapshot reads it), so it stays; ``gc``
        frees it once nothing refers to it."""
        async with self.sessions() as s:
            live = select(Sandbox.id).where(
                Sandbox.template_id == store,
                Sandbox.state.not_in([str(State.KILLED), str(State.FAILED)]),
            )
            snap = select(Snapshot.id).where(Snapshot.template_id == store)
            return (await s.execute(live.limit(1))).first() is not None or (
                await s.execute(snap.limit(1))
            ).first() is not None

    # ---- tags and names -----------------------------------------------------------------------

    async def alias(self, who: Principal, alias: str) -> TeamTemplate:
        name, _ = split_ref(alias)
        async with self.sessions() as s:
            return await self._template(s, who, name)

    async def list_tags(self, who: Principal, template_ref: str) -> list[TemplateTag]:
        async with self.sessions() as s:
            tpl = await self._template(s, who, template_ref)
            q = (
                select(TemplateTag)
                .where(TemplateTag.template_id == tpl.id)
                .order_by(TemplateTag.created_at, TemplateTag.tag)
            )
            return list((await s.execute(q)).scalars())

    async def assign_tags(
        self, who: Principal, target: str, tags: Sequence[str]
    ) -> tuple[str, list[str]]:
        if not tags:
            raise Invalid("give at least one tag")
        wanted = [check_tag(t) for t in tags]
        _, tag = split_ref(target)
        async with self.sessions() as s:
            tpl = await self._template(s, who, target)
            build = await self._tagged_build(s, tpl, tag)
        if build is None or build.status != "ready":
            raise NotFound(f"template '{target}' has no ready build to tag")
        await self._assign(tpl.id, build.id, wanted)
        return build.id, wanted

    async def remove_tags(self, who: Principal, name: str, tags: Sequence[str]) -> None:
        if not tags:
            raise Invalid("give at least one tag")
        async with self.sessions.begin() as s:
            tpl = await self._template(s, who, name)
            existing = await self._tags(s, tpl.id)
            missing = [t for t in tags if t not in existing]
            if missing:
                raise NotFound(f"template '{name}' has no tag(s) {', '.join(missing)}")
            await s.execute(
                delete(TemplateTag).where(
                    TemplateTag.template_id == tpl.id, TemplateTag.tag.in_(list(tags))
                )
            )


_LEVELS = ["debug", "info", "warn", "error"]


def _levels_from(level: str) -> list[str]:
    """A minimum level and every level above it."""
    if level not in _LEVELS:
        raise Invalid(f"level must be one of {', '.join(_LEVELS)}")
    return _LEVELS[_LEVELS.index(level) :]
