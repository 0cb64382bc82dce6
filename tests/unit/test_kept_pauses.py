"""When the node lets go of a paused sandbox's kept processes (``runtimes/gvisor/kept.py``):
at the end of its keep, or the oldest first while the host is short of memory. The release is
a fake here; tests/runtimes/test_gvisor_kept_pause.py keeps real gVisor sandboxes."""

from __future__ import annotations

import asyncio
import time

import pytest

from emberbox.runtimes.gvisor.kept import KeptPauses
from emberbox.server.config import Settings
from emberbox.vocabulary import PAUSE_KEEP_S


class Host:
    def __init__(self, free_mb: int) -> None:
        self.free = free_mb
        self.released: list[str] = []

    async def release(self, sandbox_id: str) -> None:
        self.released.append(sandbox_id)
        self.free += 300  # its memory comes back


async def test_each_kept_sandbox_is_released_at_the_end_of_its_keep() -> None:
    host = Host(4096)
    kept = KeptPauses(60, 1024, host.release, free_mb=lambda: host.free)
    assert kept.may_keep()
    kept.keep("a")
    later = time.monotonic() + 30
    kept.keep("b", now=later)
    assert await kept.due(now=later) == [] and host.released == []
    assert await kept.due(now=later + 31) == ["a"]
    assert await kept.due(now=later + 61) == ["b"]
    assert kept.kept() == [] and host.released == ["a", "b"]
    await kept.close()


async def test_a_kept_sandbox_stays_resident_a_minute_at_most_and_in_swap_for_the_keep() -> None:
    """Resident ones go after ``resident_s``; one whose memory went to swap after ``keep_s``."""
    host = Host(4096)
    kept = KeptPauses(600, 1024, host.release, free_mb=lambda: host.free, resident_s=60)
    start = time.monotonic()
    for sandbox_id in ("resident", "swapped"):
        kept.keep(sandbox_id, now=start)
    kept.swapped("swapped")
    kept.swapped("never kept")  # (an offload of a running sandbox: nothing to extend)
    assert await kept.due(now=start + 59) == []
    assert await kept.due(now=start + 61) == ["resident"]
    assert kept.holds("swapped") and not kept.holds("resident")
    assert await kept.due(now=start + 599) == []
    assert await kept.due(now=start + 601) == ["swapped"]
    assert kept.kept() == [] and host.released == ["resident", "swapped"]
    await kept.close()


async def test_a_host_short_of_memory_gets_resident_ones_back_before_those_in_swap() -> None:
    """Even one in swap that ends sooner goes after a resident one: its pages in swap cost
    the host little."""
    host = Host(4096)
    kept = KeptPauses(600, 1024, host.release, free_mb=lambda: host.free, resident_s=60)
    start = time.monotonic()
    kept.keep("old, in swap", now=start)
    kept.swapped("old, in swap")
    kept.keep("new, resident", now=start + 550)
    host.free = 900  # one release of 300 MiB covers it
    assert await kept.due(now=start + 555) == ["new, resident"]
    assert kept.kept() == ["old, in swap"]
    await kept.close()


async def test_a_host_short_of_swap_gets_those_in_swap_back_oldest_first() -> None:
    host = Host(4096)
    short = [True]
    kept = KeptPauses(600, 1024, host.release, free_mb=lambda: host.free,
                      swap_short=lambda: short[0])  # fmt: skip
    start = time.monotonic()
    for age, sandbox_id in enumerate(("old", "new", "resident")):
        kept.keep(sandbox_id, now=start + age)
    kept.swapped("old")
    kept.swapped("new")

    async def release(sandbox_id: str) -> None:
        await host.release(sandbox_id)
        short[0] = False  # one release made room

    kept.release = release
    assert await kept.due(now=start + 10) == ["old"]
    assert sorted(kept.kept()) == ["new", "resident"]
    assert await kept.due(now=start + 20) == []
    await kept.close()


async def test_a_host_short_of_memory_keeps_none_and_gets_the_oldest_back_first() -> None:
    host = Host(4096)
    kept = KeptPauses(60, 1024, host.release, free_mb=lambda: host.free)
    for sandbox_id in ("old", "mid", "new"):
        kept.keep(sandbox_id)
    host.free = 500  # short by 524 MiB: two releases of 300 MiB cover it
    assert not kept.may_keep()
    assert await kept.due() == ["old", "mid"]
    assert kept.kept() == ["new"]
    await kept.close()
    assert host.released == ["old", "mid", "new"]  # a node that stops lets resident ones go


async def test_a_node_that_stops_leaves_those_in_swap_to_its_successor() -> None:
    host = Host(4096)
    kept = KeptPauses(600, 1024, host.release, free_mb=lambda: host.free)
    kept.keep("resident")
    kept.keep("in swap")
    kept.swapped("in swap")
    await kept.close()
    assert host.released == ["resident"]


async def test_one_adopted_resident_gets_a_new_minute_within_its_keep() -> None:
    """A successor's offloads count idle time from its own start (module doc of offload.py)."""
    host = Host(4096)
    kept = KeptPauses(600, 1024, host.release, free_mb=lambda: host.free, resident_s=60)
    start = time.monotonic()
    kept.keep("early", now=start - 40, resident_from=start)  # paused 40 s before adoption
    kept.keep("late", now=start - 590, resident_from=start)  # its keep ends in 10 s
    assert await kept.due(now=start + 11) == ["late"]
    assert await kept.due(now=start + 59) == []
    assert await kept.due(now=start + 61) == ["early"]
    await kept.close()


async def test_a_resumed_sandbox_is_taken_once_and_never_released() -> None:
    host = Host(4096)
    kept = KeptPauses(60, 1024, host.release, free_mb=lambda: host.free)
    kept.keep("a")
    assert kept.take("a") and not kept.take("a")
    assert await kept.due(now=time.monotonic() + 120) == []
    await kept.close()
    assert host.released == []


async def test_a_keep_of_zero_keeps_nothing_and_a_failed_release_is_not_retried() -> None:
    host = Host(4096)
    assert not KeptPauses(0, 1024, host.release, free_mb=lambda: host.free).may_keep()

    async def failing(sandbox_id: str) -> None:
        raise OSError("no such cgroup")

    kept = KeptPauses(60, 1024, failing, free_mb=lambda: host.free)
    kept.keep("a")
    assert await kept.due(now=time.monotonic() + 61) == []
    assert kept.kept() == []  # logged; a kill or a resume ends what is left
    await kept.close()


def test_the_keep_is_read_from_the_environment() -> None:
    """``EMBERBOX_PAUSE_KEEP_S``: seconds, or refused with its name as the node starts."""
    assert Settings.from_env({}).pause_keep_s == PAUSE_KEEP_S
    assert Settings.from_env({"EMBERBOX_PAUSE_KEEP_S": "0"}).pause_keep_s == 0
    for raw in ("soon", "-1", "nan"):
        with pytest.raises(ValueError, match="EMBERBOX_PAUSE_KEEP_S"):
            Settings.from_env({"EMBERBOX_PAUSE_KEEP_S": raw})


async def test_a_sandbox_resumed_and_paused_again_meanwhile_is_judged_by_its_new_keep() -> None:
    """Both kept sandboxes are due; while the first one's release runs, the second is resumed
    (``take``) and paused again (``keep``): its new keep has its whole time ahead. The check
    released it anyway, on the end time of the keep it had read."""
    host = Host(4096)
    releasing = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_release(sandbox_id: str) -> None:
        if sandbox_id == "a":
            releasing.set()
            await go_on.wait()
        await host.release(sandbox_id)

    kept = KeptPauses(60, 1024, slow_release, free_mb=lambda: host.free)
    start = time.monotonic() - 61
    kept.keep("a", now=start)
    kept.keep("b", now=start)
    check = asyncio.create_task(kept.due())
    await releasing.wait()
    assert kept.take("b")  # resumed...
    kept.keep("b")  # ...and paused again
    go_on.set()
    assert await check == ["a"]
    assert kept.holds("b") and host.released == ["a"]
    await kept.close()


async def test_the_release_finds_the_sandbox_it_lets_go_no_longer_kept() -> None:
    """The runtime's release lets go only of processes nobody keeps (one a resume and a new
    pause kept meanwhile are spared): the keep's end, a host short of memory and a stop
    must each have stopped keeping it by then, or the release does nothing."""
    host = Host(4096)
    seen: dict[str, bool] = {}

    async def release(sandbox_id: str) -> None:
        seen[sandbox_id] = kept.holds(sandbox_id)
        await host.release(sandbox_id)

    kept = KeptPauses(60, 1024, release, free_mb=lambda: host.free)
    kept.keep("ended")
    assert await kept.due(now=time.monotonic() + 61) == ["ended"]
    kept.keep("short")
    host.free = 0
    assert await kept.due() == ["short"]
    host.free = 4096
    kept.keep("stopped")
    await kept.close()
    assert seen == {"ended": False, "short": False, "stopped": False}
