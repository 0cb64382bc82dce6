"""Wire details the SDKs depend on, checked with a plain HTTP client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from urllib.parse import quote

import httpx

from tests.api.conftest import Running


def test_v1_create_connect_and_legacy_list(api: httpx.Client) -> None:
    # what Python 2.45 sends (protocol appendix A); v1's default timeout is 15 s
    r = api.post(
        "/sandboxes",
        json={
            "templateID": "base",
            "secure": True,
            "allow_internet_access": True,
            "metadata": {"v": "1"},
            "envVars": {},
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["clientID"] and body["envdAccessToken"] and body["domain"]
    sid = body["sandboxID"]
    try:
        detail = api.get(f"/sandboxes/{sid}").json()
        life = _ts(detail["endAt"]) - _ts(detail["startedAt"])
        assert 14 <= life.total_seconds() <= 16
        r = api.post(f"/sandboxes/{sid}/connect", json={"timeout": 300})
        assert r.status_code == 200 and r.json()["sandboxID"] == sid
        assert r.json()["envdAccessToken"] == body["envdAccessToken"]
        r = api.post(f"/v2/sandboxes/{sid}/connect")  # no body at all
        assert r.status_code == 200
        r = api.post(f"/sandboxes/{sid}/resume", json={"timeout": 60})  # 1.x: running → 409
        assert r.status_code == 409 and r.json()["code"] == 409
        legacy = api.get("/sandboxes", params={"metadata": "v=1"}).json()
        assert [s["sandboxID"] for s in legacy] == [sid]
        assert legacy[0]["state"] == "running"
    finally:
        assert api.delete(f"/sandboxes/{sid}").status_code == 204
    assert api.delete(f"/sandboxes/{sid}").status_code == 404


def test_a_connect_without_timeout_extends_a_running_sandbox_to_the_default(
    api: httpx.Client,
) -> None:
    """E2B's ``ConnectSandboxV2.timeout`` defaults to 300 s: ``Sandbox.connect(id)`` (no
    timeout sent) keeps a sandbox with a short end time alive as long as a resume would.
    The end time is only ever extended, and 0 is refused (it would end the sandbox)."""
    r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 20})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]

    def left() -> float:
        detail = api.get(f"/sandboxes/{sid}").json()
        return (_ts(detail["endAt"]) - dt.datetime.now(dt.UTC)).total_seconds()

    try:
        assert left() < 25
        bodies: list[dict[str, int] | None] = [None, {}]  # no body, an empty one
        for body in bodies:
            r = api.post(f"/v2/sandboxes/{sid}/connect", json=body)
            assert r.status_code == 200, r.text
            assert 290 <= left() <= 305
        assert api.post(f"/sandboxes/{sid}/connect", json={"timeout": 60}).status_code == 200
        assert left() > 280  # never shortened
        before = api.get(f"/sandboxes/{sid}").json()["endAt"]
        r = api.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 0})
        assert r.status_code == 400 and r.json()["code"] == 400, r.text
        assert api.get(f"/sandboxes/{sid}").json()["endAt"] == before
    finally:
        assert api.delete(f"/sandboxes/{sid}").status_code == 204


def test_default_v2_timeout_and_chunked_request_body(api: httpx.Client) -> None:
    def body() -> Iterator[bytes]:  # the JS SDK sends REST bodies chunked
        yield b'{"templateID":'
        yield b' "base"}'

    r = api.post("/v2/sandboxes", content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    try:
        detail = api.get(f"/sandboxes/{sid}").json()
        life = _ts(detail["endAt"]) - _ts(detail["startedAt"])
        assert 299 <= life.total_seconds() <= 301
        assert detail["state"] == "running" and detail["cpuCount"] == 2
    finally:
        api.delete(f"/sandboxes/{sid}")


def test_metadata_filter_uses_the_sdk_double_encoding(api: httpx.Client) -> None:
    meta = {"a b": "c&d=e", "plain": "x"}
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "metadata": meta}).json()[
        "sandboxID"
    ]
    try:
        # each part escaped, joined, the whole escaped again, then query-encoded by httpx
        inner = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in meta.items())
        outer = quote(inner, safe="")
        r = api.get("/v2/sandboxes", params={"metadata": outer, "state": "running,paused"})
        assert [s["sandboxID"] for s in r.json()] == [sid]
        assert r.json()[0]["metadata"] == meta
        assert "x-next-token" not in r.headers
        miss = "&".join(f"{quote(k, safe='')}={quote(v + 'z', safe='')}" for k, v in meta.items())
        assert api.get("/v2/sandboxes", params={"metadata": quote(miss, safe="")}).json() == []
    finally:
        api.delete(f"/sandboxes/{sid}")


def test_list_order_started_after_and_template(api: httpx.Client) -> None:
    tag = {"metadata": "wire=order"}
    ids = [
        api.post(
            "/v2/sandboxes", json={"templateID": "base", "metadata": {"wire": "order"}}
        ).json()["sandboxID"]
        for _ in range(3)
    ]
    try:
        desc = [s["sandboxID"] for s in api.get("/v2/sandboxes", params=tag).json()]
        asc = [
            s["sandboxID"] for s in api.get("/v2/sandboxes", params={**tag, "order": "asc"}).json()
        ]
        assert desc == ids[::-1] and asc == ids
        second = api.get(f"/sandboxes/{ids[1]}").json()["startedAt"]
        after = api.get("/v2/sandboxes", params={**tag, "startedAfter": second}).json()
        assert {s["sandboxID"] for s in after} == set(ids[1:])
        other_tpl = api.get("/v2/sandboxes", params={**tag, "template": "nope"}).json()
        assert other_tpl == []
        pages: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, str | int] = {**tag, "limit": 1}
            if token:
                params["nextToken"] = token
            r = api.get("/v2/sandboxes", params=params)
            pages += [s["sandboxID"] for s in r.json()]
            token = r.headers.get("x-next-token")
            if not token:
                break
        assert pages == ids[::-1]
    finally:
        for sid in ids:
            api.delete(f"/sandboxes/{sid}")


def test_health_and_error_shapes(running: Running) -> None:
    r = httpx.get(running.server.api_url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def _ts(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
