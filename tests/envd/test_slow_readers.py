"""A client that stops reading a process's output holds the process back, as a full pipe
would, instead of envd's memory growing with all it prints; when it leaves, what envd had not
yet sent waits in the process's backlog for the next ``Connect`` (docs/envd.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pwd
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox

from emberbox._connect.errors import ConnectError
from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.process.fdio import READ_LIMIT
from emberbox.envd.process.manager import (
    BACKLOG_LIMIT,
    FEED_HOLD,
    Exit,
    Feed,
    ManagedProcess,
    Output,
    ProcessManager,
)
from emberbox.envd.state import EnvdState
from emberbox.envd.users import User
from tests.conftest import EnvdProcess

MIB = 1 << 20


def test_output_a_client_never_read_reaches_the_next_connect(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> None:
    envd = envd_factory("--standby-shells", "0")
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", envd.url)
    sandbox = Sandbox.create()
    done = f"/tmp/emberbox-slow-reader-{time.monotonic_ns()}"
    # 7 MiB of numbered 1 KiB lines, then it waits. A client that reads the start event,
    # then nothing: the socket's buffers take what they can (the SDK's own client reads
    # ahead into memory, which a raw one does not).
    with _printing(envd, 7 * 1024, f"touch {done}; sleep 60") as stream:
        pid = _first_message(stream.iter_raw(1024))["event"]["start"]["pid"]
        time.sleep(2)  # (the process printed what envd would take meanwhile)
    # The client left: the process goes on printing, into the backlog.
    deadline = time.monotonic() + 30
    while sandbox.commands.run(f"test -e {done} && echo y || echo n").stdout.strip() != "y":
        assert time.monotonic() < deadline, "the process never finished printing"
        time.sleep(0.2)

    again = sandbox.commands.connect(pid, timeout=0)
    got: list[str] = []
    deadline = time.monotonic() + 20
    for stdout, _, _ in again:
        if stdout:
            got.append(stdout)
        if sum(map(len, got)) >= MIB or time.monotonic() > deadline:
            break
    again.kill()
    text = "".join(got)
    # What the socket buffers held is gone with the connection; the rest, in order, comes to
    # the next Connect.
    assert len(text) >= MIB, f"only {len(text)} bytes of the unread output came back"
    numbers = [int(line[:8]) for line in text.splitlines() if len(line) == 1023]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert numbers[-1] < 7 * 1024


def test_a_client_that_stops_reading_holds_the_process_back_and_then_gets_every_byte(
    envd_factory: Callable[..., EnvdProcess], sandbox_user: str
) -> None:
    envd = envd_factory("--standby-shells", "0")
    done = f"/tmp/emberbox-held-{time.monotonic_ns()}"
    total = 64 * 1024  # numbered 1 KiB lines: 64 MiB, which the process prints in well under 1 s
    with _printing(envd, total, f"touch {done}") as stream:
        messages = _messages(stream.iter_raw(64 * 1024))
        assert "start" in next(messages)[1]["event"]
        rss_before = _rss(envd.process.pid)
        time.sleep(3)  # the client reads nothing
        assert not os.path.exists(done), "the process printed it all to a client not reading"
        assert _rss(envd.process.pid) - rss_before < 32 * MIB
        # It reads on: every line comes, in order, and then the end.
        text, end = _read_to_end(messages)
    assert end == {}, end
    numbers = [int(line[:8]) for line in text.splitlines()]
    assert numbers == list(range(total))
    assert os.path.exists(done)
    os.unlink(done)


def test_a_connect_deadline_lets_go_of_the_process_however_full_its_client(
    envd_factory: Callable[..., EnvdProcess], sandbox_user: str
) -> None:
    """A Connect with a Connect-Timeout-Ms whose client stays but stops reading: at the
    deadline, envd lets go of the process (it prints on, into the backlog) even with a write
    still waiting for room. The client, reading at last, gets what was written, in order,
    then the deadline's end; what was not written waits for the next Connect, never twice."""
    envd = envd_factory("--standby-shells", "0")
    done = f"/tmp/emberbox-deadline-{time.monotonic_ns()}"
    total = 16 * 1024  # numbered 1 KiB lines: 16 MiB, four times what holds the process
    with _printing(envd, total, f"touch {done}", first="sleep 2") as stream:
        pid = _first_message(stream.iter_raw())["event"]["start"]["pid"]  # (as it comes)
    # The process prints once a Connect follows it (it is alone for 2 s), then exits.
    with _connecting(envd, pid, timeout_ms=3000) as held:
        first = _messages(held.iter_raw())
        assert "start" in next(first)[1]["event"]
        deadline = time.monotonic() + 30
        while not os.path.exists(done):  # the client reads nothing
            assert time.monotonic() < deadline, "the process is still held past the deadline"
            time.sleep(0.1)
        os.unlink(done)
        text, end = _read_to_end(first)
    assert end["error"]["code"] == "deadline_exceeded", end
    before = [int(line[:8]) for line in text.splitlines()]
    assert before == list(range(len(before)))
    assert before[-1] < total - 1, "the client was sent it all: nothing was held"
    with _connecting(envd, pid, timeout_ms=30_000) as again:
        after_text, end = _read_to_end(_messages(again.iter_raw(64 * 1024)))
    assert end == {}, end  # (to its exit)
    # (A backlog trimmed to its limit can start mid-line.)
    after = [int(line[:8]) for line in after_text.splitlines() if len(line) == 1023]
    assert after == list(range(after[0], total))
    # Every line once: the next Connect goes on from the first's last line, or, if what the
    # process printed meanwhile overflowed the backlog, from the backlog's oldest.
    assert after[0] > before[-1]
    assert after[0] == before[-1] + 1 or total - after[0] >= BACKLOG_LIMIT // 1024 - 65


async def _started(command: str, pty: pb.PTY | None = None) -> tuple[ManagedProcess, Feed]:
    manager = ProcessManager(EnvdState(standby_shells=0))
    config = pb.ProcessConfig(cmd="/bin/bash", args=["-c", command])
    return await manager.start(
        config, User.lookup(pwd.getpwuid(os.geteuid()).pw_name), pty=pty, stdin=False, tag=None
    )


async def _until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_writer_as_fast_as_envd_is_held_within_one_read_of_the_limit() -> None:
    """``head`` refills the pipe as fast as envd empties it: one wake-up used to read all it
    wrote (tens of MiB) before the hold could act."""
    process, feed = await _started("head -c 256M /dev/zero")
    try:
        await _until(lambda: process._held, "never held")
        await asyncio.sleep(0.5)  # (a reader not paused would go on)
        assert FEED_HOLD < feed.bytes <= FEED_HOLD + READ_LIMIT
        assert process.running
        got = 0
        while not isinstance(event := await feed.get(), Exit):
            assert isinstance(event, Output)
            got += len(event.data)
            assert feed.bytes <= FEED_HOLD + READ_LIMIT
        assert (got, event.exit_code) == (256 << 20, 0)
    finally:
        with contextlib.suppress(ConnectError):
            process.signal(9)


async def test_a_held_process_that_exits_leaves_its_daemon_held_too(tmp_path: Path) -> None:
    """What the process left in the pipe is read at its exit; a daemon that inherited the
    pipe and writes on is not read into a follower that is not reading."""
    pid_file = tmp_path / "daemon.pid"
    command = f"setsid head -c 256M /dev/zero & echo $! > {pid_file}; sleep 0.3; exit 3"
    process, feed = await _started(command)
    try:
        await _until(lambda: process._held, "never held")
        await process.finished.wait()
        assert feed.bytes <= FEED_HOLD + 2 * READ_LIMIT
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), 9)


async def test_a_held_terminal_s_last_output_is_read_at_its_exit() -> None:
    """A PTY hands out ~4 KiB a read: the drain at exit reads on while a follower is behind,
    up to what a terminal can hold, or the process's last lines were cut off."""
    command = "stty raw -echo; sleep 0.5; head -c 8000 /dev/zero | tr '\\0' a"
    process, feed = await _started(command, pty=pb.PTY(size=pb.PTY.Size(cols=80, rows=24)))
    await asyncio.sleep(0.3)  # (the terminal is raw; nothing printed yet)
    process._held = True  # as a follower FEED_HOLD behind does
    for reader in process._readers:
        reader.pause()
    await asyncio.wait_for(process.finished.wait(), 10)
    got = b""
    while not feed.empty():
        if isinstance(event := feed.get_nowait(), Output):
            got += event.data
    assert got.count(b"a") == 8000


async def test_the_follower_behind_leaving_lets_the_process_go_on_for_the_other() -> None:
    process, behind = await _started("head -c 64M /dev/zero")
    try:
        await _until(lambda: process._held, "never held")
        reading = process.subscribe()
        process.unsubscribe(behind)
        got = 0
        while not isinstance(event := await reading.get(), Exit):
            assert isinstance(event, Output)
            got += len(event.data)
        assert 0 < got < 64 << 20  # all printed since it came (before that: the other's)
        assert event.exit_code == 0
    finally:
        with contextlib.suppress(ConnectError):
            process.signal(9)


@contextlib.contextmanager
def _printing(
    envd: EnvdProcess, lines: int, then: str, first: str = "true"
) -> Iterator[httpx.Response]:
    """A raw Start stream of a process that runs ``first``, prints ``lines`` numbered 1 KiB
    lines, then runs ``then``."""
    code = f"[sys.stdout.write('%08d%s\\n' % (i, 'x' * 1015)) for i in range({lines})]"
    cmd = f'{first}; python3 -c "import sys; {code}"; {then}'
    body = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}}).encode()
    with _calling(envd, "Start", body) as stream:
        yield stream


@contextlib.contextmanager
def _connecting(envd: EnvdProcess, pid: int, timeout_ms: int) -> Iterator[httpx.Response]:
    """A raw Connect stream to process ``pid``, with a Connect-Timeout-Ms."""
    body = json.dumps({"process": {"pid": pid}}).encode()
    with _calling(envd, "Connect", body, {"Connect-Timeout-Ms": str(timeout_ms)}) as stream:
        yield stream


@contextlib.contextmanager
def _calling(
    envd: EnvdProcess, method: str, body: bytes, headers: dict[str, str] | None = None
) -> Iterator[httpx.Response]:
    with httpx.stream(
        "POST",
        f"{envd.url}/process.Process/{method}",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers={"Content-Type": "application/connect+json",
                 "Authorization": "Basic " + base64.b64encode(b"user:").decode(),
                 **(headers or {})},
        timeout=60,
    ) as stream:  # fmt: skip
        yield stream


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        kb = next(line for line in f if line.startswith("VmRSS:")).split()[1]
    return int(kb) * 1024


def _messages(chunks: Iterator[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each Connect envelope's flags and JSON, as they come off the stream."""
    seen = b""
    for chunk in chunks:
        seen += chunk
        while len(seen) >= 5 and len(seen) >= 5 + struct.unpack(">I", seen[1:5])[0]:
            flags, size = struct.unpack(">BI", seen[:5])
            yield flags, json.loads(seen[5 : 5 + size])
            seen = seen[5 + size :]


def _first_message(chunks: Iterator[bytes]) -> dict[str, Any]:
    for _, message in _messages(chunks):
        return message
    raise AssertionError("the stream ended before its first message")


def _read_to_end(messages: Iterator[tuple[int, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The stdout of the messages left, and the end-of-stream frame's JSON."""
    out = bytearray()
    for flags, message in messages:
        if flags & 2:
            return out.decode(), message
        out += base64.b64decode(message["event"].get("data", {}).get("stdout", ""))
    raise AssertionError("the stream ended without its end frame")
