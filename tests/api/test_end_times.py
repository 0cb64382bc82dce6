"""End times are enforced by the server from the database: within 1 s, also across a restart."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import pytest

from tests.api.conftest import DB_PARAMS, Running, start_server

GRACE_S = 1.0


@pytest.fixture(params=DB_PARAMS)
def own_server(request: pytest.FixtureRequest, tmp_path):
    yield from start_server(tmp_path, request.param)


def _create(api: httpx.Client, timeout: int) -> tuple[str, dt.datetime]:
    r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": timeout})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    detail = api.get(f"/sandboxes/{sid}").json()
    return sid, dt.datetime.fromisoformat(detail["endAt"].replace("Z", "+00:00"))


def _wait_gone(run: Running, api: httpx.Client, sid: str, limit: dt.datetime) -> dt.datetime:
    """Poll until the API, the proxy and the process table all say gone; return when."""
    while True:
        now = dt.datetime.now(dt.UTC)
        gone_api = api.get(f"/sandboxes/{sid}").status_code == 404
        if gone_api and sid not in run.server.live_sandbox_processes():
            return now
        assert now <= limit + dt.timedelta(seconds=2), f"{sid} still alive at {now}"
        time.sleep(0.05)


def _proxy_status(run: Running, sid: str) -> httpx.Response:
    return httpx.get(
        run.server.sandbox_url + "/health",
        headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"},
    )


def test_sandbox_is_gone_within_a_second_of_its_end(own_server: Running) -> None:
    with own_server.client() as api:
        sid, end_at = _create(api, 2)
        assert _proxy_status(own_server, sid).status_code == 204
        gone_at = _wait_gone(own_server, api, sid, end_at)
        assert gone_at <= end_at + dt.timedelta(seconds=GRACE_S)
        assert gone_at >= end_at - dt.timedelta(seconds=0.3), "killed before its end time"
        r = _proxy_status(own_server, sid)
        assert r.status_code == 502 and r.json()["message"] == "The sandbox was not found"
    assert own_server.server.sandbox_states()[sid] == ("killed", "timeout")


def test_end_times_survive_a_server_restart(own_server: Running) -> None:
    server = own_server.server
    with own_server.client() as api:
        early, early_end = _create(api, 3)  # ends while the server is down
        late, late_end = _create(api, 9)  # ends after the restart
    server.stop()
    # sandboxes outlive the server process
    assert {early, late} <= server.live_sandbox_processes().keys()
    time.sleep(max(0.0, (early_end - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
    server.start()
    started = dt.datetime.now(dt.UTC)
    banner = (server.log_dir / "server.out").read_text()
    assert f"export E2B_API_URL={server.api_url}" in banner
    assert f"export E2B_SANDBOX_URL={server.sandbox_url}" in banner
    assert "e2b_" not in banner.replace("E2B_", ""), "a key is printed only on the first start"
    with own_server.client() as api:
        gone_at = _wait_gone(own_server, api, early, started)
        assert gone_at <= started + dt.timedelta(seconds=GRACE_S)
        # the other one was re-adopted and still works through the new proxy
        assert _proxy_status(own_server, late).status_code == 204
        assert api.get(f"/sandboxes/{late}").json()["state"] == "running"
        gone_at = _wait_gone(own_server, api, late, late_end)
        assert gone_at <= late_end + dt.timedelta(seconds=GRACE_S)
    states = server.sandbox_states()
    assert states[early] == ("killed", "timeout") and states[late] == ("killed", "timeout")


def test_sandbox_killed_outside_the_server_is_recorded_as_crashed(own_server: Running) -> None:
    from emberbox.host.processes import kill_tree

    with own_server.client() as api:
        sid, _ = _create(api, 60)
        kill_tree(own_server.server.live_sandbox_processes()[sid])
        deadline = time.monotonic() + 10
        while api.get(f"/sandboxes/{sid}").status_code != 404:
            assert time.monotonic() < deadline, "crash never noticed"
            time.sleep(0.1)
    assert own_server.server.sandbox_states()[sid] == ("failed", "runtime crash")


@pytest.fixture
def broken_server(tmp_path):
    # envd that exits at once: every create fails for real inside the backend
    env = {"EMBERBOX_LOCAL_ENVD_COMMAND": "/bin/false"}
    yield from start_server(tmp_path, "sqlite", env)


def test_failed_create_is_recorded_and_leaves_nothing(broken_server: Running) -> None:
    with broken_server.client() as api:
        r = api.post("/v2/sandboxes", json={"templateID": "base"})
        assert r.status_code == 500
        assert r.json()["error_code"] == "sandbox_create_failed"
        assert "stopped before envd answered" in r.json()["message"]
        assert r.headers["should-retry"] == "false"
        assert api.get("/v2/sandboxes").json() == []
    states = broken_server.server.sandbox_states()
    assert list(states.values()) == [("failed", "create failed")]
    assert broken_server.server.live_sandbox_processes() == {}
    assert not any((broken_server.server.data_dir / "process-sandboxes").iterdir())
