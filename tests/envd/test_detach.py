"""``POST /detach``: before a checkpoint envd ends its process output streams whole, so none
is cut with output on the wire. The client's stream ends with CANCELED (the official SDK raises
a TimeoutException saying the sandbox is paused), and ``commands.connect(pid)`` reads on from
exactly where it stopped: every line once, in order, however fast the process prints.

(Streams cut by a pause or a snapshot lost a block of lines about one run in six: what envd had
written or queued for a connection that was gone.)"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from e2b import TimeoutException

from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.process.manager import Feed, ManagedProcess, Output
from tests.conftest import EnvdProcess

LINES = 30_000
# Prints fast, with pauses now and then so output keeps coming across the detach.
PRINTER = f"for i in $(seq 1 {LINES}); do echo $i; [ $((i % 1000)) = 0 ] && sleep 0.02; done"


def _detach(envd: EnvdProcess) -> int:
    r = httpx.post(f"{envd.url}/detach", timeout=5)
    assert r.status_code == 200, r.text
    streams = r.json()["streams"]
    assert isinstance(streams, int)
    return streams


class _Follower(threading.Thread):
    """Reads a command's stream the way the sync SDK does (its ``wait``), in a thread."""

    def __init__(self, handle: Any) -> None:
        super().__init__(daemon=True)
        self.handle = handle
        self.chunks: list[str] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.handle.wait(on_stdout=self.chunks.append)
        except BaseException as e:
            self.error = e

    def lines(self) -> int:
        return "".join(self.chunks).count("\n")


@pytest.mark.parametrize("followers", [1, 2])
def test_detached_streams_lose_no_output(
    sandbox: Any, e2b_debug_env: EnvdProcess, followers: int
) -> None:
    first = sandbox.commands.run(PRINTER, background=True)
    handles = [first] + [sandbox.commands.connect(first.pid) for _ in range(followers - 1)]
    readers = [_Follower(handle) for handle in handles]
    deadline = time.monotonic() + 30
    while readers[-1].lines() < 2_000:  # well under way
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _detach(e2b_debug_env) == followers
    for reader in readers:
        reader.join(10)
        assert isinstance(reader.error, TimeoutException), reader.error
        assert "paused" in str(reader.error)
    rest: list[str] = []
    assert sandbox.commands.connect(first.pid).wait(on_stdout=rest.append).exit_code == 0
    for reader in readers:  # each follower's part, then what was printed since: all, once
        numbers = [int(n) for n in "".join(reader.chunks + rest).split()]
        # (a second follower comes a little after the first line: it starts where it came)
        first_line = 1 if reader is readers[0] else numbers[0]
        assert numbers == list(range(first_line, LINES + 1))


def test_a_detach_with_no_stream_ends_none(sandbox: Any, e2b_debug_env: EnvdProcess) -> None:
    assert _detach(e2b_debug_env) == 0
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


@contextlib.asynccontextmanager
async def _a_process() -> AsyncIterator[ManagedProcess]:
    """A running process as envd holds one (``sleep``, whose output the test publishes)."""
    popen = subprocess.Popen(["sleep", "30"])  # noqa: ASYNC220 - what ManagedProcess wraps
    try:
        yield ManagedProcess(popen, pb.ProcessConfig(cmd="sleep"), None, None, None)
    finally:
        popen.kill()
        popen.wait()
        await asyncio.sleep(0.05)  # its exit is seen on the loop


async def test_output_a_leaving_follower_never_took_goes_back_to_the_backlog() -> None:
    """A follower that goes away (its client left) with output queued it never took gives
    it back when nobody else follows: the next one gets it first, then what came after."""
    async with _a_process() as process:
        leaving = process.subscribe()
        for n in (1, 2, 3):
            process._publish(Output("stdout", b"%d\n" % n))
        assert leaving.get_nowait() == Output("stdout", b"1\n")  # taken: delivered
        process.unsubscribe(leaving)
        process._publish(Output("stdout", b"4\n"))  # nobody follows: the backlog keeps it
        staying = process.subscribe()
        unread = [staying.get_nowait() for _ in range(staying.qsize())]
        process.unsubscribe(staying)
        assert [e.data for e in unread if isinstance(e, Output)] == [b"2\n", b"3\n", b"4\n"]


async def test_output_a_detached_follower_held_when_it_was_cut_reaches_the_next_connect() -> None:
    """Detached before a checkpoint, a stream is cut (the proxy's settle timed out) before
    it sent what it held: that output goes back ahead of what the process printed since."""
    async with _a_process() as process:
        follower = process.subscribe()
        for n in (1, 2, 3):
            process._publish(Output("stdout", b"%d\n" % n))
        assert follower.get_nowait() == Output("stdout", b"1\n")  # delivered
        assert process.detach() == 1
        process.unsubscribe(follower)  # cut
        process._publish(Output("stdout", b"4\n"))
        again = process.subscribe()
        unread = [again.get_nowait() for _ in range(again.qsize())]
        assert [e.data for e in unread if isinstance(e, Output)] == [b"2\n", b"3\n", b"4\n"]


# Counts as fast as it can, then waits to be killed.
COUNTER = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i; done; sleep 30"


def _stdout_of(chunks: list[bytes]) -> bytes:
    """The stdout a process stream's envelopes carry, in order."""
    import base64
    import json
    import struct

    out = b""
    for chunk in chunks:
        while len(chunk) >= 5:
            (size,) = struct.unpack(">I", chunk[1:5])
            flags, payload, chunk = chunk[0], chunk[5 : 5 + size], chunk[5 + size :]
            if not flags & 2:
                data = json.loads(payload).get("event", {}).get("data", {})
                out += base64.b64decode(data.get("stdout", ""))
    return out


async def _stream(app: Any, path: str, request: dict[str, Any], timeout_ms: int = 0,
                  pace_s: float = 0.0, breaks_after: int | None = None,
                  leaves_after: int | None = None) -> list[bytes]:  # fmt: skip
    """A streaming call's body chunks as its client got them: reading one each ``pace_s``,
    gone (a write fails) after ``breaks_after`` of them, or gone uvicorn's way after
    ``leaves_after``: the next write waits for room, the client leaves meanwhile, and that
    write and every later one return without a word (receive tells of the disconnect)."""
    import json
    import struct

    body = json.dumps(request).encode()
    asked = [{"type": "http.request", "body": struct.pack(">BI", 0, len(body)) + body}]
    got: list[bytes] = []

    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if asked:
            return asked.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body" or gone.is_set():
            return
        if breaks_after is not None and len(got) >= breaks_after:
            raise OSError("the client went away")
        if leaves_after is not None and len(got) >= leaves_after:
            gone.set()  # (as uvicorn's connection_lost: the receive wakes, then this write)
            await asyncio.sleep(0)
            return
        await asyncio.sleep(pace_s)  # (uvicorn's order: it waits for room, then writes)
        got.append(message.get("body", b""))

    headers = [(b"content-type", b"application/connect+json")]
    if timeout_ms:
        headers.append((b"connect-timeout-ms", str(timeout_ms).encode()))
    await app({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send)
    return got


async def _left_alone(command: str) -> tuple[Any, ManagedProcess]:
    """An envd app, and a process it started whose client left at once (its output waits)."""
    from emberbox.envd.process.manager import ProcessManager
    from emberbox.envd.process.service import ProcessService
    from emberbox.envd.rpc import ConnectApp
    from emberbox.envd.state import EnvdState

    manager = ProcessManager(EnvdState(standby_shells=0))
    app = ConnectApp(ProcessService(manager.state, manager).methods())
    start = {"process": {"cmd": "/bin/bash", "args": ["-c", command]}, "stdin": False}
    started = asyncio.create_task(_stream(app, "/process.Process/Start", start))
    while not manager.list():  # noqa: ASYNC110 - the manager's own list
        await asyncio.sleep(0.01)
    (process,) = manager.list()
    started.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await started
    return app, process


@pytest.mark.parametrize("ends", ["deadline", "client gone", "client gone quietly"])
async def test_a_connect_that_ends_leaves_the_next_one_exactly_where_it_stopped(
    ends: str,
) -> None:
    """A stream that reached its Connect-Timeout-Ms, or whose client went away, with output
    taken from the process and not yet sent (up to 17 messages): sent with its end, or kept
    for the next Connect. Either way no line is lost, nor given twice."""
    app, process = await _left_alone(COUNTER)
    connect = {"process": {"pid": process.pid}}
    try:
        if ends == "deadline":
            first = await _stream(app, "/process.Process/Connect", connect, 700, pace_s=0.05)
        elif ends == "client gone":
            first = await _stream(app, "/process.Process/Connect", connect, breaks_after=20)
        else:
            first = await _stream(app, "/process.Process/Connect", connect, leaves_after=20)
        await asyncio.sleep(0.5)  # (the process prints on meanwhile)
        second = await _stream(app, "/process.Process/Connect", connect, 1000)
    finally:
        process.signal(9)
    before, after = _stdout_of(first).split(), _stdout_of(second).split()
    assert before and after
    assert int(after[0]) == int(before[-1]) + 1, (before[-1], after[0])


@pytest.mark.parametrize("first_leaves", ["the older follower", "the newer follower"])
async def test_output_only_a_leaving_follower_had_reaches_the_next_connect(
    first_leaves: str,
) -> None:
    """Two followers, the second come after some output: the one that leaves first gives
    back, unread, what the one still there never had; then all of it goes to the next
    Connect, in order, each line once."""
    _, process = await _left_alone("sleep 30")
    try:
        older, newer = _two_followers(process)
        first, second = (older, newer) if first_leaves == "the older follower" else (newer, older)
        # Each leaves with all it was given unread (its client gone before it took any).
        process.unsubscribe(first)
        process.unsubscribe(second)
        assert _lines(process.subscribe()) == [b"%d" % n for n in range(10)]
    finally:
        process.signal(9)
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("between", ["nothing", "another connect"])
async def test_output_two_cut_followers_both_give_back_reaches_later_connects_once(
    between: str,
) -> None:
    """Two followers a checkpoint cut (``detach``) before they sent anything, each giving it
    all back as its stream ends, perhaps with a Connect between the two: every line reaches
    the Connects that follow exactly once."""
    _, process = await _left_alone("sleep 30")
    try:
        older, newer = _two_followers(process)
        process.detach()
        process.unsubscribe(older)
        followers = [process.subscribe()] if between == "another connect" else []
        process.unsubscribe(newer)
        followers.append(process.subscribe())
        assert sorted(_lines(*followers), key=int) == [b"%d" % n for n in range(10)]
    finally:
        process.signal(9)
        await asyncio.sleep(0.1)


def _two_followers(process: ManagedProcess) -> tuple[Feed, Feed]:
    """Two followers of ``process``: one there for lines 0 to 9, one come after line 4."""
    older = process.subscribe()
    for n in range(5):
        process._publish(Output("stdout", b"%d\n" % n))
    newer = process.subscribe()
    for n in range(5, 10):
        process._publish(Output("stdout", b"%d\n" % n))
    return older, newer


def _lines(*followers: Feed) -> list[bytes]:
    """The lines queued for ``followers``, one after the other."""
    got = []
    for follower in followers:
        while not follower.empty():
            event = follower.get_nowait()
            assert isinstance(event, Output)
            got += event.data.split()
    return got


async def test_a_stream_whose_client_left_has_let_go_of_its_process_when_it_returns() -> None:
    """Not some loop turns later (asyncio's finaliser for a generator nobody closed): a
    Connect subscribing meanwhile kept the output the one that left gave back from going
    back to the backlog."""
    app, process = await _left_alone("sleep 30")
    try:
        for n in range(40):
            process._publish(Output("stdout", b"%d\n" % n))
        await _stream(app, "/process.Process/Connect", {"process": {"pid": process.pid}},
                      breaks_after=1)  # fmt: skip
        assert process._subscribers == []
    finally:
        process.signal(9)
        await asyncio.sleep(0.1)


async def test_output_sent_with_the_end_to_a_client_already_gone_reaches_the_next_connect() -> None:
    """The last messages of a stream leave with its end frame, after its handler is done:
    a client gone by then (uvicorn's way, without a word) leaves them to the next Connect."""
    app, process = await _left_alone("sleep 30")
    for n in range(3):
        process._publish(Output("stdout", b"%d\n" % n))
    process.signal(9)
    await process.finished.wait()
    connect = {"process": {"pid": process.pid}}
    # Output and exit are all taken before the first write: they go with the end frame.
    assert await _stream(app, "/process.Process/Connect", connect, leaves_after=0) == []
    again = await _stream(app, "/process.Process/Connect", connect)
    assert _stdout_of(again) == b"0\n1\n2\n"
