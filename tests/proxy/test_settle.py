"""``SandboxProxy.settle``: a checkpoint waits until the process streams envd ended have been
relayed whole, and only those (a long download or a port's stream does not hold it up).
In-process: the proxy app, a real upstream on loopback playing envd, a resolver that knows it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from emberbox.server.proxy.app import SandboxProxy
from emberbox.server.proxy.resolver import Location, Paused, SandboxResolver
from emberbox.vocabulary import ENVD_PORT, new_sandbox_id

SID = new_sandbox_id()


class _Resolver(SandboxResolver):
    def __init__(self, envd_url: str) -> None:
        self.location = Location(envd_url=envd_url, host="127.0.0.1")
        self._listeners = []

    async def lookup(self, sandbox_id: str) -> Location | Paused | None:
        return self.location if sandbox_id == SID else None


@contextlib.asynccontextmanager
async def _upstream(finish: dict[str, asyncio.Event]) -> AsyncIterator[str]:
    """Streams until ``finish[path]`` is set (a process stream, a download)."""

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"started\n"
            await finish[request.url.path].wait()
            yield b"ended\n"

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/{path:path}", stream, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn says so by this flag only
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for event in finish.values():
            event.set()
        server.should_exit = True
        await task


async def _request(proxy: SandboxProxy, path: str) -> bytes:
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        response = await client.post(path, headers={"Host": f"{ENVD_PORT}-{SID}.test"})
        return response.content


CONNECT = "/process.Process/Connect"


async def test_settle_waits_for_process_streams_only() -> None:
    finish = {CONNECT: asyncio.Event(), "/files": asyncio.Event()}
    async with _upstream(finish) as url:
        proxy = SandboxProxy(_Resolver(url))
        assert await proxy.settle(SID, timeout_s=0.1)  # nothing under way
        download = asyncio.create_task(_request(proxy, "/files"))
        stream = asyncio.create_task(_request(proxy, CONNECT))
        async with asyncio.timeout(5):
            while not proxy._streams[SID]:  # noqa: ASYNC110 - the proxy's own counter
                await asyncio.sleep(0.01)
        assert not await proxy.settle(SID, timeout_s=0.2)  # the stream is still relayed
        waiting = asyncio.create_task(proxy.settle(SID, timeout_s=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        finish[CONNECT].set()  # envd ends its streams; the download goes on
        assert await stream == b"started\nended\n"  # relayed whole
        assert await waiting
        assert not download.done()
        finish["/files"].set()
        await download
        await proxy.aclose()


async def test_a_new_request_waits_for_the_checkpoint_holding_it() -> None:
    """A process stream, and any other request: one let through would reach a sandbox whose
    kernel is paused, or have its connection saved in the checkpoint (restored half-open
    into every fork)."""
    finish = {CONNECT: asyncio.Event(), "/health": asyncio.Event()}
    for event in finish.values():
        event.set()  # both answer at once
    async with _upstream(finish) as url:
        proxy = SandboxProxy(_Resolver(url))
        async with proxy.holding_streams(SID):
            held = asyncio.create_task(_request(proxy, CONNECT))
            other = asyncio.create_task(_request(proxy, "/health"))
            await asyncio.sleep(0.2)
            assert not held.done() and not other.done()
        assert await held == b"started\nended\n"  # served once the checkpoint is over
        assert await other == b"started\nended\n"
        await proxy.aclose()
