"""``POST /detach``: before a checkpoint envd ends its process output streams whole, so none
is cut with output on the wire. The client's stream ends with CANCELED (the official SDK raises
a TimeoutException saying the sandbox is paused), and ``commands.connect(pid)`` reads on from
exactly where it stopped: every line once, in order, however fast the process prints.

(Streams cut by a pause or a snapshot lost a block of lines about one run in six: what envd had
written or queued for a connection that was gone.)"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
from e2b import TimeoutException

from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.process.manager import ManagedProcess, Output
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
        assert numbers == list(range(1, LINES + 1))


def test_a_detach_with_no_stream_ends_none(sandbox: Any, e2b_debug_env: EnvdProcess) -> None:
    assert _detach(e2b_debug_env) == 0
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


async def test_output_a_leaving_follower_never_took_goes_back_to_the_backlog() -> None:
    """A follower that goes away (its client left) with output queued it never took gives
    it back when nobody else follows: the next one gets it first, then what came after."""
    popen = subprocess.Popen(["sleep", "30"])  # noqa: ASYNC220 - what ManagedProcess wraps
    process = ManagedProcess(popen, pb.ProcessConfig(cmd="sleep"), None, None, None)
    try:
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
    finally:
        popen.kill()
        popen.wait()
        await asyncio.sleep(0.05)  # its exit is seen on the loop


async def test_a_follower_that_stops_reading_holds_at_most_the_backlog_limit() -> None:
    """A client that stops reading (the sync SDK's handle of a background command, until
    its ``wait()``) while the process prints: envd keeps the newest ``BACKLOG_LIMIT`` bytes
    for it, as for nobody, instead of all of it (48 MiB here; a server's log, for ever)."""
    from emberbox.envd.process.manager import BACKLOG_LIMIT

    popen = subprocess.Popen(["sleep", "30"])  # noqa: ASYNC220 - what ManagedProcess wraps
    process = ManagedProcess(popen, pb.ProcessConfig(cmd="sleep"), None, None, None)
    try:
        stalled = process.subscribe()
        chunk = 64 * 1024
        for n in range(48 * 1024 * 1024 // chunk):
            process._publish(Output("stdout", b"%08d" % n + b"x" * (chunk - 8)))
        unread = [stalled.get_nowait() for _ in range(stalled.qsize())]
        held = sum(len(e.data) for e in unread if isinstance(e, Output))
        assert BACKLOG_LIMIT - chunk < held <= BACKLOG_LIMIT
        assert unread[-1] == Output("stdout", b"%08d" % n + b"x" * (chunk - 8))  # the newest
        process.unsubscribe(stalled)
    finally:
        popen.kill()
        popen.wait()
        await asyncio.sleep(0.05)  # its exit is seen on the loop
