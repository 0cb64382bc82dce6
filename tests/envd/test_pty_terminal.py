"""A PTY is its shell's controlling terminal, however envd started it (envd/process/terminal.py):
the shell leads a session of its own on the PTY, so Ctrl-C interrupts what runs in the
foreground, and the pid the client gets is the shell's. Behind ``setsid -c`` (no fork of envd),
and the old way where the image has no ``setsid``. On the host, as root: no sandbox needed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.creds import as_user
from emberbox.envd.process import terminal
from emberbox.envd.process.manager import Feed, Output, ProcessManager
from emberbox.envd.state import EnvdState
from emberbox.envd.users import User

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts processes as another user")


async def _until(feed: Feed, needle: bytes, seen: bytearray, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while needle not in seen:
            event = await feed.get()
            if isinstance(event, Output):
                seen += event.data
            else:
                raise AssertionError(f"the shell ended before {needle!r}: {bytes(seen)!r}")


async def _until_foreground(shell: int, comm: str, timeout_s: float = 10.0) -> None:
    """Until the job in the foreground of the shell's terminal runs ``comm`` (exec'd: a
    Ctrl-C before that can reach the shell's child before it takes SIGINT's default)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stat = Path(f"/proc/{shell}/stat").read_text()
        group = int(stat[stat.rindex(")") + 2 :].split()[5])
        with contextlib.suppress(OSError):
            if group != shell and _session(group)[0] == comm:
                return
        assert time.monotonic() < deadline, f"{comm} never ran in the foreground"
        await asyncio.sleep(0.01)


def _session(pid: int) -> tuple[str, int, int, int]:
    """comm, process group, session and terminal of ``pid`` (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return comm, int(fields[2]), int(fields[3]), int(fields[4])


@pytest.fixture
def shell_starts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``preexec_fn`` of each login shell envd starts (one means a fork of envd)."""
    seen: list[Any] = []
    real = subprocess.Popen

    def recording(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if argv[-2:] == ["-i", "-l"]:
            seen.append(kwargs.get("preexec_fn"))
        return real(argv, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording)
    return seen


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The setsid probe asked afresh (its answers are kept per process)."""
    monkeypatch.setattr(terminal, "_sets_ctty", {})
    monkeypatch.setattr(terminal, "_retry_at", 0.0)


async def _check_terminal(user: User, manager: ProcessManager | None = None) -> None:
    manager = manager or ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/bash", args=["-i", "-l"])
    size = pb.PTY(size=pb.PTY.Size(cols=80, rows=24))
    process, feed = await manager.start(config, user, pty=size, stdin=False, tag=None)
    seen = bytearray()
    try:
        await process.send_input(b"echo pid-$$-$((40+2))\n", to_pty=True)
        await _until(feed, f"pid-{process.pid}-42".encode(), seen)  # (the shell runs)
        comm, group, session, tty = _session(process.pid)
        assert (comm, group, session) == ("bash", process.pid, process.pid)
        assert tty != 0, "the shell has no controlling terminal"
        await process.send_input(b"echo started-$((0+1)); sleep 60; echo slept-$((1+1))\n",
                                 to_pty=True)  # fmt: skip
        await _until(feed, b"started-1", seen)
        await _until_foreground(process.pid, "sleep")
        await process.send_input(b"\x03", to_pty=True)  # Ctrl-C: SIGINT to the foreground
        await process.send_input(b"echo after-$((2+3))\n", to_pty=True)
        await _until(feed, b"after-5", seen)
        assert b"slept-2" not in seen
    finally:
        await manager.close()
        await process.finished.wait()


@pytest.mark.parametrize("name", ["root", "user"])
async def test_a_pty_behind_setsid_is_the_shells_controlling_terminal(
    name: str, sandbox_user: str, shell_starts: list[Any], fresh_probe: None
) -> None:
    assert terminal.probe() is not None, "this host's setsid does not take -c"  # (as envd starts)
    await _check_terminal(User.lookup(name if name == "root" else sandbox_user))
    assert shell_starts == [None]  # (no fork)


async def test_ptys_started_before_the_probe_answered_fork_then_setsid_is_used(
    shell_starts: list[Any], fresh_probe: None
) -> None:
    manager = ProcessManager(EnvdState(standby_shells=0))  # (no lifespan asked: unknown)
    await _check_terminal(User.lookup("root"), manager)  # (it closes the manager)
    assert terminal.known() is not None  # (the first PTY had it asked in the background)
    await _check_terminal(User.lookup("root"))
    assert shell_starts == [terminal.set_controlling_tty, None]


async def test_without_setsid_the_pty_starts_the_old_way(
    tmp_path: Path, shell_starts: list[Any], fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal, "SYSTEM_PATH", str(tmp_path))  # (no setsid there)
    assert terminal.wrapped(["/bin/bash"], os.environ["PATH"]) is None
    await _check_terminal(User.lookup("root"))
    assert shell_starts == [terminal.set_controlling_tty]


def _system_setsid(folder: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system's setsid replaced by ``script`` (beside a real ``true``)."""
    setsid = folder / "setsid"
    setsid.write_text(f"#!/bin/sh\n{script}\n")
    setsid.chmod(0o755)
    (folder / "true").symlink_to(shutil.which("true") or "/bin/true")
    monkeypatch.setattr(terminal, "SYSTEM_PATH", str(folder))
    return setsid


def test_a_setsid_that_fails_its_probe_is_not_used(
    tmp_path: Path, fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing = "echo 'setsid: invalid option -- c' >&2; exit 1"
    setsid = _system_setsid(tmp_path, refusing, monkeypatch)
    assert terminal.probe() is None
    assert terminal._sets_ctty == {str(setsid): False}  # (a definite answer: kept)
    assert terminal.wrapped(["/bin/bash", "-l"], os.environ["PATH"]) is None


def test_a_setsid_probe_that_times_out_is_asked_again(
    tmp_path: Path, fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _system_setsid(tmp_path, "sleep 5", monkeypatch)
    monkeypatch.setattr(terminal, "PROBE_TIMEOUT_S", 0.2)
    assert terminal.probe() is None
    assert terminal._sets_ctty == {}


async def test_only_commands_whose_start_cannot_fail_for_the_user_go_behind_setsid(
    sandbox_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything the start itself would have refused for the user starts the old way, so the
    client is told as before (checked with the user's ids); argv[0] is passed as given
    (setsid looks it up in the child's PATH)."""
    real = terminal.probe()
    assert real is not None, "this host's setsid does not take -c"
    user = User.lookup(sandbox_user)
    path = os.environ["PATH"]

    async def wrapped(*argv: str, path: str = path) -> list[str] | None:
        return await as_user(user, terminal.wrapped, list(argv), path)

    assert await wrapped("bash", "-i") == [real, "-c", "bash", "-i"]
    assert await wrapped("/bin/bash") == [real, "-c", "/bin/bash"]
    folder = Path(tempfile.mkdtemp(prefix="emberbox-pty-"))  # (every ancestor open to all)
    try:
        folder.chmod(0o755)
        scripts = {
            "ok.sh": ("#!/bin/sh\ntrue\n", 0o755),
            "root-only.sh": ("#!/bin/sh\ntrue\n", 0o700),
            "unreadable.sh": ("#!/bin/sh\ntrue\n", 0o711),
            "no-header.sh": ("true\n", 0o755),
            "crlf.sh": ("#!/bin/sh\r\ntrue\r\n", 0o755),
            "no-interpreter.sh": ("#!/no/such/interpreter\ntrue\n", 0o755),
        }
        for name, (text, mode) in scripts.items():
            (folder / name).write_text(text)
            (folder / name).chmod(mode)
        closed = folder / "closed"
        closed.mkdir(mode=0o700)
        (closed / "ok.sh").write_text("#!/bin/sh\ntrue\n")
        (closed / "ok.sh").chmod(0o755)
        (folder / "link.sh").symlink_to(closed / "ok.sh")
        assert await wrapped(str(folder / "ok.sh")) is not None
        refused = [*sorted(set(scripts) - {"ok.sh"}), "closed/ok.sh", "link.sh", "gone.sh"]
        for name in refused:
            assert await wrapped(str(folder / name)) is None, name
        assert await wrapped("./ok.sh") is None  # (a file in the child's cwd)
        assert await wrapped("no-such-command-here") is None
        monkeypatch.chdir(folder)
        assert shutil.which("ok.sh", path=".") == "./ok.sh"  # (found from envd's cwd:)
        assert await wrapped("ok.sh", path=".") is None  # (the child's cwd may differ)
    finally:
        shutil.rmtree(folder)
