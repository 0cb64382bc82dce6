"""A paused sandbox gives its memory back: its processes stay, frozen, for the node's keep (1 s
on this module's server; a resume in that time continues them, see
tests/runtimes/test_gvisor_kept_pause.py), then go with all they held."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox

from emberbox.server.testing import ServerProcess


@pytest.fixture(scope="module")
def gvisor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import gvisor_server as start

    with start(tmp_path_factory.mktemp("gvisor-server"), {"EMBERBOX_PAUSE_KEEP_S": "1"}) as s:
        yield s


def runsc_rss(sandbox_id: str) -> int:
    """Resident bytes of the host processes runsc runs for this sandbox (sentry, gofer)."""
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not argv[0].startswith(b"runsc") or sandbox_id.encode() not in argv:
                continue
            rss_pages = int((proc / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        total += rss_pages * os.sysconf("SC_PAGE_SIZE")
    return total


def test_paused_sandbox_frees_its_memory_once_its_keep_is_over(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.commands.run("python3 -c 'b = b\"x\" * (64 << 20); import time; time.sleep(600)' &")
        deadline = time.monotonic() + 20  # the command returns as python starts, not once it holds
        while runsc_rss(sbx.sandbox_id) <= 64 << 20:
            assert time.monotonic() < deadline, "the sandbox never held the 64 MiB"
            time.sleep(0.1)
        sbx.pause()
        assert runsc_rss(sbx.sandbox_id) > 64 << 20, "nothing was kept"
        deadline = time.monotonic() + 10
        while runsc_rss(sbx.sandbox_id) > 0:
            assert time.monotonic() < deadline, "runsc processes outlived the keep"
            time.sleep(0.1)
        Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert runsc_rss(sbx.sandbox_id) > 64 << 20
    finally:
        sbx.kill()
