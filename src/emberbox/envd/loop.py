"""envd's event loop: asyncio over ``poll(2)``, not epoll.

Why: the runsc we run (20240729) can corrupt an epoll instance across a checkpoint. A
notification that lands while the sentry is being saved leaves the instance's ready list and
its entries' ``ready`` flags disagreeing (google/gvisor#14147, fixed upstream in 2026). What we
saw after a restore: a connection envd deleted from its epoll set and closed kept being
reported (``EPOLLIN|EPOLLERR|EPOLLHUP``) for ever; uvloop spun on it at a full core, and once a
new pipe got that fd number, libuv stopped the pipe's watcher on the stale error, so a
command's exit was never seen (the command hung, its shell a zombie). ``poll(2)`` keeps no
state between calls, so nothing stale can survive a restore; envd watches a few dozen
descriptors, where it costs what epoll does.
"""

from __future__ import annotations

import asyncio
import selectors


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop uvicorn runs envd on (``server_options``)."""
    return asyncio.SelectorEventLoop(selectors.PollSelector())


# What uvicorn's ``loop`` option names to run envd on it.
UVICORN_LOOP = f"{__name__}:{new_event_loop.__name__}"
