"""A stream's client that goes just as envd writes to it, over a real socket and real uvicorn
(httptools): what the handler gave then is given back, never counted as sent. asyncio carries
a disconnect to the app in up to three loop turns (the transport reads the FIN or RST after
what was already scheduled, then ``call_soon(_call_connection_lost)``, then the wake-up of the
task waiting on the receive), and until then uvicorn's send still writes into a transport that
drops it or fails without a word."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from emberbox._proto.process import process_pb2 as pb
from emberbox.envd.rpc import ConnectApp, Kind, RpcContext, RpcMethod

CASES = {
    "fin seen as the handler gives": True,
    "rst seen as the handler gives": True,
    "rst as the pump writes": True,
    "fin as the pump writes": True,
    "fin polled with the pump's wake-up": True,
    "client read it, then left": False,
}


@pytest.mark.parametrize("how", CASES)
async def test_output_given_as_the_client_goes_is_given_back(how: str) -> None:
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    given_back: list[int] = []
    client: socket.socket | None = None

    def leave(rst: bool) -> None:
        assert client is not None
        if rst:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    async def handler(request: Any, ctx: RpcContext) -> AsyncIterator[pb.ConnectResponse]:
        ctx.give_back = given_back.append
        yield pb.ConnectResponse(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=1)))
        await go.wait()
        if how.endswith("as the pump writes"):  # (in the step that wakes the pump: it
            leave(rst=how.startswith("rst"))  # writes before the loop reads the socket)
        data = pb.ProcessEvent.DataEvent(stdout=b"output that must not be lost")
        yield pb.ConnectResponse(event=pb.ProcessEvent(data=data))
        await asyncio.Event().wait()

    state = ServerState()
    server = await _serving(handler, state)
    try:
        client = socket.create_connection(server.sockets[0].getsockname()[:2])
        client.setblocking(False)
        payload = json.dumps({"process": {"pid": 1}}).encode()
        body = struct.pack(">BI", 0, len(payload)) + payload
        head = (b"POST /process.Process/Connect HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/connect+json\r\n"
                b"content-length: %d\r\n\r\n" % len(body))  # fmt: skip
        await loop.sock_sendall(client, head + body)
        got = b""
        while b'"start"' not in got:
            got += await loop.sock_recv(client, 65536)
        await asyncio.sleep(0.05)
        if how == "client read it, then left":
            go.set()
            while b'"data"' not in got:
                got += await loop.sock_recv(client, 65536)
            leave(rst=False)
        elif how.endswith("as the pump writes"):
            go.set()
        elif how == "fin polled with the pump's wake-up":
            go.set()
            await asyncio.sleep(0)  # the handler gives: the pump's wake-up is scheduled
            leave(rst=False)  # the FIN is at the server's socket by the loop's next poll
        else:
            leave(rst=how.startswith("rst"))  # the server's socket has the FIN/RST now
            go.set()  # the handler gives in the loop turn the server's reader sees it
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not state.tasks:
                break
        assert not state.tasks, "the stream never ended"
        assert given_back == ([1] if CASES[how] else [])
    finally:
        server.close()
        if client is not None:
            client.close()


async def test_a_write_the_deadline_cuts_wrote_nothing_and_is_given_back() -> None:
    """A client that reads nothing until past its Connect-Timeout-Ms: the write then waiting
    for room is cut at the deadline, and the handler let go. uvicorn waits for room before
    it writes anything, so the messages of that write are the handler's again: the client,
    reading at last, gets exactly those not given back, then the deadline's end."""
    given_back: list[int] = []
    yielded = 0

    async def handler(request: Any, ctx: RpcContext) -> AsyncIterator[pb.ConnectResponse]:
        nonlocal yielded
        ctx.give_back = given_back.append
        yield pb.ConnectResponse(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=1)))
        while True:
            data = pb.ProcessEvent.DataEvent(stdout=b"%08d" % yielded + b"x" * 65536)
            yielded += 1
            yield pb.ConnectResponse(event=pb.ProcessEvent(data=data))

    state = ServerState()
    server = await _serving(handler, state)
    small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]  # (fills in a few writes)
    try:
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(socket_options=small), timeout=30
        ) as client:
            host, port = server.sockets[0].getsockname()[:2]
            payload = json.dumps({"process": {"pid": 1}}).encode()
            async with client.stream(
                "POST", f"http://{host}:{port}/process.Process/Connect",
                content=struct.pack(">BI", 0, len(payload)) + payload,
                headers={"content-type": "application/connect+json",
                         "connect-timeout-ms": "1000"},
            ) as response:  # fmt: skip
                chunks = response.aiter_raw()
                got = await anext(chunks)  # the start event, and whatever came with it
                for _ in range(300):  # reading nothing: the deadline lets go of the handler
                    if given_back:
                        break
                    await asyncio.sleep(0.01)
                assert given_back, "the handler was never let go"
                async for chunk in chunks:
                    got += chunk
    finally:
        server.close()
    messages = []
    while got:
        flags, size = struct.unpack(">BI", got[:5])
        messages.append((flags, json.loads(got[5 : 5 + size])))
        got = got[5 + size :]
    (_, start), *data, (end_flags, end) = messages
    assert "start" in start["event"] and end_flags & 2
    assert end["error"]["code"] == "deadline_exceeded", end
    numbers = [int(base64.b64decode(m["event"]["data"]["stdout"])[:8]) for _, m in data]
    assert numbers == list(range(len(numbers)))
    assert len(numbers) + given_back[0] == yielded, (len(numbers), given_back, yielded)


async def _serving(
    handler: Callable[[Any, RpcContext], AsyncIterator[pb.ConnectResponse]], state: ServerState
) -> asyncio.Server:
    """envd's RPC app on real uvicorn (httptools) at a free loopback port, serving
    ``handler`` as process.Process/Connect."""
    loop = asyncio.get_running_loop()
    method = RpcMethod(Kind.SERVER_STREAM, pb.ConnectRequest, handler)
    config = Config(app=ConnectApp({"/process.Process/Connect": method}), http="httptools",
                    ws="none", lifespan="off", log_level="warning")  # fmt: skip
    config.load()
    return await loop.create_server(
        lambda: HttpToolsProtocol(config, state, {}, loop), "127.0.0.1", 0
    )
