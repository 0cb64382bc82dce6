"""The host's ``/proc/meminfo``: one reader for the figures the server and node size by."""

from __future__ import annotations

from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def meminfo_bytes(field: str) -> int | None:
    """``field`` (``MemTotal``, ``MemAvailable``, ``SwapTotal``...) in bytes; None when the
    file or the field cannot be read."""
    try:
        for line in MEMINFO.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == field:
                return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_free_mb() -> int:
    """``MemAvailable`` in MiB: what the host can still give without swapping or reclaiming
    hard (0 when unreadable, so nothing that waits on memory starts)."""
    return (meminfo_bytes("MemAvailable") or 0) >> 20
