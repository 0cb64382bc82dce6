"""The one place the two faces really differ: running a consumer in the background.

The async face uses a task, the sync face a daemon thread; ``scripts/unasync.py`` maps
``AsyncBackground`` to ``Background``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class AsyncBackground:
    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._task = asyncio.get_running_loop().create_task(work())

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class Background:
    def __init__(self, work: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    @staticmethod
    def _run(work: Callable[[], None]) -> None:
        with contextlib.suppress(Exception):
            work()

    def cancel(self) -> None:
        """Threads cannot be interrupted: the worker sees its stop flag at the next keepalive."""
        self._thread.join(timeout=5)
