"""Owns what exists on this host: starts sandboxes and brings their envd into service, kills
them, notices the ones that died on their own, and after its own restart adopts what still
runs and removes what does not.

Everything done to one sandbox id runs under that id's lock, so a kill from the API, an
orphan kill from the control plane's reconciler and this node's dead-sandbox check can
overlap without ever tearing a sandbox down twice. End times are not kept here: the control
plane's database owns them, and a paused sandbox is never killed behind its back.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
import logging
import secrets
import signal
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..envd_client.client import EnvdClient
from ..envd_client.handshake import (
    Greeting,
    HandshakeFailed,
    handshake,
    prime_standbys,
    wait_healthy,
    wait_ready,
)
from ..envd_client.http import sandbox_http
from ..host import commands, processes
from ..host.locks import KeyedLock
from ..runtimes.base import (
    CapabilityMissing,
    Runtime,
    RuntimeSandbox,
    SandboxGone,
    SandboxSpec,
    SandboxStats,
    SandboxStatus,
    SnapshotRef,
)
from ..vocabulary import IDENTITY_VARS, STANDBY_SHELLS, new_sandbox_id
from .offload import Offloader, OffloadSettings
from .pool import PoolKey, PoolSettings, WarmPool
from .records import RecordStore, SandboxRecord

log = logging.getLogger("emberbox.node")

# Where a sandbox with header rules gets the egress gateway's CA: Debian's system bundle, the
# one OpenSSL (curl, Python's ssl, git) reads, and the file beside it that names our CA.
EGRESS_BUNDLE_DIR = "/etc/ssl/certs"
EGRESS_BUNDLE = f"{EGRESS_BUNDLE_DIR}/ca-certificates.crt"
EGRESS_CA_PATH = "/usr/local/share/ca-certificates/emberbox-egress.crt"
ENDED_KEPT = 10_000  # how many end reasons the node remembers for the control plane
# A claim's /init (a create with env vars of its own) runs while the control plane holds its
# admission lock, and a pooled envd answered an /init once already (~10 ms): one that takes
# longer than this is released and the create restores a sandbox instead, rather than stall
# every other admission for a boot timeout.
CLAIM_INIT_TIMEOUT_S = 3.0
# A pooled sandbox is frozen (``Runtime.freeze``: no CPU while it waits) this long after it
# joined the pool, once the standby shells its priming used up have been replaced (a login
# takes ~0.1 s in gVisor); it can be claimed meanwhile.
POOLED_FREEZE_AFTER_S = 1.0


class SandboxNotFound(LookupError):
    """No sandbox with this id is held by this node."""


class SandboxExists(ValueError):
    """A create named an id this node already holds."""


class BootFailed(RuntimeError):
    """The machine started but envd never came into service; carries the machine's log."""


@dataclass(frozen=True)
class RecoveryReport:
    adopted: list[str]
    removed: list[str]


class Orchestrator:
    """**Parameters:** runtime - the node's runtime; state_dir - where records live (on the
    same host as the runtime's state); boot_timeout_s - how long envd may take to answer;
    dead_check_every_s - how often sandboxes that stopped on their own are looked for;
    pool - the warm pool's sizes (``pool.py``; off unless given); offload - when idle
    sandboxes' memory goes to swap (``offload.py``)."""

    def __init__(
        self,
        runtime: Runtime,
        state_dir: Path,
        *,
        boot_timeout_s: float = 30.0,
        dead_check_every_s: float = 2.0,
        pool: PoolSettings | None = None,
        offload: OffloadSettings | None = None,
    ) -> None:
        self.runtime = runtime
        self.records = RecordStore(state_dir / "sandboxes")
        self.boot_timeout_s = boot_timeout_s
        self.dead_check_every_s = dead_check_every_s
        self.ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        # Teardowns per id, of the last ENDED_KEPT ids released (tests count them).
        self.releases: collections.Counter[str] = collections.Counter()
        self._held: dict[str, SandboxRecord] = {}
        # The access token each pooled sandbox's envd was given as it was pooled (never on
        # disk: a pooled sandbox does not outlive this process).
        self._pool_tokens: dict[str, str] = {}
        # What each pooled sandbox's template held as it started (``template_version``).
        self._pool_versions: dict[str, str | None] = {}
        self._locks = KeyedLock()
        self._checker: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._reaping = False
        self._background: set[asyncio.Task[None]] = set()  # pooled sandboxes' freezes, releases
        self.pool = WarmPool(pool or PoolSettings(size=0), self._start_pooled, self._release_pooled)
        self.offloader = Offloader(
            runtime, offload or OffloadSettings(), self._held, self._locks, self._release_locked
        )
        self._sweeper: asyncio.Task[None] | None = None

    # -- start-up / shutdown ---------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Adopt live sandboxes whose creation completed; remove everything else (half-created,
        dead, or unknown to us); then start looking for sandboxes that die on their own."""
        self.offloader.settings.check_host()
        # No keep-alive: a later sandbox may reuse an address, and a pooled connection to a
        # dead envd would fail its first request.
        self._http = sandbox_http(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0))
        records = self.records.load_all()
        live = {s.sandbox_id: s for s in await self.runtime.list()}
        adopted, removed = [], []
        for sandbox_id, record in records.items():
            sandbox = live.get(sandbox_id)
            # "creating": the previous process died inside create(); nobody ever got this id.
            # "pooled": started ahead for a claim that the previous process can no longer give.
            if (
                sandbox is None
                or sandbox.status is SandboxStatus.STOPPED
                or record.state in ("creating", "pooled")
            ):
                try:
                    async with self._locks.hold(sandbox_id):
                        await self._release_locked(sandbox_id, "exited")
                except Exception:  # its record stays: the next start tries again
                    log.exception("removing %s at start-up failed", sandbox_id)
                    continue
                removed.append(sandbox_id)
                continue
            if sandbox.status is SandboxStatus.PAUSED:
                # (a pause or rollback the previous process did not live to record counts too,
                # and so does a save of another kind than the record's: a files-only re-pause)
                if not record.paused_bytes or record.kept_memory != sandbox.kept_memory:
                    record.paused_bytes = sandbox.paused_bytes or record.paused_bytes
                record.state, record.kept_memory = "paused", sandbox.kept_memory
            else:
                record.state = "running"
            self.records.save(record)
            self._held[sandbox_id] = record
            adopted.append(sandbox_id)
        removed += await self.runtime.cleanup_orphans(keep=adopted)
        if self.runtime.orphan_names and processes.become_subreaper():
            asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self._reap)
            self._reaping = True
        if self.dead_check_every_s > 0:
            self._checker = asyncio.create_task(self._check_forever(), name="node-dead-check")
        if self.offloader.settings.idle_s > 0:
            self._sweeper = asyncio.create_task(
                self.offloader.sweep_forever(), name="node-idle-offload"
            )
        for hint in self.runtime.host_hints():
            log.warning("%s", hint)
        log.info("node started: adopted %s, removed %s", adopted, removed)
        return RecoveryReport(sorted(adopted), sorted(set(removed)))

    def _reap(self) -> None:
        processes.reap_orphans(self.runtime.orphan_names, commands.SPAWNED)

    async def close(self) -> None:
        """Stop checking; sandboxes keep running (they outlive the node process), except the
        warm pool's, which nobody owns once this process is gone."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for task in self._background:
            if task.get_name().startswith("freeze-"):
                task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pool.close()
        await self.runtime.close()
        if self._reaping:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
            self._reaping = False
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- lifecycle -------------------------------------------------------------------------

    async def create(
        self, spec: SandboxSpec, access_token: str = "", previous_token: str = ""
    ) -> SandboxRecord:
        """Start the machine, then envd's one handshake; on any failure nothing is left.

        ``previous_token`` is the token envd holds when it starts from a checkpoint."""
        async with self._locks.hold(spec.sandbox_id):
            if spec.sandbox_id in self._held:
                raise SandboxExists(f"sandbox {spec.sandbox_id} already exists on this node")
            record = SandboxRecord(spec.sandbox_id, spec.template_id, time.time(),
                                   volumes=[v.volume_id for v in spec.volumes])  # fmt: skip
            self.records.save(record)  # before any resource exists: a crash now is recoverable
            self._held[spec.sandbox_id] = record
            try:
                sandbox = await self.runtime.create(spec)
                # A restored envd's vars (its source's) stay over the template's, not over
                # this sandbox's identity and its create's own.
                own = {*IDENTITY_VARS, *spec.envs}
                greeting = await self._handshake(sandbox, access_token, previous_token, own=own)
                if spec.network.rewrites:
                    await self._install_egress_ca(sandbox.envd_url, access_token)
                    record.trusts_egress_ca = True
            except BaseException:
                await self._release_after_failure(spec.sandbox_id, "create failed")
                raise
            record.state = "running"
            record.envd_url, record.host = sandbox.envd_url, sandbox.address
            record.envd_version = greeting.version
            # A restored sandbox's own boot from its files must see them too (docs/stateful.md).
            record.envs = dict(greeting.inherited_env)
            self.records.save(record)
            return record

    async def claim(self, spec: SandboxSpec) -> tuple[SandboxRecord, str] | None:
        """A pooled sandbox fitting ``spec``, handed over: its record and the access token its
        envd holds. None when none is ready (or none of those taken could be handed over:
        each is released): the caller then creates a sandbox of its own.

        It was given its identity as it was pooled (its id, the template's env and defaults, a
        token of its own, the clock), so it is taken as it is, or after one ``/init`` when
        ``spec`` brings env vars of its own (on the template's)."""
        pooled = self.pool.claim(spec)
        while pooled is not None:
            try:
                handed = await self._hand_over(pooled, spec)
            except asyncio.CancelledError:  # out of the pool, handed to nobody: release it
                self._in_background(self._release_pooled(pooled.sandbox_id), "release")
                raise
            if handed is not None:
                return handed
            pooled = self.pool.claim(spec, again=True)
        return None

    async def _hand_over(
        self, pooled: RuntimeSandbox, spec: SandboxSpec
    ) -> tuple[SandboxRecord, str] | None:
        async with self._locks.hold(pooled.sandbox_id):
            record = self._held.get(pooled.sandbox_id)
            if record is None:
                return None
            now = self.runtime.template_version(pooled.template_id)
            if self._pool_versions.get(pooled.sandbox_id) != now:
                # Its template was rebuilt (or deleted) since: its files are the old build's.
                # It, and those of its key pooled before the rebuild, go in the background:
                # the create starts its own rather than wait for their teardowns.
                older = self.pool.take_where(
                    spec, lambda other: self._pool_versions.get(other) != now
                )
                for stale in [pooled.sandbox_id, *older]:
                    self._in_background(self._release_pooled(stale), "release")
                return None
            token = self._pool_tokens.pop(pooled.sandbox_id, "")
            self._pool_versions.pop(pooled.sandbox_id, None)
            # Not written to disk: a restart releases a "pooled" record as it would a
            # "creating" one, and the write cost a claim ~1.3 ms (a rename over the file).
            record.state = "creating"
            defaults = dataclasses.replace(
                pooled.defaults, env={**pooled.defaults.env, **spec.envs}, ready_cmd=None
            )
            try:
                await self.runtime.thaw(pooled.sandbox_id)
                if not token:  # its pooling never finished its /init
                    raise BootFailed(f"pooled sandbox {pooled.sandbox_id} holds no token")
                if spec.envs:
                    await self._handshake(
                        dataclasses.replace(pooled, defaults=defaults),
                        token,
                        previous_token=token,
                        known_version=record.envd_version,
                        inherit_env=False,  # the template's, which ``defaults`` holds
                        timeout_s=CLAIM_INIT_TIMEOUT_S,
                    )
                elif self.runtime.known_stopped(pooled.sandbox_id):  # /init would have failed
                    raise BootFailed(f"pooled sandbox {pooled.sandbox_id} stopped while pooled")
            except BaseException as exc:
                await self._release_after_failure(pooled.sandbox_id, "pooled handshake failed")
                if not isinstance(exc, Exception):
                    raise
                log.warning("pooled sandbox %s failed its handshake: %s", pooled.sandbox_id, exc)
                return None
            record.state = "running"
            self.offloader.started(pooled.sandbox_id)
            record.created_at = time.time()
            record.envd_url, record.host = pooled.envd_url, pooled.address
            record.envs = dict(spec.envs)
            self.records.save(record)
            return record, token

    async def _start_pooled(self, key: PoolKey) -> RuntimeSandbox:
        """One sandbox for the pool: started, envd healthy, the template's ready check
        passed, its ``/init`` with a token of its own (so most claims need no round trip into
        the sandbox, see :meth:`claim`), then standby login shells started in it."""
        assert self._http is not None, "node not started"
        sandbox_id = new_sandbox_id()
        async with self._locks.hold(sandbox_id):
            record = SandboxRecord(sandbox_id, key.template_id, time.time(), state="pooled")
            self.records.save(record)
            self._held[sandbox_id] = record
            # Before the create: a build landing during it then leaves it marked older.
            version = self.runtime.template_version(key.template_id)
            try:
                sandbox = await self.runtime.create(key.spec(sandbox_id))
                record.envd_version = await self._serving(sandbox)
                if sandbox.defaults.ready_cmd:
                    await wait_ready(
                        sandbox.envd_url, sandbox.defaults.ready_cmd, self.boot_timeout_s
                    )
                token = secrets.token_urlsafe(32)
                defaults = dataclasses.replace(sandbox.defaults, ready_cmd=None)  # it passed
                await self._handshake(dataclasses.replace(sandbox, defaults=defaults), token,
                                      known_version=record.envd_version)  # fmt: skip
                self._pool_tokens[sandbox_id] = token
                self._pool_versions[sandbox_id] = version
                # One command per standby shell: those a restore brought back from the template's
                # snapshot are used up here, so a claim's first command takes a shell started in
                # this sandbox (a restored one's first run is slower, docs/stateful.md).
                await prime_standbys(sandbox.envd_url, defaults.user, defaults.workdir, token,
                                     commands=STANDBY_SHELLS)  # fmt: skip
            except BaseException:
                await self._release_after_failure(sandbox_id, "pool start failed")
                raise
            record.envd_url, record.host = sandbox.envd_url, sandbox.address
            self.records.save(record)
        self._in_background(self._freeze_pooled(sandbox_id), f"freeze-{sandbox_id}")
        return sandbox

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _freeze_pooled(self, sandbox_id: str) -> None:
        """Freeze a pooled sandbox that is still unclaimed: it waits at no CPU cost until
        ``_hand_over`` thaws it. Under its lock, so a claim never finds it half frozen."""
        await asyncio.sleep(POOLED_FREEZE_AFTER_S)
        async with self._locks.hold(sandbox_id):
            record = self._held.get(sandbox_id)
            if record is None or record.state != "pooled":
                return  # claimed or released meanwhile
            try:
                await self.runtime.freeze(sandbox_id)
            except Exception as exc:  # it stays pooled, running: only its idle cost is lost
                log.warning("freezing pooled sandbox %s failed: %s", sandbox_id, exc)
        await self.offloader.behind(self.pool.waiting_behind(sandbox_id))

    async def _release_pooled(self, sandbox_id: str) -> None:
        async with self._locks.hold(sandbox_id):
            record = self._held.get(sandbox_id)
            if record is not None and record.state == "pooled":
                await self._release_locked(sandbox_id, "pool released")

    async def _handshake(
        self,
        sandbox: RuntimeSandbox,
        access_token: str,
        previous_token: str = "",
        known_version: str = "",
        inherit_env: bool = True,
        timeout_s: float | None = None,
        own: Collection[str] | None = None,
    ) -> Greeting:
        assert self._http is not None, "node not started"
        try:
            return await handshake(
                self._http,
                sandbox.envd_url,
                sandbox.defaults,
                access_token,
                timeout_s=timeout_s or self.boot_timeout_s,
                alive=lambda: self.runtime.alive(sandbox.sandbox_id),
                previous_token=previous_token,
                known_version=known_version,
                inherit_env=inherit_env,
                own=own,
            )
        except HandshakeFailed as exc:
            tail = await self.runtime.boot_log(sandbox.sandbox_id)
            raise BootFailed(f"sandbox {sandbox.sandbox_id}: {exc}\n{tail}".rstrip()) from None

    async def trust_egress_ca(self, sandbox_id: str, access_token: str) -> None:
        """Make a running sandbox trust the egress gateway's CA (header rules are coming)."""
        record = self._held.get(sandbox_id)
        if record is None:
            raise SandboxNotFound(sandbox_id)
        if record.trusts_egress_ca:
            return
        if record.state != "running":
            raise CapabilityMissing(
                f"sandbox {sandbox_id} is {record.state}: header rules are added while it runs"
            )
        await self._install_egress_ca(record.envd_url, access_token)
        record.trusts_egress_ca = True
        self.records.save(record)

    async def _install_egress_ca(self, envd_url: str, access_token: str) -> None:
        """Add the gateway's CA to the guest's system trust store (the bundle OpenSSL, curl
        and Python's ``ssl`` read), once; a failure fails the create or the update."""
        assert self._http is not None, "node not started"
        pem = self.runtime.egress_ca()
        envd = EnvdClient(envd_url, access_token, http=self._http)
        await envd.write_file(EGRESS_CA_PATH, pem, user="root")
        first_line = pem.decode().splitlines()[1]
        result = await envd.run(
            f"mkdir -p {EGRESS_BUNDLE_DIR} && touch {EGRESS_BUNDLE} && "
            f"(grep -qxF '{first_line}' {EGRESS_BUNDLE} || "
            f"cat {EGRESS_CA_PATH} >> {EGRESS_BUNDLE})",
            user="root",
        )
        if result.exit_code != 0:
            raise BootFailed(f"could not install the egress CA: {result.text}")

    async def kill(self, sandbox_id: str) -> bool:
        """Release the sandbox; False when this node held nothing under that id.

        An id the node does not hold is still handed to the runtime (under the same lock):
        leftovers of a crashed create or of another process are removed, never ignored.
        """
        async with self._locks.hold(sandbox_id):
            if sandbox_id in self._held:
                await self._release_locked(sandbox_id, "killed")
                return True
            with contextlib.suppress(SandboxGone):
                return await self.runtime.kill(sandbox_id)
            return False

    async def pause(self, sandbox_id: str, memory: bool = True) -> int:
        """Returns the disk what was saved takes (without ``memory``: only the files)."""
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            size = await self.runtime.pause(sandbox_id, memory=memory)
            record.state, record.paused_bytes, record.kept_memory = "paused", size, memory
            self.offloader.forget(sandbox_id)  # processes it keeps count idle from the pause
            self.records.save(record)
            return size

    async def resume(
        self, sandbox_id: str, memory: bool = True, access_token: str = ""
    ) -> tuple[SandboxRecord, bool]:
        """Run it again; True when it was booted afresh from its files (without ``memory``,
        or paused without it), its envd then given ``access_token`` as at create."""
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            sandbox = await self.runtime.resume(sandbox_id, memory=memory)
            if sandbox.rebooted:
                env = {**sandbox.defaults.env, **record.envs}
                defaults = dataclasses.replace(sandbox.defaults, env=env)
                sandbox = dataclasses.replace(sandbox, defaults=defaults)
                try:
                    record.envd_version = (await self._handshake(sandbox, access_token)).version
                except BaseException:
                    # Paused again with its files, so a later resume can try again; what
                    # cannot be saved stays running and the control plane learns of it.
                    with contextlib.suppress(Exception):
                        size = await self.runtime.pause(sandbox_id, memory=False)
                        record.paused_bytes = size  # (what it saved this time)
                        record.kept_memory = False
                        self.records.save(record)
                    raise
            else:
                try:
                    await self._serving(sandbox)
                except BaseException:
                    # Running again with its saved memory spent: saved again, or it would
                    # run on unaccounted while everyone holds it paused (its files, if its
                    # memory cannot be saved; stopped, if nothing can).
                    await self._pause_again(sandbox_id)
                    raise
            record.state, record.paused_bytes, record.kept_memory = "running", 0, True
            self.offloader.started(sandbox_id)
            record.envd_url, record.host = sandbox.envd_url, sandbox.address
            self.records.save(record)
            return record, sandbox.rebooted

    async def _pause_again(self, sandbox_id: str) -> None:
        """Put a sandbox whose resume failed after it ran back to paused (under its lock)."""
        for memory in (True, False):
            try:
                size = await self.runtime.pause(sandbox_id, memory=memory)
            except Exception as exc:
                log.warning("sandbox %s: pause after a failed resume (memory %s): %s",
                            sandbox_id, memory, exc)  # fmt: skip
                continue
            if (record := self._held.get(sandbox_id)) is not None:
                record.paused_bytes, record.kept_memory = size, memory  # (what it saved now)
                self.records.save(record)
            return
        log.error("sandbox %s: nothing of it could be saved again; stopping it", sandbox_id)
        with contextlib.suppress(Exception):
            await self._release_locked(sandbox_id, "resume failed")

    async def checkpoint(
        self, sandbox_id: str, snapshot_id: str, memory: bool = True
    ) -> SnapshotRef:
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            return await self.runtime.checkpoint(
                sandbox_id, snapshot_id, memory=memory, given_env=record.envs
            )

    async def restore(self, sandbox_id: str, snapshot: SnapshotRef) -> SandboxRecord:
        """Roll a sandbox back to ``snapshot`` in place. envd comes back with the identity it
        had then, which is this sandbox's own: no handshake, only a check that it answers."""
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            try:
                sandbox = await self.runtime.restore(sandbox_id, snapshot)
            except BaseException:
                await self._after_failed_restore(record)
                raise
            try:
                await self._serving(sandbox)
            except BaseException:
                # Rolled back, but its envd does not answer: saved again, as a resume does,
                # rather than left running while everyone holds it unchanged.
                await self._pause_again(sandbox_id)
                await self._after_failed_restore(record)
                raise
            record.state, record.kept_memory = "running", True
            self.offloader.started(sandbox_id)
            self.records.save(record)
            return record

    async def _after_failed_restore(self, record: SandboxRecord) -> None:
        """Record where a rollback that failed left the sandbox (under its lock): paused at
        its snapshot (the gVisor runtime does that), with the disk that takes and what it
        kept, so a resume tries again; released if the runtime lost it; else it runs on as
        it was."""
        sandbox_id = record.sandbox_id
        try:
            held = {s.sandbox_id: s for s in await self.runtime.list()}
        except Exception:  # the runtime cannot say: its listing, and the dead check, tell later
            log.exception("sandbox %s: where its failed rollback left it is unknown", sandbox_id)
            return
        view = held.get(sandbox_id)
        if view is not None and view.status is SandboxStatus.PAUSED:
            record.state, record.paused_bytes = "paused", view.paused_bytes
            record.kept_memory = view.kept_memory
            self.offloader.forget(sandbox_id)
            self.records.save(record)
        elif view is None or view.status is SandboxStatus.STOPPED:
            with contextlib.suppress(Exception):
                await self._release_locked(sandbox_id, "rollback failed")

    async def _serving(self, sandbox: RuntimeSandbox) -> str:
        """envd answers again after a restore (it comes back with its memory, no /init);
        returns its version."""
        assert self._http is not None, "node not started"
        try:
            return await wait_healthy(
                self._http,
                sandbox.envd_url,
                self.boot_timeout_s,
                alive=lambda: self.runtime.alive(sandbox.sandbox_id),
            )
        except HandshakeFailed as exc:
            raise BootFailed(f"sandbox {sandbox.sandbox_id}: {exc}") from None

    def volumes_in_use(self) -> set[str]:
        """The volumes the sandboxes held here mount (even those still starting)."""
        return {v for record in self._held.values() for v in record.volumes}

    def list(self) -> builtins.list[SandboxRecord]:
        """Sandboxes this node holds once created (a kill under way still holds them)."""
        return [
            r
            for r in sorted(self._held.values(), key=lambda r: r.created_at)
            if r.state not in ("creating", "pooled")
        ]

    def holds(self, sandbox_id: str) -> bool:
        record = self._held.get(sandbox_id)
        return record is not None and record.state != "pooled"

    async def stats(self, sandbox_id: str) -> SandboxStats:
        self._get(sandbox_id)
        return await self.runtime.stats(sandbox_id)

    # -- internals -------------------------------------------------------------------------

    def _get(self, sandbox_id: str) -> SandboxRecord:
        record = self._held.get(sandbox_id)
        if record is None or record.state == "pooled":  # nobody's yet: as if it did not exist
            raise SandboxNotFound(sandbox_id)
        return record

    async def _release_locked(self, sandbox_id: str, reason: str) -> None:
        """Free the sandbox, then forget it: while it is still listed, it still holds resources."""
        with contextlib.suppress(SandboxGone):
            await self.runtime.kill(sandbox_id)
        self.releases[sandbox_id] += 1
        log.info("released sandbox %s (%s)", sandbox_id, reason)
        self.ended[sandbox_id] = reason
        for kept in (self.releases, self.ended):  # the oldest go: a node runs for months
            while len(kept) > ENDED_KEPT:
                del kept[next(iter(kept))]
        self._held.pop(sandbox_id, None)
        self._pool_tokens.pop(sandbox_id, None)
        self._pool_versions.pop(sandbox_id, None)
        self.offloader.forget(sandbox_id)
        self.records.delete(sandbox_id)
        self.pool.forget(sandbox_id)

    async def _release_after_failure(self, sandbox_id: str, reason: str) -> None:
        """Release a sandbox whose create (or pooling, or claim) failed, under its lock. A
        teardown that fails too is logged, not raised: the caller's error is the one told,
        and ``release_abandoned`` tries the teardown again."""
        try:
            await self._release_locked(sandbox_id, reason)
        except Exception:
            log.exception("releasing %s (%s) failed; tried again later", sandbox_id, reason)

    def _abandoned(self, sandbox_id: str) -> bool:
        """Whether a record is one a failed teardown left, once nobody is at work on it (a
        create, a pooling and a claim hold its lock): creating or pooled, in no pool queue."""
        record = self._held.get(sandbox_id)
        if record is None or record.state not in ("creating", "pooled"):
            return False
        return not self.pool.holds(sandbox_id)

    async def release_abandoned(self) -> builtins.list[str]:
        """Release what a failed teardown left (``_release_after_failure``): nobody else
        would, and nobody lists it, yet it holds its resources. Each dead check."""
        released = []
        left = [i for i in self._held if self._abandoned(i) and not self._locks.held(i)]
        for sandbox_id in left:
            async with self._locks.hold(sandbox_id):
                if not self._abandoned(sandbox_id):  # (released meanwhile, or handed over)
                    continue
                try:
                    await self._release_locked(sandbox_id, "abandoned by a failed teardown")
                except Exception as exc:
                    log.warning("releasing %s failed again: %s", sandbox_id, exc)
                    continue
            released.append(sandbox_id)
        return released

    async def check_dead(self) -> builtins.list[str]:
        """Free sandboxes that stopped on their own (OOM, init exited): nothing else would.

        Each is re-checked under its lock, so one being killed right now is left to its killer.
        """
        released = []
        for sandbox in await self.runtime.list():
            if sandbox.status is not SandboxStatus.STOPPED:
                continue
            sandbox_id = sandbox.sandbox_id
            if sandbox_id not in self._held or self._locks.held(sandbox_id):
                continue
            async with self._locks.hold(sandbox_id):
                record = self._held.get(sandbox_id)
                if record is None or record.state == "creating":
                    continue  # (a pooled one that died is released: the pool forgets it)
                if await self.runtime.alive(sandbox_id):
                    continue
                reason = "oom" if sandbox.oom_killed else "exited"
                log.info("sandbox %s stopped on its own (%s)", sandbox_id, reason)
                await self._release_locked(sandbox_id, reason)
                released.append(sandbox_id)
        return released

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.dead_check_every_s)
            try:
                await self.check_dead()
                await self.release_abandoned()
                await self.pool.tidy()
            except Exception:
                log.exception("checking for dead sandboxes failed")
