"""A process started as another user without a standby shell: vforked from a thread that holds
the user's ids (``Popen(user=...)`` would fork envd whole, on the event loop). It is the user
through and through, a cwd only root can enter still starts the ordinary way, and a start
cancelled while the thread spawns leaves no process behind. On the host, as root."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.creds import spawn_as_user
from emberbox.envd.process import manager as manager_module
from emberbox.envd.process import terminal as terminal_module
from emberbox.envd.process.manager import Exit, Feed, ProcessManager
from emberbox.envd.state import EnvdState
from emberbox.envd.users import User

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting as another user needs root")


async def _output(feed: Feed) -> tuple[str, Exit]:
    out = b""
    while not isinstance(event := await asyncio.wait_for(feed.get(), 20), Exit):
        out += getattr(event, "data", b"")
    return out.decode(), event


async def test_a_process_started_as_a_user_has_only_the_users_ids(sandbox_user: str) -> None:
    user = User.lookup(sandbox_user)
    manager = ProcessManager(EnvdState(standby_shells=0))
    show = "grep -E '^(Uid|Gid|Groups):' /proc/self/status; pwd"
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", show])
    _, feed = await manager.start(config, user, pty=None, stdin=False, tag=None)
    text, end = await _output(feed)
    assert end.exit_code == 0, text
    fields = {line.split(":")[0]: line.split()[1:] for line in text.splitlines()[:3]}
    assert fields["Uid"] == [str(user.uid)] * 4  # real, effective, saved, filesystem
    assert fields["Gid"] == [str(user.gid)] * 4
    assert sorted(map(int, fields["Groups"])) == sorted(user.groups())
    assert text.splitlines()[3] == user.home


async def test_a_cwd_only_root_can_enter_still_starts_there(
    sandbox_user: str, tmp_path: Path
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "id -un; pwd"], cwd=str(closed))
    _, feed = await manager.start(
        config, User.lookup(sandbox_user), pty=None, stdin=False, tag=None
    )
    text, end = await _output(feed)
    assert (end.exit_code, text.split()) == (0, [sandbox_user, str(closed)])


async def test_a_start_cancelled_while_it_spawns_hands_its_fds_to_no_one_and_leaves_no_process(
    sandbox_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call ends at once, but the spawn thread still uses the child's stdio fds: they are
    closed only once it is done with them (closed before, their numbers went to the next
    files envd opened, and the user's process got those), and what it started is killed and
    reaped. The thread is held until files are opened, to make that order certain."""
    gate = threading.Event()
    spawned: list[subprocess.Popen[bytes]] = []
    failed: list[OSError] = []  # (its fds closed under it)
    handed: list[str] = []

    async def held(user: User, popen: Callable[[], subprocess.Popen[bytes]]) -> Any:
        def after_the_gate() -> subprocess.Popen[bytes]:
            gate.wait(10)
            # What the child's stdio numbers are as it is spawned (``_spawn``'s ``stdio``).
            cells = dict(zip(popen.__code__.co_freevars, popen.__closure__ or (), strict=True))
            handed.extend(_what_is(fd) for fd in cells["stdio"].cell_contents)
            try:
                spawned.append(popen())
            except OSError as exc:
                failed.append(exc)
                raise
            return spawned[-1]

        return await spawn_as_user(user, after_the_gate)

    monkeypatch.setattr(manager_module, "spawn_as_user", held)
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "echo leaked; echo leaked >&2; sleep 30"])
    user = User.lookup(sandbox_user)
    starting = asyncio.create_task(manager.start(config, user, pty=None, stdin=True, tag=None))
    await asyncio.sleep(0.05)  # (it handed the spawn to its thread and waits)
    assert starting.cancel()
    decoy = tmp_path / "decoy"
    decoy.touch()
    opened: list[int] = []
    try:
        with pytest.raises(asyncio.CancelledError):  # at once: the thread is still held
            await asyncio.wait_for(starting, 5)
        opened += [os.open(decoy, os.O_RDWR) for _ in range(8)]  # (the lowest free numbers)
        gate.set()
    finally:
        gate.set()
        for fd in opened:
            os.close(fd)
    deadline = time.monotonic() + 10
    while not (spawned or failed):  # (the thread may still spawn, after the call ended)
        assert time.monotonic() < deadline, "the spawn never ran"
        await asyncio.sleep(0.01)
    assert failed == []
    assert handed and all(what.startswith("pipe:") for what in handed), handed
    (child,) = spawned
    while child.returncode is None:  # (set by the reaper's wait)
        assert time.monotonic() < deadline, "the process started for the cancelled call lives on"
        await asyncio.sleep(0.05)
    assert child.returncode == -signal.SIGKILL
    assert decoy.read_bytes() == b""
    assert manager.list() == []


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie no one reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "pty"])
@pytest.mark.parametrize("caller", ["waiting", "cancelled"])
def test_a_spawn_under_way_at_shutdown_leaves_no_process(
    caller: str, terminal: bool, sandbox_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """envd shuts down while a start as another user is still being spawned in its thread
    (held there until after the shutdown began), and its event loop ends: the shutdown
    waits for that spawn and kills what it started, whether its caller still waited for it
    or was cancelled. The thread goes on without the loop, so nothing would later. A PTY's
    process (behind ``setsid -c``) leads no process group yet when its spawn returns: it is
    killed by its pid too."""
    gate = threading.Event()
    spawned: list[subprocess.Popen[bytes]] = []

    async def held(user: User, popen: Callable[[], subprocess.Popen[bytes]]) -> Any:
        def after_the_gate() -> subprocess.Popen[bytes]:
            gate.wait(10)
            spawned.append(popen())
            return spawned[-1]

        return await spawn_as_user(user, after_the_gate)

    async def serve_then_stop() -> None:
        manager = ProcessManager(EnvdState(standby_shells=0))
        config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", "sleep 60"])
        user = User.lookup(sandbox_user)
        size = pb.PTY(size=pb.PTY.Size(cols=80, rows=24)) if terminal else None
        starting = asyncio.create_task(manager.start(config, user, pty=size, stdin=False, tag=None))
        deadline = time.monotonic() + 10
        while not manager._spawns:  # (until it handed the spawn to its thread and waits)
            assert time.monotonic() < deadline, "the start never reached its spawn"
            await asyncio.sleep(0.01)
        if caller == "cancelled":  # (a client gone as the server stops)
            starting.cancel()
        threading.Timer(0.3, gate.set).start()  # the spawn ends after the shutdown began
        await manager.close()  # (as envd's lifespan ends; then its loop ends)

    monkeypatch.setattr(manager_module, "spawn_as_user", held)
    if terminal:  # (as envd asks at its start: the PTY goes behind setsid)
        assert terminal_module.probe() is not None
    try:
        asyncio.run(serve_then_stop())
    finally:
        gate.set()
    deadline = time.monotonic() + 10
    while not spawned:  # (without the wait, the thread spawns after the loop ended)
        assert time.monotonic() < deadline, "the spawn never ran"
        time.sleep(0.01)
    (child,) = spawned
    while not _gone(child.pid):
        assert time.monotonic() < deadline, "the process spawned at shutdown lives on"
        time.sleep(0.05)
    child.wait(10)  # (a zombie of this test process otherwise)


def _what_is(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "closed"
