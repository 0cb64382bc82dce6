"""The guest's port forwarder (guest/portfwd.py) relaying a loopback-only port, run on the host
over loopback: what a client sends and receives passes whole, and a client that half-closes
(shuts down its sending side once its request is out, as ``nc -N`` does) still gets the
answer the server sends after it read that end."""

from __future__ import annotations

import asyncio
import os

from emberbox.envd.guest import portfwd


async def _answers_after_the_end(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A server that reads its request to the end, then answers with its size and closes."""
    request = await reader.read()
    writer.write(f"got {len(request)} bytes".encode())
    await writer.drain()
    writer.close()


async def test_a_half_closed_client_gets_the_answer_sent_after_its_end() -> None:
    server = await asyncio.start_server(_answers_after_the_end, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = await asyncio.start_server(portfwd._handler(port), "127.0.0.1", 0)
    relay_port = relay.sockets[0].getsockname()[1]
    try:
        for size in (5, 3 * 2**20):  # (one read; many, the relay's writes waiting on drain)
            reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
            writer.write(os.urandom(size))
            await writer.drain()
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer == f"got {size} bytes".encode()
            writer.close()
    finally:
        relay.close()
        server.close()


async def test_a_relay_to_a_port_nobody_listens_on_closes_at_once() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    gone = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    relay = await asyncio.start_server(portfwd._handler(gone), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", relay.sockets[0].getsockname()[1]
        )
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        relay.close()
