"""Limits of the service (output budget, 20 contexts at once) and tokens checked by a real envd."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import SandboxException
from e2b_code_interpreter import Sandbox

from emberbox.host.ports import free_loopback_port
from emberbox.interpreter import tokens
from tests.conftest import EnvdProcess, start_envd

from .conftest import Service, sdk_env, start_service, with_token

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("budget"), "--max-output-bytes", str(LIMIT))
    yield svc
    svc.stop()


def test_output_past_the_budget_is_dropped_with_a_marker(
    monkeypatch: pytest.MonkeyPatch, small_budget: Service
) -> None:
    sdk_env(monkeypatch, small_budget)
    sandbox = Sandbox.create()
    execution = sandbox.run_code(
        "import sys\nfor i in range(64):\n    sys.stdout.write(str(i % 10) * 4096)\n"
        "sys.stdout.flush()\nprint('last')\n'value'"
    )
    sent = "".join(execution.logs.stdout)
    assert LIMIT - 4096 < len(sent) <= LIMIT and "last" not in sent
    assert len(execution.logs.stderr) == 1 and "output truncated" in execution.logs.stderr[0]
    assert execution.results == []  # results count against the same budget
    again = sandbox.run_code("print('small'); 2")  # a new execution, a new budget
    assert again.logs.stdout == ["small\n"] and again.text == "2"


def test_twenty_contexts_run_at_once_without_interleaving(sandbox: Any) -> None:
    with ThreadPoolExecutor(4) as pool:  # kernels start in parallel too
        contexts = list(pool.map(lambda _: sandbox.create_code_context(), range(20)))
    outputs: dict[int, Any] = {}

    def run(index: int) -> None:
        code = f"import time\nfor i in range(20):\n    print('ctx{index}', i)\n    time.sleep(0.01)"
        outputs[index] = sandbox.run_code(code, context=contexts[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for index in range(20):
            assert "".join(outputs[index].logs.stdout) == "".join(
                f"ctx{index} {i}\n" for i in range(20)
            )
    finally:
        for context in contexts:
            sandbox.remove_code_context(context)


@pytest.fixture
def envd(sandbox_user: str) -> Iterator[EnvdProcess]:
    process = start_envd(free_loopback_port())
    yield process
    process.stop()


def test_the_token_is_whatever_envd_accepts(
    monkeypatch: pytest.MonkeyPatch, envd: EnvdProcess, tmp_path: Path
) -> None:
    svc = start_service(tmp_path, "--envd-url", envd.url)
    try:
        # envd has no token yet (before its /init): nor does the service.
        assert httpx.post(f"{svc.url}/execute", json={"code": "1"}).status_code == 200
        init = httpx.post(f"{envd.url}/init", json={"accessToken": "from-init"})
        assert init.status_code == 204
        sdk_env(monkeypatch, svc)
        anonymous = Sandbox.create()
        with pytest.raises(SandboxException, match="401"):
            anonymous.run_code("1")
        wrong = httpx.get(f"{svc.url}/contexts", headers={"X-Access-Token": "nope"})
        assert wrong.status_code == 401 and wrong.json()["code"] == 401
        sandbox = with_token(Sandbox, anonymous, "from-init")
        assert sandbox.run_code("6 * 7").text == "42"
        assert sandbox.list_code_contexts()  # context routes: no token needed, as before

        envd.stop()  # nobody left to ask: refused with 503, not let through
        unasked = httpx.post(
            f"{svc.url}/execute", json={"code": "1"}, headers={"X-Access-Token": "other"}
        )
        assert unasked.status_code == 503 and unasked.json()["code"] == 503
    finally:
        svc.stop()


async def test_a_remembered_token_is_forgotten_when_the_clocks_jump(
    monkeypatch: pytest.MonkeyPatch, envd: EnvdProcess
) -> None:
    """A sandbox restored from a snapshot (a fork gets its own token) must not keep accepting
    the token its original accepted a moment before the snapshot."""
    async with httpx.AsyncClient(base_url=envd.url) as http:
        assert (await http.post("/init", json={"accessToken": "one"})).status_code == 204
        check = tokens.EnvdToken(envd.url)
        try:
            assert await check.accepts("one") and not await check.accepts("two")
            replaced = await http.post(
                "/init", json={"accessToken": "two"}, headers={"X-Access-Token": "one"}
            )
            assert replaced.status_code == 204
            assert await check.accepts("one")  # remembered for up to ACCEPT_TTL_SECONDS
            jumped = tokens._clocks() + 30
            monkeypatch.setattr(tokens, "_clocks", lambda: jumped)
            assert not await check.accepts("one")
            assert await check.accepts("two")
        finally:
            await check.aclose()
