"""``emberbox node`` on gVisor, SIGKILLed while it creates: the restarted node adopts what
finished, removes what did not and what died meanwhile, and the host ends as it began."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.envd_client import EnvdClient
from emberbox.host import cgroups
from emberbox.node.client import NodeConflict, NodeError, RemoteNode
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.server.testing import NodeProcess
from emberbox.templates.store import Template
from emberbox.vocabulary import new_sandbox_id
from tests import background_counter
from tests.runtimes.gvisor_support import (
    DATA_DIR,
    HELD,
    checkpointing,
    inventory,
    memory_holder,
    runsc_pids,
    sentry_pid,
    wait_for_template_snapshot,
)

from .support import data_dir_sharing_templates, served_leaving_nothing


@pytest.fixture
def node(tmp_path: Path, base_template: Template) -> Iterator[NodeProcess]:
    node = NodeProcess(data_dir_sharing_templates(tmp_path / "data", DATA_DIR), "gvisor")
    yield node
    node.stop()


def _spec() -> pb.SandboxSpec:
    return pb.SandboxSpec(sandbox_id=new_sandbox_id(), template_id="base", cpu_count=1,
                          memory_mb=256, disk_mb=256, access_token="t0k")  # fmt: skip


async def _echo(sandbox: pb.Sandbox, text: str) -> str:
    async with EnvdClient(sandbox.envd_url, "t0k") as envd:
        return (await envd.run(f"echo {text}")).text


async def _counter(sandbox: pb.Sandbox) -> int:
    async with EnvdClient(sandbox.envd_url, "t0k") as envd:
        return int((await envd.run(background_counter.READ)).text)


async def _entered(config: GVisorConfig, sandbox_id: str, create: asyncio.Task[object]) -> None:
    """Wait until the node has begun ``sandbox_id`` on the host (its directory exists) and has
    not finished it: creates restored from a template snapshot take well under a second, so a
    fixed sleep would often kill the node after the create had already answered."""
    while not (config.sandboxes_dir / sandbox_id).exists():
        assert not create.done(), "the create finished before it could be cut"
        await asyncio.sleep(0.005)
    assert not create.done(), "the create finished before it could be cut"


async def test_sigkill_and_restart_leave_no_orphans(node: NodeProcess) -> None:
    config = GVisorConfig(data_dir=node.data_dir)
    baseline = await inventory(config)
    node.start()
    client = RemoteNode(node.url, node.token)
    try:
        survivor = await client.create(_spec())
        doomed = await client.create(_spec())
        cut_spec = _spec()
        cut = asyncio.create_task(client.create(cut_spec))
        await _entered(config, cut_spec.sandbox_id, cut)  # that create is now inside the node
        node.sigkill()
        with pytest.raises(NodeError):
            await cut
        assert await _echo(survivor, "alive") == "alive\n", "sandboxes outlive the node"
        await GVisorRuntime(config).runsc.delete(doomed.sandbox_id)  # dies while no node runs

        line = node.start()
        assert "adopted 1" in line, line
        listing = await client.list()
        assert [s.sandbox_id for s in listing.sandboxes] == [survivor.sandbox_id]
        after = await inventory(config)
        assert after.mentions(doomed.sandbox_id) == []
        assert set(after.sandbox_dirs) - set(baseline.sandbox_dirs) == {survivor.sandbox_id}
        assert await _echo(survivor, "adopted") == "adopted\n"

        assert await client.kill(survivor.sandbox_id) is True
        assert await client.kill(survivor.sandbox_id) is False  # nothing left to release
    finally:
        await client.close()
    assert (await inventory(config)).leaked_since(baseline) == {}


def test_a_server_on_a_remote_gvisor_node_finds_its_templates(
    node: NodeProcess, tmp_path: Path
) -> None:
    """The templates live beside the node, not the server: create of base works through a
    server with no template store of its own (review finding: it answered 404 to every create).
    The node stops while its template snapshot is still being taken: that boot goes too."""
    with served_leaving_nothing(node, tmp_path / "server") as server:
        assert server.first_key
        headers = {"X-API-KEY": server.first_key}
        with httpx.Client(base_url=server.api_url, headers=headers, timeout=60) as api:
            created = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60})
            assert created.status_code == 201, created.text
            sid = created.json()["sandboxID"]
            assert api.get(f"/sandboxes/{sid}").json()["state"] == "running"
            assert api.delete(f"/sandboxes/{sid}").status_code == 204
            missing = api.post("/v2/sandboxes", json={"templateID": "nope", "timeout": 60})
            assert missing.status_code == 404 and missing.json()["code"] == 404


async def test_a_paused_sandbox_is_neither_snapshotted_nor_rolled_back(node: NodeProcess) -> None:
    """The control plane checks a sandbox is running before a snapshot or a rollback, but a
    pause from another caller can reach the node in between: the node then refuses with its
    conflict code (409 upstream) and leaves the sandbox paused, to be resumed intact. A
    rollback that ran would have restarted a sandbox its owner records paused."""
    config = GVisorConfig(data_dir=node.data_dir)
    baseline = await inventory(config)
    node.start()
    client = RemoteNode(node.url, node.token)
    try:
        sandbox = await client.create(_spec())
        snapshot = await client.checkpoint(sandbox.sandbox_id, "snapcoffee0000000001")
        await client.pause(sandbox.sandbox_id)
        (held,) = [h for h in (await client.list()).sandboxes if h.sandbox_id == sandbox.sandbox_id]
        assert not held.files_only
        with pytest.raises(NodeConflict, match="not running"):
            await client.checkpoint(sandbox.sandbox_id, "snapcoffee0000000002")
        with pytest.raises(NodeConflict, match="paused"):
            await client.restore(sandbox.sandbox_id, snapshot)
        assert not (await client.resume(sandbox.sandbox_id, "t0k")).rebooted
        assert await _echo(sandbox, "intact") == "intact\n"
        # Filesystem-only: the sandbox boots afresh, its envd handed the token again.
        async with EnvdClient(sandbox.envd_url, "t0k") as envd:
            await envd.run("echo kept > /home/user/f; sleep 1000 > /dev/null 2>&1 &")
        assert await client.pause(sandbox.sandbox_id, memory=False) > 0
        (held,) = [h for h in (await client.list()).sandboxes if h.sandbox_id == sandbox.sandbox_id]
        assert held.files_only  # (what a control plane that lost the answer records)
        resumed = await client.resume(sandbox.sandbox_id, "t0k")
        assert resumed.rebooted and resumed.sandbox.envd_version
        assert await _echo(sandbox, "$(cat /home/user/f) $(pgrep -x sleep || echo none)") == (
            "kept none\n"
        )
        await client.delete_snapshot(snapshot)
        assert await client.kill(sandbox.sandbox_id) is True
        # The first create also started the template's snapshot (a sandbox of its own).
        await asyncio.to_thread(wait_for_template_snapshot, node.data_dir, "base")
    finally:
        await client.close()
    for _ in range(150):  # that sandbox's tear-down follows its snapshot
        if not (leaked := (await inventory(config)).leaked_since(baseline)):
            break
        await asyncio.sleep(0.2)
    assert leaked == {}


async def _cut_mid_save(node: NodeProcess, config: GVisorConfig, sandbox_id: str,
                        save: asyncio.Task[object], files: bool = False) -> None:  # fmt: skip
    """SIGKILL the node while runsc saves the sandbox (the node's answer not given yet), then
    wait until that orphaned ``runsc checkpoint`` (with ``files``: the ``runsc exec`` reading
    its files) has ended, as it runs on without the node."""
    assert node.proc is not None
    while not checkpointing(config, sandbox_id, files, parent=node.proc.pid):
        assert not save.done(), "the save finished before it could be cut"
        await asyncio.sleep(0.002)
    node.sigkill()
    with pytest.raises(NodeError):
        await save
    for _ in range(300):
        if not checkpointing(config, sandbox_id, files):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the orphaned save never ended")


async def test_a_node_killed_mid_files_save_lets_the_sandbox_run_on(node: NodeProcess) -> None:
    """The node SIGKILLed while a filesystem-only pause reads the sandbox's files, which stops
    its processes until the pause kills them: the restarted node adopts it running and lets
    its processes go (they count on), the half-written tar and the marker are gone, and the
    sandbox pauses so and boots from its files as any other."""
    async with _one_sandbox(node) as h:
        async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
            files = "head -c 48M /dev/zero > /home/user/big && echo kept > /home/user/f"
            await envd.run(f"{files}; nohup sh -c '{background_counter.LOOP}' > /dev/null 2>&1 &")
        await _counter(h.sandbox)  # (waits for its first value)
        save = asyncio.create_task(h.client.pause(h.sid, memory=False))
        await _cut_mid_save(node, h.config, h.sid, save, files=True)
        await h.restart()
        assert await h.statuses() == [(h.sid, pb.SANDBOX_STATUS_RUNNING)]
        root = h.config.sandboxes_dir / h.sid
        assert _partial_saves(h.config) == [] and not (root / "saving").exists()
        before = await _counter(h.sandbox)
        await asyncio.sleep(0.3)
        assert await _counter(h.sandbox) > before, "its processes were left stopped"

        assert await h.client.pause(h.sid, memory=False) > 48 << 20
        assert (await h.client.resume(h.sid, "t0k")).rebooted
        assert await _echo(h.sandbox, "$(cat /home/user/f)") == "kept\n"
        assert await h.client.kill(h.sid) is True


async def test_a_node_killed_mid_resume_leaves_the_sandbox_paused_and_nothing_running(
    node: NodeProcess,
) -> None:
    """The node SIGKILLed while it resumes a sandbox, from its memory and then from its
    files: what the restore or the boot started would run on without it while the sandbox
    counts as paused (its saved state goes only once it runs), holding memory no one sees.
    The restarted node stops it; the sandbox is paused, and resumes as any other. (This node
    keeps no paused sandbox's processes: a resume restores, and lasts long enough to cut.)"""
    node.extra_env["EMBERBOX_PAUSE_KEEP_S"] = "0"
    async with _one_sandbox(node) as h:
        async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
            await envd.run("echo kept > /home/user/f")
        group = GVisorRuntime(h.config)._cgroup(h.sid)
        for memory in (True, False):
            await h.client.pause(h.sid, memory=memory)
            resume = asyncio.create_task(h.client.resume(h.sid, "t0k"))
            # From its memory: as the restore starts the sandbox. From its files: once the
            # boot has started it, while the node waits for its envd to apply the files.
            await _until(resume, lambda: _runsc_starts(h.config, h.sid))
            if not memory:
                await _until(resume, lambda: not _runsc_starts(h.config, h.sid))
            node.sigkill()
            with pytest.raises(NodeError):
                await resume
            await asyncio.sleep(1)  # what it started runs on meanwhile, if anything
            await h.restart()
            assert await h.statuses() == [(h.sid, pb.SANDBOX_STATUS_PAUSED)]
            assert cgroups.procs(group) == [], "a paused sandbox still runs"
            resumed = await h.client.resume(h.sid, "t0k")
            assert resumed.rebooted is not memory
            assert await _echo(h.sandbox, "$(cat /home/user/f)") == "kept\n"
        assert await h.client.kill(h.sid) is True


async def test_a_node_killed_mid_rollback_leaves_the_sandbox_paused_at_the_snapshot(
    node: NodeProcess,
) -> None:
    """The node SIGKILLed while runsc restores a sandbox for a rollback, after it stopped
    what ran: the sandbox is not lost. The restarted node holds it paused at the snapshot,
    with its saved memory's size, nothing of it running; a resume brings it back there."""
    async with _one_sandbox(node) as h:
        async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
            await envd.run("echo then > /home/user/mark")
        snapshot = await h.client.checkpoint(h.sid, "snapcoffee0000000004")
        try:
            async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
                await envd.run("echo now > /home/user/mark")
            rollback = asyncio.create_task(h.client.restore(h.sid, snapshot))
            await _until(rollback, lambda: _runsc_starts(h.config, h.sid))
            node.sigkill()
            with pytest.raises(NodeError):
                await rollback
            await asyncio.sleep(1)  # what the restore started runs on meanwhile, if anything
            await h.restart()
            [held] = (await h.client.list()).sandboxes
            assert held.status == pb.SANDBOX_STATUS_PAUSED and held.paused_bytes > 1 << 20
            assert cgroups.procs(GVisorRuntime(h.config)._cgroup(h.sid)) == []
            assert not (await h.client.resume(h.sid, "t0k")).rebooted
            assert await _echo(h.sandbox, "$(cat /home/user/mark)") == "then\n"
        finally:
            await h.client.delete_snapshot(snapshot)
        assert await h.client.kill(h.sid) is True


@pytest.mark.parametrize("how", ["sigkill", "stop_in_swap", "stop", "successor_keeps_none"])
async def test_a_node_restarted_while_it_keeps_a_paused_sandbox_hands_it_to_its_successor(
    node: NodeProcess, how: str
) -> None:
    """A paused sandbox's processes kept for a fast resume (``runtimes/gvisor/kept.py``)
    outlive a SIGKILLed node, stopped and frozen, as running sandboxes do, and a stopped one
    once they are in swap: its successor keeps them for what is left of the keep, and a
    resume continues them. A node that stops lets resident ones go, and a successor that keeps
    none (``EMBERBOX_PAUSE_KEEP_S=0``) stops them as it starts: the resume then restores the
    saved memory. Either way the sandbox stays paused and loses nothing."""
    if how == "stop_in_swap":
        if not cgroups.swap_in_ram():
            pytest.skip("the host has no swap in RAM (scripts/setup adds a compressed one, zram)")
        node.extra_env["EMBERBOX_OFFLOAD_IDLE_S"] = "1"
    continued = how in ("sigkill", "stop_in_swap")
    async with _one_sandbox(node) as h:
        async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
            await envd.run(f"echo kept > /home/user/f; nohup sh -c '{background_counter.LOOP}'"
                           " > /dev/null 2>&1 &")  # fmt: skip
            counted = int((await envd.run(background_counter.READ)).text)
        group = GVisorRuntime(h.config)._cgroup(h.sid)
        sentry = sentry_pid(group)
        await h.client.pause(h.sid)
        assert cgroups.procs(group), "the paused sandbox's processes were not kept"
        if how == "stop_in_swap":
            deadline = asyncio.get_running_loop().time() + 60
            while (used := cgroups.usage(group)) is None or used.mem_used > 12 << 20:
                assert asyncio.get_running_loop().time() < deadline, "never moved to swap"
                await asyncio.sleep(0.1)
        if how.startswith("stop"):
            node.stop()
        else:
            node.sigkill()
        if how != "stop":
            assert sentry_pid(group) == sentry and cgroups.frozen(group)
        if how == "successor_keeps_none":
            node.extra_env["EMBERBOX_PAUSE_KEEP_S"] = "0"
        await h.restart()
        assert await h.statuses() == [(h.sid, pb.SANDBOX_STATUS_PAUSED)]
        if continued:
            assert sentry_pid(group) == sentry and cgroups.frozen(group)
        else:
            assert cgroups.procs(group) == [], "a paused sandbox still runs"
        resumed = await h.client.resume(h.sid, "t0k")
        assert not resumed.rebooted
        if continued:
            assert sentry_pid(group) == sentry, "restored, not continued"
        else:
            assert sentry_pid(group) != sentry, "its processes were not stopped"
        assert await _echo(h.sandbox, "$(cat /home/user/f)") == "kept\n"
        async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
            now = int((await envd.run(background_counter.READ)).text)
        assert counted <= now < counted + 10, (counted, now)  # it did not count paused
        assert await h.client.kill(h.sid) is True


async def _until(task: asyncio.Task[object], condition: Callable[[], bool]) -> None:
    while not condition():
        assert not task.done(), "it finished before it could be cut"
        await asyncio.sleep(0.002)


def _runsc_starts(config: GVisorConfig, sandbox_id: str) -> bool:
    """Whether a ``runsc restore`` or ``runsc run`` is starting ``sandbox_id`` right now."""
    for pid in runsc_pids(config):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"run" in argv or b"restore" in argv) and sandbox_id.encode() in argv:
            return True
    return False


def _partial_saves(config: GVisorConfig) -> list[Path]:
    """Half-written memory images: a pause's in a sandbox's directory, a snapshot's."""
    found = list(config.sandboxes_dir.glob("*/*.partial"))
    return found + list(config.snapshots_dir.glob("*.partial"))


async def test_a_node_killed_mid_save_leaves_the_sandbox_running_and_no_partial_image(
    node: NodeProcess,
) -> None:
    """The node SIGKILLed while runsc checkpoints a sandbox for a pause, then for a snapshot:
    the restarted node lets its kernel (paused for the checkpoint) run again and adopts it
    running, its processes counting on; the half-made images, which no one would ever read
    or delete, are gone; and the sandbox pauses and resumes as any other."""
    async with _one_sandbox(node) as h:
        async with EnvdClient(h.sandbox.envd_url, "t0k") as envd:
            quiet = "> /dev/null 2>&1 &"
            await envd.run(f"nohup {memory_holder(160)} {quiet}"
                           f" nohup sh -c '{background_counter.LOOP}' {quiet}")  # fmt: skip
            for _ in range(200):
                if (await envd.run(f"test -e {HELD} && echo y")).text == "y\n":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the memory holder never started")
        cuts = [
            lambda: h.client.pause(h.sid),
            lambda: h.client.checkpoint(h.sid, "snapcoffee0000000003"),
        ]
        for cut in cuts:
            await _cut_mid_save(node, h.config, h.sid, asyncio.create_task(cut()))
            await h.restart()
            assert await h.statuses() == [(h.sid, pb.SANDBOX_STATUS_RUNNING)]
            assert _partial_saves(h.config) == []
            before = await _counter(h.sandbox)
            await asyncio.sleep(0.3)
            assert await _counter(h.sandbox) > before, "not counting"

        assert await h.client.pause(h.sid) > 100 << 20
        assert not (await h.client.resume(h.sid, "t0k")).rebooted
        assert await _echo(h.sandbox, "$(pgrep -c -f '[1]e6')") == "1\n"
        assert await h.client.kill(h.sid) is True


async def test_a_limit_a_killed_node_left_lowered_mid_offload_is_set_back_at_its_restart(
    node: NodeProcess,
) -> None:
    """An offload step lowers a running sandbox's memory limit for a moment (v1; on v2 it
    opens its swap): the node SIGKILLed then leaves it so, and its restart sets it back as the
    sandbox's boot did, so the sandbox still holds what its memory allows."""
    async with _one_sandbox(node) as h:
        group = f"{h.config.cgroup_base}/{h.sid}"
        booted = cgroups.usage(group)
        assert booted is not None
        node.sigkill()
        cut = 64 << 20  # what a step between its write and its restore would have left
        if cgroups.is_v1():
            (cgroups.CGROUP_ROOT / "memory" / group / "memory.limit_in_bytes").write_text(str(cut))
        else:
            (cgroups.CGROUP_ROOT / group / "memory.max").write_text(str(cut))
            (cgroups.CGROUP_ROOT / group / "memory.swap.max").write_text("max")
        await h.restart()
        usage = cgroups.usage(group)
        assert usage is not None and usage.mem_limit == booted.mem_limit
        if cgroups.is_v1():
            memsw = cgroups.CGROUP_ROOT / "memory" / group / "memory.memsw.limit_in_bytes"
            assert not memsw.exists() or int(memsw.read_text()) == booted.mem_limit
        else:
            assert (cgroups.CGROUP_ROOT / group / "memory.swap.max").read_text().strip() == "0"
        hold = "python3 -c 'b = bytearray(160 << 20); print(len(b))'"
        assert await _echo(h.sandbox, f"$({hold})") == f"{160 << 20}\n"
        assert await h.client.kill(h.sid) is True


class _Harness:
    """A node holding one sandbox, and a client for it that outlives the node's restarts."""

    def __init__(self, node: NodeProcess, config: GVisorConfig, sandbox: pb.Sandbox,
                 client: RemoteNode) -> None:  # fmt: skip
        self.node, self.config, self.sandbox, self.client = node, config, sandbox, client
        self.sid = sandbox.sandbox_id

    async def restart(self) -> None:
        """Start the killed node again, which adopts the sandbox, and talk to the new one."""
        line = self.node.start()
        assert "adopted 1" in line, line
        await self.client.close()
        self.client = RemoteNode(self.node.url, self.node.token)

    async def statuses(self) -> list[tuple[str, int]]:
        return [(s.sandbox_id, s.status) for s in (await self.client.list()).sandboxes]


@contextlib.asynccontextmanager
async def _one_sandbox(node: NodeProcess) -> AsyncIterator[_Harness]:
    """Start the node and one sandbox in it. Afterwards the sandbox is gone (a failure must not
    leave it spinning on the host), no half-written image is left, and the host is as before."""
    config = GVisorConfig(data_dir=node.data_dir)
    baseline = await inventory(config)
    node.start()
    client = RemoteNode(node.url, node.token)
    made: _Harness | None = None
    try:
        made = _Harness(node, config, await client.create(_spec()), client)
        yield made
    finally:
        await (made.client if made else client).close()
        if made is not None:
            await GVisorRuntime(config).kill(made.sid)
    assert _partial_saves(config) == []
    assert (await inventory(config)).leaked_since(baseline) == {}
