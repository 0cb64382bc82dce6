"""Quotas, rate limits and the node resource scheduler, each on its own small server."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import RateLimitException

from tests.api.conftest import DB_PARAMS, Running, start_server


@pytest.fixture(scope="module", params=DB_PARAMS)
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    # 3 vCPUs x 2 = 6 schedulable vCPUs = three 2-vCPU sandboxes; two per team.
    env = {
        "EMBERBOX_MAX_SANDBOXES_PER_TEAM": "2",
        "EMBERBOX_NODE_CPUS": "3",
        "EMBERBOX_CPU_OVERCOMMIT": "2",
        "EMBERBOX_MAX_CPU_COUNT": "4",
        "EMBERBOX_TEMPLATES": json.dumps({"huge": {"cpuCount": 8}, "four": {"cpuCount": 4}}),
    }
    yield from start_server(tmp_path_factory.mktemp(f"limited-{request.param}"), request.param, env)


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory):
    env = {
        "EMBERBOX_RATE_PER_S": "1",
        "EMBERBOX_RATE_BURST": "3",
        "EMBERBOX_BAD_KEY_RATE_PER_S": "0.2",
        "EMBERBOX_BAD_KEY_BURST": "3",
    }
    yield from start_server(tmp_path_factory.mktemp("throttled"), "sqlite", env)


def _create(c: httpx.Client, template: str = "base") -> httpx.Response:
    return c.post("/v2/sandboxes", json={"templateID": template, "timeout": 60})


def test_team_cap_then_node_capacity(limited: Running) -> None:
    server = limited.server
    created: list[tuple[httpx.Client, str]] = []
    with limited.client() as a, limited.client(limited.other_key) as b:
        try:
            for _ in range(2):
                r = _create(a)
                assert r.status_code == 201, r.text
                created.append((a, r.json()["sandboxID"]))
            rows, procs = server.sandbox_states(), server.live_sandbox_processes()

            r = _create(a)  # third for team A: over the team cap
            assert r.status_code == 429
            assert r.json() == {"code": 429, "message": r.json()["message"]}
            assert "concurrent sandbox limit reached (2 per team)" in r.json()["message"]
            assert r.headers["should-retry"] == "false"

            r = _create(b)  # team B fits: 6 of 6 vCPUs
            assert r.status_code == 201
            created.append((b, r.json()["sandboxID"]))
            rows, procs = server.sandbox_states(), server.live_sandbox_processes()

            r = _create(b)  # team B is under its cap, but the node is full
            assert r.status_code == 503
            body = r.json()
            assert body["code"] == 503 and body["error_code"] == "sandbox_capacity_unavailable"
            assert body["message"] == "node is out of CPU: 6 of 6 vCPUs allocated, sandbox needs 2"
            assert r.headers["should-retry"] == "false"
            assert server.sandbox_states() == rows and server.live_sandbox_processes() == procs

            # killing one of A's frees node capacity: B takes it, then A is refused by the node
            client, sid = created.pop(0)
            assert client.delete(f"/sandboxes/{sid}").status_code == 204
            r = _create(b)
            assert r.status_code == 201
            created.append((b, r.json()["sandboxID"]))
            r = _create(a)
            assert r.status_code == 503
            r = _create(b)
            assert r.status_code == 429  # B at its cap again
        finally:
            for client, sid in created:
                assert client.delete(f"/sandboxes/{sid}").status_code == 204
    assert server.live_sandbox_processes() == {}


def test_per_sandbox_cpu_limit(limited: Running) -> None:
    with limited.client() as a:
        r = _create(a, "huge")
        assert r.status_code == 400
        assert (
            "needs 8 vCPUs" in r.json()["message"]
            and "limit per sandbox is 4" in r.json()["message"]
        )
        r = _create(a, "four")  # allowed per sandbox and fits the node (6 vCPUs free)
        assert r.status_code == 201, r.text
        assert a.delete(f"/sandboxes/{r.json()['sandboxID']}").status_code == 204


def test_rate_limit_answers_429_with_retry_after(throttled: Running) -> None:
    with throttled.client() as c:
        statuses = [c.get("/v2/sandboxes").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = c.get("/v2/sandboxes")
        assert r.status_code == 429
        assert r.json()["code"] == 429
        retry_after = int(r.headers["retry-after"])
        assert retry_after == math.ceil(1.0)
        # the limit is per key: another key is unaffected
        with throttled.client(throttled.other_key) as other:
            assert other.get("/v2/sandboxes").status_code == 200
        # /health is not limited
        assert all(c.get("/health").status_code == 200 for _ in range(5))
        time.sleep(retry_after)
        assert c.get("/v2/sandboxes").status_code == 200


def test_sdk_retries_rate_limited_calls(throttled: Running) -> None:
    """The SDK honours Retry-After on 429 and then succeeds; with retries off it raises."""
    key = throttled.server.create_key("sdk-rate")
    url = throttled.server.api_url
    for _ in range(3):
        Sandbox.list(api_key=key, api_url=url).next_items()
    started = time.monotonic()
    # 429: the SDK waits Retry-After, retries and succeeds
    assert Sandbox.list(api_key=key, api_url=url).next_items() == []
    assert time.monotonic() - started >= 0.9
    for _ in range(3):
        try:
            Sandbox.list(api_key=key, api_url=url, retries=0).next_items()
        except RateLimitException:
            return
    raise AssertionError("expected a RateLimitException with retries=0")


def test_guessing_keys_is_rate_limited_per_address(throttled: Running) -> None:
    """Requests without a valid key draw from a bucket per client address: a key guesser gets
    429 with Retry-After, while callers with a valid key are not held back."""
    url = throttled.server.api_url + "/v2/sandboxes"
    statuses = [
        httpx.get(url, headers={"X-API-KEY": f"e2b_{i:040x}"}).status_code for i in range(6)
    ]
    assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429, statuses
    r = httpx.get(url)  # no key at all draws from the same bucket
    assert r.status_code == 429 and r.json()["code"] == 429
    assert int(r.headers["retry-after"]) >= 1
    with throttled.client(throttled.other_key) as good:
        assert good.get("/v2/sandboxes").status_code == 200
