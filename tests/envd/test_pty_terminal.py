"""A PTY is its shell's controlling terminal, however envd started it (envd/process/terminal.py):
the shell leads a session of its own on the PTY, so Ctrl-C interrupts what runs in the
foreground, and the pid the client gets is the shell's. Behind ``setsid -c`` (no fork of envd),
and the old way where the image has no ``setsid``. On the host, as root: no sandbox needed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from emberbox._proto.process import process_pb2 as pb
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


async def _check_terminal(user: User, envs: dict[str, str]) -> None:
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/bash", args=["-i", "-l"], envs=envs)
    size = pb.PTY(size=pb.PTY.Size(cols=80, rows=24))
    process, feed = await manager.start(config, user, pty=size, stdin=False, tag=None)
    seen = bytearray()
    try:
        await process.send_input(b"echo pid-$$-$((40+2))\n", to_pty=True)
        await _until(feed, f"pid-{process.pid}-42".encode(), seen)  # (the shell runs)
        comm, group, session, tty = _session(process.pid)
        assert (comm, group, session) == ("bash", process.pid, process.pid)
        assert tty != 0, "the shell has no controlling terminal"
        await process.send_input(b"sleep 60; echo slept-$((1+1))\n", to_pty=True)
        await asyncio.sleep(0.5)  # (the sleep in the foreground)
        await process.send_input(b"\x03", to_pty=True)  # Ctrl-C: SIGINT to the foreground
        await process.send_input(b"echo after-$((2+3))\n", to_pty=True)
        await _until(feed, b"after-5", seen)
        assert b"slept-2" not in seen
    finally:
        await manager.close()
        await process.finished.wait()


@pytest.mark.parametrize("name", ["root", "user"])
async def test_a_pty_behind_setsid_is_the_shells_controlling_terminal(
    name: str, sandbox_user: str, shell_starts: list[Any]
) -> None:
    assert terminal.wrapped(["/bin/bash"], os.environ["PATH"]) is not None, "no setsid -c here"
    await _check_terminal(User.lookup(name if name == "root" else sandbox_user), {})
    assert shell_starts == [None]  # (no fork)


async def test_without_setsid_the_pty_starts_the_old_way(
    tmp_path: Path, shell_starts: list[Any]
) -> None:
    bin_dir = tmp_path / "bin"  # bash and what a login needs, but no setsid
    bin_dir.mkdir()
    tmp_path.chmod(0o755)
    for tool in ("bash", "sleep", "id", "tty"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    path = str(bin_dir)
    assert terminal.wrapped(["/bin/bash"], path) is None
    await _check_terminal(User.lookup("root"), {"PATH": path})
    assert shell_starts == [terminal.set_controlling_tty]


def test_a_setsid_without_c_or_a_relative_command_is_not_used(tmp_path: Path) -> None:
    setsid = tmp_path / "setsid"
    setsid.write_text("#!/bin/sh\necho 'setsid: invalid option -- c' >&2\nexit 1\n")
    setsid.chmod(0o755)
    (tmp_path / "true").symlink_to(shutil.which("true") or "/bin/true")
    assert terminal.wrapped(["/bin/bash", "-l"], str(tmp_path)) is None
    real = shutil.which("setsid")
    assert real is not None
    here = os.path.dirname(real) + os.pathsep + "/bin"
    assert terminal.wrapped(["./run.sh"], here) is None  # (in the child's cwd, not envd's)
    assert terminal.wrapped(["no-such-command-here"], here) is None  # (the start's own error)
    assert terminal.wrapped(["bash", "-i"], here) == [
        real,
        "-c",
        shutil.which("bash", path=here),
        "-i",
    ]
