"""What emberbox's own processes tell CPython's cyclic garbage collector.

A started server holds ~150,000 objects from its imports and set-up (FastAPI, pydantic,
SQLAlchemy), alive until it exits. Every full collection walks them all: 130 ms here, with
the event loop stopped, so a request that meets one waits that long. And the collections
CPython runs as the interpreter exits took 0.5 s of every CLI command and 1 s of every
server stop (``benchmarks/api_bench.py``). :func:`gc.freeze` moves what is alive out of the
collector's view: garbage made afterwards is collected as before.
"""

from __future__ import annotations

import atexit
import gc


def freeze_started() -> None:
    """Once a long-running process has started: what it holds now lives as long as it does."""
    gc.freeze()


def skip_exit_collections() -> None:
    """At exit, after every other ``atexit`` handler, freeze what is left: the process's
    memory goes back whole, and finalizers of objects still referenced run as before."""
    atexit.register(gc.freeze)
