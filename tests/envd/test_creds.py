"""The credential switch itself, in this (root) test process: per thread, complete, undone."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from emberbox.envd import creds
from emberbox.envd.creds import WORKERS, acquire_as_user, as_user
from emberbox.envd.users import User


def _ids() -> tuple[tuple[int, int, int], tuple[int, int, int], list[int]]:
    time.sleep(0.01)  # keep workers busy so calls of both users overlap
    return os.getresuid(), os.getresgid(), sorted(os.getgroups())


async def test_each_call_holds_exactly_its_users_ids(sandbox_user: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can switch credentials")
    user, root = User.lookup(sandbox_user), User.lookup("root")
    before = _ids()
    users = [user, root] * 20
    seen = await asyncio.gather(*(as_user(u, _ids) for u in users))
    for who, (uids, gids, groups) in zip(users, seen, strict=True):
        assert uids == (0, who.uid, 0)  # real and saved uid stay root: the way back
        assert gids == (0, who.gid, 0)
        assert groups == sorted(set(who.groups()))
    assert _ids() == before  # the event loop's thread never changed


async def test_workers_are_root_again_between_calls(sandbox_user: str) -> None:
    """After every call, failed ones included, each idle worker holds envd's own ids again."""
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can switch credentials")
    user = User.lookup(sandbox_user)

    def fail() -> None:
        time.sleep(0.01)
        raise PermissionError("from inside")

    for call in (_ids, fail):
        results = await asyncio.gather(
            *(as_user(user, call) for _ in range(WORKERS * 2)), return_exceptions=True
        )
        assert len(results) == WORKERS * 2
    # Straight onto the executor, bypassing the switch: one task per worker (the barrier holds
    # each worker until all have one), each reporting the ids its thread holds while idle.
    barrier = threading.Barrier(WORKERS)

    def idle_ids() -> tuple[tuple[int, int, int], tuple[int, int, int], list[int]]:
        barrier.wait(5)
        return os.getresuid(), os.getresgid(), sorted(os.getgroups())

    _, executor = creds._pool()
    loop = asyncio.get_running_loop()
    seen = await asyncio.gather(*(loop.run_in_executor(executor, idle_ids) for _ in range(WORKERS)))
    assert set(map(repr, seen)) == {repr(_ids())}


async def test_a_cancelled_caller_releases_what_the_worker_acquired() -> None:
    released: list[int] = []
    started = threading.Event()

    def slow_open() -> int:
        started.set()
        time.sleep(0.3)
        return 42

    task = asyncio.create_task(acquire_as_user(User.lookup("root"), released.append, slow_open))
    await asyncio.to_thread(started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if released:
            break
        await asyncio.sleep(0.02)
    assert released == [42]
