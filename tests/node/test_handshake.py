"""envd's handshake against loopback servers that misbehave the way a booting or restoring
sandbox does: not listening yet, or dropping the connection after taking the /init."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from emberbox.envd_client.handshake import EnvdDefaults, HandshakeFailed, handshake
from emberbox.host.ports import free_loopback_port

DEFAULTS = EnvdDefaults(user="user", workdir="/home/user", env={"A": "1"})


class Envd:
    """/init as envd takes it (a token once set must be proved), and only /init: a handshake
    that still polled /health first would get 404s. ``drop_first`` takes the first /init,
    then breaks the connection before its answer is complete."""

    def __init__(self, drop_first: bool = False, envs: dict[str, str] | None = None) -> None:
        self.token: str | None = None
        self.envs = envs  # a restored envd's variables, served at /envs
        self.inits: list[dict[str, Any]] = []
        self.refused = 0
        self.drop_first = drop_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] not in ("/init", "/envs"):
            await self._answer(send, 404)
            return
        headers = dict(scope["headers"])
        if self.token and headers.get(b"x-access-token", b"").decode() != self.token:
            self.refused += 1
            await self._answer(send, 401)
            return
        if scope["path"] == "/envs":
            await self._answer(send, 200, body=json.dumps(self.envs or {}).encode())
            return
        data = json.loads(body)
        self.inits.append(data)
        self.token = data.get("accessToken") or self.token
        if self.drop_first and len(self.inits) == 1:  # taken, then the connection breaks
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"10")]})  # fmt: skip
            return  # unfinished: uvicorn closes the connection
        await self._answer(send, 204, [(b"x-envd-version", b"9.9.9")])

    @staticmethod
    async def _answer(
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]] = [],  # noqa: B006
        body: bytes = b"",
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _serve(app: Envd, port: int, after_s: float = 0.0) -> uvicorn.Server:
    await asyncio.sleep(after_s)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    asyncio.get_running_loop().create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
        await asyncio.sleep(0.005)
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_the_first_init_waits_for_envd_to_listen(http: httpx.AsyncClient) -> None:
    envd, port = Envd(), free_loopback_port()
    starting = asyncio.create_task(_serve(envd, port, after_s=0.3))  # a boot, a restore
    greeting = await handshake(http, f"http://127.0.0.1:{port}", DEFAULTS, "tok", timeout_s=10)
    server = await starting
    server.should_exit = True
    assert greeting.version == "9.9.9"  # from /init's answer: no /health asked
    assert greeting.inherited_env == {}  # a boot: nothing held before
    (init,) = envd.inits
    assert init["accessToken"] == "tok" and init["envVars"] == {"A": "1"}


async def test_an_init_taken_but_not_answered_is_sent_again_and_passes(
    http: httpx.AsyncClient,
) -> None:
    envd, port = Envd(drop_first=True), free_loopback_port()
    server = await _serve(envd, port)
    try:
        await handshake(http, f"http://127.0.0.1:{port}", DEFAULTS, "tok", timeout_s=10)
    finally:
        server.should_exit = True
    assert len(envd.inits) == 2 and envd.refused == 0, "the retry proved the token it set"
    assert envd.token == "tok"


async def test_a_machine_that_stops_ends_the_wait_at_once(http: httpx.AsyncClient) -> None:
    async def dead() -> bool:
        return False

    start = asyncio.get_running_loop().time()
    with pytest.raises(HandshakeFailed, match="stopped before envd answered"):
        await handshake(http, f"http://127.0.0.1:{free_loopback_port()}", DEFAULTS, "tok",
                        timeout_s=30, alive=dead)  # fmt: skip
    assert asyncio.get_running_loop().time() - start < 5


async def test_nobody_listening_fails_after_the_timeout(http: httpx.AsyncClient) -> None:
    with pytest.raises(HandshakeFailed, match="not answering"):
        nobody = f"http://127.0.0.1:{free_loopback_port()}"
        await handshake(http, nobody, DEFAULTS, "tok", timeout_s=0.3)


async def test_a_restored_envd_keeps_its_callers_variables_under_the_new_identity(
    http: httpx.AsyncClient,
) -> None:
    """A sandbox started from a snapshot or a fork: the source's callers' variables stay, the
    new sandbox's own win, and the handshake says which ones came from the restored memory
    (the node keeps them for the sandbox's later boots from its files)."""
    envd = Envd(envs={"A": "source", "FROM_SOURCE": "x"})
    envd.token = "old"
    port = free_loopback_port()
    server = await _serve(envd, port)
    try:
        greeting = await handshake(http, f"http://127.0.0.1:{port}", DEFAULTS, "new",
                                   timeout_s=10, previous_token="old")  # fmt: skip
    finally:
        server.should_exit = True
    (init,) = envd.inits
    assert init["envVars"] == {"A": "1", "FROM_SOURCE": "x"}
    assert greeting.inherited_env == {"FROM_SOURCE": "x"}
    assert envd.token == "new"


async def test_a_restored_envd_s_variables_stay_over_the_template_s_not_over_its_own(
    http: httpx.AsyncClient,
) -> None:
    """``own``: only the new sandbox's identity and its create's vars win over what the
    source held; a template var its source's create had changed keeps the source's value
    (as the source's processes, restored with it, have it). Vars held as the defaults set
    them anyway are not reported as carried over."""
    defaults = EnvdDefaults("user", "/home/user", {
        "MODE": "template", "SAME": "t", "MINE": "new", "E2B_SANDBOX_ID": "new-id",
    })  # fmt: skip
    envd = Envd(envs={"MODE": "source", "SAME": "t", "MINE": "old", "E2B_SANDBOX_ID": "old-id",
                      "FROM_SOURCE": "x"})  # fmt: skip
    envd.token = "old"
    port = free_loopback_port()
    server = await _serve(envd, port)
    try:
        greeting = await handshake(http, f"http://127.0.0.1:{port}", defaults, "new",
                                   timeout_s=10, previous_token="old",
                                   own={"MINE", "E2B_SANDBOX_ID"})  # fmt: skip
    finally:
        server.should_exit = True
    (init,) = envd.inits
    assert init["envVars"] == {
        "MODE": "source", "SAME": "t", "MINE": "new", "E2B_SANDBOX_ID": "new-id",
        "FROM_SOURCE": "x",
    }  # fmt: skip
    assert greeting.inherited_env == {"MODE": "source", "FROM_SOURCE": "x"}
