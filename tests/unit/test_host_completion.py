"""``to_completion``: host work that a cancellation must not cut in half."""

from __future__ import annotations

import asyncio

import pytest

from emberbox.host.completion import to_completion


async def test_work_finishes_however_often_its_caller_is_cancelled() -> None:
    steps: list[str] = []

    async def paired() -> None:
        steps.append("lowered")
        await asyncio.sleep(0.1)
        steps.append("put back")

    caller = asyncio.create_task(to_completion(paired()))
    await asyncio.sleep(0.02)
    for _ in range(3):  # cancelled again while it waits for the work
        caller.cancel()
        await asyncio.sleep(0.01)
    assert not caller.done(), "the caller gave up before the work ended"
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["lowered", "put back"]


async def test_its_result_and_error_pass_through_and_a_cancelled_callers_error_is_quiet() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        await asyncio.sleep(0.05)
        raise OSError("EBUSY")

    assert await to_completion(answer()) == 42
    with pytest.raises(OSError, match="EBUSY"):
        await to_completion(fail())
    caller = asyncio.create_task(to_completion(fail()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):  # the cancellation wins over the work's error
        await caller
