"""The official, unmodified ``e2b`` SDK (debug off) against a real server and real envds."""

from __future__ import annotations

import sys
import time
import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException

from emberbox.host.ports import free_loopback_port
from tests.api.conftest import Running


def test_create_run_files_info_kill(sdk_env: Running) -> None:
    tag = uuid.uuid4().hex
    sbx = Sandbox.create(
        metadata={"suite": tag, "sp ace": "a b&c=d"}, envs={"FOO": "bar baz"}, timeout=120
    )
    try:
        assert len(sbx.sandbox_id) == 20 and sbx.sandbox_id.isalnum()
        result = sbx.commands.run('echo "$FOO|$E2B_SANDBOX_ID"')
        assert result.exit_code == 0
        assert result.stdout.strip() == f"bar baz|{sbx.sandbox_id}"

        # The local backend runs envd as the server's user, with the sandbox's own directory
        # as every user's home: its logins never read (or leave state in) the host's dotfiles.
        home = sbx.commands.run("pwd").stdout.strip()
        assert home.endswith(sbx.sandbox_id)
        assert sbx.commands.run("echo $HOME", user="root").stdout.strip() == home
        sbx.files.write("relative.txt", "in the sandbox's home")
        with open(f"{home}/relative.txt") as f:
            assert f.read() == "in the sandbox's home"
        sbx.files.write(f"{home}/notes/hello.txt", "hello from the test")
        assert sbx.files.read(f"{home}/notes/hello.txt") == "hello from the test"
        assert [e.name for e in sbx.files.list(f"{home}/notes")] == ["hello.txt"]

        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == {"suite": tag, "sp ace": "a b&c=d"}
        assert info.state == SandboxState.RUNNING
        assert 115 <= (info.end_at - info.started_at).total_seconds() <= 121
        assert info.envd_version == "0.6.13"

        metrics = sbx.get_metrics()
        assert len(metrics) == 1 and metrics[0].mem_used > 0 and metrics[0].cpu_count == 2
    finally:
        assert sbx.kill() is True
    assert sbx.is_running() is False
    assert Sandbox.kill(sbx.sandbox_id) is False  # second kill: 404 → False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    state, reason = sdk_env.server.sandbox_states()[sbx.sandbox_id]
    assert (state, reason) == ("killed", "killed by user")
    assert sbx.sandbox_id not in sdk_env.server.live_sandbox_processes()


def test_list_filters_and_pages(sdk_env: Running) -> None:
    tag = uuid.uuid4().hex
    boxes = [Sandbox.create(metadata={"suite": tag, "n": str(i)}, timeout=120) for i in range(3)]
    try:
        # metadata values with characters the double encoding must survive
        odd = Sandbox.create(metadata={"suite": tag + "-odd", "v": "x y%z&=/"}, timeout=60)
        found = Sandbox.list(query=SandboxQuery(metadata={"v": "x y%z&=/"})).next_items()
        assert [s.sandbox_id for s in found] == [odd.sandbox_id]
        odd.kill()

        pager = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), limit=2)
        first = pager.next_items()
        assert len(first) == 2 and pager.has_next
        second = pager.next_items()
        assert len(second) == 1 and not pager.has_next
        ids = [s.sandbox_id for s in first + second]
        # newest first, each exactly once
        assert ids == [b.sandbox_id for b in reversed(boxes)]

        one = Sandbox.list(query=SandboxQuery(metadata={"suite": tag, "n": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [boxes[1].sandbox_id]
        assert one[0].metadata == {"suite": tag, "n": "1"}

        paused = Sandbox.list(
            query=SandboxQuery(metadata={"suite": tag}, state=[SandboxState.PAUSED])
        ).next_items()
        assert paused == []
        running = Sandbox.list(
            query=SandboxQuery(metadata={"suite": tag}, state=[SandboxState.RUNNING])
        ).next_items()
        assert len(running) == 3
    finally:
        for b in boxes:
            b.kill()
    assert Sandbox.list(query=SandboxQuery(metadata={"suite": tag})).next_items() == []


def test_connect_extends_and_set_timeout(sdk_env: Running) -> None:
    sbx = Sandbox.create(timeout=30)
    try:
        end0 = sbx.get_info().end_at
        same = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert same.sandbox_id == sbx.sandbox_id
        assert same.commands.run("echo connected").stdout == "connected\n"
        end1 = sbx.get_info().end_at
        assert (end1 - end0).total_seconds() > 80  # extended
        Sandbox.connect(sbx.sandbox_id, timeout=5)  # connect never shortens
        assert sbx.get_info().end_at == end1
        sbx.set_timeout(10)  # set_timeout may shorten
        end2 = sbx.get_info().end_at
        assert end2 < end1
    finally:
        sbx.kill()
    with pytest.raises(SandboxException):
        Sandbox.connect(sbx.sandbox_id)


def test_pause_is_an_honest_error(sdk_env: Running) -> None:
    sbx = Sandbox.create(timeout=60)
    try:
        with pytest.raises(SandboxException, match="cannot pause"):
            sbx.pause()
        assert sbx.is_running()
        assert sbx.commands.run("echo still").stdout == "still\n"
    finally:
        sbx.kill()


def test_get_host_reaches_a_server_in_the_sandbox(sdk_env: Running) -> None:
    sbx = Sandbox.create(timeout=60)
    try:
        port = free_loopback_port()
        home = sbx.commands.run("pwd").stdout.strip()
        sbx.files.write(f"{home}/site/index.html", "served from the sandbox")
        sbx.commands.run(
            f"cd site && exec {sys.executable} -m http.server {port} --bind 127.0.0.1",
            background=True,
        )
        host = sbx.get_host(port)
        assert host == f"{port}-{sbx.sandbox_id}.localhost:{sdk_env.server.proxy_port}"
        body = _get_until_up(sdk_env.server.sandbox_url + "/index.html", {"Host": host})
        assert body == "served from the sandbox"
        # the header form reaches the same port
        with httpx.Client() as c:
            r = c.get(
                sdk_env.server.sandbox_url + "/index.html",
                headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)},
            )
        assert r.text == "served from the sandbox"
    finally:
        sbx.kill()


def test_wrong_key_is_authentication_error(sdk_env: Running) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 40).next_items()


def _get_until_up(url: str, headers: dict[str, str], timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    with httpx.Client() as c:
        while True:
            r = c.get(url, headers=headers)
            if r.status_code == 200:
                return r.text
            assert r.status_code == 502 and "port is not open" in r.json()["message"], r.text
            if time.monotonic() > deadline:
                raise AssertionError("server in the sandbox never came up")
            time.sleep(0.1)


def test_idempotency_key_returns_the_same_sandbox(sdk_env: Running) -> None:
    key = "retry-" + uuid.uuid4().hex
    first = Sandbox.create(timeout=60, idempotency_key=key)
    try:
        again = Sandbox.create(timeout=60, idempotency_key=key)
        assert again.sandbox_id == first.sandbox_id
        other = Sandbox.create(timeout=60, idempotency_key=key + "-x")
        assert other.sandbox_id != first.sandbox_id
        other.kill()
    finally:
        first.kill()
    # once the sandbox has ended, the key may create a new one
    fresh = Sandbox.create(timeout=60, idempotency_key=key)
    try:
        assert fresh.sandbox_id != first.sandbox_id
    finally:
        fresh.kill()


async def test_async_sdk_round(sdk_env: Running) -> None:
    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create(timeout=60, metadata={"flavour": "async"})
    try:
        result = await sbx.commands.run("echo async")
        assert result.stdout == "async\n"
        info = await sbx.get_info()
        assert info.metadata == {"flavour": "async"}
        await sbx.set_timeout(30)
        assert await sbx.is_running()
    finally:
        assert await sbx.kill() is True
    assert not await sbx.is_running()
