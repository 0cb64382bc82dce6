"""Calling the user's ``run_code`` callbacks: the one other place the faces differ by hand.

The async face also accepts coroutine functions and awaits them (as E2B's async SDK does);
the sync face just calls. ``scripts/unasync.py`` maps ``AsyncHandlers`` to ``Handlers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], object]


def _present(handlers: dict[str, Handler | None]) -> dict[str, Handler]:
    return {kind: fn for kind, fn in handlers.items() if fn is not None}


class AsyncHandlers:
    def __init__(self, **handlers: Handler | None) -> None:
        self._handlers = _present(handlers)

    async def emit(self, kind: str, payload: Any) -> None:
        handler = self._handlers.get(kind)
        if handler is not None:
            outcome = handler(payload)
            if inspect.isawaitable(outcome):
                await outcome


class Handlers:
    def __init__(self, **handlers: Handler | None) -> None:
        self._handlers = _present(handlers)

    def emit(self, kind: str, payload: Any) -> None:
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(payload)
