"""A directory watch whose events come faster than envd turns them into messages holds a
bounded number of raw events: past ``MAX_RAW_EVENTS`` the inotify fd goes unread, the
kernel's own queue fills and overflows (the watcher counts that in ``dropped``), and envd's
memory does not grow with the writer. In-process, on the host, with real inotify."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emberbox._proto.filesystem import filesystem_pb2 as pb
from emberbox.envd.creds import as_user
from emberbox.envd.filesystem import watcher as watcher_module
from emberbox.envd.filesystem.watcher import DirWatcher
from emberbox.envd.users import User


def _kernel_queue() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


async def test_a_watch_behind_its_writer_holds_a_bounded_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _kernel_queue() > 50_000:
        pytest.skip("this kernel queues more inotify events than the test writes")
    monkeypatch.setattr(watcher_module, "MAX_RAW_EVENTS", 1000)
    user = User.lookup("root" if os.geteuid() == 0 else os.environ.get("USER", "root"))
    watcher = await DirWatcher.open(str(tmp_path), False, False, False, user)
    gate = asyncio.Event()
    translate = as_user

    async def held(who: User, call: Callable[..., Any], *args: Any) -> Any:
        await gate.wait()  # the translation is slow: it waits here until the gate opens
        return await translate(who, call, *args)

    monkeypatch.setattr(watcher_module, "as_user", held)
    try:
        # Twice the kernel's queue (a file is two events: its creation, its write), in
        # batches the loop reads between, as it would a busy writer's.
        for batch in range(_kernel_queue() // 100):
            for i in range(100):
                (tmp_path / f"{batch}-{i}").write_bytes(b"x")
            await asyncio.sleep(0)
        assert len(watcher._raw) <= watcher_module.MAX_RAW_EVENTS + 1000  # (+ a read or few)
        gate.set()
        seen: list[pb.FilesystemEvent] = []
        while watcher.dropped == 0 or not watcher.queue.empty():
            seen.append(await asyncio.wait_for(watcher.queue.get(), 10))
        assert watcher.dropped >= 1  # the kernel's queue overflowed: told, not hidden
        assert seen[0].name == "0-0" and seen[0].type == pb.EVENT_TYPE_CREATE
    finally:
        watcher.close()
