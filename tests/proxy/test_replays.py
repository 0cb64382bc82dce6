"""Which requests the proxy sends again when their connection fails before an answer: only
one the upstream cannot have acted on (it did not get it whole), or one a server may get
twice. A POST to envd (all its calls are) sent twice writes input twice, or answers an error
for a move that was made. Over a plain upstream on loopback; no sandbox needed."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from emberbox.server.proxy.app import SandboxProxy

from .loopback import OnLoopback

SANDBOX = "replaysandbox0000000"

# What the upstream does with a request: given its body and its number on its connection,
# answer it (None), or drop the connection unanswered ("drop").
Behaviour = Callable[[bytes, int, asyncio.StreamReader], Awaitable[str | None]]


class _Upstream:
    """A keep-alive HTTP/1.1 server counting the requests it got whole, by body."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.seen: collections.Counter[bytes] = collections.Counter()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(
                    line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if line
                )
                size = int(fields.get(b"content-length", b"0"))
                body = await reader.readexactly(size) if size else b""
                self.seen[body] += 1
                number += 1
                if await self.behaviour(body, number, reader) == "drop":
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxied() -> AsyncIterator[Callable[[Behaviour], Awaitable[tuple[_Upstream, Any]]]]:
    made: list[tuple[asyncio.Server, SandboxProxy, httpx.AsyncClient]] = []

    async def make(behaviour: Behaviour) -> tuple[_Upstream, Any]:
        upstream = _Upstream(behaviour)
        server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
        upstream.port = server.sockets[0].getsockname()[1]
        proxy = SandboxProxy(OnLoopback())  # type: ignore[arg-type]

        async def whole_bodies(scope: Scope, receive: Receive, send: Send) -> None:
            """The body in one message, as uvicorn hands a small request's."""
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            given: list[Message] = [{"type": "http.request", "body": body}]

            async def once() -> Message:
                return given.pop() if given else await receive()

            await proxy(scope, once, send)

        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=whole_bodies),
            base_url="http://localhost",
            headers={"E2b-Sandbox-Id": SANDBOX, "E2b-Sandbox-Port": str(upstream.port)},
        )
        made.append((server, proxy, client))
        return upstream, (client, proxy)

    yield make
    for server, proxy, client in made:
        await client.aclose()
        await proxy.aclose()
        server.close()


async def _second_on_its_connection_dropped(body: bytes, number: int, _: Any) -> str | None:
    """An upstream that read the request whole, maybe acted on it, and died unanswering."""
    return "drop" if body != b"warm" and number == 2 else None


async def test_a_post_the_upstream_got_whole_is_not_sent_again(proxied: Any) -> None:
    upstream, (client, _) = await proxied(_second_on_its_connection_dropped)
    assert (await client.post("/", content=b"warm")).status_code == 200
    answer = await client.post("/", content=b"append a line")
    assert answer.status_code == 502
    assert (
        answer.json()["message"] == "The sandbox's server closed the connection without answering"
    )
    assert upstream.seen[b"append a line"] == 1


@pytest.mark.parametrize(
    ("method", "headers"),
    [("GET", {}), ("OPTIONS", {}), ("POST", {"Idempotency-Key": "k1"})],
)
async def test_a_request_a_server_may_get_twice_is_sent_again_on_a_fresh_connection(
    proxied: Any, method: str, headers: dict[str, str]
) -> None:
    upstream, (client, _) = await proxied(_second_on_its_connection_dropped)
    assert (await client.post("/", content=b"warm")).status_code == 200
    answer = await client.request(method, "/", content=b"again", headers=headers)
    assert (answer.status_code, answer.text) == (200, "ok")
    assert upstream.seen[b"again"] == 2


@pytest.mark.parametrize(
    ("method", "headers"), [("POST", {}), ("GET", {}), ("POST", {"Idempotency-Key": "k2"})]
)
async def test_a_request_under_way_as_a_pause_closes_the_connections_is_not_sent_again(
    proxied: Any, method: str, headers: dict[str, str]
) -> None:
    """A pause closes every connection to the sandbox before its checkpoint; the envd it
    was sent to is still running then, and acting on it. Not even a request a server may
    get twice goes again: a connection opened to the sandbox now would be saved in its
    checkpoint (a GET cut off so was sent again on a fresh one)."""

    async def slow(body: bytes, _: int, __: Any) -> str | None:
        if body == b"slow call":
            await asyncio.sleep(0.5)
        return None

    upstream, (client, proxy) = await proxied(slow)
    assert (await client.post("/", content=b"warm")).status_code == 200
    under_way = asyncio.create_task(
        client.request(method, "/", content=b"slow call", headers=headers)
    )
    while not upstream.seen[b"slow call"]:  # noqa: ASYNC110 - the upstream's own count
        await asyncio.sleep(0.01)
    await proxy.close_connections(SANDBOX)
    assert (await under_way).status_code == 502
    assert upstream.seen[b"slow call"] == 1


async def test_a_connection_opened_to_send_a_request_again_is_closed_with_the_others(
    proxied: Any,
) -> None:
    """Else it would be saved in the checkpoint, and restored into the sandbox's forks."""
    closed = asyncio.Event()

    async def held(body: bytes, number: int, reader: asyncio.StreamReader) -> str | None:
        if body == b"held" and number == 2:
            return "drop"
        if body == b"held":  # sent again, on a connection of its own: held open
            try:
                if await asyncio.wait_for(reader.read(1), 10) == b"":
                    closed.set()
            except TimeoutError:
                pass
            return "drop"
        return None

    upstream, (client, proxy) = await proxied(held)
    assert (await client.post("/", content=b"warm")).status_code == 200
    answer = asyncio.create_task(client.request("GET", "/", content=b"held"))
    while upstream.seen[b"held"] < 2:  # noqa: ASYNC110 - the upstream's own count
        await asyncio.sleep(0.01)
    await proxy.close_connections(SANDBOX)
    await asyncio.wait_for(closed.wait(), 5)
    assert (await answer).status_code == 502
