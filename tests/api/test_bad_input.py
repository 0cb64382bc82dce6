"""Bad requests: every one answers JSON ``{code, message}`` and changes nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import MAX_TIMEOUT_S, Running


def _assert_error(r: httpx.Response, status: int, needle: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["code"] == status and isinstance(body["message"], str) and body["message"]
    assert needle.lower() in body["message"].lower(), body


@pytest.fixture
def unchanged(running: Running) -> Iterator[None]:
    """Nothing created, nothing leaked: same database rows and envd processes after the test."""
    rows = running.server.sandbox_states()
    procs = running.server.live_sandbox_processes()
    yield
    assert running.server.sandbox_states() == rows
    assert running.server.live_sandbox_processes() == procs


def test_missing_and_wrong_keys(running: Running, unchanged: None) -> None:
    body = {"templateID": "base"}
    with running.client(key="") as c:
        _assert_error(c.post("/v2/sandboxes", json=body), 401, "api key")
        _assert_error(c.get("/v2/sandboxes"), 401)
    for bad in ("e2b_" + "0" * 40, "not-a-key", running.key[:-1] + "x", running.key + "0"):
        with running.client(key=bad) as c:
            _assert_error(c.post("/v2/sandboxes", json=body), 401, "invalid api key")
            _assert_error(c.delete("/sandboxes/abc"), 401)


def test_unknown_template(api: httpx.Client, unchanged: None) -> None:
    r = api.post("/v2/sandboxes", json={"templateID": "no-such-template"})
    _assert_error(r, 404, "template 'no-such-template' not found")
    _assert_error(api.post("/sandboxes", json={"templateID": "nope:tag"}), 404)


@pytest.mark.parametrize("timeout", [-1, 0, MAX_TIMEOUT_S + 1, 10**12])
def test_timeout_out_of_range(api: httpx.Client, unchanged: None, timeout: int) -> None:
    r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": timeout})
    _assert_error(r, 400, "timeout must be between 1 and")


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"templateID": "base",}', b"\xff\xfe", b""],
)
def test_malformed_json(api: httpx.Client, unchanged: None, raw: bytes) -> None:
    r = api.post("/v2/sandboxes", content=raw, headers={"Content-Type": "application/json"})
    _assert_error(r, 400)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v2/sandboxes", b'{"templateID": "\\ud800"}'),
        ("/v2/sandboxes", b'{"templateID": "base", "metadata": {"\\udc00": "x"}}'),
        ("/v2/sandboxes", b'{"templateID": "base", "envVars": {"A": "x\\ud83d"}}'),
        ("/secrets", b'{"name": "a", "value": "\\ud800"}'),
    ],
)
def test_strings_that_are_not_unicode_are_refused(
    api: httpx.Client, unchanged: None, path: str, raw: bytes
) -> None:
    """JSON escapes can spell a lone surrogate, which no encoder writes (each was a 500)."""
    r = api.post(path, content=raw, headers={"Content-Type": "application/json"})
    _assert_error(r, 400, "lone surrogate")


def test_a_surrogate_pair_is_one_character_and_welcome(api: httpx.Client) -> None:
    pair = b'{"templateID": "base", "metadata": {"k": "\\ud83d\\ude00"}, "timeout": 1}'
    ok = api.post("/v2/sandboxes", content=pair, headers={"Content-Type": "application/json"})
    assert ok.status_code == 201, ok.text
    sandbox_id = ok.json()["sandboxID"]
    try:
        assert api.get(f"/sandboxes/{sandbox_id}").json()["metadata"] == {"k": "\U0001f600"}
    finally:
        assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"templateID": 5},
        {"templateID": ""},
        {"templateID": "base", "timeout": "soon"},
        {"templateID": "base", "metadata": {"k": 1}},
        {"templateID": "base", "envVars": ["A=1"]},
        {"templateID": "base", "timeout": "60"},  # types are not guessed (strict bodies)
        {"templateID": "base", "autoPause": "yes"},
        {"templateID": "base", "network": {"allowPublicTraffic": "false"}},
        {"templateID": "base", "network": {"httpsPorts": ["443"]}},
        [],
    ],
)
def test_invalid_fields(api: httpx.Client, unchanged: None, body: object) -> None:
    _assert_error(api.post("/v2/sandboxes", json=body), 400, "invalid request")


@pytest.mark.parametrize("env", [{"A": "x\0echo injected"}, {"A\0B": "x"}])
def test_a_nul_in_env_vars_is_refused(
    api: httpx.Client, unchanged: None, env: dict[str, str]
) -> None:
    """No process can carry one, and envd's standby shells read NUL-separated fields."""
    r = api.post("/v2/sandboxes", json={"templateID": "base", "envVars": env})
    _assert_error(r, 400, "NUL")


@pytest.mark.parametrize(
    "body",
    [
        {"templateID": "base", "metadata": {"k": "a\0b"}},
        {"templateID": "base", "metadata": {"k\0": "v"}},
        {"templateID": "base\0x"},
    ],
)
def test_a_nul_anywhere_in_a_body_is_refused(
    api: httpx.Client, unchanged: None, body: dict[str, object]
) -> None:
    """PostgreSQL's text holds no NUL: stored on SQLite, a 500 on PostgreSQL."""
    _assert_error(api.post("/v2/sandboxes", json=body), 400, "NUL")


def test_a_nul_in_a_path_or_a_query_is_refused(api: httpx.Client, unchanged: None) -> None:
    _assert_error(api.get("/sandboxes/abc%00def"), 400, "NUL")
    _assert_error(api.get("/v2/sandboxes", params={"metadata": "k=a\0b"}), 400, "NUL")
    _assert_error(api.delete("/templates/x%00y"), 400, "NUL")


def test_a_metadata_entry_past_the_index_s_bytes_is_refused(
    api: httpx.Client, unchanged: None
) -> None:
    """A key and value fit in characters (256, 1024) but past what PostgreSQL's B-tree
    index can hold as one entry (1024 CJK characters are 3072 bytes): a 500 there."""
    body = {"templateID": "base", "metadata": {"k" * 256: "\u4e2d" * 1024}}
    _assert_error(api.post("/v2/sandboxes", json=body), 400, "bytes")


def test_oversized_bodies(api: httpx.Client, unchanged: None) -> None:
    big = {
        "templateID": "base",
        "metadata": {f"k{i}": "v" * 1000 for i in range(60)},
        "envVars": {"BIG": "x" * 70_000},
    }
    _assert_error(api.post("/v2/sandboxes", json=big), 413, "larger than 65536 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"templateID": "base", "envVars": {"BIG": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}}'

    r = api.post("/v2/sandboxes", content=chunks(), headers={"Content-Type": "application/json"})
    _assert_error(r, 413)


def test_unknown_routes_and_methods(api: httpx.Client, unchanged: None) -> None:
    _assert_error(api.get("/no/such/path"), 404, "no such endpoint")
    _assert_error(api.put("/v2/sandboxes"), 405)
    _assert_error(api.get("/sandboxes/abc/timeout"), 405)


def test_bad_list_parameters(api: httpx.Client, unchanged: None) -> None:
    far = "0001-01-01T00:00:00+01:00"  # (before year 1 in UTC: it overflowed, a 500)
    _assert_error(api.get("/v2/sandboxes", params={"startedAfter": far}), 400, "startedAfter")
    token = base64.urlsafe_b64encode(f"{far}|x".encode()).decode()
    _assert_error(api.get("/v2/sandboxes", params={"nextToken": token}), 400, "nextToken")
    many = "&".join(f"k{i}=v" for i in range(65))  # (each a condition: SQLite's depth limit)
    _assert_error(api.get("/v2/sandboxes", params={"metadata": many}), 400, "at most 64")
    one_each = "&".join(f"k{i}=v" for i in range(64))
    assert api.get("/v2/sandboxes", params={"metadata": one_each}).json() == []
    _assert_error(api.get("/sandboxes/abc/egress", params={"nextToken": "\u00b2"}), 400)
    _assert_error(api.get("/v2/sandboxes", params={"limit": 101}), 400)
    _assert_error(api.get("/v2/sandboxes", params={"limit": 0}), 400)
    _assert_error(api.get("/v2/sandboxes", params={"nextToken": "%%%"}), 400, "nextToken")
    _assert_error(api.get("/v2/sandboxes", params={"state": "sleeping"}), 400, "state")
    _assert_error(api.get("/v2/sandboxes", params={"metadata": "novalue"}), 400, "metadata")
    _assert_error(api.get("/v2/sandboxes", params={"order": "sideways"}), 400)


def test_unknown_sandbox_everywhere(api: httpx.Client, unchanged: None) -> None:
    sid = "a" * 20
    _assert_error(api.get(f"/sandboxes/{sid}"), 404, "not found")
    _assert_error(api.delete(f"/sandboxes/{sid}"), 404)
    _assert_error(api.post(f"/sandboxes/{sid}/timeout", json={"timeout": 5}), 404)
    _assert_error(api.post(f"/sandboxes/{sid}/pause", json={}), 404)
    _assert_error(api.get(f"/sandboxes/{sid}/metrics"), 404)
    _assert_error(api.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 5}), 404)
    _assert_error(api.post(f"/sandboxes/{sid}/connect", json={"timeout": 5}), 404)


def test_other_teams_sandbox_is_not_found(running: Running, api: httpx.Client) -> None:
    r = api.post(
        "/v2/sandboxes", json={"templateID": "base", "timeout": 60, "metadata": {"owner": "team-a"}}
    )
    assert r.status_code == 201
    sid = r.json()["sandboxID"]
    try:
        detail_before = api.get(f"/sandboxes/{sid}").json()
        with running.client(running.other_key) as other:
            _assert_error(other.get(f"/sandboxes/{sid}"), 404)
            _assert_error(other.delete(f"/sandboxes/{sid}"), 404)
            _assert_error(other.post(f"/sandboxes/{sid}/timeout", json={"timeout": 1}), 404)
            _assert_error(other.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 900}), 404)
            _assert_error(other.post(f"/sandboxes/{sid}/pause", json={}), 404)
            _assert_error(other.get(f"/sandboxes/{sid}/metrics"), 404)
            listed = other.get("/v2/sandboxes", params={"metadata": "owner=team-a"}).json()
            assert listed == []
            assert sid not in [s["sandboxID"] for s in other.get("/sandboxes").json()]
        # untouched: same end time, still running
        assert api.get(f"/sandboxes/{sid}").json() == detail_before
        assert sid in running.server.live_sandbox_processes()
    finally:
        assert api.delete(f"/sandboxes/{sid}").status_code == 204


def test_set_timeout_out_of_range_keeps_end_time(api: httpx.Client) -> None:
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        before = api.get(f"/sandboxes/{sid}").json()["endAt"]
        for bad in (-5, MAX_TIMEOUT_S + 1):
            _assert_error(api.post(f"/sandboxes/{sid}/timeout", json={"timeout": bad}), 400)
        _assert_error(api.post(f"/sandboxes/{sid}/timeout", json={}), 400)
        assert api.get(f"/sandboxes/{sid}").json()["endAt"] == before
    finally:
        api.delete(f"/sandboxes/{sid}")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("pause", {"memory": "no"}),
        ("pause", {"requireHealthyGuest": "yes"}),
        ("snapshots", {"memory": "no"}),
        ("snapshots", {"name": 5}),
        ("fork", {"count": True}),
        ("fork", {"count": "2"}),
        ("fork", {"timeout": 60.5}),
        ("timeout", {"timeout": "60"}),
        ("connect", {"timeout": True}),
        ("rollback", {"snapshotID": 7}),
    ],
)
def test_wrong_types_on_a_sandbox_are_refused_not_coerced(
    api: httpx.Client, path: str, body: dict[str, object]
) -> None:
    """``"no"`` once made a filesystem-only snapshot and ``true`` one fork: a body whose types
    are wrong is a 400 that names the field, and the sandbox is as it was."""
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        before = api.get(f"/sandboxes/{sid}").json()
        r = api.post(f"/sandboxes/{sid}/{path}", json=body)
        _assert_error(r, 400, next(iter(body)))
        assert api.get(f"/sandboxes/{sid}").json() == before
    finally:
        api.delete(f"/sandboxes/{sid}")


def test_unsupported_options_are_refused(api: httpx.Client, unchanged: None) -> None:
    extras: list[dict[str, object]] = [
        {"autoPause": True},
        {"allow_internet_access": False},
        {"volumeMounts": [{"name": "v", "path": "/mnt"}]},
        {"mcp": {}},
        {"network": {"allowOut": ["1.1.1.1"]}},
        {"network": {"dnsServers": ["9.9.9.9"]}},
        {"autoResume": {"enabled": True}},
    ]
    for extra in extras:
        r = api.post("/v2/sandboxes", json={"templateID": "base", **extra})
        _assert_error(r, 501)
        assert r.headers["should-retry"] == "false"


def test_unsupported_options_on_a_sandbox_are_refused(api: httpx.Client) -> None:
    """Options of live-sandbox calls that we cannot honour get 501, and change nothing."""
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        r = api.post(f"/sandboxes/{sid}/pause", json={"memory": False})
        _assert_error(r, 501, "memory: false")
        r = api.get(f"/sandboxes/{sid}/metrics", params={"start": 1})
        _assert_error(r, 501, "start/end")
        r = api.post(f"/sandboxes/{sid}/resume", json={"autoPause": True})
        _assert_error(r, 501, "autoPause")
        assert api.get(f"/sandboxes/{sid}").json()["state"] == "running"
        assert api.get(f"/sandboxes/{sid}/metrics").status_code == 200
    finally:
        api.delete(f"/sandboxes/{sid}")


UNKNOWN_AT_CREATE: list[tuple[dict[str, object], str]] = [
    ({"templateID": "base", "keepAlive": True}, "keepAlive"),
    ({"templateID": "base", "autoResume": {"enabled": False, "afterS": 5}}, "autoResume.afterS"),
    ({"templateID": "base", "volumeMounts": [{"name": "v", "path": "/m", "ro": True}]}, "ro"),
]


@pytest.mark.parametrize(("body", "says"), UNKNOWN_AT_CREATE)
def test_unknown_fields_are_refused_at_create(
    api: httpx.Client, unchanged: None, body: dict[str, object], says: str
) -> None:
    """An option a newer SDK sends, or a typo, is named in a 400 rather than ignored."""
    for path in ("/v2/sandboxes", "/sandboxes"):
        r = api.post(path, json=body)
        _assert_error(r, 400, says)
        assert "not supported" in r.json()["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("pause", {"memory": True, "drain": True}),
        ("connect", {"timeout": 60, "region": "eu"}),
        ("resume", {"timeout": 60, "region": "eu"}),
        ("timeout", {"timeout": 60, "extend": True}),
        ("snapshots", {"name": "s", "labels": {}}),
        ("fork", {"count": 1, "spread": True}),
        ("rollback", {"snapshotID": "x", "keepFiles": True}),
    ],
)
def test_unknown_fields_on_a_sandbox_are_refused(
    api: httpx.Client, path: str, body: dict[str, object]
) -> None:
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        before = api.get(f"/sandboxes/{sid}").json()
        r = api.post(f"/sandboxes/{sid}/{path}", json=body)
        _assert_error(r, 400, list(body)[-1])
        assert api.get(f"/sandboxes/{sid}").json() == before
    finally:
        api.delete(f"/sandboxes/{sid}")


def test_unknown_fields_on_secrets_and_volumes_are_refused(api: httpx.Client) -> None:
    r = api.post("/secrets", json={"name": "S", "value": "v", "expiresAt": "never"})
    _assert_error(r, 400, "expiresAt")
    assert [s["name"] for s in api.get("/secrets").json()] == []
    r = api.post("/volumes", json={"name": "vol", "sizeMB": 10})
    _assert_error(r, 400, "sizeMB")
    listed = api.get("/volumes")  # (this runtime has no volumes: 501)
    assert listed.status_code == 501 or listed.json() == [], listed.text


def test_unknown_query_parameters_are_refused(api: httpx.Client) -> None:
    """``status=paused`` for ``state=paused`` once listed every sandbox; a delete with an option
    we lack once deleted anyway. Each is a 400 naming the parameter, and nothing changes."""
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        for method, path, params in [
            ("GET", "/v2/sandboxes", {"status": "paused"}),
            ("GET", "/v2/sandboxes", {"state": "running", "limt": "1"}),
            ("GET", f"/sandboxes/{sid}", {"verbose": "1"}),
            ("DELETE", f"/sandboxes/{sid}", {"force": "true"}),
            ("POST", f"/sandboxes/{sid}/timeout", {"extend": "1"}),
            ("GET", "/snapshots", {"sandbox": sid}),
            ("GET", "/secrets", {"page": "2"}),
        ]:
            body = {"timeout": 60} if path.endswith("/timeout") else None
            r = api.request(method, path, params=params, json=body)
            _assert_error(r, 400, list(params)[-1])
            assert "not supported" in r.json()["message"]
        assert api.get(f"/sandboxes/{sid}").json()["state"] == "running"
        listed = api.get("/v2/sandboxes", params={"state": "running", "limit": 100})
        assert sid in {s["sandboxID"] for s in listed.json()}
    finally:
        api.delete(f"/sandboxes/{sid}")


BAD_RULES: list[tuple[dict[str, object], str]] = [
    ({"allowOut": ["10.0.0.0/33"]}, "allowOut: '10.0.0.0/33'"),
    ({"allowOut": ["1.2.3"]}, "'1.2.3' is not a CIDR"),
    ({"allowOut": ["*"]}, "'*' is not a CIDR"),
    ({"denyOut": ["example.com"]}, "denyOut takes CIDR blocks and IP addresses only"),
    ({"denyOut": ["10.0.0.0/8", ""]}, "non-empty string"),
    ({"allowOut": [f"198.18.{i // 250}.{i % 250}" for i in range(501)]}, "at most 500"),
]


@pytest.mark.parametrize(("network", "says"), BAD_RULES)
def test_bad_egress_rules_are_refused_at_create(
    api: httpx.Client, unchanged: None, network: dict[str, object], says: str
) -> None:
    r = api.post("/v2/sandboxes", json={"templateID": "base", "network": network})
    _assert_error(r, 400, says.lower())


def test_egress_rules_we_cannot_honour_are_refused(api: httpx.Client, unchanged: None) -> None:
    for network, says in [
        ({"allowOut": ["example.com"]}, "cannot enforce egress rules"),  # process runtime
        ({"allowOut": ["*.example.com"]}, "cannot enforce egress rules"),
        ({"allowOut": ["2001:db8::/32"]}, "ipv6"),
        ({"dnsServers": ["9.9.9.9"]}, "dnsservers"),
        ({"rules": {"a.com": [{"transform": {"headers": {"x": "y"}}}]}}, "cannot apply header"),
        ({"egressProxy": {"address": "p:1"}}, "egressproxy"),
    ]:
        r = api.post("/v2/sandboxes", json={"templateID": "base", "network": network})
        _assert_error(r, 501, says)


@pytest.mark.parametrize(
    "mask",
    [
        "a b",
        "host\r\nX-Injected: 1",
        "host\n",
        "-lead.example",
        "h:123456",
        "h/${PORT}",
        "${PORT}" * 40,
        5,
    ],
)
def test_bad_mask_request_host_is_refused(api: httpx.Client, unchanged: None, mask: object) -> None:
    r = api.post("/v2/sandboxes", json={"templateID": "base", "network": {"maskRequestHost": mask}})
    _assert_error(r, 400, "maskrequesthost")


def test_bad_network_updates_change_nothing(api: httpx.Client) -> None:
    sid = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}).json()["sandboxID"]
    try:
        before = api.get(f"/sandboxes/{sid}").json()
        for network, says in BAD_RULES:
            _assert_error(api.put(f"/sandboxes/{sid}/network", json=network), 400, says.lower())
        r = api.put(f"/sandboxes/{sid}/network", json={"allowOut": ["2001:db8::1"]})
        _assert_error(r, 501, "ipv6")
        r = api.put(f"/sandboxes/{sid}/network", json={"egressProxy": {"address": "p:1"}})
        _assert_error(r, 501, "egressproxy")
        r = api.put(f"/sandboxes/{sid}/network", json={"allow_internet_access": "no"})
        _assert_error(r, 400, "allow_internet_access")  # not guessed (strict bodies)
        after = api.get(f"/sandboxes/{sid}").json()
        assert after.get("network") == before.get("network")
        assert after["allowInternetAccess"] == before["allowInternetAccess"]
        r = api.put(f"/sandboxes/{sid}/network", json={"denyOut": ["198.18.0.0/15"]})
        _assert_error(r, 501, "cannot change egress rules")  # the process runtime
        r = api.put("/sandboxes/" + "b" * 20 + "/network", json={})
        _assert_error(r, 404)
    finally:
        api.delete(f"/sandboxes/{sid}")


def test_bad_idempotency_key(api: httpx.Client, unchanged: None) -> None:
    for bad in ("UPPER", "a" * 256, "spa ce", "under_score"):
        r = api.post("/v2/sandboxes", json={"templateID": "base"}, headers={"Idempotency-Key": bad})
        _assert_error(r, 400, "idempotency-key")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sandboxes/{sid}/refreshes"),
        ("GET", "/templates/{sid}/tags/count"),
        ("GET", "/sandboxes/metrics"),
    ],
)
def test_e2b_operations_we_lack_answer_501_not_404(
    running: Running, unchanged: None, method: str, path: str
) -> None:
    """A 404 would tell the SDKs the sandbox is gone; these say what is missing instead.
    (A plain client: our /openapi.json lists only what we serve, so its check cannot apply.)"""
    with httpx.Client(base_url=running.server.api_url, headers={"X-API-KEY": running.key}) as c:
        r = c.request(method, path.format(sid="a" * 20), json={} if method != "GET" else None)
    _assert_error(r, 501, "not supported yet")
    assert r.headers["should-retry"] == "false"


def test_runtime_without_snapshots_refuses_them(api: httpx.Client) -> None:
    """The process runtime cannot checkpoint: snapshots, forks and creates from them are 501
    naming the runtime, and nothing is left behind (gVisor: tests/api/test_stateful.py)."""
    sid = api.post("/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    try:
        for path, body in (("fork", {"count": 2}), ("snapshots", {})):
            r = api.post(f"/sandboxes/{sid}/{path}", json=body)
            _assert_error(r, 501, "process runtime cannot")
        r = api.post(f"/sandboxes/{sid}/rollback", json={"snapshotID": "snapnothere"})
        _assert_error(r, 501, "process runtime cannot")
        assert api.get("/snapshots").json() == []
        _assert_error(api.post(f"/sandboxes/{sid}/fork", json={"count": 0}), 400, "count")
    finally:
        api.delete(f"/sandboxes/{sid}")
