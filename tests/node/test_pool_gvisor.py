"""The warm pool for real: a gVisor node keeping sandboxes ready, a server in front of it, the
official SDK creating sandboxes that come out of the pool, and a host that ends as it began."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from emberbox.host import cgroups
from emberbox.node.client import RemoteNode
from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.runtimes.gvisor.runtime import OFFLOAD_KEEP_BYTES
from emberbox.server.testing import NodeProcess, ServerProcess
from emberbox.templates.store import Template
from emberbox.vocabulary import OFFLOADED_BELOW_BYTES
from tests.api.conftest import point_sdks_at
from tests.runtimes.gvisor_support import (
    DATA_DIR,
    inventory,
    sentry_pid,
    wait_for_template_snapshot,
)

from .support import data_dir_sharing_templates, served_leaving_nothing, server_in_front_of

POOL = 2


@pytest.fixture
def node(tmp_path: Path, base_template: Template) -> Iterator[NodeProcess]:
    node = NodeProcess(
        data_dir_sharing_templates(tmp_path / "data", DATA_DIR),
        "gvisor",
        env={"EMBERBOX_WARM_POOL": str(POOL)},
    )
    yield node
    node.stop()


def _pooled(node: NodeProcess) -> set[str]:
    """Ids of the sandboxes the node keeps for claims (its records say so)."""
    records = (node.data_dir / "node" / "sandboxes").glob("*.json")
    return {r.stem for r in records if json.loads(r.read_text())["state"] == "pooled"}


async def _wait_full(node: NodeProcess, timeout_s: float = 120.0) -> None:
    client = RemoteNode(node.url, node.token)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pools = (await client.info()).pools
            if pools and all(p.ready >= p.target > 0 for p in pools):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the pool never filled: {pools}")
    finally:
        await client.close()


def _taught(node: NodeProcess, server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Point the SDKs at ``server``, teach the pool the template with one create, and wait
    until the pool is full, its refills restoring the template's snapshot: the pooled ids."""
    assert server.first_key
    point_sdks_at(server, server.first_key, monkeypatch)
    Sandbox.create("base", timeout=120).kill()  # the pool learns what is asked for
    wait_for_template_snapshot(node.data_dir, "base")
    asyncio.run(_wait_full(node))
    return _pooled(node)


def _wait_frozen(node: NodeProcess, ids: set[str], timeout_s: float = 10.0) -> None:
    """Until every one of ``ids`` is frozen (``POOLED_FREEZE_AFTER_S`` after it was pooled)."""
    base = GVisorConfig(data_dir=node.data_dir).cgroup_base
    deadline = time.monotonic() + timeout_s
    while not all(cgroups.freezer_state(f"{base}/{i}") == "frozen" for i in ids):
        assert time.monotonic() < deadline, "pooled sandboxes were never frozen"
        time.sleep(0.1)


def _cpu_ns(node: NodeProcess, sandbox_id: str) -> int:
    used = cgroups.usage(f"{GVisorConfig(data_dir=node.data_dir).cgroup_base}/{sandbox_id}")
    assert used is not None, f"{sandbox_id} has no cgroup"
    return used.cpu_ns


def test_creates_come_from_the_pool_and_carry_nothing_of_anyone_else(
    node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served_leaving_nothing(node, tmp_path / "server") as server:
        ready = _taught(node, server, monkeypatch)
        assert len(ready) == POOL
        # An unclaimed pooled sandbox is frozen: it costs no CPU at all while it waits.
        _wait_frozen(node, ready)
        before = {i: _cpu_ns(node, i) for i in ready}
        time.sleep(1.5)
        assert {i: _cpu_ns(node, i) for i in ready} == before

        sandbox = Sandbox.create("base", timeout=300, envs={"FOO": "bar"})
        assert sandbox.sandbox_id in ready, "the create did not take a pooled sandbox"
        out = sandbox.commands.run("echo $FOO $E2B_SANDBOX_ID; id -un; pwd").stdout.split()
        assert out == ["bar", sandbox.sandbox_id, "user", "/home/user"]
        # Thawed by its claim, with a clock that did not stop while it was frozen.
        base = GVisorConfig(data_dir=node.data_dir).cgroup_base
        assert not cgroups.frozen(f"{base}/{sandbox.sandbox_id}")
        guest_now = float(sandbox.commands.run("date +%s.%N").stdout)
        assert abs(guest_now - time.time()) < 1.0, "the guest's clock stopped while frozen"
        info = sandbox.get_info()
        assert abs((info.end_at - info.started_at).total_seconds() - 300) < 2, "end from claim"
        host = sandbox.get_host(49983)
        wrong = httpx.get(f"{server.sandbox_url}/envs", headers={"Host": host,
                          "X-Access-Token": "not-the-token"})  # fmt: skip
        assert wrong.status_code == 401, "a pooled sandbox takes its caller's access token"

        sandbox.files.write("/home/user/mine.txt", "private")
        asyncio.run(_wait_full(node))
        ready = _pooled(node)
        other = Sandbox.create("base", timeout=120)
        assert other.sandbox_id in ready
        assert not other.files.exists("/home/user/mine.txt")
        assert other.commands.run("echo ${FOO:-unset}").stdout == "unset\n"

        # A pooled sandbox restored from the template's snapshot (its init still has the
        # snapshot's identity): its first command runs in a login shell started after the
        # sandbox got its own identity (in the shell's initial environment), not in one the
        # restore brought back, whose first run is slower (it faults its memory back in).
        asyncio.run(_wait_full(node))
        restored = Sandbox.create("base", timeout=120)
        environ = "tr '\\0' '\\n' < /proc/{}/environ | grep ^E2B_SANDBOX_ID= || echo none"
        first_shell = restored.commands.run(environ.format("$$")).stdout
        init = restored.commands.run(environ.format(1), user="root").stdout
        assert init.startswith("E2B_SANDBOX_ID=warm-"), init
        assert first_shell == f"E2B_SANDBOX_ID={restored.sandbox_id}\n"

        for s in (sandbox, other, restored):
            s.kill()


def test_a_killed_node_leaves_its_pool_to_its_successor(node: NodeProcess) -> None:
    """SIGKILL: the pooled sandboxes outlive the process; the next node removes them all."""
    config = GVisorConfig(data_dir=node.data_dir)
    baseline = asyncio.run(inventory(config))
    node.start()

    async def teach_and_fill() -> str:
        client = RemoteNode(node.url, node.token)
        try:
            from emberbox._proto.node import node_pb2 as pb
            from emberbox.vocabulary import new_sandbox_id

            spec = pb.SandboxSpec(template_id="base", cpu_count=1, memory_mb=256, disk_mb=256,
                                  access_token="t0k", allow_internet=True)  # fmt: skip
            assert not (await client.claim(spec)).HasField("sandbox")
            spec.sandbox_id = new_sandbox_id()
            await client.create(spec)
            await _wait_full(node)
            return spec.sandbox_id
        finally:
            await client.close()

    kept = asyncio.run(teach_and_fill())
    pooled = _pooled(node)
    assert len(pooled) == POOL
    _wait_frozen(node, pooled)  # runsc waits on a frozen sentry: the successor must not ask it
    node.sigkill()
    line = node.start()
    # Removed: the pooled ones, and the boot a template snapshot was being taken of, if any.
    assert re.search(r"adopted 1, removed [2-3]\)", line), line
    after = asyncio.run(inventory(config))
    assert [after.mentions(i) for i in pooled] == [[]] * POOL

    async def kill() -> None:
        client = RemoteNode(node.url, node.token)
        try:
            assert await client.kill(kept)
        finally:
            await client.close()

    asyncio.run(kill())
    node.stop()
    assert asyncio.run(inventory(config)).leaked_since(baseline) == {}


CLIENTS, CREATES = 4, 4  # creates per client, each run and killed before the next


def test_concurrent_creates_through_the_pool_while_the_reaper_reconciles(
    node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four clients create (half with env vars of their own), run a command and kill, at once,
    while the server's reaper reconciles every 2 s: some creates are claims the node hands over
    inside the admission, some find the pool empty and restore. Every create answers with a
    sandbox of its own identity that runs its command, none is taken for an orphan, each is torn
    down once, and the host ends as it began."""
    config = GVisorConfig(data_dir=node.data_dir)
    baseline = asyncio.run(inventory(config))
    node.start()
    server = server_in_front_of(node, tmp_path / "server")
    created: list[str] = []
    errors: list[str] = []

    def client(n: int) -> None:
        try:
            for i in range(CREATES):
                envs = {"WHO": f"{n}-{i}"} if i % 2 else {}
                sbx = Sandbox.create("base", timeout=120, envs=envs)
                created.append(sbx.sandbox_id)
                out = sbx.commands.run("echo ${WHO:-none} $E2B_SANDBOX_ID").stdout.split()
                if out != [envs.get("WHO", "none"), sbx.sandbox_id]:
                    errors.append(f"{sbx.sandbox_id}: {out}")
                sbx.kill()
        except Exception as e:  # a thread's exception would otherwise only be printed
            errors.append(f"client {n}: {e!r}")

    try:
        pooled_before = _taught(node, server, monkeypatch)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(set(created)) == CLIENTS * CREATES
        assert pooled_before & set(created), "no create came from the pool"
        time.sleep(2.5)  # one more reconcile after the last kill
        log = (server.log_dir / "server.log").read_text()
        assert "killing orphan" not in log
        states = server.sandbox_states()
        assert {states[i] for i in created} == {("killed", "killed by user")}
    finally:
        server.stop()
        node.stop()
    node_log = (node.data_dir / "node.log").read_text()
    teardowns = collections.Counter(re.findall(r"host teardown of (\w+)", node_log))
    assert {i: teardowns[i] for i in created} == dict.fromkeys(created, 1)
    assert asyncio.run(inventory(config)).leaked_since(baseline) == {}


OFFLOADED = 2 * OFFLOAD_KEEP_BYTES  # an offloaded sandbox keeps less than this resident


def _resident(group: str) -> int:
    usage = cgroups.usage(group)
    assert usage is not None, f"{group} is gone"
    return usage.mem_used


def test_pooled_sandboxes_behind_the_newest_wait_in_swap(
    tmp_path: Path, base_template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host with swap, every frozen pooled sandbox but the newest has its memory moved
    there; claims take the newest first, and an offloaded one, once claimed, works and has
    its whole memory limit back (memory plus swap held to it, as for every sandbox)."""
    if not cgroups.swap_in_ram():
        pytest.skip("the host has no swap in RAM (scripts/setup adds a compressed one, zram)")
    node = NodeProcess(data_dir_sharing_templates(tmp_path / "data", DATA_DIR), "gvisor",
                       env={"EMBERBOX_WARM_POOL": "3",
                            "EMBERBOX_OFFLOAD_IDLE_S": "0"})  # the newest stays  # fmt: skip
    config = GVisorConfig(data_dir=node.data_dir)
    with served_leaving_nothing(node, tmp_path / "server") as server:
        ready = _taught(node, server, monkeypatch)
        _wait_frozen(node, ready)
        group = {i: f"{config.cgroup_base}/{i}" for i in ready}
        # What stays resident is a few MiB, not the ~40 of a waiting sandbox.
        deadline = time.monotonic() + 30
        while len(offloaded := {i for i in ready if _resident(group[i]) < OFFLOADED}) < 2:
            assert time.monotonic() < deadline, {i: _resident(group[i]) >> 20 for i in ready}
            time.sleep(0.2)
        (resident,) = ready - offloaded
        assert cgroups.swapped(group[resident]) == 0
        assert _resident(group[resident]) > OFFLOADED_BELOW_BYTES
        assert all(cgroups.swapped(group[i]) > 16 << 20 for i in offloaded)

        claimed = [Sandbox.create("base", timeout=120) for _ in range(3)]
        assert claimed[0].sandbox_id == resident, "a claim took an offloaded sandbox first"
        assert {s.sandbox_id for s in claimed[1:]} == offloaded
        limits = {}
        for sandbox in claimed:  # each holds 64 MiB at once and has its pages back
            hold = "python3 -c 'b = bytearray(64 << 20); print(len(b))'; echo $HOME"
            run = sandbox.commands.run(hold)
            assert run.stdout.split() == [str(64 << 20), "/home/user"]
            usage = cgroups.usage(group[sandbox.sandbox_id])  # (gVisor gave the 64 back)
            assert usage is not None and usage.mem_used > OFFLOADED, "its pages never came back"
            limits[sandbox.sandbox_id] = usage.mem_limit
            if cgroups.is_v1():  # memory plus swap is held to the same limit
                memsw = cgroups.CGROUP_ROOT / "memory" / group[sandbox.sandbox_id]
                assert int((memsw / "memory.memsw.limit_in_bytes").read_text()) == usage.mem_limit
        # The resident one's limit was never touched: the offloaded ones have theirs back.
        assert set(limits.values()) == {limits[resident]}, f"a lowered limit was kept: {limits}"
        for sandbox in claimed:
            sandbox.kill()


def _wait_in_swap(group: str, timeout_s: float = 60) -> None:
    """Until the node moved most of cgroup ``group``'s memory to swap and counts it
    offloaded (what keeps a paused one's processes past the resident minute)."""
    deadline = time.monotonic() + timeout_s
    while cgroups.swapped(group) < 16 << 20 or _resident(group) > OFFLOADED_BELOW_BYTES:
        assert time.monotonic() < deadline, f"never offloaded: {_resident(group) >> 20} MiB"
        time.sleep(0.1)


@contextlib.contextmanager
def _one_on_an_offloading_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Sandbox, str]]:
    """A sandbox (and its cgroup) on a node that offloads sandboxes idle for 2 s, served; it
    is killed afterwards, whatever the test found."""
    if not cgroups.swap_in_ram():
        pytest.skip("the host has no swap in RAM (scripts/setup adds a compressed one, zram)")
    node = NodeProcess(data_dir_sharing_templates(tmp_path / "data", DATA_DIR), "gvisor",
                       env={"EMBERBOX_WARM_POOL": "0", "EMBERBOX_OFFLOAD_IDLE_S": "2"})  # fmt: skip
    config = GVisorConfig(data_dir=node.data_dir)
    with served_leaving_nothing(node, tmp_path / "server") as server:
        assert server.first_key
        point_sdks_at(server, server.first_key, monkeypatch)
        sandbox = Sandbox.create("base", timeout=120)
        try:
            yield sandbox, f"{config.cgroup_base}/{sandbox.sandbox_id}"
        finally:
            sandbox.kill()  # (a failed check must not leave it running)


def test_an_idle_running_sandbox_waits_in_swap_and_keeps_its_processes_and_files(
    tmp_path: Path, base_template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running sandbox idle for ``EMBERBOX_OFFLOAD_IDLE_S`` has its memory moved to swap
    while its processes run on: a background counter keeps counting, its files stay, the
    next command works and it has its whole memory limit (memory plus swap held to it)."""
    with _one_on_an_offloading_node(tmp_path, monkeypatch) as (sandbox, group):
        before = cgroups.usage(group)
        assert before is not None
        sandbox.files.write("/home/user/kept.txt", "before the offload")
        # Bash builtins only, waiting in ``read -t`` on a pipe nobody writes: a counter that
        # started ``sleep 1`` each second kept the sandbox at ~12.5% of a core, over the node's
        # idle line (a tenth of one, ``offload.IDLE_CPU_SHARE``), and it was offloaded only
        # when a quiet moment happened to last ``EMBERBOX_OFFLOAD_IDLE_S`` (one CI run waited
        # 60 s for none); this one keeps it at ~6.5%. Appended, so a read never finds the file
        # emptied by a truncating write.
        counter = (
            "i=0; exec 3<> <(:); "
            "while :; do i=$((i+1)); echo $i >> /tmp/count; read -t 1 -u 3; done"
        )
        sandbox.commands.run(counter, background=True)
        # Most of its ~40 MiB in swap (it faults a few MiB back at once: its timers, counter).
        _wait_in_swap(group)
        first = _last_count(sandbox)
        time.sleep(2.5)
        assert _last_count(sandbox) > first, "the counter stopped"
        assert sandbox.files.read("/home/user/kept.txt") == "before the offload"
        # Most of its memory (512 MiB) is still there for it: what sits in swap counts
        # against the host's headroom above the guest's memory, not the guest's.
        hold = "python3 -c 'b = bytearray(400 << 20); print(len(b))'"
        assert sandbox.commands.run(hold).stdout.split() == [str(400 << 20)]
        usage = cgroups.usage(group)
        assert usage is not None
        if cgroups.is_v1():  # its limit whole, memory plus swap held to it
            memsw = cgroups.CGROUP_ROOT / "memory" / group / "memory.memsw.limit_in_bytes"
            assert int(memsw.read_text()) == usage.mem_limit == before.mem_limit


def _last_count(sandbox: Sandbox) -> int:
    return int(sandbox.files.read("/tmp/count").split()[-1])


def test_a_paused_sandbox_kept_by_its_node_waits_in_swap_and_resumes_where_it_was(
    tmp_path: Path, base_template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused sandbox whose processes the node keeps for a fast resume (``kept.py``) is
    idle from its pause: ``EMBERBOX_OFFLOAD_IDLE_S`` later its memory is in swap, and a
    ``connect`` continues the very processes (no restore), its counter and files intact."""
    with _one_on_an_offloading_node(tmp_path, monkeypatch) as (sandbox, group):
        sandbox.files.write("/home/user/kept.txt", "before the pause")
        # Appended: a read never finds the file emptied by a truncating write (one did, in CI).
        counter = "i=0; while :; do i=$((i+1)); echo $i >> /tmp/count; sleep 0.05; done"
        sandbox.commands.run(counter, background=True)
        time.sleep(0.5)
        sentry = sentry_pid(group)
        before = _last_count(sandbox)
        sandbox.pause()
        assert cgroups.freezer_state(group) in ("frozen", "freezing")
        _wait_in_swap(group)  # (idle from its pause: at least 2 s, 40 counts had it run on)
        back = Sandbox.connect(sandbox.sandbox_id)
        assert sentry_pid(group) == sentry, "the sandbox was restored, not continued"
        first = _last_count(back)
        assert before <= first < before + 20, (before, first)  # it did not count paused
        time.sleep(1)
        assert _last_count(back) > first, "the counter stopped"
        assert back.files.read("/home/user/kept.txt") == "before the pause"
