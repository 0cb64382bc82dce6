"""The sudo broker and its shim (guest/sudo_broker.py, guest/sudo.py), run on the host: the
broker on this test's event loop with its socket in a temporary directory, the shim as a real
process. What sudo'd commands must do as real sudo's would: exit with their code, take the
signals their sudo gets, and die with it; and what the broker must survive: a malformed
request (its fds closed) and long commands (no thread of the loop's pool held for them).
Every command ends by itself within ~30 s: a broker that failed to end one keeps a thread
waiting for it, which the test's loop waits for as it closes."""

from __future__ import annotations

import array
import asyncio
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emberbox.envd.guest import sudo_broker
from emberbox.envd.guest.sudo import FORWARDED

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the broker starts commands as root")

_SHIM = "import sys; from emberbox.envd.guest import sudo; sudo.SOCKET_PATH = sys.argv[1]; " \
    "sys.exit(sudo.main(sys.argv[2:]))"  # fmt: skip


@pytest.fixture
async def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    path = str(tmp_path / "run" / "sudo.sock")
    monkeypatch.setattr(sudo_broker, "SOCKET_PATH", path)
    serving = asyncio.create_task(sudo_broker.serve())
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline and not serving.done(), "the broker did not listen"
        await asyncio.sleep(0.01)
    yield path
    serving.cancel()


def _as_a_terminal_would(ignore_hangup: bool = False) -> None:
    """In the shim, before its exec: the forwarded signals at their defaults, whatever this
    test process was started with (under ``nohup`` SIGHUP is ignored, and stays so through
    exec); SIGHUP ignored with ``ignore_hangup``, as ``nohup sudo ...`` starts it."""
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_DFL)
    if ignore_hangup:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def _sudo(
    socket_path: str, *argv: str, ignore_hangup: bool = False
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SHIM, socket_path, *argv, stdout=asyncio.subprocess.PIPE,
        preexec_fn=functools.partial(_as_a_terminal_would, ignore_hangup),
    )  # fmt: skip


async def _pid_in(path: Path) -> int:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the command did not start"
        await asyncio.sleep(0.01)
    return int(path.read_text())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _until_gone(pgid: int) -> None:
    deadline = time.monotonic() + 10
    while _group_alive(pgid):
        assert time.monotonic() < deadline, f"the command's group {pgid} still runs"
        await asyncio.sleep(0.02)


async def test_the_exit_code_and_output_come_back(broker: str) -> None:
    shim = await _sudo(broker, "sh", "-c", "id -u; exit 7")
    out, _ = await shim.communicate()
    assert (shim.returncode, out) == (7, b"0\n")


async def test_a_killed_sudo_takes_its_command_with_it(broker: str, tmp_path: Path) -> None:
    """envd kills a command's group with SIGKILL (kill, its end of time): the shim can pass
    nothing on, so its going is what ends the command."""
    pidfile = tmp_path / "pid"
    shim = await _sudo(broker, "sh", "-c", f"echo $$ > {pidfile}; sleep 30")
    pid = await _pid_in(pidfile)
    assert os.getpgid(pid) == pid  # (its own group: the caller's may be in another session)
    shim.kill()
    await shim.wait()
    await _until_gone(pid)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_the_signals_sudo_gets_reach_the_command(
    broker: str, tmp_path: Path, signum: signal.Signals
) -> None:
    pidfile = tmp_path / "pid"
    script = f"trap 'echo got; exit 5' {signum.name[3:]}; echo $$ > {pidfile}; " \
        "for i in $(seq 300); do sleep 0.05; done"  # fmt: skip
    shim = await _sudo(broker, "sh", "-c", script)
    pid = await _pid_in(pidfile)
    shim.send_signal(signum)
    out, _ = await asyncio.wait_for(shim.communicate(), 10)
    assert (shim.returncode, out) == (5, b"got\n")
    await _until_gone(pid)


async def test_nohup_sudo_leaves_the_command_ignoring_hangups(broker: str, tmp_path: Path) -> None:
    """A shim started ignoring SIGHUP (``nohup sudo ...``) forwards none, and its command
    ignores it too (a hangup of its group reaches it and does nothing), as real sudo's
    would; other signals still reach it. Its shell cannot even trap what it was started
    ignoring, so the trap below never runs."""
    pidfile = tmp_path / "pid"
    script = f"trap 'echo got; exit 5' HUP; echo $$ > {pidfile}; " \
        "for i in $(seq 300); do sleep 0.05; done"  # fmt: skip
    shim = await _sudo(broker, "sh", "-c", script, ignore_hangup=True)
    pid = await _pid_in(pidfile)
    shim.send_signal(signal.SIGHUP)
    os.killpg(pid, signal.SIGHUP)  # (the hangup of a terminal, say)
    await asyncio.sleep(0.5)
    assert shim.returncode is None and _group_alive(pid)
    shim.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(shim.communicate(), 10)
    assert (await shim.wait(), out) == (128 + signal.SIGTERM, b"")
    await _until_gone(pid)


async def test_a_malformed_request_has_its_fds_closed(broker: str) -> None:
    """Anyone may connect (the check of the caller follows the request): a request that is
    not JSON must not leave the three fds it carried open in envd, one leak per try."""
    read_end, write_end = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(broker)
        fds = array.array("i", [write_end] * 3)
        conn.sendmsg([b"{not json"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        os.close(write_end)
        reply = await asyncio.to_thread(conn.recv, 4096)
    assert reply[:4] == (1).to_bytes(4, "big") and b"sudo:" in reply
    # Every copy of the write end is closed: the read end sees its end.
    os.set_blocking(read_end, False)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert os.read(read_end, 1) == b""
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "the broker kept the request's fds open"
            await asyncio.sleep(0.02)
    os.close(read_end)


async def test_long_sudo_commands_hold_no_thread_of_the_loops_pool(broker: str) -> None:
    """More long sudo'd commands than the default executor has threads: envd's own
    ``to_thread`` calls (file checks, PTY starts) and another sudo still answer."""
    workers = min(32, (os.cpu_count() or 1) + 4)
    long = [await _sudo(broker, "sleep", "30") for _ in range(workers + 2)]
    try:
        await asyncio.sleep(0.5)  # (all of them reach the broker)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42
        quick = await _sudo(broker, "true")
        assert await asyncio.wait_for(quick.wait(), 10) == 0
    finally:
        for shim in long:
            shim.kill()
        for shim in long:
            await shim.wait()
