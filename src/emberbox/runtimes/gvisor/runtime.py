"""GVisorRuntime: sandboxes as runsc containers, each with its own netns, disk and cgroup.

Create is ordered so that every resource is recorded on disk before it exists; ``kill`` and
``cleanup_orphans`` walk those records (and the kernel's own lists) to release everything,
whoever created it and whether or not that process is still alive.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from ...envd_client.handshake import EnvdDefaults, HandshakeFailed, handshake
from ...host import cgroups, network, rootfs
from ...host.errors import HostError
from ...host.locks import KeyedLock
from ...templates.guest.oom import count_kills
from ...templates.steps import BootFailed, Step
from ...templates.store import Template, TemplateError, TemplateStore
from ...vocabulary import ENVD_PORT, check_sandbox_id, e2b_env, is_sandbox_id
from ..base import (
    UNKNOWN_DEFAULTS,
    Capabilities,
    CapabilityMissing,
    NetworkPolicy,
    Runtime,
    RuntimeError_,
    RuntimeSandbox,
    SandboxGone,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
    UnknownTemplate,
)
from .bundle import BindMount, BundleSpec, write_bundle
from .config import GVisorConfig
from .runsc import Runsc
from .state import SandboxPaths, SandboxRecord

log = logging.getLogger("emberbox.gvisor")
BUILDER_PREFIXES = ("build-", "verify-")  # ids the template builder uses (templates/builder.py)
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables PID 1 needs but commands should not inherit through envd's /init.
_INIT_ONLY = {"PATH", "HOME", "LANG", "EMBERBOX_START_CMD"}


class GVisorRuntime(Runtime):
    name = "gvisor"
    capabilities = Capabilities(pause=True)

    def __init__(
        self, config: GVisorConfig | None = None, store: TemplateStore | None = None
    ) -> None:
        self.config = config or GVisorConfig()
        self.store = store or TemplateStore(self.config.data_dir)
        self.runsc = Runsc(self.config)
        self.pool = network.AddressPool(
            self.config.leases_dir, self.config.network, self.config.instance
        )
        self._firewall_ready = False
        self._firewall_lock = asyncio.Lock()
        # Every create/kill of one sandbox id runs under its lock, so a kill never races
        # another kill (or the end of a create) over the same host objects.
        self._locks = KeyedLock()

    # -- paths -----------------------------------------------------------------------------

    def _paths(self, sandbox_id: str) -> SandboxPaths:
        return SandboxPaths(self.config.sandboxes_dir / check_sandbox_id(sandbox_id))

    def _cgroup(self, sandbox_id: str) -> str:
        return f"{self.config.cgroup_base}/{sandbox_id}"

    # -- lifecycle -------------------------------------------------------------------------

    async def create(
        self, spec: SandboxSpec, *, template: Template | None = None
    ) -> RuntimeSandbox:
        """Boot a sandbox from ``spec.template_id``; returns once runsc runs it (the node then
        waits for envd). ``template`` overrides the stored manifest (a build checking its
        result)."""
        if spec.snapshot is not None:
            raise CapabilityMissing("the gvisor runtime cannot start from snapshots yet")
        template = template or self._template(spec.template_id)
        async with self._locks.hold(spec.sandbox_id):
            paths, record = await self._prepare(spec, template)
            try:
                env = self._guest_env(spec, template)
                self._bundle(spec, template, paths, record, list(template.config.init), env, "/")
                await self.runsc.run_detached(spec.sandbox_id, paths.bundle, paths.log,
                                              filestore=paths.disk)  # fmt: skip
            except BaseException:
                await self._teardown(spec.sandbox_id)
                raise
        cfg = template.config
        defaults = EnvdDefaults(
            user=cfg.user,
            workdir=cfg.workdir,
            env={k: v for k, v in env.items() if k not in _INIT_ONLY},
            ready_cmd=cfg.ready_cmd,
        )
        return self._sandbox(record, SandboxStatus.RUNNING, defaults)

    async def run_step(self, step: Step) -> int:
        """Run one template build step to completion in a fresh sandbox (``StepRunner``)."""
        spec = SandboxSpec(
            sandbox_id=step.sandbox_id,
            template_id=step.template.name,
            cpu_count=step.cpu_count,
            memory_mb=step.memory_mb,
            disk_mb=step.disk_mb,
            pids_limit=step.pids_limit,
            network=NetworkPolicy(allow_internet=step.allow_internet),
        )
        binds = [BindMount(m.source, m.target) for m in step.mounts]
        return await self.run_once(
            spec, step.args, upper=step.upper, log=step.log, env=step.env, cwd=step.cwd,
            user=step.user, binds=binds, timeout=step.timeout, template=step.template,
        )  # fmt: skip

    async def boot_check(self, sandbox_id: str, template: Template, allow_internet: bool) -> None:
        """Boot ``template`` once as every sandbox will: envd healthy, ready check passed."""
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            template_id=template.name,
            network=NetworkPolicy(allow_internet=allow_internet),
        )
        try:
            sandbox = await self.create(spec, template=template)
            async with httpx.AsyncClient(trust_env=False) as http:
                await handshake(
                    http, sandbox.envd_url, sandbox.defaults, "",
                    timeout_s=self.config.boot_timeout, alive=lambda: self.alive(sandbox_id),
                )  # fmt: skip
        except (HandshakeFailed, RuntimeError_) as exc:
            raise BootFailed(f"{exc}\n{await self.boot_log(sandbox_id)}") from None
        finally:
            await self.kill(sandbox_id)

    async def run_once(
        self,
        spec: SandboxSpec,
        args: Sequence[str],
        *,
        upper: Path,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        user: tuple[int, int] = (0, 0),
        binds: Sequence[BindMount] = (),
        timeout: float | None = None,
        template: Template | None = None,
    ) -> int:
        """Run one process in a fresh sandbox to completion; the writable layer is the host
        directory ``upper``, which survives the sandbox. Returns the process's exit code."""
        template = template or self._template(spec.template_id)
        async with self._locks.hold(spec.sandbox_id):
            paths, record = await self._prepare(spec, template, upper=upper)
        try:
            full_env = {**self._guest_env(spec, template), **(env or {})}
            self._bundle(spec, template, paths, record, list(args), full_env, cwd, user, binds)
            return await self.runsc.run_foreground(spec.sandbox_id, paths.bundle, log, timeout)
        finally:
            await self.kill(spec.sandbox_id)

    async def kill(self, sandbox_id: str) -> bool:
        async with self._locks.hold(sandbox_id):
            return await self._teardown(sandbox_id)

    async def _teardown(self, sandbox_id: str) -> bool:
        """Release everything the sandbox holds; the caller holds its lock.

        Objects named after the lease index (host veth, egress entry) are touched only while
        the lease file still names this sandbox, and the lease is given back last, once they
        are gone: an index is never reused while anything carrying it exists.
        """
        paths = self._paths(sandbox_id)
        record = SandboxRecord.load(paths.root)
        lease = self._lease_of(sandbox_id, record)
        found = (
            record is not None
            or paths.root.exists()
            or lease is not None
            or sandbox_id in await self.runsc.list_ids()
        )
        if not found:
            return False
        log.info("host teardown of %s", sandbox_id)  # counted by tests/api/test_stress.py
        await self.runsc.delete(sandbox_id)
        owned = lease is not None and self.pool.owns(lease)
        if lease is not None:
            await network.teardown(lease, owns_index=owned)
        await rootfs.unmount(paths.rootfs)
        await rootfs.unmount(paths.disk)
        if record is not None and record.external_upper:
            await rootfs.remove_work_dir(Path(record.external_upper))
        cgroups.remove(self._cgroup(sandbox_id))
        if lease is not None and owned and not await network.link_exists(lease.host_veth):
            self.pool.release(lease)
        if paths.root.exists() and not rootfs.mounted(paths.rootfs):
            shutil.rmtree(paths.root, ignore_errors=True)
        return True

    async def alive(self, sandbox_id: str) -> bool:
        try:
            return _status(await self.runsc.state(sandbox_id)) is not SandboxStatus.STOPPED
        except RuntimeError_:
            return True  # runsc could not tell: unknown is not dead

    async def boot_log(self, sandbox_id: str) -> str:
        log = self._paths(sandbox_id).log
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    async def pause(self, sandbox_id: str) -> None:
        await self._require(sandbox_id)
        await self.runsc.pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> RuntimeSandbox:
        record = await self._require(sandbox_id)
        await self.runsc.resume(sandbox_id)
        return self._sandbox(record, SandboxStatus.RUNNING)

    async def list(self) -> list[RuntimeSandbox]:
        out: list[RuntimeSandbox] = []
        if not self.config.sandboxes_dir.exists():
            return out
        for directory in sorted(self.config.sandboxes_dir.iterdir()):
            record = SandboxRecord.load(directory)
            if record is None or record.external_upper:
                continue
            try:
                status = _status(await self.runsc.state(record.sandbox_id))
            except RuntimeError_:
                status = SandboxStatus.RUNNING  # runsc could not tell: unknown is not dead
            # Only a stopped sandbox needs its end reason: the dead check lists every 2 s.
            oom = status is SandboxStatus.STOPPED and self._oom_killed(record.sandbox_id)
            out.append(self._sandbox(record, status, oom_killed=oom))
        return out

    async def get(self, sandbox_id: str) -> RuntimeSandbox:
        record = await self._require(sandbox_id)
        status = _status(await self.runsc.state(sandbox_id))
        return self._sandbox(record, status, oom_killed=self._oom_killed(sandbox_id))

    async def stats(self, sandbox_id: str) -> SandboxStats:
        record = await self._require(sandbox_id)
        group = self._cgroup(sandbox_id)
        first, t0 = cgroups.usage(group), time.monotonic()
        await asyncio.sleep(0.1)
        second, t1 = cgroups.usage(group), time.monotonic()
        if first is None or second is None:
            raise SandboxGone(f"sandbox {sandbox_id} has no cgroup (not running)")
        busy = (second.cpu_ns - first.cpu_ns) / 1e9 / (t1 - t0)
        disk = os.statvfs(self._paths(sandbox_id).disk)
        return SandboxStats(
            cpu_count=record.cpu_count,
            cpu_used_pct=round(100.0 * busy / record.cpu_count, 2),
            mem_used=second.mem_used,
            mem_total=record.memory_mb * 1024 * 1024,
            disk_used=(disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            disk_total=disk.f_blocks * disk.f_frsize,
        )

    async def cleanup_orphans(self, keep: Sequence[str]) -> builtins.list[str]:
        """Release everything of ours on this host that is not a sandbox in ``keep``."""
        keep_set = set(keep)
        found: set[str] = set()
        if self.config.sandboxes_dir.exists():
            found |= {p.name for p in self.config.sandboxes_dir.iterdir()}
        found |= set(await self.runsc.list_ids())
        instance = self.config.instance
        prefix = network.netns_prefix(instance)
        found |= {n.removeprefix(prefix) for n in await network.list_netns(instance)}
        found |= {lease.sandbox_id for lease in self.pool.leases()}
        found |= set(cgroups.existing(self.config.cgroup_base))
        removed = []
        for sandbox_id in sorted(found - keep_set):
            if not is_sandbox_id(sandbox_id):
                continue
            if sandbox_id.startswith(BUILDER_PREFIXES) and await self.alive(sandbox_id):
                continue  # a template build owns it and will remove it when its step ends
            try:
                if await self.kill(sandbox_id):
                    removed.append(sandbox_id)
            except HostError:  # left for the next clean-up; the others still go
                log.exception("removing leftover sandbox %s failed", sandbox_id)
        # Host veths whose netns is gone already were deleted with it; any left are strays.
        leased = {lease.host_veth for lease in self.pool.leases()}
        for veth in await network.list_host_veths(instance):
            if veth not in leased:
                await network.delete_link(veth)
        return removed

    # -- internals -------------------------------------------------------------------------

    def _template(self, name: str) -> Template:
        try:
            return self.store.get(name)
        except TemplateError as exc:
            raise UnknownTemplate(str(exc)) from None

    async def _ensure_firewall(self) -> None:
        async with self._firewall_lock:
            if not self._firewall_ready:
                await network.ensure_firewall()
                self._firewall_ready = True

    async def _prepare(
        self, spec: SandboxSpec, template: Template, upper: Path | None = None
    ) -> tuple[SandboxPaths, SandboxRecord]:
        """Network, disk and root filesystem; on failure nothing is left behind."""
        paths = self._paths(spec.sandbox_id)
        if spec.disk_mb < 16 or spec.cpu_count < 1 or spec.memory_mb < 64:
            raise ValueError("need disk_mb >= 16, cpu_count >= 1, memory_mb >= 64")
        layers = self.store.layer_paths(template)
        self.config.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        try:
            paths.root.mkdir()
        except FileExistsError:
            raise ValueError(f"sandbox {spec.sandbox_id} already exists") from None
        record = SandboxRecord(
            sandbox_id=spec.sandbox_id,
            template_id=spec.template_id,
            created_at=time.time(),
            cpu_count=spec.cpu_count,
            memory_mb=spec.memory_mb,
            disk_mb=spec.disk_mb,
            external_upper=str(upper) if upper else None,
        )
        record.save(paths.root)
        try:
            await self._ensure_firewall()
            lease = self.pool.claim(spec.sandbox_id)
            record.lease_index, record.address = lease.index, lease.guest_ip
            record.save(paths.root)
            await network.setup(lease, spec.network.allow_internet)
            if upper is None:
                # Sandboxes: a read-only view of the layers; gVisor's overlay takes the writes
                # into a file on the size-limited disk. Read-only files can then be mapped
                # from the host page cache, shared by every sandbox of the template.
                await rootfs.make_disk(paths.disk_image, paths.disk, spec.disk_mb)
                await rootfs.mount_lower(layers, paths.rootfs)
            else:
                # Template builds: kernel overlayfs, so the writes form a directory tree.
                await rootfs.mount_root(layers, upper, paths.rootfs)
            self._write_etc(spec, template, paths)
        except BaseException:
            await self._teardown(spec.sandbox_id)
            raise
        return paths, record

    def _write_etc(self, spec: SandboxSpec, template: Template, paths: SandboxPaths) -> None:
        paths.etc.mkdir(exist_ok=True)
        sid = spec.sandbox_id
        (paths.etc / "hostname").write_text(f"{sid}\n")
        (paths.etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{sid}\n"
        )
        (paths.etc / "resolv.conf").write_text(
            _host_resolv_conf()
            if spec.network.allow_internet
            # Without egress, no nameserver: lookups fail at once instead of timing out.
            else "# no network access for this sandbox\n"
        )
        (paths.etc / "e2b").write_text(
            f"ENV_ID={spec.template_id}\nTEMPLATE_ID={spec.template_id}\n"
            f"BUILD_ID={template.id[:32]}\nSANDBOX_ID={sid}\n"
        )

    def _guest_env(self, spec: SandboxSpec, template: Template) -> dict[str, str]:
        cfg = template.config
        env = {
            "PATH": GUEST_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            **e2b_env(spec.sandbox_id, spec.template_id),
            "EMBERBOX_DEFAULT_USER": cfg.user,
            "EMBERBOX_DEFAULT_WORKDIR": cfg.workdir,
        }
        if cfg.start_cmd:
            env["EMBERBOX_START_CMD"] = cfg.start_cmd
        env.update(cfg.env)
        env.update(spec.envs)
        return env

    def _bundle(
        self,
        spec: SandboxSpec,
        template: Template,
        paths: SandboxPaths,
        record: SandboxRecord,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        user: tuple[int, int] = (0, 0),
        binds: Sequence[BindMount] = (),
    ) -> None:
        lease = self._lease_of(spec.sandbox_id, record)
        assert lease is not None
        etc_binds = [
            BindMount(paths.etc / "hostname", "/etc/hostname"),
            BindMount(paths.etc / "hosts", "/etc/hosts"),
            BindMount(paths.etc / "e2b", "/.e2b"),
            BindMount(paths.etc / "resolv.conf", "/etc/resolv.conf"),
        ]
        write_bundle(
            paths.bundle,
            BundleSpec(
                rootfs=paths.rootfs,
                args=list(args),
                env=env,
                hostname=spec.sandbox_id,
                netns_path=lease.netns_path,
                cgroups_path="/" + self._cgroup(spec.sandbox_id),
                cpu_count=spec.cpu_count,
                cpu_limit=min(float(spec.cpu_count), self.config.cpu_cap),
                memory_mb=spec.memory_mb,
                pids_limit=spec.pids_limit,
                cwd=cwd,
                uid=user[0],
                gid=user[1],
                binds=[*etc_binds, *binds],
            ),
        )

    def _lease_of(self, sandbox_id: str, record: SandboxRecord | None) -> network.Lease | None:
        if record is not None and record.lease_index is not None:
            return network.Lease(
                record.lease_index, sandbox_id, self.config.network, self.config.instance
            )
        for lease in self.pool.leases():
            if lease.sandbox_id == sandbox_id:
                return lease
        return None

    async def _require(self, sandbox_id: str) -> SandboxRecord:
        record = SandboxRecord.load(self._paths(sandbox_id).root)
        if record is None:
            raise SandboxGone(f"sandbox {sandbox_id} does not exist")
        return record

    def _sandbox(
        self,
        record: SandboxRecord,
        status: SandboxStatus,
        defaults: EnvdDefaults = UNKNOWN_DEFAULTS,
        oom_killed: bool = False,
    ) -> RuntimeSandbox:
        return RuntimeSandbox(
            sandbox_id=record.sandbox_id,
            template_id=record.template_id,
            address=record.address or "",
            envd_port=ENVD_PORT,
            status=status,
            oom_killed=oom_killed,
            defaults=defaults,
        )

    def _oom_killed(self, sandbox_id: str) -> bool:
        """Whether the host's OOM killer or the guest's (``templates/guest/oom.py``, which logs
        each kill) ever killed in this sandbox; reads its log, so not for every listing."""
        usage = cgroups.usage(self._cgroup(sandbox_id))
        log = self._paths(sandbox_id).log
        guest_kills = count_kills(log.read_text(errors="replace")) if log.exists() else 0
        return bool(usage and usage.oom_kills) or guest_kills > 0


def _host_resolv_conf() -> str:
    """The host's resolvers, unless they are loopback ones a sandbox cannot reach."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""
    servers = [line for line in text.splitlines() if line.startswith("nameserver")]
    if any(s.split()[1].startswith(("127.", "::1")) for s in servers if len(s.split()) > 1):
        return "# the host's resolver is on loopback, unreachable from sandboxes\n"
    return text


def _status(state: Mapping[str, object] | None) -> SandboxStatus:
    if state is None:
        return SandboxStatus.STOPPED
    status = str(state.get("status"))
    if status == "paused":
        return SandboxStatus.PAUSED
    # "creating"/"created" are the moments of runsc run before it returns: not dead yet.
    if status in ("running", "creating", "created"):
        return SandboxStatus.RUNNING
    return SandboxStatus.STOPPED
