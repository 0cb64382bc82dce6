"""envd stopped (SIGTERM) while a client still follows a process's output: the stream ends
within envd's graceful shutdown, and every process envd started is killed, not left running
with no envd. A real envd process on the host (its own port)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from emberbox.envd.__main__ import GRACEFUL_SHUTDOWN_S
from emberbox.envd_client import EnvdClient
from tests.conftest import EnvdProcess

MARK = "sleep 301.25"  # (no other process on the host runs exactly this)


def _running(cmdline: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if b" ".join(a for a in argv if a).decode() == cmdline and state != "Z":
                    found.append(int(entry.name))
    return found


async def test_stopping_envd_ends_followed_streams_and_kills_its_processes(
    envd_factory: Callable[..., EnvdProcess], sandbox_user: str
) -> None:
    envd = envd_factory()
    async with EnvdClient(envd.url) as client:
        following = asyncio.create_task(client.run(f"exec {MARK}", timeout=None))
        deadline = time.monotonic() + 20
        while not (pids := _running(MARK)):
            assert time.monotonic() < deadline, "the command never ran"
            assert not following.done(), following
            await asyncio.sleep(0.05)
        envd.process.terminate()
        started = time.monotonic()
        await asyncio.to_thread(envd.process.wait, 30)  # (uvicorn ends by its SIGTERM again)
        assert time.monotonic() - started < GRACEFUL_SHUTDOWN_S + 5, "envd waited on its client"
        with contextlib.suppress(Exception):  # (its stream was cut: no end event)
            await asyncio.wait_for(following, 10)
    deadline = time.monotonic() + 10
    while alive := [pid for pid in pids if pid in _running(MARK)]:
        assert time.monotonic() < deadline, f"left running after envd stopped: {alive}"
        await asyncio.sleep(0.05)
