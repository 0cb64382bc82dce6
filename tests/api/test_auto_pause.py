"""Lifecycle through the official e2b SDK: a sandbox created with ``on_timeout: pause`` pauses at
its end time instead of dying, and with ``auto_resume`` traffic through the proxy wakes it (one
resume, however many requests arrive). Real gVisor sandboxes; the process runtime, which cannot
pause, refuses the options with 501."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox, SandboxException, SandboxState

from emberbox._connect.errors import Code
from emberbox.host.errors import HostError
from emberbox.host.ports import free_loopback_port
from emberbox.node.client import NodeUnavailable
from emberbox.server.db import sandboxes as q
from emberbox.server.lifecycle import service as lifecycle_service
from emberbox.server.lifecycle.errors import SandboxFailed
from emberbox.server.lifecycle.service import CreateRequest, Woken
from emberbox.server.lifecycle.states import State
from emberbox.server.proxy.app import SandboxProxy
from emberbox.server.proxy.resolver import Paused, SandboxResolver
from emberbox.server.proxy.responses import sandbox_paused
from emberbox.server.testing import ServerProcess
from emberbox.signed_urls import sign
from emberbox.vocabulary import ENVD_PORT
from tests import background_counter
from tests.api.conftest import Running, point_sdks_at
from tests.lifecycle import conftest as lifecycle
from tests.lifecycle.conftest import Plane

# Started detached (not as an SDK background command): a command stream held open through the
# proxy would break at the pause, and the SDK's probe after a broken stream is traffic that
# wakes the sandbox. Detached, nothing touches the proxy while we wait for the pause.
COUNTER = f"setsid sh -c '{background_counter.LOOP}' >/dev/null 2>&1 </dev/null &"
COUNTING = "pgrep -f 'counter[.]new' || echo none"  # (the pattern does not match itself)
PAUSE_AND_RESUME: dict[str, object] = {"on_timeout": "pause", "auto_resume": True}


@pytest.fixture(scope="module")
def gv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Its runsc refuses every checkpoint while ``refusing_checkpoints`` says so."""
    from tests.runtimes.gvisor_support import gvisor_server

    tmp = tmp_path_factory.mktemp("auto-pause-server")
    faulty = tmp / "runsc"
    faulty.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" checkpoint "*) [ -e {refusing_checkpoints(tmp)} ] &&'
        ' { echo "checkpoint refused by the test" >&2; exit 1; };; esac\n'
        f'exec {shutil.which("runsc")} "$@"\n'
    )
    faulty.chmod(0o755)
    with gvisor_server(tmp, env={"EMBERBOX_RUNSC": str(faulty)}) as server:
        yield server


def refusing_checkpoints(tmp: Path) -> Path:
    return tmp / "refuse-checkpoints"


@pytest.fixture
def gv_key(gv: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    assert gv.first_key
    return point_sdks_at(gv, gv.first_key, monkeypatch)


@pytest.fixture
def gv_api(gv: ServerProcess, gv_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gv.api_url, headers={"X-API-KEY": gv_key}, timeout=60) as c:
        yield c


def server_log(server: ServerProcess) -> str:
    return (server.log_dir / "server.log").read_text()


def counter(sbx: Sandbox) -> int:
    return int(sbx.commands.run(background_counter.READ).stdout)


def wait_state(sbx: Sandbox, state: SandboxState, within_s: float = 20) -> None:
    """Polls the API (never the proxy, which would wake the sandbox)."""
    deadline = time.monotonic() + within_s
    while (now := sbx.get_info().state) != state:
        assert time.monotonic() < deadline, f"still {now} after {within_s} s"
        time.sleep(0.1)


def serve_site(gv: ServerProcess, sbx: Sandbox, text: str) -> str:
    """Starts ``python3 -m http.server`` inside (detached); returns its Host header once it
    answers through the proxy."""
    port = free_loopback_port()
    sbx.files.write("/home/user/site/index.html", text)
    sbx.commands.run(
        f"cd /home/user/site && setsid python3 -m http.server {port} >/dev/null 2>&1 </dev/null &"
    )
    host = sbx.get_host(port)
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{gv.sandbox_url}/index.html", headers={"Host": host})
        if r.status_code == 200:
            return host
        assert r.status_code == 502 and time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_paused_at_end_time_then_traffic_wakes_it(gv: ServerProcess, gv_key: str) -> None:
    sbx = Sandbox.create(timeout=60, lifecycle=PAUSE_AND_RESUME)  # type: ignore[arg-type]
    try:
        assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
        sbx.commands.run(COUNTER)
        host = serve_site(gv, sbx, "woken by traffic")
        before = counter(sbx)
        sbx.set_timeout(2)
        wait_state(sbx, SandboxState.PAUSED)
        time.sleep(1)  # paused it stays: a paused sandbox's old end time never kills it
        assert sbx.get_info().state == SandboxState.PAUSED

        r = httpx.get(f"{gv.sandbox_url}/index.html", headers={"Host": host}, timeout=60)
        assert r.status_code == 200 and r.text == "woken by traffic"
        info = sbx.get_info()
        assert info.state == SandboxState.RUNNING
        # The new end time is now plus the timeout it was created with (60 s), not the 2 s.
        left = (info.end_at - dt.datetime.now(dt.UTC)).total_seconds()
        assert 45 < left <= 61, left
        first = counter(sbx)
        assert first > before  # the same process, counting on
        deadline = time.monotonic() + 10
        while counter(sbx) == first:
            assert time.monotonic() < deadline, "the counter stopped after the resume"
            time.sleep(0.1)
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}
        assert server_log(gv).count(f"sandbox {sbx.sandbox_id} resumed by traffic") == 1
    finally:
        sbx.kill()


def test_ten_requests_to_a_paused_sandbox_cause_one_resume(gv: ServerProcess, gv_key: str) -> None:
    sbx = Sandbox.create(timeout=60, lifecycle=PAUSE_AND_RESUME)  # type: ignore[arg-type]
    try:
        host = serve_site(gv, sbx, "one resume")
        sbx.pause()  # a manual pause wakes on traffic too: auto_resume is the sandbox's
        assert sbx.get_info().state == SandboxState.PAUSED

        async def ten() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gv.sandbox_url, timeout=60) as client:
                return await asyncio.gather(
                    *(client.get("/index.html", headers={"Host": host}) for _ in range(10))
                )

        answers = asyncio.run(ten())
        assert [(r.status_code, r.text) for r in answers] == [(200, "one resume")] * 10
        log = server_log(gv)
        assert log.count(f"waking sandbox {sbx.sandbox_id} on traffic") == 1
        assert log.count(f"sandbox {sbx.sandbox_id} resumed by traffic") == 1
        assert sbx.get_info().state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_envd_traffic_wakes_it_only_with_the_token_or_a_signed_url(
    gv: ServerProcess, gv_key: str
) -> None:
    """Through envd's port, the official SDK's calls (which carry the access token) and its
    signed file URLs wake a paused ``auto_resume`` sandbox; a request without either is a
    401 and it stays paused."""
    sbx = Sandbox.create(timeout=60, lifecycle=PAUSE_AND_RESUME)  # type: ignore[arg-type]
    try:
        sbx.files.write("/home/user/kept.txt", "kept")
        envd = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT)}
        files = gv.sandbox_url + "/files"
        signed = files + "?" + sbx.download_url("/home/user/kept.txt").split("?", 1)[1]
        sbx.pause()
        for anyone in (gv.sandbox_url + "/health", files + "?path=/home/user/kept.txt"):
            r = httpx.get(anyone, headers=envd)
            assert r.status_code == 401 and "X-Access-Token" in r.json()["message"], r.text
        tampered = signed.replace("kept.txt", "other.txt")
        assert httpx.get(tampered, headers=envd).status_code == 401
        assert sbx.get_info().state == SandboxState.PAUSED

        r = httpx.get(signed, headers=envd, timeout=60)  # a signed URL wakes it
        assert r.status_code == 200 and r.text == "kept"
        assert sbx.get_info().state == SandboxState.RUNNING
        sbx.pause()
        assert sbx.files.read("/home/user/kept.txt") == "kept"  # so does the SDK's own call
        assert sbx.get_info().state == SandboxState.RUNNING
        assert server_log(gv).count(f"sandbox {sbx.sandbox_id} resumed by traffic") == 2
    finally:
        sbx.kill()


async def test_without_auto_resume_traffic_is_refused_and_it_stays_paused(
    gv: ServerProcess, gv_key: str
) -> None:
    sbx = await AsyncSandbox.create(timeout=3, lifecycle={"on_timeout": "pause"})
    try:
        info = await sbx.get_info()
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}
        deadline = time.monotonic() + 20
        while (await sbx.get_info()).state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "not paused at its end time"
            await asyncio.sleep(0.1)
        envd = sbx.get_host(ENVD_PORT)
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{gv.sandbox_url}/health", headers={"Host": envd})
        assert r.status_code == 502, r.text
        body = r.json()
        assert body["sandboxId"] == sbx.sandbox_id and body["canAutoResume"] is False
        assert "was not found" in body["message"] and "paused" in body["message"]
        assert await sbx.is_running() is False  # what the SDK makes of that answer
        await asyncio.sleep(0.5)
        assert (await sbx.get_info()).state == SandboxState.PAUSED
        # connect still resumes it, with its processes
        resumed = await AsyncSandbox.connect(sbx.sandbox_id, timeout=60)
        assert (await resumed.commands.run("echo back")).stdout == "back\n"
    finally:
        await sbx.kill()


def test_resume_with_auto_pause_pauses_again_at_the_end(
    gv: ServerProcess, gv_api: httpx.Client
) -> None:
    """``POST /sandboxes/{id}/resume`` with ``autoPause`` (SDKs before ~2.6)."""
    sid = gv_api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()[
        "sandboxID"
    ]
    try:
        assert gv_api.post(f"/sandboxes/{sid}/pause").status_code == 204
        # A resume refused changes nothing, its autoPause included.
        r = gv_api.post(f"/sandboxes/{sid}/resume", json={"timeout": 10**9, "autoPause": True})
        assert r.status_code == 400, r.text
        detail = gv_api.get(f"/sandboxes/{sid}").json()
        assert detail["state"] == "paused"
        assert detail["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}
        r = gv_api.post(f"/sandboxes/{sid}/resume", json={"timeout": 2, "autoPause": True})
        assert r.status_code == 201, r.text
        detail = gv_api.get(f"/sandboxes/{sid}").json()
        assert detail["lifecycle"] == {"autoResume": False, "onTimeout": "pause"}
        deadline = time.monotonic() + 20
        while gv_api.get(f"/sandboxes/{sid}").json()["state"] != "paused":
            assert time.monotonic() < deadline, "not paused at its end time"
            time.sleep(0.1)
        # Without a timeout: E2B's ResumedSandbox default, 15 s (it was our connect's 300).
        r = gv_api.post(f"/sandboxes/{sid}/resume")
        assert r.status_code == 201, r.text
        end_at = gv_api.get(f"/sandboxes/{sid}").json()["endAt"]
        end = dt.datetime.fromisoformat(end_at.replace("Z", "+00:00"))
        left = (end - dt.datetime.now(dt.UTC)).total_seconds()
        assert 5 < left <= 16, left
    finally:
        gv_api.delete(f"/sandboxes/{sid}")


def test_a_memory_pause_refused_at_the_end_time_keeps_the_files(
    gv: ServerProcess, gv_api: httpx.Client
) -> None:
    """runsc refuses every checkpoint of some sandboxes for minutes (docs/stateful.md, Known
    limits): at the end time such a sandbox keeps its files, rather than being killed."""
    sbx = Sandbox.create(timeout=60, lifecycle=PAUSE_AND_RESUME)  # type: ignore[arg-type]
    refuse = refusing_checkpoints(gv.log_dir)
    try:
        sbx.files.write("/home/user/work.txt", "the user's work")
        sbx.commands.run(COUNTER)
        assert counter(sbx) > 0  # (waits for the loop's first value)
        assert sbx.commands.run(COUNTING).stdout != "none\n"
        refuse.touch()
        sbx.set_timeout(2)
        wait_state(sbx, SandboxState.PAUSED)
        refuse.unlink()
        detail = gv_api.get(f"/sandboxes/{sbx.sandbox_id}").json()
        assert detail["pauseMode"] == "filesystem", detail
        assert f"saving the memory of {sbx.sandbox_id} at its end time failed" in server_log(gv)
        # Booted afresh from its files when resumed, so traffic does not wake it.
        envd = sbx.get_host(ENVD_PORT)
        r = httpx.get(f"{gv.sandbox_url}/health", headers={"Host": envd})
        assert r.status_code == 502 and r.json()["canAutoResume"] is False, r.text
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert resumed.files.read("/home/user/work.txt") == "the user's work"
        assert resumed.commands.run(COUNTING).stdout == "none\n"  # its processes are gone
    finally:
        refuse.unlink(missing_ok=True)
        sbx.kill()


def test_a_crash_amid_the_files_save_at_the_end_time_still_ends_paused(
    gv: ServerProcess, gv_api: httpx.Client
) -> None:
    """The server SIGKILLed while the end time's fallback reads the sandbox's files (its
    processes stopped): the restarted server finds it running, with the end time it had, and
    pauses it again, keeping its files; nothing is lost and nothing is left stopped."""
    from emberbox.runtimes.gvisor import GVisorConfig
    from tests.runtimes.gvisor_support import checkpointing

    sbx = Sandbox.create(timeout=60, lifecycle=PAUSE_AND_RESUME)  # type: ignore[arg-type]
    refuse = refusing_checkpoints(gv.log_dir)
    config = GVisorConfig(data_dir=gv.data_dir)
    try:
        sbx.files.write("/home/user/work.txt", "the user's work")
        sbx.commands.run("head -c 32M /dev/zero > /home/user/bulk")  # a save that takes a while
        refuse.touch()
        sbx.set_timeout(2)
        deadline = time.monotonic() + 20
        assert gv.proc is not None
        while not checkpointing(config, sbx.sandbox_id, files=True, parent=gv.proc.pid):
            assert time.monotonic() < deadline, "the files were never saved"
            time.sleep(0.002)
        gv.sigkill()
        gv.start(timeout_s=60)
        wait_state(sbx, SandboxState.PAUSED, within_s=60)
        refuse.unlink()
        detail = gv_api.get(f"/sandboxes/{sbx.sandbox_id}").json()
        assert detail["pauseMode"] == "filesystem", detail
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert resumed.files.read("/home/user/work.txt") == "the user's work"
        assert resumed.commands.run("stat -c %s /home/user/bulk").stdout == f"{32 << 20}\n"
    finally:
        refuse.unlink(missing_ok=True)
        sbx.kill()


def test_lifecycle_bad_input_on_gvisor(gv_api: httpx.Client) -> None:
    before = gv_api.get("/v2/sandboxes").json()
    r = gv_api.post("/v2/sandboxes", json={"templateID": "base", "autoResume": {"enabled": True}})
    assert r.status_code == 400 and "autoPause" in r.json()["message"], r.text
    r = gv_api.post(
        "/v2/sandboxes",
        json={"templateID": "base", "autoPause": True, "autoPauseMemory": False,
              "autoResume": {"enabled": True}},
    )  # fmt: skip
    assert r.status_code == 400 and "autoPauseMemory" in r.json()["message"], r.text
    assert gv_api.get("/v2/sandboxes").json() == before


# ---- the process runtime (cannot pause) ----------------------------------------------------


def test_process_runtime_refuses_lifecycle_it_cannot_honour(
    sdk_env: Running, api: httpx.Client
) -> None:
    before = api.get("/v2/sandboxes").json()
    for extra in (
        {"autoPause": True},
        {"autoPause": True, "autoResume": {"enabled": True}},
        {"autoResume": {"enabled": True}},
    ):
        r = api.post("/v2/sandboxes", json={"templateID": "base", **extra})
        assert r.status_code == 501, r.text
        assert r.headers["should-retry"] == "false"
        assert "cannot pause" in r.json()["message"], r.text
    with pytest.raises(SandboxException, match="cannot pause"):
        Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
    assert api.get("/v2/sandboxes").json() == before


def test_process_runtime_reports_the_default_lifecycle(sdk_env: Running) -> None:
    sbx = Sandbox.create(timeout=30, lifecycle={"on_timeout": "kill", "auto_resume": False})
    try:
        assert sbx.get_info().lifecycle == {"on_timeout": "kill", "auto_resume": False}
    finally:
        sbx.kill()


# ---- the end-time rules, with the reaper's clock moved (real SQLite, embedded node, fake
# runtime: tests/lifecycle/conftest.py) ---------------------------------------------------


lifecycle_plane = lifecycle.plane  # the fixture, under a name of this module's


def _clock(monkeypatch: pytest.MonkeyPatch, ahead: dt.timedelta) -> None:
    from emberbox.server.db.models import utcnow
    from emberbox.server.lifecycle import reaper, service

    monkeypatch.setattr(reaper, "utcnow", lambda: utcnow() + ahead)
    monkeypatch.setattr(service, "utcnow", lambda: utcnow() + ahead)


async def _row(plane: Plane, sandbox_id: str) -> Any:
    from emberbox.server.db import sandboxes as q

    async with plane.service.sessions() as s:
        return await q.get(s, sandbox_id)


async def test_auto_paused_sandbox_never_times_out(
    lifecycle_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = lifecycle_plane
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    _clock(monkeypatch, dt.timedelta(seconds=61))
    await plane.reaper.tick()
    await plane.reaper.stop()  # waits for the pause it started
    assert (await _row(plane, row.id)).state == "paused"
    _clock(monkeypatch, dt.timedelta(days=30))
    await plane.reaper.tick()
    await plane.reaper.reconcile()
    await plane.reaper.stop()
    assert (await _row(plane, row.id)).state == "paused"
    assert plane.runtime.teardowns[row.id] == 0
    # woken: its lifetime is the one it was created with, counted from now
    assert (await plane.service.wake(row.id)).running is True
    woken = await _row(plane, row.id)
    assert woken.state == "running"
    left = (woken.end_at - dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).total_seconds()
    assert 55 < left <= 61, left
    await plane.service.kill(plane.who, row.id)


@pytest.mark.parametrize("runtime_keeps_files", [False, True])
async def test_failed_pause_at_the_end_time_kills_the_sandbox(
    lifecycle_plane: Plane, monkeypatch: pytest.MonkeyPatch, runtime_keeps_files: bool
) -> None:
    """When neither its memory nor (where the runtime can) its files could be kept."""
    plane = lifecycle_plane
    plane.service.facts.capabilities.filesystem_pause = runtime_keeps_files
    asked: list[bool] = []

    async def checkpoint_fails(sandbox_id: str, memory: bool = True) -> int:
        asked.append(memory)
        raise HostError(f"saving {sandbox_id} failed")

    monkeypatch.setattr(plane.runtime, "pause", checkpoint_fails)
    row = await plane.service.create(plane.who, CreateRequest("base", 60, auto_pause=True))
    _clock(monkeypatch, dt.timedelta(seconds=61))
    await plane.reaper.tick()
    await plane.reaper.stop()
    ended = await _row(plane, row.id)
    assert (ended.state, ended.end_reason) == ("killed", "timeout")
    assert asked == ([True, False] if runtime_keeps_files else [True])
    assert plane.runtime.teardowns[row.id] == 1
    assert (await plane.service.wake(row.id)).running is False


async def test_a_lost_answer_to_the_files_pause_at_the_end_time_kills_nothing(
    lifecycle_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory could not be saved, and a separate node's answer to the files-only pause
    that followed was lost: it may have kept them. The sandbox is left pausing for the
    node's listing to settle, as after a lost answer to the first pause, never killed on a
    guess (a kill would lose the files the node kept)."""
    plane = lifecycle_plane
    plane.service.facts.capabilities.filesystem_pause = True
    asked: list[bool] = []

    async def memory_fails_then_answer_lost(sandbox_id: str, memory: bool = True) -> int:
        asked.append(memory)
        if memory:
            raise NodeUnavailable(Code.INTERNAL, f"saving {sandbox_id} failed")
        raise NodeUnavailable(Code.UNAVAILABLE, "node at http://node: connection reset")

    row = await plane.service.create(plane.who, CreateRequest("base", 60, auto_pause=True))
    monkeypatch.setattr(plane.service.node, "pause", memory_fails_then_answer_lost)
    _clock(monkeypatch, dt.timedelta(seconds=61))
    await plane.reaper.tick()
    await plane.reaper.stop()
    left = await _row(plane, row.id)
    assert (left.state, left.pause_mode) == ("pausing", "filesystem")
    assert asked == [True, False]
    assert plane.runtime.teardowns[row.id] == 0
    await plane.reaper.reconcile()  # the node says it runs: the files were not kept
    assert (await _row(plane, row.id)).state == "running"
    await plane.service.kill(plane.who, row.id)


async def test_wake_refuses_a_sandbox_without_auto_resume(lifecycle_plane: Plane) -> None:
    plane = lifecycle_plane
    row = await plane.service.create(plane.who, CreateRequest("base", 60, auto_pause=True))
    await plane.service.pause(plane.who, row.id)
    assert (await plane.service.wake(row.id)).running is False
    assert (await _row(plane, row.id)).state == "paused"
    await plane.service.kill(plane.who, row.id)


async def test_the_proxy_answers_what_a_failed_wake_left(lifecycle_plane: Plane) -> None:
    """A wake that ends without the sandbox running: the proxy answers from what the sandbox
    is then, not from what it was before the wake (killed meanwhile: not found; paused with
    only its files: traffic cannot wake it, ``canAutoResume`` false)."""
    plane = lifecycle_plane
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    rows = [await plane.service.create(plane.who, req) for _ in range(2)]
    for row in rows:
        await plane.service.pause(plane.who, row.id)
    killed, files_only = (r.id for r in rows)

    async def wake(sandbox_id: str) -> Woken:
        if sandbox_id == killed:
            await plane.service.kill(plane.who, sandbox_id)
        else:  # the pause it waited for kept only the files
            async with plane.service.sessions.begin() as s:
                await q.update_fields(s, sandbox_id, [State.PAUSED], pause_mode="filesystem")
        return Woken(False)

    proxy = SandboxProxy(SandboxResolver(plane.service.sessions), wake)
    assert await proxy._locate(killed, lambda _: None) is None
    left = await proxy._locate(files_only, lambda _: None)
    assert isinstance(left, Paused) and left.auto_resume is False
    await plane.service.kill(plane.who, files_only)


async def test_the_proxy_answers_what_a_woken_sandbox_became_since(
    lifecycle_plane: Plane,
) -> None:
    """Woken, then killed (or paused again) before the request goes on: not found (or the
    paused answer, not a second wake), never the paused answer read before the wake."""
    plane = lifecycle_plane
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    rows = [await plane.service.create(plane.who, req) for _ in range(2)]
    for row in rows:
        await plane.service.pause(plane.who, row.id)
    killed, paused_again = (r.id for r in rows)
    wakes: list[str] = []

    async def wake(sandbox_id: str) -> Woken:
        wakes.append(sandbox_id)
        woken = await plane.service.wake(sandbox_id)
        assert woken.running
        if sandbox_id == killed:
            await plane.service.kill(plane.who, sandbox_id)
        else:
            await plane.service.pause(plane.who, sandbox_id)
        return woken

    proxy = SandboxProxy(SandboxResolver(plane.service.sessions), wake)
    assert await proxy._locate(killed, lambda _: None) is None
    again = await proxy._locate(paused_again, lambda _: None)
    assert isinstance(again, Paused) and again.refused is None
    assert wakes == [killed, paused_again]  # one wake per request
    await plane.service.kill(plane.who, paused_again)


async def test_a_wake_the_team_limit_refuses_says_why(lifecycle_plane: Plane) -> None:
    """The proxy's 502 for a sandbox traffic could not wake names the reason (it was only in
    the server's log), without the team's figures, and the sandbox stays paused."""
    plane = lifecycle_plane
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.pause(plane.who, row.id)
    plane.service.limits = dataclasses.replace(plane.service.limits, max_concurrent_sandboxes=1)
    other = await plane.service.create(plane.who, CreateRequest("base", 60))
    woken = await plane.service.wake(row.id)
    assert woken.running is False and woken.refused is not None
    assert "concurrent sandbox limit" in woken.refused
    assert "per team" not in woken.refused  # (not the limit: anyone at a public port sees it)
    body = sandbox_paused(row.id, True, woken.refused)
    assert "was not found" in body["message"]  # what the SDKs look for in a 502
    assert woken.refused in body["message"]
    assert (await _row(plane, row.id)).state == "paused"
    await plane.service.kill(plane.who, other.id)
    assert (await plane.service.wake(row.id)).running is True
    await plane.service.kill(plane.who, row.id)


async def test_envd_s_port_wakes_a_sandbox_only_for_a_request_envd_would_serve(
    lifecycle_plane: Plane,
) -> None:
    """Through envd's port, a paused ``auto_resume`` sandbox wakes only for a request carrying
    its envd access token or a valid signed file URL: anyone else gets a 401 and it stays
    paused (a wake restarts its lifetime and counts against its team's limits). Its other,
    public ports wake it for anyone, as E2B's."""
    plane = lifecycle_plane
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    token = row.envd_access_token
    woken: list[str] = []

    async def wake(sandbox_id: str) -> Woken:
        woken.append(sandbox_id)
        return await plane.service.wake(sandbox_id)

    resolver = SandboxResolver(plane.service.sessions)
    plane.service.on_gone = resolver.forget  # as the server wires them: a pause is seen at once
    proxy = SandboxProxy(resolver, wake)
    routing = {"E2b-Sandbox-Id": row.id, "E2b-Sandbox-Port": str(ENVD_PORT)}
    expires = int(time.time()) + 60
    read = sign("/home/user/f", "read", "user", token, expires)
    signed = {"path": "/home/user/f", "username": "user", "signature": read,
              "signature_expiration": str(expires)}  # fmt: skip
    refused: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
        ("GET", "/health", {}, {}),
        ("GET", "/health", {"X-Access-Token": "wrong"}, {}),
        ("POST", "/process.Process/List", {"X-Access-Token": token[:-1]}, {}),
        ("GET", "/files", {}, {**signed, "signature": read[:-2] + "AA"}),
        ("POST", "/files", {}, signed),  # signed for reading, not writing
        ("GET", "/files", {}, {**signed, "path": "/home/user/other"}),
        ("GET", "/files", {}, {**signed, "signature_expiration": str(expires - 120)}),
        ("GET", "/health", {}, signed),  # a signature opens envd's files only
    ]
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        for method, path, headers, params in refused:
            await plane.service.pause(plane.who, row.id)
            r = await client.request(method, path, headers={**routing, **headers}, params=params)
            assert r.status_code == 401, (method, path, headers, params, r.text)
            assert r.json()["code"] == 401 and "X-Access-Token" in r.json()["message"]
            assert (await plane.state(row.id), woken) == ("paused", [])
            await plane.service.wake(row.id)  # let the next case pause it afresh
        for headers, params in (({"X-Access-Token": token}, {}), ({}, signed)):
            await plane.service.pause(plane.who, row.id)
            path = "/files" if params else "/health"
            r = await client.get(path, headers={**routing, **headers}, params=params)
            assert r.status_code != 401, r.text  # the fake envd has no /files: a 404
            assert (await plane.state(row.id), woken) == ("running", [row.id])
            woken.clear()
        # a request to envd's port of a running sandbox is envd's to judge, as before
        r = await client.get("/health", headers=routing)
        assert r.status_code == 204 and woken == []
    await proxy.aclose()
    await plane.service.kill(plane.who, row.id)


async def test_traffic_leaves_a_sandbox_whose_wake_failed_alone_for_a_while(
    lifecycle_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake whose resume failed is not tried again by traffic for ``WAKE_RETRY_S`` (a client
    retrying in a loop had the node restore the sandbox each time); a connect tries at once,
    and once it resumed the sandbox, its next pause is woken by traffic at once again."""
    plane = lifecycle_plane
    monkeypatch.setattr(lifecycle_service, "WAKE_RETRY_S", 2.0)
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.pause(plane.who, row.id)
    tries: list[str] = []
    resume = plane.runtime.resume

    async def fails(sandbox_id: str, memory: bool = True) -> object:
        tries.append(sandbox_id)
        raise HostError("runsc restore failed: checkpoint file truncated")

    monkeypatch.setattr(plane.runtime, "resume", fails)
    first = await plane.service.wake(row.id)
    assert not first.running and first.refused is not None
    assert "tries again in 2 s" in first.refused and "truncated" not in first.refused
    again = await asyncio.gather(*(plane.service.wake(row.id) for _ in range(5)))
    assert again == [first] * 5 and tries == [row.id]
    assert await plane.state(row.id) == "paused"
    await asyncio.sleep(2.1)  # the while is over: traffic tries again
    assert (await plane.service.wake(row.id)).running is False and len(tries) == 2
    with pytest.raises(SandboxFailed):  # a connect does not wait
        await plane.service.connect(plane.who, row.id, 60)
    assert len(tries) == 3
    monkeypatch.setattr(plane.runtime, "resume", resume)
    _, resumed = await plane.service.connect(plane.who, row.id, 60)
    assert resumed and await plane.state(row.id) == "running"
    await plane.service.pause(plane.who, row.id)
    assert (await plane.service.wake(row.id)).running is True
    await plane.service.kill(plane.who, row.id)


async def test_a_wake_whose_answer_was_lost_is_not_held_against_the_next(
    lifecycle_plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake whose call to the node got no answer may have resumed the sandbox: it is not
    remembered as a failure (traffic was refused for ``WAKE_RETRY_S`` with "its resume
    failed" while the node's listing said it ran)."""
    plane = lifecycle_plane
    req = CreateRequest("base", 60, auto_pause=True, auto_resume=True)
    row = await plane.service.create(plane.who, req)
    await plane.service.pause(plane.who, row.id)
    calls: list[str] = []
    resume = plane.service.node.resume

    async def lost(sandbox_id: str, *args: object, **kwargs: object) -> object:
        calls.append(sandbox_id)
        raise NodeUnavailable(Code.UNAVAILABLE, "node at http://node: connection reset")

    monkeypatch.setattr(plane.service.node, "resume", lost)
    assert (await plane.service.wake(row.id)).running is False
    assert await plane.state(row.id) == "resuming"  # the node's listing settles it
    await plane.reaper.reconcile()
    assert await plane.state(row.id) == "paused"  # (this one never reached the node)
    monkeypatch.setattr(plane.service.node, "resume", resume)
    assert (await plane.service.wake(row.id)).running is True
    assert calls == [row.id]
    await plane.service.kill(plane.who, row.id)
