"""The official SDK's async face: streamed WatchDir and client-streamed stdin (StreamInput)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from e2b import AsyncSandbox, FilesystemEventType

from tests.conftest import EnvdProcess


async def test_async_watch_dir_streams_events(e2b_debug_env: EnvdProcess) -> None:
    sandbox = await AsyncSandbox.create()
    path = f"/tmp/emberbox-async-{uuid.uuid4().hex[:8]}"
    await sandbox.files.make_dir(path)
    seen: list[Any] = []
    got_it = asyncio.Event()

    def on_event(event: Any) -> None:
        seen.append(event)
        if event.name == "streamed.txt" and event.type == FilesystemEventType.WRITE:
            got_it.set()

    handle = await sandbox.files.watch_dir(path, on_event, include_entry=True)
    try:
        await sandbox.files.write(f"{path}/streamed.txt", "data")
        await asyncio.wait_for(got_it.wait(), 5)
        created = [e for e in seen if e.type == FilesystemEventType.CREATE]
        assert created and created[0].name == "streamed.txt"
    finally:
        await handle.stop()
        await sandbox.files.remove(path)


async def test_async_run_and_stream_stdin(e2b_debug_env: EnvdProcess) -> None:
    sandbox = await AsyncSandbox.create()
    result = await sandbox.commands.run("echo async-$((1+1))")
    assert result.stdout == "async-2\n"
    handle = await sandbox.commands.run("cat", background=True, stdin=True, timeout=0)

    async with sandbox.commands.stream_input(handle.pid) as stdin:
        for piece in (b"a", "b", b"c\n"):
            await stdin.send(piece)
    await sandbox.commands.close_stdin(handle.pid)
    done = await handle.wait()
    assert done.stdout == "abc\n"
