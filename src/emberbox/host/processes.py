"""Small /proc helpers: process trees, liveness, usage, and reaping adopted orphans."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

_PROC = Path("/proc")


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """``/proc/<pid>/stat`` as (comm, the fields after it: state, ppid, ...); None if gone.
    comm may hold spaces and parentheses, so the fields start after the last ")"."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.find("(") + 1 : raw.rfind(")")], raw.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """Kernel start time in clock ticks (field 22), to tell a live PID from a reused one."""
    stat = _stat(pid)
    if stat is None or stat[1][0] == "Z":
        return None
    return int(stat[1][19])


def _parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            out[int(entry.name)] = int(stat[1][1])
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def kill_tree(pid: int) -> None:
    """Freeze the whole tree first (no forks escape), then SIGKILL every member."""
    members = tree(pid)
    for p in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGSTOP)
    for p in tree(pid) + members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)  # reap it when it is our child; others are reaped by init


def usage(pid: int) -> tuple[int, float]:
    """(resident bytes, cpu seconds) summed over the tree."""
    page = os.sysconf("SC_PAGE_SIZE")
    ticks = os.sysconf("SC_CLK_TCK")
    rss, cpu = 0, 0.0
    for p in tree(pid):
        try:
            rss += int((_PROC / str(p) / "statm").read_text().split()[1]) * page
            stat = _stat(p)
            if stat is None:
                continue
            cpu += (int(stat[1][11]) + int(stat[1][12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return rss, cpu


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of our children become ours instead of PID 1's (prctl), so they can be reaped
    at once: runsc waits for a killed sandbox's process to be gone, and a PID 1 that reaps
    slowly (some VMs' init) made every kill and resume wait for it. False if refused."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def reap_orphans(names: frozenset[str], skip: set[int]) -> int:
    """Reap zombie children called one of ``names`` that we did not start ourselves
    (``skip``: someone waits for those); returns how many.

    Runs on every SIGCHLD, a dozen per sandbox create, so it first asks the kernel whether
    any child is a zombie at all (``waitid`` with ``WNOWAIT`` reaps nothing): usually none is,
    the child having been reaped by whoever started it. Reading every process's stat, ~3 ms
    on a busy host, is left for when a zombie we may not reap hides the others."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped  # no children at all
        if info is None:
            return reaped
        pid = info.si_pid
        stat = _stat(pid)
        if pid in skip or stat is None or stat[0] not in names:
            return reaped + _reap_by_scan(names, skip)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
            reaped += 1


def _reap_by_scan(names: frozenset[str], skip: set[int]) -> int:
    me, reaped = os.getpid(), 0
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        stat = _stat(entry.name)
        if stat is None:
            continue
        comm, fields = stat
        if fields[0] != "Z" or int(fields[1]) != me or comm not in names:
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(int(entry.name), os.WNOHANG)
            reaped += 1
    return reaped
