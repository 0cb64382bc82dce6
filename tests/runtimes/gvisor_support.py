"""Shared by the runtime, template and orchestrator suites: environment checks, the base
template, envd helpers and a leak inventory of everything a sandbox can leave on the host."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from emberbox.envd_client import CommandResult, EnvdClient
from emberbox.host import cgroups as cg
from emberbox.host import network
from emberbox.runtimes.base import RuntimeSandbox
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.runtimes.gvisor.warm import TemplateSnapshots
from emberbox.server.testing import ServerProcess
from emberbox.templates.base import build_base
from emberbox.templates.store import Template, TemplateStore
from tests import lanes

REQUIRED_TOOLS = ("runsc", "mmdebstrap", "nft", "ip", "mkfs.ext4", "unshare")


def require_host() -> None:
    """Skip (naming the missing fact) unless this host can run gVisor sandboxes."""
    if os.geteuid() != 0:
        pytest.skip("gVisor sandboxes need root (netns, mounts, cgroups)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (see docs/runtimes.md)")


# Held while one process builds (or finds) ``base``: xdist workers share the template store.
_BASE_LOCK = Path(tempfile.gettempdir()) / "emberbox-tests-base.lock"


async def ensure_base(store: TemplateStore) -> Template:
    cache = os.environ.get("EMBERBOX_TEMPLATE_CACHE")
    with _BASE_LOCK.open("w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        return await build_base(store, Path(cache) if cache else None)


async def run(sandbox: RuntimeSandbox, cmd: str, user: str | None = None,
              timeout: float = 60) -> CommandResult:  # fmt: skip
    async with EnvdClient(sandbox.envd_url) as envd:
        return await envd.run(cmd, user=user, timeout=timeout)


async def healthy(sandbox: RuntimeSandbox, timeout: float = 2.0) -> bool:
    async with EnvdClient(sandbox.envd_url) as envd:
        return await envd.health(timeout=timeout)


async def tcp_read(host: str, port: int, timeout: float = 3.0) -> bytes | None:
    """Connect, send a GET, return what comes back; None if unreachable."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()


@dataclass(frozen=True)
class Inventory:
    netns: frozenset[str]
    veths: frozenset[str]
    mounts: frozenset[str]
    cgroups: frozenset[str]
    runsc_pids: frozenset[int]
    sandbox_dirs: frozenset[str]
    snapshot_dirs: frozenset[str]  # checkpoints (finished or cut off) of snapshots and forks
    leases: frozenset[str]
    nft: frozenset[str]  # per-sandbox chains, sets and verdict-map elements

    def leaked_since(self, before: Inventory) -> dict[str, set[object]]:
        out: dict[str, set[object]] = {}
        for name in self.__dataclass_fields__:
            extra = set(getattr(self, name)) - set(getattr(before, name))
            if extra:
                out[name] = extra
        return out

    def mentions(self, sandbox_id: str) -> list[str]:
        hits = [n for n in self.netns if sandbox_id in n]
        hits += [m for m in self.mounts if sandbox_id in m]
        hits += [c for c in self.cgroups if sandbox_id in c]
        hits += [d for d in self.sandbox_dirs if sandbox_id in d]
        hits += [lease for lease in self.leases if sandbox_id in lease]
        return hits


def runsc_pids(config: GVisorConfig) -> set[int]:
    """Host pids of runsc processes (sandbox, gofer, wrappers) using our state root."""
    marker = str(config.runsc_root).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"runsc" in cmdline and marker in cmdline:
            pids.add(int(entry.name))
    return pids


def sentry_pid(group: str) -> int:
    """The host process of the kernel of the sandbox in cgroup ``group`` (``runsc boot``): a
    restore starts a new one, a resume of kept processes continues it."""
    for pid in cg.procs(group):
        with contextlib.suppress(OSError):
            if b"boot" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return pid
    raise AssertionError(f"no runsc boot process in {group}")


def _mounts_under(root: str) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f if line.split()[4].startswith(root)}


HELD = "/tmp/held"


def memory_holder(mib: int) -> str:
    """A command that keeps ``mib`` MiB resident in a sandbox (written, so every page is
    touched) and creates ``HELD`` once it does: a checkpoint of that sandbox takes a while."""
    return (
        f'python3 -c \'import time; b = b"x" * ({mib} << 20); open("{HELD}", "w")'
        "; time.sleep(1e6)'"
    )


def children(pid: int) -> set[int]:
    """The processes ``pid`` started that still run (any of its threads started them)."""
    if not Path("/proc/self/task", str(os.getpid()), "children").exists():
        raise RuntimeError("this kernel has no /proc/<pid>/task/<tid>/children (PROC_CHILDREN)")
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.update(int(child) for child in (task / "children").read_text().split())
    return found


def checkpointing(
    config: GVisorConfig, sandbox_id: str, files: bool = False, parent: int | None = None
) -> bool:
    """Whether a ``runsc checkpoint`` of ``sandbox_id`` runs on the host right now (with
    ``files``: the ``runsc exec`` of a filesystem-only save reading its files), for tests that
    cut a save short. With ``parent`` (the node's pid) only its children are looked at: a
    scan of every process on a busy host can take longer than a fast save."""
    runsc = os.path.basename(config.runsc).encode()  # (argv[0] once runsc itself runs)
    for pid in runsc_pids(config) if parent is None else children(parent):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if sandbox_id.encode() not in argv or os.path.basename(argv[0]) != runsc:
            continue  # (not runsc itself yet: the unshare and sh it is exec'd from)
        if files and b"exec" in argv and any(b"save(" in arg for arg in argv):
            return True
        if not files and b"checkpoint" in argv:
            return True
    return False


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def inventory(config: GVisorConfig) -> Inventory:
    mounts = _mounts_under(str(config.root))
    dirs = _names(config.sandboxes_dir)
    pool = network.AddressPool(config.leases_dir, config.network, config.instance)
    return Inventory(
        netns=frozenset(await network.list_netns(config.instance)),
        veths=frozenset(await network.list_host_veths(config.instance)),
        mounts=frozenset(mounts),
        cgroups=frozenset(cg.existing(config.cgroup_base)),
        runsc_pids=frozenset(runsc_pids(config)),
        sandbox_dirs=frozenset(dirs),
        snapshot_dirs=frozenset(_names(config.snapshots_dir)),
        leases=frozenset(f"{lease.index}:{lease.sandbox_id}" for lease in pool.leases()),
        nft=frozenset(await network.list_rule_objects(config.instance)),
    )


def settled_leaks(
    config: GVisorConfig, before: Inventory, timeout_s: float = 60
) -> dict[str, set[object]]:
    """What the host holds beyond ``before``, once background tear-downs have had their time
    (for tests that run outside an event loop)."""
    deadline = time.monotonic() + timeout_s
    while True:
        leaked = asyncio.run(inventory(config)).leaked_since(before)
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.5)


def tracked_flows(address: str, peers: Sequence[str]) -> list[str]:
    """The host's conntrack entries between ``address`` and any of ``peers`` (a dead sandbox
    should have none). Only those: the freed address may already be another sandbox's, of
    another instance on the host, with flows of its own."""
    found = []
    for peer in peers:
        for src, dst in ((address, peer), (peer, address)):
            out = subprocess.run(["conntrack", "-L", "--orig-src", src, "--orig-dst", dst],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            found += [line for line in out.stdout.splitlines() if line.strip()]
    return found


DATA_DIR = Path(os.environ.get("EMBERBOX_DATA_DIR") or "/var/lib/emberbox")


def wait_for_template_snapshot(data_dir: Path, template_name: str, timeout_s: float = 120) -> None:
    """Until creates of the template restore its snapshot instead of booting."""
    snapshots = TemplateSnapshots(GVisorConfig(data_dir=data_dir).template_snapshots_dir)
    deadline = time.monotonic() + timeout_s
    while not snapshots.taken(template_name):
        assert time.monotonic() < deadline, f"no template snapshot of {template_name} was made"
        time.sleep(0.2)


@contextlib.contextmanager
def gvisor_server(
    tmp: Path, env: Mapping[str, str] | None = None, own_data_dir: bool = False
) -> Iterator[ServerProcess]:
    """A real ``emberbox server`` on gVisor: the node's template store, a fresh database.

    On the shared ``DATA_DIR`` by default: the orchestrator owns the sandboxes of its data dir,
    so only one of these runs at a time; pytest's module-scoped fixtures give exactly that,
    and tests/lanes.py keeps their files in one xdist worker. With ``own_data_dir`` (one that
    sees the shared templates, under ``tmp``) the server is an instance of its own, and its
    file may run next to any other.
    """
    from tests.node.support import data_dir_sharing_templates  # it imports this module

    require_host()
    if own_data_dir:
        data_dir = data_dir_sharing_templates(tmp / "data", DATA_DIR)
    else:
        lanes.require(lanes.SHARED_DATA_DIR)
        data_dir = DATA_DIR
    asyncio.run(ensure_base(TemplateStore(DATA_DIR)))
    server = ServerProcess(
        data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp / 'emberbox.db'}",
        env={"EMBERBOX_BACKEND": "gvisor", **(env or {})},
        log_dir=tmp,
    )
    server.start(timeout_s=60)
    try:
        yield server
    finally:
        server.stop()


_RESTORE_FAILING_RUNSC = """#!/bin/sh
# runsc, except that while {count} holds a number above 0 a restore fails, and counts down.
for arg in "$@"; do
  if [ "$arg" = restore ]; then
    left=$(cat {count})
    if [ "$left" -gt 0 ]; then
      echo $((left - 1)) > {count}
      echo '{message}' >&2
      exit {code}
    fi
  fi
done
exec {runsc} "$@"
"""


@contextlib.contextmanager
def failing_restores(
    runtime: GVisorRuntime, directory: Path, message: str, code: int = 1
) -> Iterator[Path]:
    """The runtime's runsc wrapped by a script: while the file yielded holds a number above
    0, a restore answers ``message`` on stderr and exits ``code`` instead of running (and
    the number counts down). Failures injected where a real one cannot be made on demand."""
    count, wrapper = directory / "restore-failures", directory / "runsc"
    count.write_text("0")
    wrapper.write_text(_RESTORE_FAILING_RUNSC.format(count=count, message=message, code=code,
                                                     runsc=runtime.config.runsc))  # fmt: skip
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    real = runtime.runsc.config
    runtime.runsc.config = dataclasses.replace(real, runsc=str(wrapper))
    try:
        yield count
    finally:
        runtime.runsc.config = real
