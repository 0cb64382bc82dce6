"""Read and clean up the cgroups runsc creates from ``linux.cgroupsPath``.

runsc itself creates the cgroup and applies the limits; we read usage for stats and OOM
detection, and remove cgroups left behind by sandboxes that died while nobody watched.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from .meminfo import meminfo_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
# 1 makes every RCU grace period an expedited one (see ``moves_wait_for_grace_periods``).
RCU_EXPEDITED = Path("/sys/kernel/rcu_expedited")
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio")


def is_v1() -> bool:
    return (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists()


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _read_keyed(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


@dataclass(frozen=True)
class Usage:
    cpu_ns: int
    mem_used: int
    mem_limit: int
    oom_kills: int
    pids: int


def usage(rel: str) -> Usage | None:
    """Current usage of cgroup ``rel`` (e.g. ``emberbox/abc``), or None if it does not exist."""
    if is_v1():
        mem = CGROUP_ROOT / "memory" / rel
        if not mem.exists():
            return None
        return Usage(
            cpu_ns=_read_int(CGROUP_ROOT / "cpuacct" / rel / "cpuacct.usage"),
            mem_used=_read_int(mem / "memory.usage_in_bytes"),
            mem_limit=_read_int(mem / "memory.limit_in_bytes"),
            oom_kills=_read_keyed(mem / "memory.oom_control").get("oom_kill", 0),
            pids=_read_int(CGROUP_ROOT / "pids" / rel / "pids.current"),
        )
    group = CGROUP_ROOT / rel
    if not group.exists():
        return None
    limit = (group / "memory.max").read_text().strip()
    return Usage(
        cpu_ns=_read_keyed(group / "cpu.stat").get("usage_usec", 0) * 1000,
        mem_used=_read_int(group / "memory.current"),
        mem_limit=0 if limit == "max" else int(limit),
        oom_kills=_read_keyed(group / "memory.events").get("oom_kill", 0),
        pids=_read_int(group / "pids.current"),
    )


def existing(parent: str) -> list[str]:
    """Child cgroup names under ``parent`` (one per sandbox that has or had one)."""
    base = CGROUP_ROOT / ("memory" if is_v1() else "") / parent
    try:
        return sorted(p.name for p in base.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def directories(rel: str) -> list[Path]:
    """Cgroup ``rel``'s directory in every hierarchy (one per controller on v1), existing or not."""
    return [CGROUP_ROOT / c / rel for c in V1_CONTROLLERS] if is_v1() else [CGROUP_ROOT / rel]


def remove(rel: str) -> None:
    """rmdir the cgroup in every hierarchy; only works (and is only called) once it is empty."""
    for d in directories(rel):
        with contextlib.suppress(FileNotFoundError):
            for child in sorted(d.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(child)


def set_memory_limit(rel: str, limit: int) -> None:
    """Set the memory limit of cgroup ``rel`` (runsc created it): raised once it booted.

    Swap never adds to it where the kernel accounts swap (:func:`swap_limited`): memory plus
    swap is held to the same limit (v1 ``memsw``; v2 allows no swap), so a sandbox gets no
    more memory on a host with swap than elsewhere. Moving pages to swap within the limit
    (:func:`offload`) stays possible."""
    if is_v1():
        group = CGROUP_ROOT / "memory" / rel
        memsw = group / "memory.memsw.limit_in_bytes"  # absent without swap accounting
        files = [group / "memory.limit_in_bytes"] + ([memsw] if memsw.exists() else [])
        if len(files) == 2 and limit > _read_int(memsw):
            files.reverse()  # the memory limit may never exceed memsw's
        for file in files:
            file.write_text(str(limit))
    else:
        (CGROUP_ROOT / rel / "memory.max").write_text(str(limit))
        with contextlib.suppress(FileNotFoundError):
            (CGROUP_ROOT / rel / "memory.swap.max").write_text("0")


def swap_total() -> int:
    """Bytes of swap the host has (0: none, so nothing can be offloaded)."""
    return meminfo_bytes("SwapTotal") or 0


def swap_free() -> int:
    """Bytes of the host's swap not in use."""
    return meminfo_bytes("SwapFree") or 0


def swap_limited() -> bool:
    """Whether the kernel accounts swap per cgroup, so :func:`set_memory_limit` can hold a
    sandbox's memory plus swap to its limit (v1 ``memsw`` files; v2 unless booted without)."""
    if is_v1():
        return (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()
    try:
        cmdline = Path("/proc/cmdline").read_text().split()
    except OSError:
        return False
    return "swapaccount=0" not in cmdline and "cgroup.memory=noswap" not in cmdline


def reclaims() -> bool:
    """Whether a cgroup's memory can be pushed out on request (:func:`offload`): always on
    v1 (by lowering its limit), on v2 only with ``memory.reclaim`` (Linux 5.19 and later)."""
    return is_v1() or (CGROUP_ROOT / "memory.reclaim").exists()


def moves_wait_for_grace_periods() -> bool:
    """Whether moving a process between cgroups waits for a normal RCU grace period (the
    kernel's ``cgroup_threadgroup_rwsem``): ~10 ms on our 2-core host, where an expedited one
    takes microseconds. runsc moves itself into each sandbox's cgroup and back as it starts
    one; ``scripts/host-rcu.sh`` expedites them."""
    try:
        return RCU_EXPEDITED.read_text().strip() == "0"
    except OSError:  # no such knob: nothing to tune
        return False


def swap_in_ram() -> bool:
    """Whether what goes to swap stays in RAM, compressed: a zram swap device, or zswap in
    front of the swap. Pages read back from there take microseconds, from a disk far more."""
    with contextlib.suppress(OSError):
        if Path("/sys/module/zswap/parameters/enabled").read_text().strip() in ("Y", "1"):
            return swap_total() > 0
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[0].startswith("/dev/zram") for line in lines if line.strip())


def offload(rel: str, keep: int) -> int:
    """One pass moving the memory of cgroup ``rel`` to swap, towards ``keep`` bytes resident;
    returns the bytes still resident. Meant for a frozen cgroup, whose pages nobody touches
    meanwhile: they come back as its processes fault them in once thawed.

    v1 has no reclaim-on-request: the limit is lowered to half the usage (the write reclaims
    until the usage fits or gives up with EBUSY) and put back; memory plus swap stays within
    ``memsw``. A pass gets about half the pages of a frozen gVisor sandbox; the rest comes
    loose only over time (measured: retried at once, a pass frees nothing; ~50 ms apart, ~1
    MiB each), so callers space their passes. v2 asks ``memory.reclaim`` with swap allowed
    for that moment."""
    if is_v1():
        group = CGROUP_ROOT / "memory" / rel
        used = _read_int(group / "memory.usage_in_bytes")
        if used > keep:
            limit = (group / "memory.limit_in_bytes").read_text().strip()
            try:
                (group / "memory.limit_in_bytes").write_text(str(max(keep, used // 2)))
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # EBUSY: it freed less than asked
                    raise
            finally:
                (group / "memory.limit_in_bytes").write_text(limit)
        return _read_int(group / "memory.usage_in_bytes")
    group = CGROUP_ROOT / rel
    used = _read_int(group / "memory.current")
    if used > keep:
        swap_max = group / "memory.swap.max"
        swap_max.write_text("max")
        try:
            (group / "memory.reclaim").write_text(str(used - keep))
        except OSError as exc:
            if exc.errno != errno.EAGAIN:  # EAGAIN: it reclaimed less than asked
                raise
        finally:
            swap_max.write_text("0")
    return _read_int(group / "memory.current")


def swapped(rel: str) -> int:
    """Bytes of cgroup ``rel``'s memory that are in swap (0 for one that does not exist)."""
    if is_v1():
        return _read_keyed(CGROUP_ROOT / "memory" / rel / "memory.stat").get("swap", 0)
    return _read_int(CGROUP_ROOT / rel / "memory.swap.current")


def procs(rel: str) -> list[int]:
    """Host pids in cgroup ``rel`` (empty if it does not exist)."""
    base = CGROUP_ROOT / "memory" / rel if is_v1() else CGROUP_ROOT / rel
    try:
        return [int(line) for line in (base / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def freeze(rel: str, frozen: bool) -> None:
    """Ask the kernel to freeze (or thaw) every process in cgroup ``rel``: a frozen process
    keeps its memory but is never scheduled, and a signal sent to it (SIGKILL too) acts only
    once thawed. Freezing completes asynchronously (:func:`freezer_state`)."""
    if is_v1():
        (CGROUP_ROOT / "freezer" / rel / "freezer.state").write_text(
            "FROZEN" if frozen else "THAWED"
        )
    else:
        (CGROUP_ROOT / rel / "cgroup.freeze").write_text("1" if frozen else "0")


def freezer_state(rel: str) -> str:
    """``frozen``, ``freezing`` (asked, not every process stopped yet) or ``thawed`` (also
    for a cgroup that does not exist)."""
    try:
        if is_v1():
            state = (CGROUP_ROOT / "freezer" / rel / "freezer.state").read_text().strip()
            return state.lower() if state in ("FROZEN", "FREEZING") else "thawed"
        if (CGROUP_ROOT / rel / "cgroup.freeze").read_text().strip() != "1":
            return "thawed"
        done = _read_keyed(CGROUP_ROOT / rel / "cgroup.events").get("frozen") == 1
        return "frozen" if done else "freezing"
    except OSError:
        return "thawed"


def frozen(rel: str) -> bool:
    """Whether cgroup ``rel`` is frozen or being frozen."""
    return freezer_state(rel) != "thawed"
