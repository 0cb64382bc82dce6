"""GVisorRuntime: sandboxes as runsc containers, each with its own netns, disk and cgroup.

Create is ordered so that every resource is recorded on disk before it exists; ``kill`` and
``cleanup_orphans`` walk those records (and the kernel's own lists) to release everything,
whoever created it and whether or not that process is still alive.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Collection, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...envd.guest.oom import count_kills
from ...envd_client.handshake import EnvdDefaults, HandshakeFailed, handshake, wait_healthy
from ...envd_client.http import sandbox_http
from ...host import cgroups, network, processes, rootfs
from ...host.commands import SPAWNED, concurrently
from ...host.completion import to_completion
from ...host.egress_audit import EgressEvent
from ...host.errors import HostError
from ...host.files import write_atomic
from ...host.instance_claim import InstanceClaim
from ...host.locks import KeyedLock
from ...templates.steps import BootFailed, Step
from ...templates.store import GUEST_PYTHON, Template, TemplateError, TemplateStore
from ...vocabulary import (
    ENVD_PORT,
    GUEST_HOSTNAME,
    IDENTITY_VARS,
    OFFLOADED_BELOW_BYTES,
    check_sandbox_id,
    e2b_env,
    is_sandbox_id,
    is_volume_id,
)
from ..base import (
    FILES_TIMEOUT_S,
    UNKNOWN_DEFAULTS,
    Capabilities,
    CapabilityMissing,
    NetworkPolicy,
    Runtime,
    RuntimeError_,
    RuntimeSandbox,
    SandboxActivity,
    SandboxGone,
    SandboxNotRunning,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
    SnapshotRef,
    UnknownTemplate,
)
from . import guest_files
from .bundle import BindMount, BundleSpec, host_memory_limit, write_bundle
from .config import GVisorConfig
from .egress import NodeEgress, judged, resolv_conf, rules_of, saved_policy
from .kept import KeptPauses
from .runsc import Runsc, RunscError, sentry_died
from .state import PARTIAL_SUFFIX, SandboxPaths, SandboxRecord, partial
from .warm import TemplateSnapshots

log = logging.getLogger("emberbox.gvisor")
# Ids of a template build's sandboxes (templates/builder.py), run by another process: a node
# starting up leaves them alone while they run. (The boot a template snapshot is taken of,
# ``warm.WARM_PREFIX``, belongs to the node process itself: a leftover of it is removed.)
BUILDER_PREFIXES = ("build-", "verify-")
# A freeze completes once every process of the sandbox has stopped (a few ms; one that is still
# booting may not freeze at all): one that does not by then is thawed again and keeps running.
FREEZE_TIMEOUT_S = 0.5
# What an offloaded sandbox keeps resident: pages the kernel charges to it but cannot swap
# (~3.9 MiB measured, frozen). Tests and benchmarks take twice it as "offloaded".
OFFLOAD_KEEP_BYTES = 4 << 20
# Nothing is offloaded once less than this share of the host's swap is free: a running
# sandbox that hits its limit while a step has it lowered reclaims into swap, never into
# its OOM killer.
OFFLOAD_SWAP_HEADROOM = 0.25
# A filesystem-only snapshot's one file (beside its snapshot.json).
FILES_IMAGE = "files.tar"
# guest_files.py runs in the guest by its own Python, given as source (any template's envd).
_GUEST_FILES = Path(guest_files.__file__).read_text()
_BOOT_CALL = "boot(sys.argv[1:])"
_GUEST_SAVE = _GUEST_FILES + "\nsave(limit=int(sys.argv[1]))\n"
_GUEST_SNAPSHOT = _GUEST_FILES + "\nsave(keep_running=True, limit=int(sys.argv[1]))\n"
_GUEST_BOOT = f"{_GUEST_FILES}\n{_BOOT_CALL}\n"
_GUEST_CONT = "import os, signal; os.kill(-1, signal.SIGCONT)"


def _guest(source: str) -> list[str]:
    """``source`` run by the guest's Python, isolated (-I): a user's /tarfile.py or PYTHON*
    variables must not change what it does."""
    return [GUEST_PYTHON, "-I", "-c", source]


def _booting(init: Sequence[str]) -> list[str]:
    """PID 1's argv that applies the files on its stdin, then execs ``init``."""
    return [*_guest(_GUEST_BOOT), *init]


def _unwrapped(args: list[str]) -> list[str]:
    """``init`` again from :func:`_booting`'s argv, whichever version of it wrote them (a node
    killed mid-boot, or upgraded since, leaves them so)."""
    while args[:2] == [GUEST_PYTHON, "-I"] and len(args) > 3 and _BOOT_CALL in args[3]:
        args = args[4:]
    return args


GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables PID 1 needs but commands should not inherit through envd's /init as the template
# sets them (root's HOME); one its create gave (or its snapshot carried) is the sandbox's own.
_INIT_ONLY = {"PATH", "HOME", "LANG", "EMBERBOX_START_CMD"}
# Set for each sandbox from its own id and template, never carried over from another's.
_OWN_VARS = {*IDENTITY_VARS, "EMBERBOX_DEFAULT_USER", "EMBERBOX_DEFAULT_WORKDIR",
             "EMBERBOX_START_CMD"}  # fmt: skip


def _init_env(env: Mapping[str, str], own: Collection[str]) -> dict[str, str]:
    """``env`` (what the sandbox boots with) without the ``_INIT_ONLY`` variables that are not
    its ``own`` (``SandboxRecord.own_init_vars``): envd hands the rest to every command over
    its defaults (HOME, PATH, USER), as E2B's envd does with a create's ``envVars``."""
    return {k: v for k, v in env.items() if k not in _INIT_ONLY or k in own}


def _carried_env(
    boot_env: Mapping[str, str],
    template_env: Mapping[str, str],
    given: Mapping[str, str],
    own_init_vars: Collection[str],
) -> dict[str, str]:
    """What sandboxes booting from a filesystem snapshot keep of its source's variables, as
    one restored from memory keeps those its envd held: those it booted with that its
    template does not set so (its create's), its own ``_INIT_ONLY`` ones whatever their
    values (``SandboxRecord.own_init_vars``), and those the node gave it since; never its
    identity. The template's own come with the build they boot (the source's)."""
    booted = {k: v for k, v in boot_env.items() if template_env.get(k) != v or k in own_init_vars}
    return {k: v for k, v in {**booted, **given}.items() if k not in _OWN_VARS}


def _env_of(bundle: Mapping[str, Any]) -> dict[str, str]:
    """The variables a bundle's ``config.json`` (read) starts the sandbox with."""
    return dict(item.split("=", 1) for item in bundle["process"]["env"])


def _snapshot_env(path: Path) -> dict[str, str]:
    """The variables a filesystem snapshot keeps (none in one taken before 2026-12-06)."""
    about = json.loads((path / "snapshot.json").read_text())
    return {str(k): str(v) for k, v in about.get("env", {}).items()}


def _swap_short() -> bool:
    """Whether the host's swap is absent or too full to take an offload
    (``OFFLOAD_SWAP_HEADROOM``); kept paused sandboxes in it then go (``kept.py``)."""
    total = cgroups.swap_total()
    return total == 0 or cgroups.swap_free() < total * OFFLOAD_SWAP_HEADROOM


def _has_sandboxes(data_dir: Path) -> bool:
    """Whether a data dir's gVisor runtime still has sandboxes (running or paused) here: its
    instance id names their host objects even while no node of it runs."""
    try:
        return any(GVisorConfig(data_dir=data_dir).sandboxes_dir.iterdir())
    except OSError:
        return False


class GVisorRuntime(Runtime):
    name = "gvisor"
    capabilities = Capabilities(
        pause=True, snapshot=True, fork=True, egress_rules=True, header_rules=True,
        egress_proxy=True, volumes=True, filesystem_pause=True,
    )  # fmt: skip
    orphan_names = frozenset({"exe"})  # runsc re-executes itself as /proc/self/exe

    def __init__(
        self, config: GVisorConfig | None = None, store: TemplateStore | None = None
    ) -> None:
        self.config = config or GVisorConfig()
        self.claim = InstanceClaim(
            self.config.instances_root, self.config.instance, self.config.data_dir, _has_sandboxes
        ).acquire()
        self.store = store or TemplateStore(self.config.data_dir)
        self.runsc = Runsc(self.config)
        self.pool = network.AddressPool(
            self.config.leases_dir, self.config.network, self.config.instance
        )
        # Every create/kill of one sandbox id runs under its lock, so a kill never races
        # another kill (or the end of a create) over the same host objects.
        self._locks = KeyedLock()
        self._background: set[asyncio.Task[None]] = set()
        # Paused sandboxes whose runsc container this process deleted: their resume need not
        # ask runsc whether one is left (a ``runsc state``, ~35 ms).
        self._deleted: set[str] = set()
        # Paused sandboxes whose processes stay, stopped, for a resume to continue (kept.py).
        self.kept = KeptPauses(self.config.pause_keep_s, self.config.pause_keep_min_free_mb,
                               self._forget_container, swap_short=_swap_short)  # fmt: skip
        self.warm = TemplateSnapshots(self.config.template_snapshots_dir, self.config.boot_timeout)
        self.egress = NodeEgress(self.config, self.pool, self._saved_policies)

    async def close(self) -> None:
        """A template snapshot under way is abandoned and its boot killed: nobody would
        remove it until the next node start. The data dir's parent cgroup goes once no
        sandbox is left in it (sandboxes still running keep it, and paused ones' kept
        processes: a node stops without killing them); one per data dir had piled up on a
        host that runs many short-lived nodes."""
        await self.warm.close()
        await self.kept.close()
        await asyncio.gather(*self._background, return_exceptions=True)  # teardowns under way
        await self.egress.close()
        cgroups.remove(self.config.cgroup_base)
        self.claim.release()

    # -- paths -----------------------------------------------------------------------------

    def _paths(self, sandbox_id: str) -> SandboxPaths:
        return SandboxPaths(self.config.sandboxes_dir / check_sandbox_id(sandbox_id))

    def _cgroup(self, sandbox_id: str) -> str:
        return f"{self.config.cgroup_base}/{sandbox_id}"

    # -- lifecycle -------------------------------------------------------------------------

    async def create(
        self, spec: SandboxSpec, *, template: Template | None = None
    ) -> RuntimeSandbox:
        """Start a sandbox: restored from ``spec.snapshot``, else from the template's own
        snapshot when there is one (``warm.py``), else booted; returns once runsc runs it (the
        node then waits for envd). ``template`` overrides the stored manifest (a build checking
        its result: always booted)."""
        image: Path | None = None
        files: Path | None = None
        from_template = False
        self._check_volumes(spec)
        carried: dict[str, str] = {}
        if spec.snapshot is not None:
            files = self._check_snapshot(spec.snapshot)
            image = None if files else Path(spec.snapshot.path)
            if files:
                carried = _snapshot_env(Path(spec.snapshot.path))
            if files and spec.volumes:  # the load's deletions would reach into the volumes
                raise ValueError("a sandbox with volumes cannot start from a filesystem snapshot")
        elif template is None and self.config.template_snapshots and not spec.volumes:
            template = self._template(spec.template_id)
            image = self.warm.ready(template, spec)
            from_template = image is not None
        template = template or self._template(spec.template_id)
        try:
            record, env = await self._start(spec, template, image, files, carried)
        except RunscError as exc:
            if image is not None and not from_template and sentry_died(exc):
                # Tried once more (a restore here costs ~0.4 s): a sentry that died once is
                # no proof that the image cannot be restored; if it cannot, the error stands.
                log.warning("sandbox %s: its sentry died restoring %s; trying once more",
                            spec.sandbox_id, image)  # fmt: skip
                record, env = await self._start(spec, template, image, files)
            elif not from_template:
                raise
            else:
                log.warning("template %s: its snapshot did not restore; booting", template.name)
                self.warm.discard(template, spec)
                image = None
                record, env = await self._start(spec, template, None)
        if (
            image is None
            and files is None
            and self.config.template_snapshots
            and not spec.sandbox_id.startswith(BUILDER_PREFIXES)
            and not spec.volumes  # a template snapshot must not hold a volume's mount
        ):
            self.warm.make_later(template, spec, self._boot_for_snapshot, self._checkpoint_to,
                                 self.kill)  # fmt: skip
        if files is not None:
            try:
                await self._files_applied(record)
            except BaseException:
                await self.kill(record.sandbox_id)
                raise
        cfg = template.config
        defaults = EnvdDefaults(
            user=cfg.user,
            workdir=cfg.workdir,
            env=_init_env(env, record.own_init_vars),
            # A checkpoint is taken of a sandbox that was ready already.
            ready_cmd=cfg.ready_cmd if image is None else None,
        )
        return self._sandbox(record, SandboxStatus.RUNNING, defaults)

    async def _start(
        self,
        spec: SandboxSpec,
        template: Template,
        image: Path | None,
        files: Path | None = None,
        carried: Mapping[str, str] | None = None,
    ) -> tuple[SandboxRecord, dict[str, str]]:
        """Boot (``files``: applying them first, see ``guest_files.boot``; ``carried``: the
        variables of the sandbox they were saved from) or restore ``image``."""
        async with self._locks.hold(spec.sandbox_id):
            paths, record = await self._prepare(spec, template, carried=carried or {})
            try:
                env = self._guest_env(spec, template, carried or {})
                volumes = [BindMount(Path(v.source), v.path, readonly=False) for v in spec.volumes]
                tmp = self._volume_tmp(paths) if volumes else None
                init = list(template.config.init)
                args = _booting(init) if files else init
                self._bundle(spec, template, paths, record, args, env, "/", binds=volumes, tmp=tmp)
                if image is None:
                    await self.runsc.run_detached(spec.sandbox_id, paths.bundle, paths.log,
                                                  filestore=paths.disk,
                                                  overlay_binds=not volumes,
                                                  stdin=files)  # fmt: skip
                    if files:  # a later restore (a pause) reads the bundle as made
                        self._bundle(spec, template, paths, record, init, env, "/",
                                     binds=volumes, tmp=tmp)  # fmt: skip
                else:
                    await self.runsc.restore(spec.sandbox_id, paths.bundle, image, paths.log,
                                             paths.disk)  # fmt: skip
            except BaseException:
                await self._teardown(spec.sandbox_id)
                raise
        return record, env

    def _template_env(self, record: SandboxRecord) -> dict[str, str]:
        """The variables the sandbox's template starts every sandbox with (none when the
        template is gone: then all the sandbox's are its own)."""
        try:
            template = self.store.get(record.template_id)
        except TemplateError:
            return {}
        return self._guest_env(SandboxSpec(record.sandbox_id, record.template_id), template, {})

    @staticmethod
    def _boot_env(paths: SandboxPaths) -> dict[str, str]:
        """The variables the sandbox's bundle starts it with."""
        return _env_of(json.loads((paths.bundle / "config.json").read_text()))

    async def _files_applied(self, record: SandboxRecord) -> None:
        """Wait for the envd of a sandbox booted with saved files (a reboot, or a create from a
        filesystem snapshot): its PID 1 applies them first, which may take longer than a boot
        (``FILES_TIMEOUT_S``). The caller stops the sandbox if this raises."""
        sandbox_id = record.sandbox_id
        url = self._sandbox(record, SandboxStatus.RUNNING).envd_url

        async def running() -> bool:
            return not self.known_stopped(sandbox_id)

        try:
            async with sandbox_http() as http:
                await wait_healthy(http, url, FILES_TIMEOUT_S, alive=running)
        except HandshakeFailed as exc:
            raise BootFailed(f"sandbox {sandbox_id} did not boot from its files: {exc}\n"
                             f"{await self.boot_log(sandbox_id)}") from None  # fmt: skip

    @staticmethod
    def _volume_tmp(paths: SandboxPaths) -> Path:
        """/tmp of a sandbox with volumes: gVisor overlays only its root, so /tmp is bound
        from a directory on its size-limited disk (never the template's own /tmp)."""
        tmp = paths.disk / "tmp"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o1777)
        return tmp

    @staticmethod
    def _mount_points(spec: SandboxSpec, paths: SandboxPaths, layers: Sequence[Path]) -> list[Path]:
        """A top layer of empty directories where volumes go: runsc mounts a bind only on an
        existing directory, and the root it gets is read-only. A merged directory takes its
        owner and mode from its top layer, so each one made here copies the template's
        (``/home/user/data`` must leave ``/home/user`` to ``user``)."""
        if not spec.volumes:
            return []
        top = paths.root / "mountpoints"
        top.mkdir(exist_ok=True)
        for volume in spec.volumes:
            parts = Path(volume.path.lstrip("/")).parts
            for depth in range(1, len(parts) + 1):
                sub = Path(*parts[:depth])
                made = top / sub
                if made.is_dir():
                    continue
                made.mkdir()
                st = _template_dir(layers, sub)
                if st is not None:
                    os.chown(made, st.st_uid, st.st_gid)
                    made.chmod(stat.S_IMODE(st.st_mode))
        return [top]

    def _check_volumes(self, spec: SandboxSpec) -> None:
        """Only volume directories of this node's data dir are bound, never another host path
        (the node token would otherwise bind any host directory read-write)."""
        root = self.config.data_dir / "volumes"
        for volume in spec.volumes:
            source = Path(volume.source)
            if (
                source.name != "data"
                or source.parent.parent != root
                or not is_volume_id(source.parent.name)
            ):
                raise ValueError(f"not a volume of this node: {volume.source}")

    @staticmethod
    def _no_volumes(record: SandboxRecord, what: str) -> None:
        if record.volumes:
            raise CapabilityMissing(
                f"sandbox {record.sandbox_id} mounts volumes and cannot be {what}: gVisor's"
                " restore looks up again every volume file the sandbox holds, so a file another"
                " writer removed meanwhile would make it unrestorable"
            )

    async def _boot_for_snapshot(self, spec: SandboxSpec, template: Template) -> RuntimeSandbox:
        record, _env = await self._start(spec, template, None)
        return self._sandbox(record, SandboxStatus.RUNNING)

    async def _checkpoint_to(self, sandbox_id: str, image: Path) -> None:
        async with self._locks.hold(sandbox_id):
            await self.runsc.checkpoint(sandbox_id, image, self._paths(sandbox_id).disk)

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
            async with sandbox_http() as http:
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
            full_env = {**self._guest_env(spec, template, {}), **(env or {})}
            self._bundle(spec, template, paths, record, list(args), full_env, cwd, user, binds)
            return await self.runsc.run_foreground(spec.sandbox_id, paths.bundle, log, timeout)
        finally:
            await self.kill(spec.sandbox_id)

    async def kill(self, sandbox_id: str) -> bool:
        async with self._locks.hold(sandbox_id):
            return await self._teardown(sandbox_id)

    async def freeze(self, sandbox_id: str) -> None:
        """Freeze the sandbox's cgroup (sentry, gofer, stubs): an idle gVisor sandbox wakes
        its timers and envd's watchers dozens of times a second (~4% of a core each, measured
        in ``benchmarks/lifecycle_bench.py``), a frozen one never. runsc's own commands wait
        on the sentry, so nothing here asks runsc about a frozen sandbox (see ``_status``)."""
        group = self._cgroup(sandbox_id)
        async with self._locks.hold(sandbox_id):
            if not cgroups.procs(group):
                return
            cgroups.freeze(group, True)
            deadline = time.monotonic() + FREEZE_TIMEOUT_S
            try:
                while cgroups.freezer_state(group) != "frozen":
                    if time.monotonic() > deadline:
                        raise HostError(f"sandbox {sandbox_id} did not freeze within "
                                        f"{FREEZE_TIMEOUT_S}s; it keeps running")  # fmt: skip
                    await asyncio.sleep(0.001)
            except BaseException:  # (cancelled too) never left half frozen
                cgroups.freeze(group, False)
                raise

    async def thaw(self, sandbox_id: str) -> None:
        async with self._locks.hold(sandbox_id):
            if cgroups.frozen(self._cgroup(sandbox_id)):
                cgroups.freeze(self._cgroup(sandbox_id), False)

    async def offload(self, sandbox_id: str) -> bool | None:
        """One pass pushing the sandbox's pages (the guest's memory file, the sentry's and
        gofer's heaps) to swap; memory plus swap stays within its limit. A running sandbox
        (idle: the node asks no other) faults back what it touches; a paused one's kept
        processes are then kept longer (``kept.py``)."""
        group = self._cgroup(sandbox_id)
        async with self._locks.hold(sandbox_id):
            if _swap_short():
                return None
            if self._usage(sandbox_id) is None:
                return None  # no processes (paused and not kept, gone)
            # Its limit is put back before the lock is let go, cancelled or not.
            work = asyncio.to_thread(cgroups.offload, group, OFFLOAD_KEEP_BYTES)
            try:
                resident = await to_completion(work)
            except OSError:  # a write failed: its limit may be the lowered one
                self._finish_cut_offload(sandbox_id)
                if self._unkeep(sandbox_id):  # a resume restores, and sets its limit
                    self._in_background(self._forget_container(sandbox_id))
                raise
            if resident < OFFLOADED_BELOW_BYTES:
                self.kept.swapped(sandbox_id)
            return resident > OFFLOAD_KEEP_BYTES

    async def activity(self, sandbox_id: str) -> SandboxActivity | None:
        used = self._usage(sandbox_id)
        return None if used is None else SandboxActivity(used.cpu_ns, used.mem_used)

    def _unkeep(self, sandbox_id: str) -> bool:
        """Whether the paused sandbox's processes were kept (``kept.py``); they no longer are,
        by this node nor by a successor (its ``kept`` mark goes too)."""
        self._paths(sandbox_id).kept.unlink(missing_ok=True)
        return self.kept.take(sandbox_id)

    def _usage(self, sandbox_id: str) -> cgroups.Usage | None:
        """The cgroup's usage while processes of the sandbox run or are kept: a paused one's
        cgroup stays, empty, charged with the page cache of its saved memory."""
        if self._paths(sandbox_id).paused() and not self.kept.holds(sandbox_id):
            return None
        return cgroups.usage(self._cgroup(sandbox_id))

    async def _teardown(self, sandbox_id: str) -> bool:
        """Release everything the sandbox holds; the caller holds its lock.

        Objects named after the lease index (host veth, egress entry) are touched only while
        the lease file still names this sandbox, and the lease is given back last, once they
        are gone: an index is never reused while anything carrying it exists.
        """
        self._deleted.discard(sandbox_id)
        paths = self._paths(sandbox_id)
        record = SandboxRecord.load(paths.root)
        lease = self._lease_of(sandbox_id, record)
        found = (
            record is not None
            or paths.root.exists()
            or lease is not None
            or sandbox_id in cgroups.existing(self.config.cgroup_base)
            or sandbox_id in await self.runsc.list_ids()
        )
        if not found:
            self.egress.journal.remove(sandbox_id)
            return False
        log.info("host teardown of %s", sandbox_id)  # counted by tests/api/test_stress.py
        await self._stop_processes(sandbox_id)
        await self.runsc.delete(sandbox_id)
        self._forget_runsc_files(sandbox_id)
        owned = lease is not None and self.pool.owns(lease)
        if lease is not None:
            if owned:
                self.egress.forget(lease.guest_ip)
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
        # Last: until its address stopped being its own, a record could still be written.
        self.egress.journal.remove(sandbox_id)
        return True

    async def _stop_processes(self, sandbox_id: str) -> None:
        """SIGKILL whatever runs in the sandbox's cgroup (sentry, gofer, stubs) and wait,
        every 5 ms, until it is gone and reaped.

        Before ``runsc delete``, which would kill the sandbox itself and then poll every 100 ms
        until its process vanished (~130 ms; ~25 ms when it finds it gone already). It also
        stops what runsc does not know of: a create cut off part-way (a node stopping while a
        warm-pool refill restores, a boot timeout) leaves runsc-sandbox and its gofer running,
        and they outlived every clean-up (measured after a benchmark run)."""
        deadline = time.monotonic() + 5
        group = self._cgroup(sandbox_id)
        while pids := self._kill_processes(sandbox_id):
            if cgroups.frozen(group):  # signalled first, so a frozen sandbox never runs again
                cgroups.freeze(group, False)
            if time.monotonic() > deadline:
                raise HostError(f"sandbox {sandbox_id}: processes {pids} survive SIGKILL")
            await asyncio.sleep(0.005)
        # Gone from the cgroup, perhaps not yet reaped (the node reaps on SIGCHLD, on this
        # same loop): a zombie still counts as running for runsc.
        processes.reap_orphans(self.orphan_names, SPAWNED)

    def _kill_processes(self, sandbox_id: str) -> list[int]:
        """SIGKILL every process in the sandbox's cgroup; returns the ones signalled."""
        self._unkeep(sandbox_id)  # a paused one's kept processes end here
        pids = cgroups.procs(self._cgroup(sandbox_id))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def _forget_runsc_files(self, sandbox_id: str) -> None:
        """runsc's lock and socket of a sandbox it never recorded (see _stop_processes)."""
        for name in (f"{sandbox_id}_sandbox:{sandbox_id}.lock", f"runsc-{sandbox_id}.sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.config.runsc_root / name).unlink()

    async def alive(self, sandbox_id: str) -> bool:
        try:
            return await self._status(sandbox_id) is not SandboxStatus.STOPPED
        except RuntimeError_:
            return True  # runsc could not tell: unknown is not dead

    def known_stopped(self, sandbox_id: str) -> bool:
        # Its sentry, gofer and stubs all live in its cgroup: none left, it has stopped.
        return not cgroups.procs(self._cgroup(sandbox_id))

    async def _status(self, sandbox_id: str) -> SandboxStatus:
        """runsc's view, except that a sandbox is paused exactly when its memory is saved on
        disk: its runsc container is killed, then deleted, and comes back only with the
        resume (or is kept, runsc-paused, until then); one runsc reports paused without that
        is a pause under way, or one a node's death cut off, which its successor undoes."""
        if self._paths(sandbox_id).paused():
            return SandboxStatus.PAUSED  # runsc may still report the killed sandbox for a while
        group = self._cgroup(sandbox_id)
        try:
            if not cgroups.frozen(group):  # runsc would wait for its thaw
                return _status(await self.runsc.state(sandbox_id))
        except RunscError:
            if not cgroups.frozen(group):  # (frozen while runsc asked: answered below)
                raise
        return SandboxStatus.STOPPED if self.known_stopped(sandbox_id) else SandboxStatus.RUNNING

    async def boot_log(self, sandbox_id: str) -> str:
        log = self._paths(sandbox_id).log
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    async def pause(self, sandbox_id: str, memory: bool = True) -> int:
        """Save the sandbox's memory and writable layer to its directory (without ``memory``:
        only the files it changed), then stop it: a paused sandbox holds disk, its address
        and its mounts, but no CPU, and no memory once its processes are let go (at once, or
        after ``pause_keep_s``: ``kept.py``). Returns the disk what was saved takes.

        Its kernel is paused before the checkpoint, so nothing it does after the saved state
        (a file write that returned) is lost. If the save fails the sandbox keeps running and
        the error is raised.
        """
        async with self._locks.hold(sandbox_id):
            record = await self._require(sandbox_id)
            self._no_volumes(record, "paused")
            paths = self._paths(sandbox_id)
            if paths.paused():
                raise SandboxNotRunning(f"sandbox {sandbox_id} is paused")
            if not memory:
                await self._save_files(record, paths)
                self._kill_processes(sandbox_id)
                paths.saving.unlink(missing_ok=True)  # (paused: nothing stopped to let go)
                size = _saved_bytes(paths)
                self._in_background(self._forget_container(sandbox_id))
                return size
            image = partial(paths.memory)
            shutil.rmtree(image, ignore_errors=True)
            image.mkdir()
            try:
                await self.runsc.pause(sandbox_id)
                await self.runsc.checkpoint(sandbox_id, image, paths.disk)
            except BaseException:
                with contextlib.suppress(Exception):  # (the first error is the one told)
                    await self.runsc.resume(sandbox_id)
                shutil.rmtree(image, ignore_errors=True)  # last: it marks a kernel paused
                raise
            os.replace(image, paths.memory)  # from here on the sandbox counts as paused
            size = _saved_bytes(paths)  # (and nothing below may fail the pause)
            if self.kept.may_keep() and self._freeze_kept(sandbox_id):
                self.kept.keep(sandbox_id)
                with contextlib.suppress(OSError):  # (without it a successor restores it)
                    paths.kept.touch()
                return size
            self._kill_processes(sandbox_id)  # their exit (~50 ms for 256 MiB) is not waited for
        # The processes' end and runsc's own record go in the background (~80 ms); a resume
        # waits for that, or removes the record itself after a node restart.
        self._in_background(self._forget_container(sandbox_id))
        return size

    def _freeze_kept(self, sandbox_id: str) -> bool:
        """Freeze a paused sandbox's processes to keep them (its sentry's timers too); False
        if the cgroup refused: they are let go then, and a resume restores it."""
        try:
            cgroups.freeze(self._cgroup(sandbox_id), True)
        except OSError as exc:
            log.warning("sandbox %s: its processes could not be frozen to be kept (%s); "
                        "they are stopped", sandbox_id, exc)  # fmt: skip
            return False
        return True

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without waiting for it, holding a reference until it is done."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _discard(self, checkpoint: Path) -> None:
        """Remove a checkpoint off the caller's path: unlinking an image of a few hundred MiB
        takes 60-90 ms here once written back (measured), on the event loop and in every
        resume. Renamed first, so the name is free (and the sandbox no longer paused) at once;
        a kill removes a leftover with the sandbox's directory."""
        doomed = checkpoint.with_name(f".{checkpoint.name}-discarded-{secrets.token_hex(4)}")
        try:
            os.replace(checkpoint, doomed)
        except FileNotFoundError:
            return
        if doomed.is_dir():
            self._in_background(asyncio.to_thread(shutil.rmtree, doomed, True))
        else:
            self._in_background(asyncio.to_thread(doomed.unlink, True))

    async def _forget_container(self, sandbox_id: str) -> None:
        """Stop a paused sandbox's processes and drop runsc's record of it, unless it runs
        again or was paused again with its processes kept since this was asked for."""
        async with self._locks.hold(sandbox_id):
            if not self._paths(sandbox_id).paused() or self.kept.holds(sandbox_id):
                return
            await self._stop_processes(sandbox_id)
            if await self.runsc.delete(sandbox_id):
                self._deleted.add(sandbox_id)

    async def resume(self, sandbox_id: str, memory: bool = True) -> RuntimeSandbox:
        """Run a paused sandbox again: from its saved memory, or (``memory`` False, or paused
        without it) booted afresh from its files, its envd then waiting for its ``/init``
        (``RuntimeSandbox.rebooted``). A running sandbox is answered as it is."""
        async with self._locks.hold(sandbox_id):
            record = await self._require(sandbox_id)
            paths = self._paths(sandbox_id)
            if not paths.paused():
                if await self._status(sandbox_id) is SandboxStatus.RUNNING:
                    return self._sandbox(record, SandboxStatus.RUNNING)
                raise SandboxGone(f"sandbox {sandbox_id} is neither paused nor running")
            if paths.memory.is_dir() and memory:
                try:
                    if not await self._continue_kept(sandbox_id):
                        await self._restore_in_place(sandbox_id, record, paths.memory)
                except BaseException:
                    await self._stop_unresumed(sandbox_id)
                    raise
                # (a leftover of a reboot that failed, or was cut off, goes with its success)
                self._discard(paths.memory)
                self._discard(paths.files)
                return self._sandbox(record, SandboxStatus.RUNNING)
            if not paths.files.is_file():
                await self._files_of_memory(sandbox_id, record, paths)
            defaults = await self._boot_from_files(sandbox_id, record, paths)
            return dataclasses.replace(
                self._sandbox(record, SandboxStatus.RUNNING, defaults), rebooted=True
            )

    async def _stop_unresumed(self, sandbox_id: str) -> None:
        """After a resume that failed or was cut off part way (a restore whose sentry went on
        running, kept processes thawed): the sandbox is still paused, so nothing of it may
        run on, unseen and counted nowhere; its saved memory stays for the next resume."""
        with contextlib.suppress(Exception):
            await self._stop_processes(sandbox_id)
        with contextlib.suppress(Exception):
            if await self.runsc.delete(sandbox_id):
                self._deleted.add(sandbox_id)

    async def _continue_kept(self, sandbox_id: str) -> bool:
        """Run a paused sandbox's kept processes again (``kept.py``); False when it has none
        (a restore then starts it from its saved memory, stopping what is left first)."""
        if not self._unkeep(sandbox_id):  # (before the thaw: a resume cut off restores)
            return False
        group = self._cgroup(sandbox_id)
        cgroups.freeze(group, False)
        try:
            await self.runsc.resume(sandbox_id)
        except RunscError as exc:
            log.warning("sandbox %s: its kept processes did not resume (%s); restoring",
                        sandbox_id, exc)  # fmt: skip
            return False
        return True

    async def _save_files(
        self, record: SandboxRecord, paths: SandboxPaths, dest: Path | None = None,
        keep_running: bool = False,
    ) -> None:  # fmt: skip
        """Read what the running sandbox changed into ``dest`` (``paths.files``) with
        ``guest_files.save``, run by runsc beside envd, which need not answer. Its processes
        are stopped while it reads; they run on afterwards with ``keep_running``, and if it
        fails (then nothing is kept)."""
        sandbox_id = record.sandbox_id
        dest = dest or paths.files
        written = partial(dest)
        source = _GUEST_SNAPSHOT if keep_running else _GUEST_SAVE
        paths.saving.touch()  # until it is over: a node killed meanwhile lets them go again
        try:
            limit = str(record.disk_mb * 2**20)  # what its disk could hold
            code = await self.runsc.exec_to_file(
                sandbox_id, [*_guest(source), limit], written, paths.log, FILES_TIMEOUT_S
            )
            if code != 0:
                raise RunscError(f"saving the files of {sandbox_id} failed (exit {code}): "
                                 f"{await self.boot_log(sandbox_id)}")  # fmt: skip
        except BaseException:
            written.unlink(missing_ok=True)
            with contextlib.suppress(Exception):  # a save cut off leaves them stopped
                await self.runsc.exec_to_file(sandbox_id, _guest(_GUEST_CONT),
                                              Path(os.devnull), paths.log, 10)  # fmt: skip
            paths.saving.unlink(missing_ok=True)
            raise
        os.replace(written, dest)
        if keep_running:
            paths.saving.unlink(missing_ok=True)

    async def _files_of_memory(
        self, sandbox_id: str, record: SandboxRecord, paths: SandboxPaths
    ) -> None:
        """A sandbox paused with its memory holds its files in that image: restore it, save
        them, stop it. Its memory stays until the boot from the files succeeds."""
        try:
            await self._restore_in_place(sandbox_id, record, paths.memory)
            await self._save_files(record, paths)
        finally:
            await self._stop_processes(sandbox_id)
            await self.runsc.delete(sandbox_id)
            paths.saving.unlink(missing_ok=True)

    async def _boot_from_files(
        self, sandbox_id: str, record: SandboxRecord, paths: SandboxPaths
    ) -> EnvdDefaults:
        """Boot the sandbox's own bundle afresh, its PID 1 applying the saved files before it
        becomes the template's init; the files (and a memory image it had) go once envd
        answers. If the boot fails the sandbox is stopped and stays paused as it was."""
        lease = self._lease_of(sandbox_id, record)
        if lease is None:
            raise SandboxGone(f"sandbox {sandbox_id} has no network lease")
        if sandbox_id in self._deleted:
            self._deleted.discard(sandbox_id)
        else:
            await self._stop_processes(sandbox_id)
            await self.runsc.delete(sandbox_id)
        await network.readdress(lease)
        config_path = paths.bundle / "config.json"
        spec = json.loads(config_path.read_text())
        init = _unwrapped(spec["process"]["args"])
        spec["process"]["args"] = _booting(init)
        write_atomic(config_path, json.dumps(spec))
        spec["process"]["args"] = init
        original = json.dumps(spec)
        try:
            await self.runsc.run_detached(sandbox_id, paths.bundle, paths.log,
                                          filestore=paths.disk, overlay_binds=not record.volumes,
                                          stdin=paths.files)  # fmt: skip
            write_atomic(config_path, original)  # a later restore reads the bundle as made
            await self._files_applied(record)
        except BaseException:  # stopped: paused as it was
            write_atomic(config_path, original)
            await self._stop_processes(sandbox_id)
            await self.runsc.delete(sandbox_id)
            raise
        self._discard(paths.files)
        self._discard(paths.memory)
        values = _env_of(spec)
        try:  # its ready check, as at a create's boot (none if the template is gone since)
            ready_cmd = self.store.get(record.template_id).config.ready_cmd
        except TemplateError:
            ready_cmd = None
        return EnvdDefaults(
            user=values["EMBERBOX_DEFAULT_USER"],
            workdir=values["EMBERBOX_DEFAULT_WORKDIR"],
            env=_init_env(values, record.own_init_vars),
            ready_cmd=ready_cmd,
        )

    async def checkpoint(
        self,
        sandbox_id: str,
        snapshot_id: str,
        memory: bool = True,
        given_env: Mapping[str, str] | None = None,
    ) -> SnapshotRef:
        """Save the running sandbox to a snapshot directory of its own; it keeps running.
        Without ``memory`` only the files it changed are kept (``guest_files.py``): sandboxes
        start from them by booting, with the variables it had (:func:`_carried_env`)."""
        check_sandbox_id(snapshot_id)  # names a directory
        async with self._locks.hold(sandbox_id):
            record = await self._require(sandbox_id)
            self._no_volumes(record, "snapshotted or forked")
            if await self._status(sandbox_id) is not SandboxStatus.RUNNING:
                raise SandboxNotRunning(f"sandbox {sandbox_id} is not running")
            dest = self.config.snapshots_dir / snapshot_id
            image = partial(dest)
            if dest.exists():
                raise ValueError(f"snapshot {snapshot_id} already exists")
            shutil.rmtree(image, ignore_errors=True)
            image.mkdir(parents=True)
            try:
                paths = self._paths(sandbox_id)
                if memory:
                    await self.runsc.checkpoint(sandbox_id, image, paths.disk)
                else:
                    await self._save_files(record, paths, image / FILES_IMAGE,
                                           keep_running=True)  # fmt: skip
                about: dict[str, Any] = {
                    "source": sandbox_id,
                    "template_id": record.template_id,
                    "memory": memory,
                }
                if not memory:  # (one of memory holds them in envd)
                    about["env"] = _carried_env(self._boot_env(paths), self._template_env(record),
                                                given_env or {}, record.own_init_vars)  # fmt: skip
                (image / "snapshot.json").write_text(json.dumps(about))
            except BaseException:
                shutil.rmtree(image, ignore_errors=True)
                raise
            os.replace(image, dest)
        return SnapshotRef(snapshot_id, self.name, str(dest), record.template_id, _du(dest),
                           memory=memory)  # fmt: skip

    async def restore(self, sandbox_id: str, snapshot: SnapshotRef) -> RuntimeSandbox:
        """Roll the sandbox back: paused at ``snapshot`` first (its checkpoint linked in as the
        sandbox's saved memory), then resumed from there. A restore that fails, or a node
        killed meanwhile, leaves it paused at the snapshot, and a resume tries again: it is
        never lost."""
        if self._check_snapshot(snapshot) is not None:
            raise CapabilityMissing(
                f"snapshot {snapshot.snapshot_id} holds files only: a rollback to it is not "
                "supported (create a sandbox from it)"
            )
        async with self._locks.hold(sandbox_id):
            record = await self._require(sandbox_id)
            self._no_volumes(record, "rolled back")
            paths = self._paths(sandbox_id)
            if paths.paused():
                # Paused (by a pause that got the lock first): a rollback now would run it
                # again while its owner records it paused. Its callers refuse paused sandboxes.
                raise SandboxNotRunning(f"sandbox {sandbox_id} is paused")
            await asyncio.to_thread(_link_tree, Path(snapshot.path), paths.rollback)
            os.replace(paths.rollback, paths.memory)  # from here on it counts as paused
            try:
                try:
                    await self._restore_in_place(sandbox_id, record, paths.memory)
                except RunscError as exc:
                    if not sentry_died(exc):
                        raise
                    log.warning("sandbox %s: its sentry died restoring %s; trying once more",
                                sandbox_id, snapshot.snapshot_id)  # fmt: skip
                    await self._restore_in_place(sandbox_id, record, paths.memory)
            except BaseException:
                with contextlib.suppress(Exception):  # paused: nothing of it may run on
                    await self._stop_processes(sandbox_id)
                with contextlib.suppress(Exception):
                    await self.runsc.delete(sandbox_id)
                raise
            self._discard(paths.memory)
            return self._sandbox(record, SandboxStatus.RUNNING)

    async def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        self._check_snapshot(snapshot)
        await asyncio.to_thread(shutil.rmtree, snapshot.path, True)

    async def snapshots(self) -> builtins.list[SnapshotRef]:
        return await asyncio.to_thread(self._snapshots)

    def _snapshots(self) -> builtins.list[SnapshotRef]:
        """The snapshot directories a checkpoint finished (renamed from its partial name once
        its snapshot.json was written), as :meth:`checkpoint` described them."""
        found = []
        root = self.config.snapshots_dir
        for path in sorted(root.iterdir()) if root.exists() else []:
            if not is_sandbox_id(path.name):
                continue  # a partial one (``<id>.partial``), or not ours
            try:
                about = json.loads((path / "snapshot.json").read_text())
            except (OSError, ValueError):
                continue  # not a checkpoint this runtime wrote
            found.append(SnapshotRef(path.name, self.name, str(path), about["template_id"],
                                     _du(path), memory=about["memory"]))  # fmt: skip
        return found

    async def update_network(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace a running or paused sandbox's egress rules in place (one nft transaction);
        its resolv.conf is not rewritten (a process may hold it open)."""
        rules = rules_of(policy)
        async with self._locks.hold(sandbox_id):
            record = await self._require(sandbox_id)
            lease = self._lease_of(sandbox_id, record)
            if lease is None or not self.pool.owns(lease):
                raise SandboxGone(f"sandbox {sandbox_id} has no network lease")
            await self.egress.ready()
            await network.apply_rules(lease, rules, record.node_dns)
            self.egress.remember(lease.guest_ip, rules, record.node_dns)
            record.egress = saved_policy(policy) if judged(rules, record.node_dns) else None
            record.save(self._paths(sandbox_id).root)

    def egress_ca(self) -> bytes:
        return self.egress.ca.pem()

    async def egress_log(
        self, sandbox_id: str, after: int, limit: int
    ) -> tuple[list[EgressEvent], int | None]:
        await self._require(sandbox_id)
        return self.egress.journal.read(sandbox_id, after, limit)

    def _saved_policies(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The policies of sandboxes a previous node process made, from their records (only
        those still holding their lease: a leftover record may name a reused address)."""
        if not self.config.sandboxes_dir.exists():
            return
        for root in self.config.sandboxes_dir.iterdir():
            record = SandboxRecord.load(root)
            if record is None or not record.address or not record.egress:
                continue
            lease = self._lease_of(record.sandbox_id, record)
            if lease is not None and self.pool.owns(lease):
                yield record.address, record.egress

    def _check_snapshot(self, snapshot: SnapshotRef) -> Path | None:
        """A snapshot path comes over the wire: only our own snapshot directories are used.
        Returns its files when it holds no memory (a filesystem-only snapshot)."""
        path = Path(snapshot.path)
        if path.parent != self.config.snapshots_dir or path.name != snapshot.snapshot_id:
            raise ValueError(f"{snapshot.path} is not a snapshot of this node")
        if (path / FILES_IMAGE).is_file():
            return path / FILES_IMAGE
        if not (path / "checkpoint.img").is_file():
            raise SandboxGone(f"snapshot {snapshot.snapshot_id} is not on this node")
        return None

    async def _restore_in_place(self, sandbox_id: str, record: SandboxRecord, image: Path) -> None:
        """Start the sandbox's own bundle (netns, disk, mounts, cgroup) from ``image``."""
        lease = self._lease_of(sandbox_id, record)
        if lease is None:
            raise SandboxGone(f"sandbox {sandbox_id} has no network lease")
        paths = self._paths(sandbox_id)
        if sandbox_id in self._deleted:
            self._deleted.discard(sandbox_id)
        else:  # fine if runsc has no record; cheaper than asking first (runsc state)
            await self._stop_processes(sandbox_id)
            await self.runsc.delete(sandbox_id)
        await network.readdress(lease)
        await self.runsc.restore(sandbox_id, paths.bundle, image, paths.log, paths.disk,
                                 overlay_binds=not record.volumes)  # fmt: skip

    async def list(self) -> list[RuntimeSandbox]:
        out: list[RuntimeSandbox] = []
        if not self.config.sandboxes_dir.exists():
            return out
        for directory in sorted(self.config.sandboxes_dir.iterdir()):
            record = SandboxRecord.load(directory)
            if record is None or record.external_upper:
                continue
            try:
                status = await self._status(record.sandbox_id)
            except RuntimeError_:
                status = SandboxStatus.RUNNING  # runsc could not tell: unknown is not dead
            # Only a stopped sandbox needs its end reason: the dead check lists every 2 s.
            oom = status is SandboxStatus.STOPPED and self._oom_killed(record.sandbox_id)
            out.append(self._sandbox(record, status, oom_killed=oom))
        return out

    async def get(self, sandbox_id: str) -> RuntimeSandbox:
        record = await self._require(sandbox_id)
        status = await self._status(sandbox_id)
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

    def host_hints(self) -> builtins.list[str]:
        if cgroups.moves_wait_for_grace_periods():
            return ["RCU grace periods are not expedited: each sandbox start, restore and "
                    "resume waits ~20-40 ms longer for runsc's cgroup moves "
                    f"(scripts/host-rcu.sh writes 1 to {cgroups.RCU_EXPEDITED})"]  # fmt: skip
        return []

    async def cleanup_orphans(self, keep: Sequence[str]) -> builtins.list[str]:
        """Release everything of ours on this host that is not a sandbox in ``keep``."""
        await self.egress.ready()  # the gateway kept sandboxes' domain rules depend on
        keep_set = set(keep)
        found: set[str] = set()
        if self.config.sandboxes_dir.exists():
            found |= {p.name for p in self.config.sandboxes_dir.iterdir()}
        found |= set(cgroups.existing(self.config.cgroup_base))
        for sandbox_id in found - keep_set:  # (a pooled one the last process froze)
            if cgroups.frozen(self._cgroup(sandbox_id)):  # runsc list would wait for it
                cgroups.freeze(self._cgroup(sandbox_id), False)
        found |= set(await self.runsc.list_ids())
        instance = self.config.instance
        prefix = network.netns_prefix(instance)
        found |= {n.removeprefix(prefix) for n in await network.list_netns(instance)}
        found |= {lease.sandbox_id for lease in self.pool.leases()}
        self.pool.sweep_cut_claims()
        for sandbox_id in sorted(keep_set):
            await self._finish_cut_save(sandbox_id)
            limit_whole = self._finish_cut_offload(sandbox_id)
            await self._finish_cut_resume(sandbox_id, adopt=limit_whole)
        for cut in self.config.snapshots_dir.glob(f"*{PARTIAL_SUFFIX}"):  # snapshots cut off
            await asyncio.to_thread(shutil.rmtree, cut, True)
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
        await network.remove_stray_rules(instance, self.config.network, leased)
        for sandbox_id in self.egress.journal.sandboxes():  # logs of those gone while we were not
            if not (self.config.sandboxes_dir / sandbox_id).exists():
                self.egress.journal.remove(sandbox_id)
        return removed

    def _finish_cut_offload(self, sandbox_id: str) -> bool:
        """A node killed in the middle of an offload step left the sandbox's memory limit
        lowered (v1) or its swap open (v2): set both as its boot did. False if that failed."""
        record = SandboxRecord.load(self._paths(sandbox_id).root)
        group = self._cgroup(sandbox_id)
        if record is not None and cgroups.usage(group) is not None:
            try:
                cgroups.set_memory_limit(group, host_memory_limit(record.memory_mb))
            except OSError as exc:  # (it stopped meanwhile: nothing to set back)
                log.warning("sandbox %s: setting its memory limit back: %s", sandbox_id, exc)
                return False
        return True

    async def _finish_cut_save(self, sandbox_id: str) -> None:
        """A node killed while a pause checkpointed a sandbox left the half-written image and
        the sandbox's kernel paused (``runsc pause`` before the checkpoint): it runs on,
        unpaused, and the image goes. One killed while a save read its files left its
        processes stopped (the save's runsc exec lets them go only when it fails, or for a
        snapshot): let them go, unless the sandbox was paused with its files after all."""
        paths = self._paths(sandbox_id)
        await asyncio.to_thread(shutil.rmtree, paths.rollback, True)  # a rollback's, cut off
        image = partial(paths.memory)
        if image.exists() and not paths.paused():
            log.warning("sandbox %s: a pause was cut off; it runs on", sandbox_id)
            with contextlib.suppress(RunscError):  # (it may not have been paused yet)
                await self.runsc.resume(sandbox_id)
        await asyncio.to_thread(shutil.rmtree, image, True)
        if not paths.saving.exists():
            return
        if not paths.paused() and await self._status(sandbox_id) is SandboxStatus.RUNNING:
            log.warning("sandbox %s: a save of its files was cut off; its processes run on",
                        sandbox_id)  # fmt: skip
            with contextlib.suppress(Exception):
                await self.runsc.exec_to_file(sandbox_id, _guest(_GUEST_CONT),
                                              Path(os.devnull), paths.log, 10)  # fmt: skip
        partial(paths.files).unlink(missing_ok=True)
        paths.saving.unlink(missing_ok=True)

    async def _finish_cut_resume(self, sandbox_id: str, adopt: bool = True) -> None:
        """A node killed while it resumed a sandbox left it paused (its saved memory or files
        go only once it runs: a boot from files waits for envd to apply them), but what the
        boot had started runs on without the node, holding memory the sandbox should not;
        unless they are the processes a node kept for a fast resume, which this one keeps
        (``_adopt_kept``; not with ``adopt`` False: its memory limit could not be set). The
        control plane records it paused, as the node reports it: stop what runs, and a resume
        starts it again from what was saved."""
        if not self._paths(sandbox_id).paused():
            return
        if not cgroups.procs(self._cgroup(sandbox_id)):
            return
        if adopt and self._adopt_kept(sandbox_id):
            return
        log.warning("sandbox %s is paused; stopping the processes left of it", sandbox_id)
        await self._stop_processes(sandbox_id)
        await self.runsc.delete(sandbox_id)

    def _adopt_kept(self, sandbox_id: str) -> bool:
        """Keep the processes the last node kept of a paused sandbox (its ``kept`` mark, set
        once they were frozen and the saved memory whole, dropped before a resume thaws them)
        for the rest of their keep; False if there are none or this node keeps none. In swap
        by the offload's measure, or resident for a new ``resident_s`` at most: this node's
        offloads count their idle time from its start."""
        paths, group = self._paths(sandbox_id), self._cgroup(sandbox_id)
        try:
            paused_at = paths.kept.stat().st_mtime
        except FileNotFoundError:
            return False
        used = cgroups.usage(group)
        if not (paths.memory.is_dir() and cgroups.frozen(group) and used and self.kept.may_keep()):
            return False
        now = time.monotonic()
        self.kept.keep(sandbox_id, now=now - max(0.0, time.time() - paused_at), resident_from=now)
        if used.mem_used < OFFLOADED_BELOW_BYTES:
            self.kept.swapped(sandbox_id)
        log.info("sandbox %s: keeping the processes the last node kept paused", sandbox_id)
        return True

    def template_version(self, template_id: str) -> str | None:
        try:
            return self.store.get(template_id).id
        except (TemplateError, OSError, ValueError):  # gone, or unreadable: unknown
            return None

    # -- internals -------------------------------------------------------------------------

    def _template(self, name: str) -> Template:
        try:
            return self.store.get(name)
        except TemplateError as exc:
            raise UnknownTemplate(str(exc)) from None

    async def _prepare(
        self,
        spec: SandboxSpec,
        template: Template,
        upper: Path | None = None,
        carried: Collection[str] = (),
    ) -> tuple[SandboxPaths, SandboxRecord]:
        """Network, disk and root filesystem; on failure nothing is left behind. ``carried``:
        the variables its snapshot carried (with ``spec.envs``, the sandbox's own)."""
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
            volumes=bool(spec.volumes),
            own_init_vars=sorted(k for k in _INIT_ONLY if k in spec.envs or k in carried),
        )
        record.save(paths.root)
        try:
            await self.egress.ready()
            lease = self.pool.claim(spec.sandbox_id)
            record.lease_index, record.address = lease.index, lease.guest_ip
            rules = rules_of(spec.network)
            # With domain entries its resolv.conf names the node, which then answers its DNS
            # for as long as it lives, whatever later updates say.
            record.node_dns = bool(rules.domains or rules.rewrites)
            record.egress = saved_policy(spec.network) if judged(rules, record.node_dns) else None
            record.save(paths.root)

            async def filesystems() -> None:
                if upper is None:
                    # Sandboxes: a read-only view of the layers; gVisor's overlay takes the
                    # writes into a file on the size-limited disk. Read-only files can then be
                    # mapped from the host page cache, shared by every sandbox of the template.
                    await rootfs.make_disk(paths.disk_image, paths.disk, spec.disk_mb,
                                          self.config.formatted_disks_dir)  # fmt: skip
                    await rootfs.mount_lower([*layers, *self._mount_points(spec, paths, layers)],
                                             paths.rootfs)  # fmt: skip
                else:
                    # Template builds: kernel overlayfs, so the writes form a directory tree.
                    await rootfs.mount_root(layers, upper, paths.rootfs)

            # Independent host work, each a few subprocesses: together, not one after the other.
            await concurrently(network.setup(lease, rules, record.node_dns), filesystems())
            self.egress.remember(lease.guest_ip, rules, record.node_dns)
            self._write_etc(spec, template, paths, lease.host_ip)
        except BaseException:
            await self._teardown(spec.sandbox_id)
            raise
        return paths, record

    def _write_etc(
        self, spec: SandboxSpec, template: Template, paths: SandboxPaths, host_ip: str
    ) -> None:
        paths.etc.mkdir(exist_ok=True)
        sid = spec.sandbox_id
        (paths.etc / "hostname").write_text(f"{sid}\n")
        (paths.etc / "hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{GUEST_HOSTNAME} {sid}\n"
        )
        (paths.etc / "resolv.conf").write_text(resolv_conf(rules_of(spec.network), host_ip))
        (paths.etc / "e2b").write_text(
            f"ENV_ID={spec.template_id}\nTEMPLATE_ID={spec.template_id}\n"
            f"BUILD_ID={template.id[:32]}\nSANDBOX_ID={sid}\n"
        )

    def _guest_env(
        self, spec: SandboxSpec, template: Template, carried: Mapping[str, str]
    ) -> dict[str, str]:
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
        env.update(carried)
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
        tmp: Path | None = None,
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
                hostname=GUEST_HOSTNAME,
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
                tmp=tmp,
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
        paused = status is SandboxStatus.PAUSED
        return RuntimeSandbox(
            sandbox_id=record.sandbox_id,
            template_id=record.template_id,
            address=record.address or "",
            envd_port=ENVD_PORT,
            status=status,
            oom_killed=oom_killed,
            defaults=defaults,
            paused_bytes=_saved_bytes(self._paths(record.sandbox_id)) if paused else 0,
            kept_memory=not paused or self._paths(record.sandbox_id).memory.is_dir(),
        )

    def _oom_killed(self, sandbox_id: str) -> bool:
        """Whether the host's OOM killer or the guest's (``envd/guest/oom.py``, which logs
        each kill) ever killed in this sandbox; reads its log, so not for every listing."""
        usage = cgroups.usage(self._cgroup(sandbox_id))
        log = self._paths(sandbox_id).log
        guest_kills = count_kills(log.read_text(errors="replace")) if log.exists() else 0
        return bool(usage and usage.oom_kills) or guest_kills > 0


def _link_tree(source: Path, dest: Path) -> None:
    """``source``'s files at ``dest``: hard links (no time, no disk; restores only read them),
    copies where links cannot be made. Nothing at ``dest`` when it fails."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(source, dest, copy_function=os.link)
        return
    except (shutil.Error, OSError):
        shutil.rmtree(dest, ignore_errors=True)
    if not source.is_dir():
        raise SandboxGone(f"snapshot {source.name} is not on this node")
    try:
        shutil.copytree(source, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _saved_bytes(paths: SandboxPaths) -> int:
    """Disk a paused sandbox's saved state takes: its memory, or its files."""
    try:
        return _du(paths.memory) if paths.memory.is_dir() else paths.files.stat().st_blocks * 512
    except FileNotFoundError:  # (resumed meanwhile)
        return 0


def _du(path: Path) -> int:
    """Bytes the files under ``path`` take on disk."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _template_dir(layers: Sequence[Path], sub: Path) -> os.stat_result | None:
    """The topmost layer's directory at ``sub``, if the template has one there."""
    for layer in reversed(layers):
        try:
            st = os.lstat(layer / sub)
        except (FileNotFoundError, NotADirectoryError):
            continue
        return st if stat.S_ISDIR(st.st_mode) else None
    return None


def _status(state: Mapping[str, object] | None) -> SandboxStatus:
    if state is None:
        return SandboxStatus.STOPPED
    status = str(state.get("status"))
    # "creating"/"created" are the moments of runsc run before it returns: not dead yet;
    # "paused" (``runsc pause``) a pause under way (``GVisorRuntime._status``).
    if status in ("running", "creating", "created", "paused"):
        return SandboxStatus.RUNNING
    return SandboxStatus.STOPPED
