"""The collections CPython runs as an emberbox command exits walk nothing it held.

Each ``emberbox`` command (and the server's and node's processes) spent 0.5 s to 1 s of its
exit in them (``emberbox.long_lived``). A collector callback, called at every collection the
exiting interpreter runs, reports how many objects were frozen out of its view then.
"""

from __future__ import annotations

import subprocess
import sys

_WATCH_EXIT = """
import gc, os, sys
from emberbox.cli.app import main

def report(phase, info):
    if phase == "start" and sys.is_finalizing():
        os.write(1, b"frozen at an exit collection: %d\\n" % gc.get_freeze_count())

gc.callbacks.append(report)
sys.argv = ["emberbox", "--help"]
main()
"""


def _exit_collections(program: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [
        int(line.rsplit(":", 1)[1])
        for line in done.stdout.splitlines()
        if line.startswith("frozen at an exit collection")
    ]


def test_a_command_s_exit_collections_walk_none_of_what_it_held() -> None:
    counts = _exit_collections(_WATCH_EXIT)
    assert counts, "the interpreter ran no collection at exit: nothing to show"
    # (what the CLI imported alone is tens of thousands of objects)
    assert min(counts) > 10_000


def test_without_it_nothing_is_frozen_at_exit() -> None:
    """The same program without the CLI's ``main``: the measure tells the difference."""
    counts = _exit_collections(_WATCH_EXIT.replace("main()", "import emberbox.server.app"))
    assert counts and max(counts) == 0
