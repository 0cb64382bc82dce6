"""The guest's OOM killer, run by envd on its event loop (guest/duties.py).

gVisor has none of its own: guest memory is one memfd charged to the host cgroup, and when that
is full the host kills a host process, which can be the sentry (the whole sandbox dies). So the
guest polices its own memory as Linux would: once the memory it was booted with (MemTotal, which
runsc sets to the sandbox's limit) is used up, the process with the most resident memory gets
SIGKILL. envd and PID 1 are never chosen, nor a process whose ``oom_score_adj`` is -1000.
The host cgroup keeps headroom above MemTotal for the time between two polls
(runtimes/gvisor/bundle.py, "Memory").

The guard looks again before the fastest fill could use up what is left (``FILL_RATE``), so a
miss past MemTotal is only as big as its wake-up is late. It must not get near the host limit:
the host OOM killer kills stubs, which frees nothing until the sentry lets the guest process's
memory go, so it goes on killing stubs (envd's among them) while that happens.
Reading /proc/meminfo costs the sentry about 0.05 ms.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
# A guest process fills memory at up to ~1.5 GB/s (dd, Python's bytearray); this adds margin.
# Several at once fill faster: then the growth seen between two looks counts, twice over.
FILL_RATE = 2 << 30  # bytes per second
LOOK_S = (0.01, 0.25)  # the shortest and longest time between two looks
# Memory in use this far past what it was when the victim was gone (a late kill's memory
# counts from MemTotal + OVERRUN at most) is another process filling it, on its way to the
# host's limit, 256 MiB past MemTotal: the guard chooses again, by MemTotal + 2 * OVERRUN.
OVERRUN = 64 << 20
NEVER_KILL = -1000
# Each kill is one line on PID 1's stderr, which lands in the sandbox's runsc log on the host:
# that is how the host learns of kills the host kernel never saw.
KILL_MARKER = "emberbox-init: out of memory"


def count_kills(log_text: str) -> int:
    """How many processes the guard killed, from the sandbox's log."""
    return log_text.count(KILL_MARKER)


@dataclass(frozen=True)
class Victim:
    pid: int
    comm: str
    rss: int  # bytes


def meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from the text of /proc/meminfo."""
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            fields[key] = int(rest.split()[0]) * 1024
    return fields["MemTotal"], fields["MemAvailable"]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def pick_victim(protected: Iterable[int], limit: int, proc: str = "/proc") -> Victim | None:
    """The process Linux would kill: most resident memory, shifted by ``oom_score_adj``."""
    skip = {1, os.getpid(), *protected}
    best: tuple[float, Victim] | None = None
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            rss = int(_read(f"{proc}/{name}/statm").split()[1]) * PAGE
            adj = int(_read(f"{proc}/{name}/oom_score_adj"))
            comm = _read(f"{proc}/{name}/comm").strip()
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if adj <= NEVER_KILL or rss == 0:
            continue
        points = rss + adj * limit / 1000
        if best is None or points > best[0]:
            best = (points, Victim(int(name), comm, rss))
    return best[1] if best else None


class OomGuard:
    """Kill the biggest process whenever guest memory runs out.

    **Parameters:**
    * protected - callable returning pids that must survive (envd).
    * limit - (optional) bytes the guest may use; MemTotal at construction by default.
    """

    def __init__(
        self,
        protected: Callable[[], Iterable[int]],
        limit: int | None = None,
        read_meminfo: Callable[[], str] = lambda: _read("/proc/meminfo"),
        proc: str = "/proc",
    ) -> None:
        self.protected = protected
        self._read_meminfo = read_meminfo
        self.limit = limit if limit is not None else meminfo(read_meminfo())[0]
        self.reserve = max(4 << 20, self.limit // 64)  # act just before it is all gone
        self.proc = proc
        self.kills: list[Victim] = []

    def used(self) -> int:
        total, available = meminfo(self._read_meminfo())
        # Past MemTotal the sentry reports a bigger total, so count from what is left.
        return total - available

    def interval(self, used: int, growth: float = 0.0) -> float:
        """Seconds until the next look: no longer than the fastest fill (or twice the
        ``growth`` in bytes per second seen lately) takes to use up the memory left before
        the guard acts."""
        room = self.limit - self.reserve - used
        return min(LOOK_S[1], max(LOOK_S[0], room / max(FILL_RATE, 2 * growth)))

    def check(self) -> tuple[int, Victim | None]:
        """One look: returns memory in use and the process killed, if one was."""
        used = self.used()
        if used < self.limit - self.reserve:
            return used, None
        victim = pick_victim(self.protected(), self.limit, self.proc)
        if victim is None:
            return used, None
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return used, None
        self.kills.append(victim)
        print(
            f"{KILL_MARKER} ({used >> 20} of {self.limit >> 20} MiB used): "
            f"killed process {victim.pid} ({victim.comm}), {victim.rss >> 20} MiB resident",
            file=sys.stderr,
            flush=True,
        )
        return used, victim

    def _gone(self, pid: int) -> bool:
        try:
            with open(f"{self.proc}/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
        except OSError:
            return True

    async def _wait_released(self, pid: int, timeout: float = 2.0) -> None:
        """Memory comes back only once the sentry has released the victim's address space,
        a little after the process is gone: wait for both before choosing again, or a
        bystander dies for memory that is already being freed. Unless memory in use goes
        ``OVERRUN`` past the limit, and past the least seen since the victim was gone (the
        kill itself may have come late), meanwhile: another process is filling it, and
        waiting on would let it reach the host's limit."""
        deadline = time.monotonic() + timeout
        low: int | None = None
        while time.monotonic() < deadline:
            if self._gone(pid):
                used = self.used()
                if used < self.limit - self.reserve:
                    return
                low = used if low is None else min(low, used)
                if used > min(max(self.limit, low), self.limit + OVERRUN) + OVERRUN:
                    return
            await asyncio.sleep(0.005)

    async def run_forever(self) -> None:
        """On envd's event loop, not a thread of its own: a second thread woke four times a
        second and took the interpreter lock from request handling each time."""
        last: tuple[float, int] | None = None  # when the last look was, and what it saw
        while True:
            growth = 0.0
            try:
                used, victim = self.check()
                now = time.monotonic()
                if last is not None and now > last[0]:
                    growth = (used - last[1]) / (now - last[0])
                last = (now, used)
                if victim is not None:
                    await self._wait_released(victim.pid)
                    last = None
            except (OSError, ValueError, KeyError) as exc:
                print(f"emberbox-init: oom guard: {exc}", file=sys.stderr, flush=True)
                last = None
                await asyncio.sleep(LOOK_S[1])
                continue
            await asyncio.sleep(self.interval(used, growth))
