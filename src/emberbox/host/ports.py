"""Loopback ports for processes started later (envd processes, nodes, servers in tests)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_handed_out: set[int] = set()


def free_loopback_port() -> int:
    """A loopback port nothing listens on, for a process that binds it later.

    Taken below the kernel's ephemeral range: a port the kernel hands out (``bind`` to 0) is
    free again once probed, and the next outgoing connection may take it before the process
    binds it (seen in CI as "address already in use"). Never the same port twice in one
    process, whose earlier callers may not listen yet.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(_LOWEST, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free loopback port in {_LOWEST}-{low}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when unreadable or
    when the range leaves nothing below it)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768
    return low if low > _LOWEST + 1_000 else 32_768
