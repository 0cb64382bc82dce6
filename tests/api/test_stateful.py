"""Stateful sandboxes through the official e2b SDK on real gVisor sandboxes: pause that saves
memory to disk, resume, snapshots, create from a snapshot, fork, rollback (our extension), and
the bad input around them. Each test checks processes and files, not only status codes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxState,
    TimeoutException,
)

from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import ServerProcess
from emberbox.vocabulary import GUEST_HOSTNAME
from tests import background_counter
from tests.api.npm import JS, needs_node, run_script
from tests.runtimes.gvisor_support import HELD, checkpointing, memory_holder

COUNTER = background_counter.LOOP


@pytest.fixture
def api(gvisor_api: httpx.Client) -> httpx.Client:
    return gvisor_api


def served(server: ServerProcess, sbx: Sandbox, path: str, body: str) -> None:
    """``path`` of the HTTP server on port 8123 inside ``sbx``, through the proxy, is ``body``."""
    host = sbx.get_host(8123)
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{server.sandbox_url}/{path}", headers={"Host": host}, timeout=5)
        if r.status_code == 200:
            assert r.text == body
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)


def counter(sbx: Sandbox) -> int:
    return int(sbx.commands.run(background_counter.READ).stdout)


def counting(sbx: Sandbox) -> int:
    """The background counter's value, after checking that it still moves."""
    first = counter(sbx)
    deadline = time.monotonic() + 10
    while (now := counter(sbx)) == first:
        assert time.monotonic() < deadline, "the background counter stopped"
        time.sleep(0.1)
    return now


def assert_named(sbx: Sandbox) -> None:
    """The sandbox's host name is the one all sandboxes share, however it started (a restore
    keeps the name saved in memory), and it and the sandbox's id resolve locally: Java's
    ``getLocalHost``, ``sudo`` and ``hostname -f`` fail on a name that does not."""
    out = sbx.commands.run(
        'hostname; cat /etc/hostname; getent hosts "$(hostname)" "$E2B_SANDBOX_ID" | cut -d" " -f1'
    ).stdout.split()
    assert out == [GUEST_HOSTNAME, sbx.sandbox_id, "127.0.1.1", "127.0.1.1"], out


def test_pause_resume_five_times_keeps_processes_and_files(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    sbx = Sandbox.create(timeout=300)
    try:
        handle = sbx.commands.run(COUNTER, background=True)
        last = counting(sbx)
        for i in range(5):
            sbx.files.write(f"/home/user/before-pause-{i}.txt", f"write {i}")
            sbx.commands.run(f"echo {i} >> /home/user/log.txt")
            sbx.pause()
            assert sbx.get_info().state == SandboxState.PAUSED
            resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
            assert resumed.get_info().state == SandboxState.RUNNING
            now = counting(resumed)
            assert now > last  # the same process, counting on from where it was
            last = now
            for j in range(i + 1):
                assert resumed.files.read(f"/home/user/before-pause-{j}.txt") == f"write {j}"
            assert resumed.commands.run("cat /home/user/log.txt").stdout.split() == [
                str(j) for j in range(i + 1)
            ]
        pids = [p.pid for p in sbx.commands.list()]
        assert handle.pid in pids
    finally:
        sbx.kill()


def test_server_restart_between_pause_and_resume(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.commands.run(COUNTER, background=True)
        before = counting(sbx)
        sbx.files.write("/home/user/kept.txt", "across restarts")
        sbx.pause()
        gvisor_server.stop()
        gvisor_server.start()
        assert sbx.get_info().state == SandboxState.PAUSED
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert counting(resumed) > before
        assert resumed.files.read("/home/user/kept.txt") == "across restarts"
    finally:
        sbx.kill()


def test_a_server_killed_mid_pause_comes_back_with_the_sandbox_running(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """SIGKILL of the server, its node inside it, while runsc checkpoints a sandbox for a
    pause: the caller gets an error, and the restarted server finds the sandbox running (its
    record said pausing; the node adopted it running), its processes counting on and its
    files intact; it then pauses and resumes as any other."""
    config = GVisorConfig(data_dir=gvisor_server.data_dir)
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.commands.run(COUNTER, background=True)
        sbx.files.write("/home/user/kept.txt", "before the cut")
        sbx.commands.run(memory_holder(160), background=True)
        deadline = time.monotonic() + 20
        while sbx.commands.run(f"test -e {HELD} && echo y || echo n").stdout != "y\n":
            assert time.monotonic() < deadline, "the memory holder never started"
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            pause = pool.submit(sbx.pause)
            assert gvisor_server.proc is not None
            while not checkpointing(config, sbx.sandbox_id, parent=gvisor_server.proc.pid):
                assert not pause.done(), "the pause finished before it could be cut"
                time.sleep(0.002)
            gvisor_server.sigkill()
            assert pause.exception(timeout=60) is not None
        deadline = time.monotonic() + 30
        while checkpointing(config, sbx.sandbox_id):  # it runs on without the node
            assert time.monotonic() < deadline, "the orphaned runsc checkpoint never ended"
            time.sleep(0.1)
        gvisor_server.start(timeout_s=60)

        assert sbx.get_info().state == SandboxState.RUNNING
        assert list(config.sandboxes_dir.glob(f"{sbx.sandbox_id}/*.partial")) == []
        before = counting(sbx)
        assert sbx.files.read("/home/user/kept.txt") == "before the cut"
        sbx.pause()
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert counting(resumed) > before
    finally:
        sbx.kill()


def test_a_server_killed_mid_fork_leaves_no_checkpoint_behind(
    gvisor_server: ServerProcess, api: httpx.Client
) -> None:
    """SIGKILL of the server while a fork starts its sandboxes from the source's checkpoint:
    the restarted server removes that checkpoint (hidden from every list, it would have held
    disk and the team's snapshot quota for ever), records the cut-off forks as failed, and
    the source runs on."""
    config = GVisorConfig(data_dir=gvisor_server.data_dir)
    db = gvisor_server.db_url.split("///", 1)[1]
    images_before = set(config.snapshots_dir.iterdir())
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.files.write("/home/user/kept.txt", "the source's")
        with ThreadPoolExecutor(1) as pool:
            fork = pool.submit(api.post, f"/sandboxes/{sbx.sandbox_id}/fork",
                               json={"count": 4, "timeout": 60})  # fmt: skip
            deadline = time.monotonic() + 30
            while not _fork_checkpoint(db) or _partial_images(config):
                assert not fork.done(), f"the fork ended before it could be cut: {fork.result()}"
                assert time.monotonic() < deadline, "no checkpoint for the fork"
                time.sleep(0.002)
            gvisor_server.sigkill()
            assert fork.exception(timeout=60) is not None
        gvisor_server.start(timeout_s=60)

        assert _fork_checkpoint(db) == []
        assert set(config.snapshots_dir.iterdir()) == images_before
        states = gvisor_server.sandbox_states()
        cut = [sid for sid in states if sid != sbx.sandbox_id]
        assert all(states[sid][0] in ("failed", "killed") for sid in cut), states
        assert sbx.get_info().state == SandboxState.RUNNING
        assert sbx.files.read("/home/user/kept.txt") == "the source's"
    finally:
        sbx.kill()


def test_a_snapshot_left_without_its_row_is_removed_at_start(
    gvisor_server: ServerProcess, api: httpx.Client
) -> None:
    """A crash between the node's checkpoint and the row's commit, or between a delete's
    commit and its call to the node, leaves a checkpoint nothing refers to. The windows are
    milliseconds wide, so the test makes their outcome: it SIGKILLs the server and deletes
    one snapshot's row. The restarted server deletes that checkpoint and keeps the other."""
    config = GVisorConfig(data_dir=gvisor_server.data_dir)
    db = gvisor_server.db_url.split("///", 1)[1]
    sbx = Sandbox.create(timeout=120)
    try:
        kept, lost = (api.post(f"/sandboxes/{sbx.sandbox_id}/snapshots", json={}).json()
                      for _ in range(2))  # fmt: skip
        kept_id, lost_id = kept["snapshotID"], lost["snapshotID"]
        assert (config.snapshots_dir / lost_id).is_dir()
        gvisor_server.sigkill()
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DELETE FROM snapshots WHERE id = ?", (lost_id,))
        gvisor_server.start(timeout_s=60)

        assert not (config.snapshots_dir / lost_id).exists()
        assert (config.snapshots_dir / kept_id).is_dir()
        listed = api.get("/snapshots", params={"sandboxID": sbx.sandbox_id}).json()
        assert [s["snapshotID"] for s in listed] == [kept_id]
        child = Sandbox.create(kept_id, timeout=60)  # the one kept still starts sandboxes
        child.kill()
    finally:
        sbx.kill()
        for left in api.get("/snapshots", params={"sandboxID": sbx.sandbox_id}).json():
            api.delete(f"/templates/{left['snapshotID']}")


def _fork_checkpoint(db: str) -> list[str]:
    """Ids of the forks' own checkpoints in the server's database."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM snapshots WHERE internal")]


def _partial_images(config: GVisorConfig) -> list[Path]:
    return list(config.snapshots_dir.glob("*.partial"))


def test_snapshot_then_two_creates_diverge(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    src = Sandbox.create(timeout=300, envs={"FROM_SOURCE": "yes"})
    made: list[Sandbox] = []
    try:
        src.commands.run(COUNTER, background=True)
        src.files.write("/home/user/state.txt", "at snapshot")
        info = src.create_snapshot()
        src.files.write("/home/user/state.txt", "after snapshot")
        listed = Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed] == [info.snapshot_id]
        for i in range(2):
            sbx = Sandbox.create(info.snapshot_id, timeout=120)
            made.append(sbx)
            assert sbx.sandbox_id != src.sandbox_id
            assert sbx.files.read("/home/user/state.txt") == "at snapshot"
            sbx.files.write("/home/user/state.txt", f"copy {i}")
            assert counting(sbx) > 0  # the snapshot's processes run in the copy
            ids = sbx.commands.run("echo $E2B_SANDBOX_ID $FROM_SOURCE").stdout.split()
            assert ids == [sbx.sandbox_id, "yes"]
            assert_named(sbx)
        assert [m.files.read("/home/user/state.txt") for m in made] == ["copy 0", "copy 1"]
        assert src.files.read("/home/user/state.txt") == "after snapshot"
        # the copies hold their own tokens: the source's does not open them
        stolen = Sandbox.connect(made[0].sandbox_id)
        assert stolen.commands.run("true").exit_code == 0
        src.kill()  # snapshots outlive their source
        again = Sandbox.create(info.snapshot_id, timeout=60)
        made.append(again)
        assert again.files.read("/home/user/state.txt") == "at snapshot"
    finally:
        for sbx in made:
            sbx.kill()
        src.kill()
    Sandbox.delete_snapshot(info.snapshot_id)
    assert Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items() == []
    with pytest.raises(SandboxException, match="404"):  # the SDK's create maps no 404
        Sandbox.create(info.snapshot_id, timeout=60)


def test_named_snapshot_and_paging(
    gvisor_server: ServerProcess, gvisor_key: str, api: httpx.Client
) -> None:
    src = Sandbox.create(timeout=120)
    try:
        first = src.create_snapshot(name="stateful-named")
        second = src.create_snapshot(name="stateful-named")
        third = src.create_snapshot()
        assert first.snapshot_id == second.snapshot_id == "stateful-named"
        assert second.names == ["stateful-named"]
        page = api.get("/snapshots", params={"sandboxID": src.sandbox_id, "limit": 2})
        assert page.status_code == 200 and len(page.json()) == 2
        rest = api.get(
            "/snapshots",
            params={
                "sandboxID": src.sandbox_id,
                "limit": 2,
                "nextToken": page.headers["x-next-token"],
            },
        ).json()
        assert len(rest) == 1
        assert all(s["sizeBytes"] > 0 for s in [*page.json(), *rest])
        named = Sandbox.create("stateful-named", timeout=60)
        named.kill()
        # A 'team/' prefix is refused (one namespace: 'team/base' would be taken for the
        # template 'base'); snapshots named so before can still be deleted, as the Python SDK
        # sends the name ('/') and as the JS SDK does (%2F).
        r = api.post(f"/sandboxes/{src.sandbox_id}/snapshots", json={"name": "team/x"})
        assert r.status_code == 400 and "one namespace" in r.json()["message"], r.text
        db = gvisor_server.db_url.split("///", 1)[1]
        for old in ("team/one", "team/two"):
            made = src.create_snapshot(name=old.replace("/", "-"))
            assert made.snapshot_id == old.replace("/", "-")  # (a named one shows its name)
            with contextlib.closing(sqlite3.connect(db)) as conn, conn:
                conn.execute(
                    "UPDATE snapshots SET name = ? WHERE name = ?", (old, made.snapshot_id)
                )
        assert Sandbox.delete_snapshot("team/one") is True
        assert api.delete("/templates/team%2Ftwo").status_code == 204
        assert Sandbox.list_snapshots(name="team/one").next_items() == []
        assert Sandbox.list_snapshots(name="team/two").next_items() == []
    finally:
        src.kill()
    # (by id: a delete by the name would take both snapshots taken under it at once)
    for s in api.get("/snapshots", params={"sandboxID": src.sandbox_id}).json():
        assert api.delete(f"/templates/{s['id']}").status_code == 204
    assert third.snapshot_id


def test_fork_three_diverge_and_source_keeps_its_end_time(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    src = Sandbox.create(timeout=300)
    forks: list[Sandbox] = []
    try:
        src.commands.run(COUNTER, background=True)
        src.files.write("/home/user/who.txt", "source")
        src.commands.run(
            "cd /home/user && python3 -m http.server 8123 --bind 127.0.0.1",
            background=True,
            timeout=0,
        )
        served(gvisor_server, src, "who.txt", "source")  # relayed to the source's address
        end_at = src.get_info().end_at
        results = src.fork(count=3, timeout=120)
        assert len(results) == 3
        for r in results:
            assert isinstance(r, Sandbox), r
            forks.append(r)
        assert len({f.sandbox_id for f in forks} | {src.sandbox_id}) == 4
        for i, f in enumerate(forks):
            assert f.files.read("/home/user/who.txt") == "source"
            # The server the fork inherited answers on the fork's own address: the guest's
            # forwarder noticed it woke up in another network.
            served(gvisor_server, f, "who.txt", "source")
            f.files.write("/home/user/who.txt", f"fork {i}")
            assert counting(f) > 0
            assert_named(f)
        assert [f.files.read("/home/user/who.txt") for f in forks] == ["fork 0", "fork 1", "fork 2"]
        info = src.get_info()
        assert info.state == SandboxState.RUNNING and info.end_at == end_at
        assert src.files.read("/home/user/who.txt") == "source"
        assert counting(src) > 0
        assert_named(src)
        # the fork's image is gone once the forks run: it is not a listed snapshot
        assert Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items() == []
    finally:
        for f in forks:
            f.kill()
        src.kill()


def test_rollback_to_the_first_of_three_snapshots(
    gvisor_server: ServerProcess, gvisor_key: str, api: httpx.Client
) -> None:
    sbx = Sandbox.create(timeout=300)
    try:
        shots = []
        for step in range(3):
            sbx.files.write("/home/user/step.txt", f"step {step}")
            sbx.commands.run(f"echo {step} > /tmp/in-memory-fs")
            shots.append(sbx.create_snapshot().snapshot_id)
        sbx.files.write("/home/user/step.txt", "after")
        r = api.post(f"/sandboxes/{sbx.sandbox_id}/rollback", json={"snapshotID": shots[0]})
        assert r.status_code == 200, r.text
        assert r.json()["sandboxID"] == sbx.sandbox_id
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.files.read("/home/user/step.txt") == "step 0"
        assert again.commands.run("cat /tmp/in-memory-fs").stdout == "0\n"
        # and forward again, to the last one
        r = api.post(f"/sandboxes/{sbx.sandbox_id}/rollback", json={"snapshotID": shots[2]})
        assert r.status_code == 200, r.text
        assert again.files.read("/home/user/step.txt") == "step 2"
    finally:
        sbx.kill()
    for shot in shots:
        Sandbox.delete_snapshot(shot)


def test_bad_input_changes_nothing(
    gvisor_server: ServerProcess, gvisor_key: str, api: httpx.Client
) -> None:
    a = Sandbox.create(timeout=120)
    b = Sandbox.create(timeout=120)
    try:
        a.files.write("/home/user/mark.txt", "a")
        shot_b = b.create_snapshot().snapshot_id
        with pytest.raises(SandboxException, match="404"):
            Sandbox.create("snapdoesnotexist0000000000", timeout=30)
        for count in (0, 101):
            r = api.post(f"/sandboxes/{a.sandbox_id}/fork", json={"count": count})
            assert r.status_code == 400, r.text
            assert set(r.json()) >= {"code", "message"}
        r = api.post(f"/sandboxes/{a.sandbox_id}/rollback", json={"snapshotID": shot_b})
        assert r.status_code == 400 and "taken of sandbox" in r.json()["message"]
        r = api.post(f"/sandboxes/{a.sandbox_id}/rollback", json={"snapshotID": "nosuchsnap"})
        assert r.status_code == 404
        r = api.post(f"/sandboxes/{a.sandbox_id}/snapshots", json={"name": "base"})
        assert r.status_code == 400  # a template's name
        r = api.post(f"/sandboxes/{a.sandbox_id}/snapshots", json={"name": "n" * 300})
        assert r.status_code == 400 and "1-128 characters" in r.json()["message"]
        assert api.delete("/templates/nosuchsnapshot").status_code == 404
        a.pause()
        r = api.post(f"/sandboxes/{a.sandbox_id}/fork", json={"count": 1})
        assert r.status_code == 409
        with pytest.raises(SandboxException):
            a.create_snapshot()
        resumed = Sandbox.connect(a.sandbox_id)
        assert resumed.files.read("/home/user/mark.txt") == "a"
        assert Sandbox.list_snapshots(sandbox_id=a.sandbox_id).next_items() == []
        listed_b = Sandbox.list_snapshots(sandbox_id=b.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed_b] == [shot_b]
    finally:
        a.kill()
        b.kill()
    Sandbox.delete_snapshot(shot_b)


async def test_async_sdk_pause_resume_and_fork(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    sbx = await AsyncSandbox.create(timeout=120)
    try:
        await sbx.files.write("/home/user/a.txt", "async")
        await sbx.pause()
        resumed = await AsyncSandbox.connect(sbx.sandbox_id)
        assert await resumed.files.read("/home/user/a.txt") == "async"
        (fork,) = await resumed.fork(count=1, timeout=60)
        assert isinstance(fork, AsyncSandbox)
        assert await fork.files.read("/home/user/a.txt") == "async"
        await fork.kill()
    finally:
        await sbx.kill()


PRINTED = 20_000
PRINTER = f"for i in $(seq 1 {PRINTED}); do echo $i; [ $((i % 500)) = 0 ] && sleep 0.03; done"


async def test_output_streamed_across_pause_and_snapshot_is_all_read_once(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """A background command printing fast while its sandbox is paused and resumed, then
    snapshotted: the first stream ends (the SDK raises a TimeoutException saying the sandbox
    is paused), ``commands.connect(pid)`` reads on; every line arrives once, in order. Before
    envd ended its streams ahead of the checkpoint (``POST /detach``), a block of lines was lost
    in about one run of six (what was on the wire when the stream was cut)."""
    sbx = await AsyncSandbox.create(timeout=120)
    try:
        got: list[str] = []
        handle = await sbx.commands.run(PRINTER, background=True, on_stdout=got.append)
        for step in ("pause", "snapshot"):
            deadline = time.monotonic() + 30
            start = "".join(got).count("\n")
            while "".join(got).count("\n") < start + 1_000:  # printing, and read
                assert time.monotonic() < deadline, step
                await asyncio.sleep(0.02)
            if step == "pause":
                await sbx.pause()
                sbx = await AsyncSandbox.connect(sbx.sandbox_id)
            else:
                snapshot = await sbx.create_snapshot()
            with pytest.raises(TimeoutException, match="paused"):
                await handle.wait()
            handle = await sbx.commands.connect(handle.pid, on_stdout=got.append)
        assert (await handle.wait()).exit_code == 0
        assert [int(n) for n in "".join(got).split()] == list(range(1, PRINTED + 1))
    finally:
        await sbx.kill()
    await AsyncSandbox.delete_snapshot(snapshot.snapshot_id)


def test_pty_shell_state_survives_pause(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    """A shell variable set in a PTY is still there after pause/resume: the same bash process,
    re-attached with ``pty.connect``, its terminal still its controlling one (Ctrl-C
    interrupts what runs in the foreground)."""
    sbx = Sandbox.create(timeout=120)
    try:
        shell = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
        sbx.pty.send_stdin(shell.pid, b"export KEPT=across-pause\n")
        time.sleep(0.5)
        shell.disconnect()
        sbx.pause()
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        again = resumed.pty.connect(shell.pid, timeout=60)
        resumed.pty.send_stdin(shell.pid, b"sleep 60; echo slept-$((1+1))\n")
        # The sleep exec'd, in the shell's session (gVisor's /proc shows no terminal fields):
        # a Ctrl-C before its exec could be lost in the shell's child.
        sleeping = f"ps -o comm= -s {shell.pid} | grep -x sleep || true"
        deadline = time.monotonic() + 30
        while resumed.commands.run(sleeping).stdout != "sleep\n":
            assert time.monotonic() < deadline, "the sleep never ran in the foreground"
            time.sleep(0.05)
        resumed.pty.send_stdin(shell.pid, b"\x03")  # Ctrl-C
        resumed.pty.send_stdin(shell.pid, b"echo value=$KEPT; exit 3\n")
        seen: list[bytes] = []
        with pytest.raises(CommandExitException) as exited:
            again.wait(on_pty=seen.append)
        assert exited.value.exit_code == 3
        assert b"value=across-pause" in b"".join(seen)
        assert b"slept-2" not in b"".join(seen)
    finally:
        sbx.kill()


@needs_node
def test_npm_sdk_pause_connect_snapshot_and_fork(
    gvisor_server: ServerProcess, gvisor_key: str, tmp_path: Path
) -> None:
    """The official npm SDK (2.51): its pause, ``/v2`` connect, snapshots and fork, and its
    filesystem-only pause (``keepMemory: false``) and ``onResume: 'reboot'``, on real sandboxes."""
    tag = uuid.uuid4().hex[:8]
    out = run_script(JS / "stateful.mjs", gvisor_server, gvisor_key, tmp_path, 240, SMOKE_TAG=tag)
    assert out["lifecycle"] == {"onTimeout": "pause", "autoResume": True}
    assert out["paused"] is True and out["stateWhilePaused"] == "paused"
    assert out["stateAfterConnect"] == "running"
    assert out["fileAfterResume"] == "before the pause"
    assert out["countAfter"] > out["countBefore"] > 0, "the background counter stopped"
    snapshot = out["snapshot"]
    assert snapshot == {"snapshotId": f"js-{tag}", "names": [f"js-{tag}"]}
    assert out["listed"] == [snapshot["snapshotId"]]
    assert out["childFile"] == "before the pause"
    assert out["sourceFileAfterChildWrite"] == "before the pause", "the child's write leaked"
    assert len(out["forks"]) == 2 and all(f.get("counting") for f in out["forks"]), out["forks"]
    assert out["forkFiles"] == ["fork 0", "fork 1"]
    assert out["sourceFileAfterForks"] == "before the pause"
    assert out["filesystemOnlyPause"] is True and out["stateAfterFilesystemPause"] == "paused"
    assert out["fileAfterReboot"] == "before the pause"
    assert out["countingBeforeFilesystemPause"] is True
    assert out["countingAfterReboot"] is False, "a process outlived a filesystem-only pause"
    assert out["sleepBeforePause"] != "none"  # what looks for it finds it
    assert out["sleepAfterRebootResume"] == "none", "onResume: 'reboot' restored the memory"
    assert out["snapshotDeleted"] is True and out["listedAfterDelete"] == 0
    # Deleting the snapshot leaves the sandbox started from it as it was.
    assert out["childAfterDelete"] == "the child wrote this"
    assert out["killed"] == [True] * (2 + len(out["forks"]))
    states = gvisor_server.sandbox_states()
    ids = [out["id"], out["childId"], *(f["id"] for f in out["forks"])]
    assert all(states[i] == ("killed", "killed by user") for i in ids), states


def test_a_copy_s_logs_begin_with_its_own_creation(api: httpx.Client) -> None:
    """A sandbox started from a snapshot restores its source's envd, journal and all: what
    the source ran before is not the copy's, and its logs begin with its own creation (as
    every sandbox's do: a template's snapshot and the warm pool hold envd's earlier entries)."""
    src = Sandbox.create(timeout=120)
    copy = None
    snapshot_id = None
    try:
        src.commands.run("echo in-the-source")
        snapshot_id = src.create_snapshot().snapshot_id
        copy = Sandbox.create(snapshot_id, timeout=120)
        copy.commands.run("echo in-the-copy")
        v1 = api.get(f"/sandboxes/{copy.sandbox_id}/logs").json()["logEntries"]
        v2 = api.get(f"/v2/sandboxes/{copy.sandbox_id}/logs", params={"direction": "forward"})
        assert v2.json()["logs"] == v1
        text = [e["message"] for e in v1]
        assert text[0].startswith("sandbox created from template"), text
        assert any("in-the-copy" in t for t in text), text
        assert not any("in-the-source" in t for t in text), text
        for sbx in (src, copy):
            entries = api.get(f"/sandboxes/{sbx.sandbox_id}/logs").json()["logEntries"]
            stamps = [dt.datetime.fromisoformat(e["timestamp"]) for e in entries]
            assert stamps == sorted(stamps), entries
        source = api.get(f"/sandboxes/{src.sandbox_id}/logs").json()["logEntries"]
        assert any("in-the-source" in e["message"] for e in source)
    finally:
        for made in (copy, src):
            if made is not None:
                made.kill()
        if snapshot_id is not None:
            Sandbox.delete_snapshot(snapshot_id)
