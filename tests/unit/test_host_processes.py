"""Reaping adopted orphans (``host.processes.reap_orphans``), in a child Python process: a
subreaper changes who inherits orphans for the whole process, never the test runner's job."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, time
    from emberbox.host import processes

    assert processes.become_subreaper()

    def zombie_state(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "gone"

    def orphan():
        # A shell starts ``sleep`` in the background and exits: we inherit it.
        out = subprocess.run(["sh", "-c", "sleep 0.2 & echo $!"],
                             capture_output=True, text=True, check=True)
        return int(out.stdout)

    names = frozenset({"sleep"})
    # 1. Nothing to reap.
    print("none", processes.reap_orphans(names, set()))
    # 2. An orphan named in ``names`` is reaped once it exits.
    pid = orphan()
    time.sleep(0.5)
    print("named-before", zombie_state(pid))
    print("named", processes.reap_orphans(names, set()), zombie_state(pid))
    # 3. A zombie child someone else waits for (``skip``) stays; an orphan behind it does not.
    waited = subprocess.Popen(["true"])
    time.sleep(0.2)
    pid = orphan()
    time.sleep(0.5)
    print("skipped", processes.reap_orphans(names, {waited.pid}), zombie_state(waited.pid),
          zombie_state(pid))
    waited.wait()
    # 4. An orphan with another name is left alone.
    pid = orphan()
    time.sleep(0.5)
    print("other", processes.reap_orphans(frozenset({"runsc"}), set()), zombie_state(pid))
    """
)


def test_reaps_only_named_orphans_and_leaves_children_others_wait_for() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split("\n")[:5] == [
        "none 0",
        "named-before Z",
        "named 1 gone",
        "skipped 1 Z gone",
        "other 0 Z",
    ], out.stdout + out.stderr
