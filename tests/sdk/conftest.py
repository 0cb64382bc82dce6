"""Every SDK test runs twice: through ``Sandbox`` (sync face) and ``AsyncSandbox`` (async core).

The bodies are written once; :func:`maybe` awaits what the async face returns and passes the
sync face's values through, and :func:`items` drains either kind of iterator.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from emberbox import AsyncSandbox, Sandbox
from emberbox.sdk._config import ConnectionConfig
from emberbox.server.testing import ServerProcess
from tests.conftest import EnvdProcess
from tests.interpreter.conftest import Service, start_service


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def items(iterable: Any) -> list[Any]:
    if hasattr(iterable, "__aiter__"):
        return [item async for item in iterable]
    return list(iterable)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition``; the sync face delivers callbacks from its own thread meanwhile."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.fixture
def connection(server: ServerProcess) -> dict[str, Any]:
    """Our SDK's connection to the module's own ``server`` fixture (a real server)."""
    assert server.first_key is not None
    return {
        "api_key": server.first_key,
        "api_url": server.api_url,
        "sandbox_url": server.sandbox_url,
    }


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest) -> Any:
    """The SDK class a test creates its sandboxes with: the sync face, then the async core."""
    return Sandbox if request.param == "sync" else AsyncSandbox


@pytest.fixture(params=["sync", "async"])
async def sandbox(request: pytest.FixtureRequest, envd_debug: EnvdProcess) -> AsyncIterator[Any]:
    """A debug-mode sandbox (envd on localhost:49983, no control plane) from either face."""
    if request.param == "sync":
        sbx: Any = Sandbox(debug=True)
    else:
        sbx = await AsyncSandbox.create(debug=True)
    yield sbx
    await maybe(sbx.close())


# The code-interpreter service as a real process on a loopback port (started as its own tests
# start it). ``sandbox_url`` points our SDK's port-49999 traffic at it; debug mode means no
# control plane.
INTERPRETER_TOKEN = "sdk-interpreter-token"


@pytest.fixture(scope="session")
def interpreter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("sdk-interpreter"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def secured_interpreter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("sdk-interpreter-secured")
    svc = start_service(home, "--access-token", INTERPRETER_TOKEN)
    yield svc
    svc.stop()


async def code_sandbox(face: str, url: str, access_token: str | None = None) -> Any:
    """A debug sandbox of either face whose interpreter is ``url``. With ``access_token`` it is
    built as from a create's answer, which is where a real sandbox's envd token comes from."""
    if access_token is None:
        if face == "sync":
            return Sandbox(debug=True, sandbox_url=url)
        return await AsyncSandbox.create(debug=True, sandbox_url=url)
    cls: Any = Sandbox if face == "sync" else AsyncSandbox
    config = ConnectionConfig.create(debug=True, sandbox_url=url)
    data = {"sandboxID": "debug_sandbox_id", "envdAccessToken": access_token}
    return cls._from_api(data, config, httpx.Client() if face == "sync" else httpx.AsyncClient())


@pytest.fixture(params=["sync", "async"])
async def coder(request: pytest.FixtureRequest, interpreter: Service) -> AsyncIterator[Any]:
    """A sandbox of either face talking to the loopback interpreter."""
    sbx = await code_sandbox(request.param, interpreter.url)
    yield sbx
    await maybe(sbx.close())
