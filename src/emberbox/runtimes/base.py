"""The one interface every sandbox runtime implements (gVisor now, Firecracker next).

The orchestrator talks only to :class:`Runtime`; a runtime declares what it can do in
:class:`Capabilities` instead of faking it, so the API can answer an honest 501/409.
"""

from __future__ import annotations

import abc
import builtins
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..egress import EgressProxy, HeaderRule
from ..envd_client.handshake import EnvdDefaults
from ..host.egress_audit import EgressEvent
from ..host.errors import HostError, HostExhausted
from ..vocabulary import (
    DEFAULT_CPU_COUNT,
    DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_USER,
    DEFAULT_WORKDIR,
    ENVD_PORT,
)


class RuntimeError_(HostError):
    """Base of runtime failures; the orchestrator maps them to sandbox end reasons."""


class CapabilityMissing(RuntimeError_):
    """Raised when an operation the runtime does not declare is asked for."""


class CapacityExhausted(RuntimeError_, HostExhausted):
    """The node has no room for another sandbox (addresses, slots)."""


class UnknownTemplate(RuntimeError_):
    """The node has no template of that name."""


class SandboxGone(RuntimeError_):
    """Raised when the runtime no longer has the sandbox (killed, crashed, never existed)."""


class SandboxNotRunning(RuntimeError_):
    """The operation needs the sandbox running and it is paused: another caller's pause got
    there first (the callers' checks and the runtime's lock are not one step)."""


@dataclass(frozen=True)
class Capabilities:
    pause: bool = False
    snapshot: bool = False
    fork: bool = False
    egress_rules: bool = False  # honours allow_out/deny_out and update_network
    header_rules: bool = False  # honours NetworkPolicy.rewrites (an egress gateway with a CA)
    egress_proxy: bool = False  # honours NetworkPolicy.proxy (SOCKS5 from the gateway)
    no_internet: bool = True  # honours NetworkPolicy(allow_internet=False)
    volumes: bool = False  # binds volume directories into sandboxes (SandboxSpec.volumes)
    # pause(memory=False) keeps only the files; resume(memory=False) boots from them.
    filesystem_pause: bool = False


@dataclass(frozen=True)
class NetworkPolicy:
    """Egress policy in E2B's terms (``egress.py`` owns what it means). The defaults mean
    "no rules" (public internet only): the warm pool serves only sandboxes whose policy is
    the default one, so every new field needs a default that means "no rules"."""

    allow_internet: bool = True
    allow_out: Sequence[str] = ()
    deny_out: Sequence[str] = ()
    rewrites: Sequence[HeaderRule] = ()  # header rules; values live in memory only
    proxy: EgressProxy | None = None  # SOCKS5 upstream; its password lives in memory only


_MOUNT_PATH = re.compile(r"(/[^/\0]+)+")


def check_mount_path(path: str) -> str:
    """``path`` if it is absolute and plain (no ``//``, ``.``, ``..``, trailing ``/``, NUL):
    what runsc reads as written; else ValueError."""
    parts = path.split("/")[1:]
    if not _MOUNT_PATH.fullmatch(path) or any(p in (".", "..") for p in parts):
        raise ValueError(f"mount paths must be absolute and normalised: {path!r}")
    return path


@dataclass(frozen=True)
class VolumeMount:
    """A host directory bound read-write at ``path`` inside the sandbox (a volume)."""

    source: str
    path: str
    volume_id: str = ""


# How long a runtime may take to read a sandbox's changed files out (a filesystem-only pause
# or snapshot) or to apply them at a boot: at most its disk's size, a sentry round trip per
# file. Callers of the node size their waits from it.
FILES_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SnapshotRef:
    """A checkpoint a runtime can start sandboxes from: where it lives and what it came from."""

    snapshot_id: str
    runtime: str
    path: str
    template_id: str
    size_bytes: int = 0  # disk the checkpoint takes on its node
    # False: only the files the sandbox changed (sandboxes start from it by booting).
    memory: bool = True


@dataclass(frozen=True)
class SandboxSpec:
    """What the orchestrator asks a runtime to start."""

    sandbox_id: str
    template_id: str
    cpu_count: int = DEFAULT_CPU_COUNT
    memory_mb: int = DEFAULT_MEMORY_MB
    disk_mb: int = DEFAULT_DISK_MB
    envs: Mapping[str, str] = field(default_factory=dict)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    pids_limit: int = DEFAULT_PIDS_LIMIT
    snapshot: SnapshotRef | None = None  # start from this checkpoint instead of booting
    # Volumes: a sandbox with them always boots (no template snapshot or pool was made with them).
    volumes: Sequence[VolumeMount] = ()


class SandboxStatus(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


UNKNOWN_DEFAULTS = EnvdDefaults(DEFAULT_USER, DEFAULT_WORKDIR)
"""What ``list`` reports: the handshake happened at create, nobody needs them again."""


@dataclass(frozen=True)
class RuntimeSandbox:
    """A sandbox as the runtime sees it: enough to reach envd and any user port.

    ``defaults`` is what the node's handshake tells envd (the template's user, workdir, env
    and ready check); runtimes fill it at create and may leave it empty in ``list``.
    """

    sandbox_id: str
    template_id: str
    address: str  # IP the host reaches the sandbox at
    envd_port: int = ENVD_PORT
    status: SandboxStatus = SandboxStatus.RUNNING
    # An OOM kill ever happened inside; ``list`` fills it for stopped sandboxes only (the end
    # reason is all it is for there), a runtime's single-sandbox lookup always.
    oom_killed: bool = False
    defaults: EnvdDefaults = field(default_factory=lambda: UNKNOWN_DEFAULTS)
    # Booted afresh by a resume (filesystem-only): its envd waits for its ``/init`` again.
    rebooted: bool = False
    # Disk its saved state takes, while it is paused (runtimes that pause fill it).
    paused_bytes: int = 0
    # While it is paused: whether its memory was saved (a resume continues its processes),
    # else only its files (a resume boots it afresh).
    kept_memory: bool = True

    @property
    def envd_url(self) -> str:
        return f"http://{self.address}:{self.envd_port}"

    def port_address(self, port: int) -> tuple[str, int]:
        return self.address, port


@dataclass(frozen=True)
class SandboxStats:
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int


@dataclass(frozen=True)
class SandboxActivity:
    """Counters read without disturbing the sandbox: how the node tells an idle one."""

    cpu_ns: int  # CPU time its processes used since it started
    resident: int  # host memory it holds now, in bytes (not what it has in swap)


class Runtime(abc.ABC):
    """Async lifecycle of sandboxes on this node.

    Every method is safe to call after an orchestrator restart: state lives on disk and in the
    kernel (netns, cgroups, runsc state), never only in this process.
    """

    name: str
    capabilities: Capabilities
    isolation: bool = True  # False only for the plain-process runtime (development, tests)
    # Names of processes the runtime's tools leave behind as orphans (runsc's sandbox and
    # gofer outlive ``runsc run``); the node adopts and reaps them (host/processes.py).
    orphan_names: frozenset[str] = frozenset()

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        """Start the machine; returns once it runs (envd's handshake is the node's job)."""

    @abc.abstractmethod
    async def kill(self, sandbox_id: str) -> bool:
        """Stop the sandbox and release every resource; idempotent.

        Returns True when this call tore something down, False when nothing was left.
        """

    async def alive(self, sandbox_id: str) -> bool:
        """Whether the machine still runs (the handshake stops waiting once it does not)."""
        return True

    def known_stopped(self, sandbox_id: str) -> bool:
        """Whether the machine is known to have stopped from a look that costs nothing (no
        process started, no request into it); False when such a look cannot tell. A warm-pool
        sandbox handed over without an ``/init`` is checked so, not to hand out a dead one."""
        return False

    async def boot_log(self, sandbox_id: str) -> str:
        """The tail of the machine's own log, to explain a failed boot."""
        return ""

    @abc.abstractmethod
    async def list(self) -> list[RuntimeSandbox]:
        """Everything this runtime has on the node, so a restarted orchestrator can adopt it."""

    @abc.abstractmethod
    async def stats(self, sandbox_id: str) -> SandboxStats: ...

    async def pause(self, sandbox_id: str, memory: bool = True) -> int:
        """Save the sandbox and stop it; returns the disk what was saved takes. Without
        ``memory`` only its files are kept (``Capabilities.filesystem_pause``)."""
        raise CapabilityMissing(f"{self.name} cannot pause sandboxes")

    async def resume(self, sandbox_id: str, memory: bool = True) -> RuntimeSandbox:
        """Run a paused sandbox again; without ``memory`` (or paused without it) it boots
        afresh from its files and comes back ``rebooted``."""
        raise CapabilityMissing(f"{self.name} cannot resume sandboxes")

    async def update_network(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace a live sandbox's egress rules (``Capabilities.egress_rules``)."""
        raise CapabilityMissing(f"{self.name} cannot change a sandbox's egress rules")

    async def egress_log(
        self, sandbox_id: str, after: int, limit: int
    ) -> tuple[builtins.list[EgressEvent], int | None]:
        """The sandbox's egress audit records after ``after``, oldest first, and the
        ``after`` of the next page (None: no more); see ``host/egress_audit.py``."""
        raise CapabilityMissing(f"{self.name} keeps no egress log")

    def egress_ca(self) -> bytes:
        """The PEM certificate of the CA the node's egress gateway signs intercepted names
        with, which sandboxes with header rules trust (``NetworkPolicy.rewrites``)."""
        raise CapabilityMissing(f"{self.name} cannot apply header rules")

    async def checkpoint(
        self,
        sandbox_id: str,
        snapshot_id: str,
        memory: bool = True,
        given_env: Mapping[str, str] | None = None,
    ) -> SnapshotRef:
        """Save the sandbox's memory and files (without ``memory``: only the files it changed,
        ``Capabilities.filesystem_pause``); it keeps running. Create from the result by
        setting ``SandboxSpec.snapshot`` (start from memory, fork, rollback build on this).

        ``given_env``: the variables the node gave the sandbox after its start (at a claim,
        or carried over from its source). A memory checkpoint holds them in envd; one of
        files keeps them beside its start's, for the sandboxes that boot from it."""
        raise CapabilityMissing(f"{self.name} cannot checkpoint sandboxes")

    async def restore(self, sandbox_id: str, snapshot: SnapshotRef) -> RuntimeSandbox:
        """Put a live sandbox back to ``snapshot`` in place: same id, address and disk; what it
        did since is gone (rollback)."""
        raise CapabilityMissing(f"{self.name} cannot roll sandboxes back")

    async def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        """Free a checkpoint's disk; sandboxes started from it keep running."""
        raise CapabilityMissing(f"{self.name} has no snapshots")

    async def snapshots(self) -> builtins.list[SnapshotRef]:
        """The whole checkpoints this runtime holds (one cut off half-written is not one)."""
        return []

    def template_version(self, template_id: str) -> str | None:
        """What the template holds now (its content id; None: unknown, or no such template):
        a sandbox pooled ahead from an older build is not handed out once it was rebuilt."""
        return None

    async def freeze(self, sandbox_id: str) -> None:  # noqa: B027 - optional hook
        """Stop scheduling a running sandbox nobody uses yet (a pooled one): it keeps its
        memory and its processes but costs no CPU until :meth:`thaw`. ``kill`` works on a
        frozen sandbox. A runtime that cannot freeze leaves it running."""

    async def thaw(self, sandbox_id: str) -> None:  # noqa: B027 - optional hook
        """Undo :meth:`freeze`; nothing for a sandbox that is not frozen."""

    async def offload(self, sandbox_id: str) -> bool | None:
        """One step moving an idle sandbox's memory to the host's swap (a frozen pooled one,
        or a running one nothing used for a while): it then costs the host what its pages
        compress to. They come back as its processes touch them (its next command, or its
        claim, is a few ms slower); memory plus swap stays within its limit. True while more
        could move (the caller takes another step a little later), False once done, None if
        nothing can move now (no swap, or too little of it left; a runtime that cannot)."""
        return None

    async def activity(self, sandbox_id: str) -> SandboxActivity | None:
        """The sandbox's CPU time and resident memory now; None if it has no processes (not
        running, or paused with none kept) or the runtime cannot tell (it is then never
        offloaded as idle)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop the runtime's own background work (sandboxes it started for itself, such as
        the boot a template snapshot is taken of); callers' sandboxes keep running."""

    def host_hints(self) -> builtins.list[str]:
        """What about this host makes the runtime slower than it could be, with the fix; the
        node logs them at start."""
        return []

    async def cleanup_orphans(self, keep: Sequence[str]) -> builtins.list[str]:
        """Remove leftovers (netns, veths, mounts, state) of sandboxes not in ``keep``.

        One that cannot be removed is logged and left for the next call; the rest still go.
        """
        return []
