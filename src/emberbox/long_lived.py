"""What emberbox's own processes tell CPython's cyclic garbage collector.

A started server holds ~150,000 objects from its imports and set-up (FastAPI, pydantic,
SQLAlchemy), alive until it exits. Every full collection walks them all: 130 ms here, with
the event loop stopped, so a request that meets one waits that long. And the collections
CPython runs as the interpreter exits took 0.5 s of every CLI command and 1 s of every
server stop (``benchmarks/api_bench.py``). :func:`gc.freeze` moves what is alive out of the
collector's view: garbage made afterwards is collected as before.

The rule this sets: what must be flushed or closed at exit (files, connections, children)
is closed explicitly or by an ``atexit`` handler, never left to a collection.
"""

from __future__ import annotations

import atexit
import gc


def freeze_started() -> None:
    """Once a long-running process has started: what it holds now lives as long as it does.
    The garbage its start left (a migration's, ~13,000 objects) is collected first, or it
    would be kept for good."""
    gc.collect()
    gc.freeze()


def freeze_at_exit() -> None:
    """At exit, freeze what is left, so the collections of the interpreter's teardown walk
    none of it: the process's memory goes back whole. ``atexit`` handlers registered after
    this one run before it; objects freed by their reference counts are finalized as before,
    objects in reference cycles are not (see the rule above)."""
    atexit.register(gc.freeze)
