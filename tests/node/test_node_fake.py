"""Node logic without root or runsc: the fake runtime counts every teardown, and its envd is a
real loopback HTTP server, so the node's handshake, locks and dead-sandbox check run for real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from emberbox._proto.node import node_pb2 as pb
from emberbox.node.client import (
    EmbeddedNode,
    NodeBadRequest,
    NodeSandboxNotFound,
    NodeUnsupported,
)
from emberbox.node.orchestrator import BootFailed, Orchestrator
from emberbox.runtimes.base import SandboxSpec, SandboxStatus
from emberbox.vocabulary import new_sandbox_id

from .fake_runtime import FILES_BYTES, MEMORY_BYTES, FakeRuntime


def _spec(sandbox_id: str | None = None) -> pb.SandboxSpec:
    return pb.SandboxSpec(
        sandbox_id=sandbox_id or new_sandbox_id(),
        template_id="base",
        cpu_count=1,
        memory_mb=128,
        disk_mb=64,
        env_vars={"A": "1"},
        access_token="tok",
    )


async def test_one_handshake_carries_identity_token_and_clock(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0)
    await node.start()
    try:
        sandbox = await node.create(_spec())
        (init,) = runtime.envds[sandbox.sandbox_id].inits
        assert init["accessToken"] == "tok" and init["envVars"] == {"A": "1"}
        assert init["defaultUser"] == "user" and "timestamp" in init
        assert sandbox.envd_version == "0.6.13" and sandbox.status == pb.SANDBOX_STATUS_RUNNING
        with pytest.raises(NodeBadRequest):
            await node.create(_spec(sandbox.sandbox_id))  # the id is taken: nothing changes
        assert [s.sandbox_id for s in (await node.list()).sandboxes] == [sandbox.sandbox_id]
    finally:
        await node.close()


async def test_concurrent_kills_tear_down_once(tmp_path: Path) -> None:
    runtime = FakeRuntime(kill_delay_s=0.05)
    orch = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    await orch.start()
    ids = [new_sandbox_id() for _ in range(5)]
    await asyncio.gather(*(orch.create(SandboxSpec(i, "base")) for i in ids))
    # API kill, reconciler orphan kill and dead check at once, three times each.
    runtime.die(ids[0])
    results = await asyncio.gather(
        *(orch.kill(i) for i in ids for _ in range(3)), orch.check_dead(), orch.check_dead()
    )
    await orch.close()
    kills = [bool(r) for r in results[:15]]
    # One caller released each sandbox (for the dead one, maybe the dead check instead).
    assert all(sum(kills[k * 3 : k * 3 + 3]) == 1 for k in range(1, 5)), kills
    assert sum(kills[0:3]) <= 1
    assert runtime.teardowns == dict.fromkeys(ids, 1)
    assert runtime.overlaps == 0
    assert orch.releases == dict.fromkeys(ids, 1)
    assert orch.list() == []


async def test_kill_waits_for_a_create_in_progress(tmp_path: Path) -> None:
    runtime = FakeRuntime(create_delay_s=0.2)
    orch = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    await orch.start()
    sandbox_id = new_sandbox_id()
    create = asyncio.create_task(orch.create(SandboxSpec(sandbox_id, "base")))
    await asyncio.sleep(0.05)  # inside runtime.create
    assert await orch.kill(sandbox_id) is True  # waited for the create, then released it
    await create
    assert runtime.teardowns[sandbox_id] == 1 and sandbox_id not in runtime.sandboxes
    await orch.close()


async def test_dead_sandbox_is_released_with_its_reason(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0.05)
    await node.start()
    try:
        sandbox = await node.create(_spec())
        runtime.die(sandbox.sandbox_id)
        for _ in range(100):
            listing = await node.list()
            if not listing.sandboxes:
                break
            await asyncio.sleep(0.02)
        assert not listing.sandboxes
        assert [(e.sandbox_id, e.reason) for e in listing.ended] == [(sandbox.sandbox_id, "oom")]
        assert runtime.teardowns[sandbox.sandbox_id] == 1
        with pytest.raises(NodeSandboxNotFound):
            await node.stats(sandbox.sandbox_id)
    finally:
        await node.close()


async def test_paused_sandbox_is_never_killed_by_the_node(tmp_path: Path) -> None:
    """The node keeps no end times: a paused sandbox stays until someone asks to kill it."""
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0.01)
    await node.start()
    try:
        sandbox = await node.create(_spec())
        await node.pause(sandbox.sandbox_id)
        await asyncio.sleep(0.3)  # many dead checks
        (held,) = (await node.list()).sandboxes
        assert held.status == pb.SANDBOX_STATUS_PAUSED
        assert held.paused_bytes == MEMORY_BYTES  # the disk its pause saved (the fake's)
        await node.close()
        node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0.01)
        await node.start()  # a restarted node still tells it
        (held,) = (await node.list()).sandboxes
        assert (held.status, held.paused_bytes) == (pb.SANDBOX_STATUS_PAUSED, MEMORY_BYTES)
        resumed = (await node.resume(sandbox.sandbox_id, "t0k")).sandbox
        assert resumed.status == pb.SANDBOX_STATUS_RUNNING and not runtime.teardowns
        assert resumed.paused_bytes == 0
    finally:
        await node.close()


async def test_the_listing_tells_a_files_only_pause_even_after_a_restart(tmp_path: Path) -> None:
    """A control plane that never got a pause's answer learns from the listing what it kept:
    only the files (a resume boots afresh, traffic must not wake it) or the memory too."""
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0)
    await node.start()
    try:
        files, memory = await node.create(_spec()), await node.create(_spec())
        await node.pause(files.sandbox_id, memory=False)
        await node.pause(memory.sandbox_id)
        for restarted in (False, True):
            if restarted:
                await node.close()
                node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0)
                await node.start()
            held = {h.sandbox_id: h for h in (await node.list()).sandboxes}
            kept = {sid: (h.files_only, h.paused_bytes) for sid, h in held.items()}
            assert kept == {files.sandbox_id: (True, FILES_BYTES),
                            memory.sandbox_id: (False, MEMORY_BYTES)}  # fmt: skip
        resumed = (await node.resume(files.sandbox_id, "tok")).sandbox  # (its create's token)
        assert resumed.status == pb.SANDBOX_STATUS_RUNNING and not resumed.files_only
        await node.pause(files.sandbox_id)  # with its memory this time
        (again,) = [h for h in (await node.list()).sandboxes if h.sandbox_id == files.sandbox_id]
        assert (again.files_only, again.paused_bytes) == (False, MEMORY_BYTES)
    finally:
        await node.close()


async def test_a_pause_the_node_did_not_live_to_record_is_listed_as_the_runtime_kept_it(
    tmp_path: Path,
) -> None:
    """The runtime paused the sandbox (only its files) and the node process died before it
    recorded that: the next one adopts it paused, with what the runtime kept, not what a
    record written for an earlier state says."""
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0)
    await node.start()
    try:
        sandbox = await node.create(_spec())
        await node.close()
        await runtime.pause(sandbox.sandbox_id, memory=False)  # (no node at it)
        node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0)
        await node.start()
        (held,) = (await node.list()).sandboxes
        assert held.status == pb.SANDBOX_STATUS_PAUSED
        assert (held.files_only, held.paused_bytes) == (True, FILES_BYTES)
    finally:
        await node.close()


async def test_a_resume_whose_envd_never_answers_leaves_the_sandbox_paused(
    tmp_path: Path,
) -> None:
    """The runtime ran it again (its saved memory spent) but envd did not answer: it is saved
    again, not left running unaccounted while the node and the control plane hold it paused;
    one that cannot be saved at all is released, never left running."""
    runtime = FakeRuntime()
    orch = Orchestrator(runtime, tmp_path, dead_check_every_s=0, boot_timeout_s=0.3)
    await orch.start()
    try:
        ids = [new_sandbox_id(), new_sandbox_id()]
        for sandbox_id in ids:
            await orch.create(SandboxSpec(sandbox_id, "base"))
            await orch.pause(sandbox_id)
            runtime.envds[sandbox_id].running.clear()  # envd hangs once it runs again
        with pytest.raises(BootFailed):
            await orch.resume(ids[0])
        assert runtime.sandboxes[ids[0]].status is SandboxStatus.PAUSED
        assert [r.state for r in orch.list()] == ["paused", "paused"]
        runtime.envds[ids[0]].running.set()
        record, _ = await orch.resume(ids[0])  # a later resume can try again
        assert record.state == "running"
        assert runtime.sandboxes[ids[0]].status is SandboxStatus.RUNNING

        async def cannot_save(sandbox_id: str, memory: bool = True) -> int:
            raise RuntimeError("checkpoint failed")

        runtime.pause = cannot_save  # type: ignore[method-assign]
        with pytest.raises(BootFailed):
            await orch.resume(ids[1])
        assert ids[1] not in runtime.sandboxes and runtime.teardowns[ids[1]] == 1
        assert [r.sandbox_id for r in orch.list()] == [ids[0]]
    finally:
        await orch.close()


async def test_restart_adopts_live_and_removes_half_created(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    first = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    await first.start()
    kept = new_sandbox_id()
    await first.create(SandboxSpec(kept, "base"))
    await first.close()
    # A create that a crash cut off: the record says "creating", the runtime has a machine.
    half = new_sandbox_id()
    await runtime.create(SandboxSpec(half, "base"))
    first.records.save(type(first.records.load_all()[kept])(half, "base", 0.0))
    second = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    report = await second.start()
    assert report.adopted == [kept] and report.removed == [half]
    assert [r.sandbox_id for r in second.list()] == [kept]
    await second.close()


async def test_checkpoint_and_restore_are_refused_where_the_runtime_cannot(
    tmp_path: Path,
) -> None:
    """The stateful seam exists already; a runtime without it answers UNIMPLEMENTED, and a
    refused restore leaves nothing behind."""
    runtime = FakeRuntime()
    node = EmbeddedNode(runtime, tmp_path, dead_check_every_s=0)
    await node.start()
    try:
        sandbox = await node.create(_spec())
        with pytest.raises(NodeUnsupported, match="cannot checkpoint"):
            await node.checkpoint(sandbox.sandbox_id, "snap1")
        with pytest.raises(NodeSandboxNotFound):
            await node.checkpoint("nosuchsandbox", "snap1")
        spec = _spec()
        spec.snapshot.CopyFrom(pb.Snapshot(snapshot_id="s", runtime="fake", path="/x"))
        with pytest.raises(NodeUnsupported, match="snapshots"):
            await node.create(spec)
        assert [s.sandbox_id for s in (await node.list()).sandboxes] == [sandbox.sandbox_id]
        assert spec.sandbox_id not in runtime.sandboxes
        assert await node.list_snapshots() == []  # and it holds none
    finally:
        await node.close()


def test_every_call_of_the_contract_is_served(tmp_path: Path) -> None:
    """A call added to node.proto without a handler would answer 404 to a separate node's
    control plane; the embedded one would not even have the method."""
    service = pb.DESCRIPTOR.services_by_name["Node"]
    node = EmbeddedNode(FakeRuntime(), tmp_path, dead_check_every_s=0)
    served = set(node.service.handlers)
    assert served == {f"/node.Node/{m.name}" for m in service.methods}


async def test_a_failing_teardown_does_not_keep_the_node_from_starting(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    first = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    await first.start()
    kept, dead = new_sandbox_id(), new_sandbox_id()
    await first.create(SandboxSpec(kept, "base"))
    await first.create(SandboxSpec(dead, "base"))
    await first.close()
    runtime.die(dead)
    runtime.broken.add(dead)
    second = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    report = await second.start()
    assert report.adopted == [kept] and dead not in report.removed
    assert dead in second.records.load_all()  # kept on disk: the next start tries again
    runtime.broken.clear()
    await second.close()
    third = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    assert (await third.start()).removed == [dead]
    await third.close()


async def test_the_runtime_s_host_hints_are_logged_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime()
    runtime.host_hints = lambda: ["this host is slow: run the fix"]  # type: ignore[method-assign]
    orch = Orchestrator(runtime, tmp_path, dead_check_every_s=0)
    with caplog.at_level("WARNING", logger="emberbox.node"):
        await orch.start()
    await orch.close()
    assert "this host is slow: run the fix" in caplog.messages
