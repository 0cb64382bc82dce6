"""Make ports opened on 127.0.0.1 inside the sandbox reachable on its external address.

gVisor's netstack (like Linux) only delivers to a 127.0.0.1 listener what arrives on loopback,
so the host cannot reach ``python -m http.server --bind 127.0.0.1 8001``. E2B forwards these
ports; we do the same: watch /proc/net/tcp{,6} for loopback listeners and relay each from
``<external ip>:<port>`` to ``127.0.0.1:<port>`` for as long as the listener exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

LISTEN = "0A"
LOOPBACK4 = "0100007F"
LOOPBACK6 = "00000000000000000000000001000000"
ANY4 = "00000000"
ANY6 = "0" * 32


def _listeners(path: str) -> list[tuple[str, int]]:
    try:
        with open(path) as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for row in rows:
        fields = row.split()
        if len(fields) > 3 and fields[3] == LISTEN:
            addr, _, port = fields[1].partition(":")
            out.append((addr, int(port, 16)))
    return out


def loopback_only_ports(external_hex: str) -> set[int]:
    """Ports with a loopback listener and nothing on the wildcard or external address."""
    entries = _listeners("/proc/net/tcp") + _listeners("/proc/net/tcp6")
    loop = {p for a, p in entries if a in (LOOPBACK4, LOOPBACK6)}
    public = {p for a, p in entries if a in (ANY4, ANY6, external_hex)}
    return loop - public


def external_address() -> str | None:
    """IPv4 address of the default-route interface (what the host reaches us at)."""
    try:
        with open("/proc/net/route") as f:
            rows = [r.split() for r in f.read().splitlines()[1:]]
    except OSError:
        return None
    for row in rows:
        if len(row) > 2 and row[1] == "00000000":
            gateway = socket.inet_ntoa(struct.pack("<L", int(row[2], 16)))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((gateway, 9))
                return str(s.getsockname()[0])
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction. Its end is passed on as an end of input only (a half-close): a client
    that shuts its side down once it has sent its request (``nc -N``) still gets the answer.
    A broken connection closes the other side whole, which ends the other direction too."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
            return
    except (ConnectionError, OSError):
        pass
    with contextlib.suppress(Exception):
        writer.close()


async def _relay(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:  # (both directions ended, or the relay was cancelled)
        for end in (up_writer, writer):
            with contextlib.suppress(Exception):
                end.close()


def _handler(
    port: int,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _relay(port, reader, writer)

    return handle


async def forward_forever(interval: float = 0.5, skip: frozenset[int] = frozenset()) -> None:
    """Relay loopback-only ports, re-reading the external address each round: a sandbox
    restored from a snapshot (a fork, a template snapshot) wakes up in another network with
    another address, and relays bound to the old one would be unreachable."""
    servers: dict[int, asyncio.Server] = {}
    address: str | None = None
    while True:
        current = external_address()
        if current != address:
            for server in servers.values():
                server.close()
            servers.clear()
            address = current
        if address:
            ext_hex = socket.inet_aton(address)[::-1].hex().upper()
            wanted = loopback_only_ports(ext_hex) - skip
            for port in wanted - servers.keys():
                with contextlib.suppress(OSError):
                    servers[port] = await asyncio.start_server(_handler(port), address, port)
            for port in servers.keys() - wanted - _own_ports(servers, ext_hex):
                servers.pop(port).close()
        await asyncio.sleep(interval)


def _own_ports(servers: dict[int, asyncio.Server], ext_hex: str) -> set[int]:
    """Ports whose loopback listener still exists (our own relay listens on the external IP)."""
    entries = _listeners("/proc/net/tcp") + _listeners("/proc/net/tcp6")
    loop = {p for a, p in entries if a in (LOOPBACK4, LOOPBACK6)}
    return {p for p in servers if p in loop}
