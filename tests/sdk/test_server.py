"""Our SDK against a real ``emberbox server`` on gVisor, once per face: the control-plane
scenarios (create, list, connect, commands, files, ports, timeouts, kill, bad input)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emberbox import (
    AuthenticationException,
    NotFoundException,
    Sandbox,
    SandboxException,
)
from emberbox.server.testing import ServerProcess
from tests.sdk.conftest import eventually, maybe


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import gvisor_server

    with gvisor_server(tmp_path_factory.mktemp("sdk-server")) as srv:
        yield srv


async def _create(face: Any, connection: dict[str, Any], **kwargs: Any) -> Any:
    return await maybe(face.create(**kwargs, **connection))


async def test_lifecycle_commands_files_and_listing(face: Any, connection: dict[str, Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    sandbox = await _create(
        face, connection, timeout=120, metadata={"run": tag}, envs={"GREETING": "hej"}
    )
    try:
        result = await maybe(
            sandbox.commands.run("echo $GREETING; id -un; cat /.e2b 2>/dev/null | head -1")
        )
        assert result.stdout.splitlines()[0] == "hej"
        await maybe(sandbox.files.write("/home/user/a.txt", "content"))
        assert await maybe(sandbox.files.read("/home/user/a.txt")) == "content"

        listed = await maybe(face.list(metadata={"run": tag}, **connection))
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        assert listed[0].metadata == {"run": tag}
        assert await maybe(face.list(metadata={"run": "other"}, **connection)) == []

        info = await maybe(sandbox.get_info())
        assert (info.sandbox_id, info.state) == (sandbox.sandbox_id, "running")
        await maybe(sandbox.set_timeout(30))
        shorter = await maybe(sandbox.get_info())
        assert info.end_at is not None and shorter.end_at is not None
        assert shorter.end_at < info.end_at

        again = await maybe(face.connect(sandbox.sandbox_id, **connection))
        assert (await maybe(again.commands.run("cat /home/user/a.txt"))).stdout == "content"
        await maybe(again.close())
    finally:
        assert await maybe(sandbox.kill()) is True
    assert await maybe(face.kill(sandbox.sandbox_id, **connection)) is False
    with pytest.raises(NotFoundException):
        await maybe(sandbox.get_info())
    await maybe(sandbox.close())


async def test_port_inside_is_reachable_through_the_proxy(
    face: Any, connection: dict[str, Any]
) -> None:
    sandbox = await _create(face, connection, timeout=120)
    try:
        await maybe(sandbox.files.write("/home/user/site/index.html", "served-by-sandbox"))
        server = await maybe(
            sandbox.commands.run(
                "python3 -m http.server 8123 --bind 127.0.0.1",
                cwd="/home/user/site",
                background=True,
                timeout=0,
            )
        )
        host = sandbox.get_host(8123)
        seen: list[str] = []

        def fetch() -> bool:
            try:
                response = httpx.get(
                    f"{connection['sandbox_url']}/", headers={"Host": host}, timeout=2
                )
            except httpx.HTTPError:
                return False
            seen.append(response.text)
            return response.status_code == 200

        assert await eventually(fetch, timeout=15), seen[-1:]
        assert seen[-1] == "served-by-sandbox"
        await maybe(server.kill())
    finally:
        await maybe(sandbox.kill())
        await maybe(sandbox.close())


async def test_sandbox_is_gone_after_its_timeout(face: Any, connection: dict[str, Any]) -> None:
    sandbox = await _create(face, connection, timeout=2)
    try:
        assert await maybe(sandbox.is_running())
        await asyncio.sleep(3.2)
        assert not await maybe(sandbox.is_running())
        with pytest.raises(NotFoundException):
            await maybe(sandbox.get_info())
    finally:
        await maybe(sandbox.close())


async def test_bad_input_raises_typed_errors(face: Any, connection: dict[str, Any]) -> None:
    with pytest.raises(AuthenticationException):
        await maybe(face.create(**{**connection, "api_key": "e2b_" + "0" * 40}))
    with pytest.raises(SandboxException):
        await maybe(face.create(template="no-such-template", **connection))
    with pytest.raises(NotFoundException):
        await maybe(face.connect("doesnotexist0000", **connection))


def test_context_manager_kills_on_exit(connection: dict[str, Any], server: ServerProcess) -> None:
    with Sandbox(timeout=60, **connection) as sandbox:
        sandbox_id = sandbox.sandbox_id
        assert sandbox.commands.run("true").exit_code == 0
    assert Sandbox.kill(sandbox_id, **connection) is False
    del server
