"""Every SDK test runs twice: through ``Sandbox`` (sync face) and ``AsyncSandbox`` (async core).

The bodies are written once; :func:`maybe` awaits what the async face returns and passes the
sync face's values through, and :func:`items` drains either kind of iterator.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from emberbox import AsyncSandbox, Sandbox
from tests.conftest import EnvdProcess


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def items(iterable: Any) -> list[Any]:
    if hasattr(iterable, "__aiter__"):
        return [item async for item in iterable]
    return list(iterable)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition``; the sync face delivers callbacks from its own thread meanwhile."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.fixture(params=["sync", "async"])
async def sandbox(request: pytest.FixtureRequest, envd_debug: EnvdProcess) -> AsyncIterator[Any]:
    """A debug-mode sandbox (envd on localhost:49983, no control plane) from either face."""
    if request.param == "sync":
        sbx: Any = Sandbox(debug=True)
    else:
        sbx = await AsyncSandbox.create(debug=True)
    yield sbx
    await maybe(sbx.close())
