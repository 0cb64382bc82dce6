"""The E2B wire check (``e2b_wire_check``): it maps our routes to the SDK's own operations, it fails
on drifted bodies, it runs on every API test response, our response models pass it, and what the
SDK sends is what our ``/openapi.json`` declares and the server accepts."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
import pytest
from e2b.api.client import models as e2b
from pydantic import BaseModel

from emberbox.server.api import models as ours
from tests.api.conftest import Running
from tests.api.e2b_wire_check import NOT_E2B_OPERATIONS, E2bWireChecker, WireDrift
from tests.api.openapi_check import OpenApiChecker

SID = "a" * 20
NOW = "2026-08-21T10:00:00Z"
SANDBOX = {"templateID": "base", "sandboxID": SID, "clientID": "c", "envdVersion": "0.6.13"}
LISTED = {
    **SANDBOX,
    "startedAt": NOW,
    "endAt": NOW,
    "cpuCount": 2,
    "memoryMB": 512,
    "diskSizeMB": 1024,
    "state": "running",
}
DETAIL = {**LISTED, "lifecycle": {"autoResume": False, "onTimeout": "kill"}}
METRIC = {
    "timestamp": NOW,
    "timestampUnix": 1,
    "cpuCount": 2,
    "cpuUsedPct": 0.5,
    "memUsed": 1,
    "memTotal": 2,
    "memCache": 0,
    "diskUsed": 1,
    "diskTotal": 2,
}
ENTRY = {"timestamp": NOW, "level": "info", "message": "m", "fields": {"seq": "1"}}
LOGS = {"logs": [{"timestamp": NOW, "line": "m"}], "logEntries": [ENTRY]}
ERROR = {"code": 404, "message": "sandbox not found"}


@pytest.fixture(scope="module")
def checker() -> E2bWireChecker:
    return E2bWireChecker()


# -- the mapping is the SDK's own --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "model", "many"),
    [
        ("POST", "/v2/sandboxes", 201, SANDBOX, e2b.Sandbox, False),
        ("POST", "/sandboxes", 201, SANDBOX, e2b.Sandbox, False),
        ("POST", f"/v2/sandboxes/{SID}/connect", 200, SANDBOX, e2b.Sandbox, False),
        ("POST", f"/v2/sandboxes/{SID}/connect", 201, SANDBOX, e2b.Sandbox, False),
        ("POST", f"/sandboxes/{SID}/connect", 200, SANDBOX, e2b.Sandbox, False),
        ("POST", f"/sandboxes/{SID}/resume", 201, SANDBOX, e2b.Sandbox, False),
        ("GET", "/v2/sandboxes", 200, [LISTED], e2b.ListedSandbox, True),
        ("GET", "/sandboxes", 200, [LISTED], e2b.ListedSandbox, True),
        ("GET", f"/sandboxes/{SID}", 200, DETAIL, e2b.SandboxDetail, False),
        ("GET", f"/sandboxes/{SID}/metrics", 200, [METRIC], e2b.SandboxMetric, True),
        ("GET", f"/sandboxes/{SID}/logs", 200, LOGS, e2b.SandboxLogs, False),
        (
            "GET",
            "/snapshots",
            200,
            [{"snapshotID": "t:default", "names": []}],
            e2b.SnapshotInfo,
            True,
        ),
        ("GET", f"/sandboxes/{SID}", 404, ERROR, e2b.Error, False),
        ("DELETE", f"/sandboxes/{SID}", 404, ERROR, e2b.Error, False),
        # statuses E2B does not document for the operation: the SDK reads {code, message}
        ("POST", "/v2/sandboxes", 501, {"code": 501, "message": "no"}, e2b.Error, False),
        ("GET", "/no/such/route", 404, {"code": 404, "message": "no"}, e2b.Error, False),
    ],
)
def test_responses_parse_to_the_models_the_sdk_uses(
    checker: E2bWireChecker,
    method: str,
    path: str,
    status: int,
    body: Any,
    model: type[Any],
    many: bool,
) -> None:
    parsed = checker.check_json(method, path, status, body)
    items = parsed if many else [parsed]
    assert isinstance(items, list) and items
    assert all(type(item) is model for item in items), parsed


def test_no_content_answers_parse_to_nothing(checker: E2bWireChecker) -> None:
    for path in (f"/sandboxes/{SID}/timeout", f"/sandboxes/{SID}/pause"):
        request = httpx.Request("POST", "http://x" + path)
        assert checker.check(httpx.Response(204, request=request)) is None
    with pytest.raises(WireDrift, match="unexpected body"):
        request = httpx.Request("DELETE", f"http://x/sandboxes/{SID}")
        checker.check(httpx.Response(204, content=b"{}", request=request))


def test_every_operation_we_serve_is_an_e2b_operation(
    running: Running, checker: E2bWireChecker
) -> None:
    spec = httpx.get(running.server.api_url + "/openapi.json").json()
    for path, item in spec["paths"].items():
        for method in item:
            if (method, path) in NOT_E2B_OPERATIONS:
                continue
            op = checker.operation(method, path.replace("{sandbox_id}", SID))
            assert op is not None, (method, path)
            # Same shape; parameter names may differ (the SDK's client says {hash_}).
            unnamed = re.compile(r"\{[^}]+\}")
            assert unnamed.sub("{}", op.template) == unnamed.sub("{}", path), (
                method,
                path,
                op.template,
            )


def test_every_api_test_response_goes_through_the_check(running: Running) -> None:
    with running.client() as client:
        assert running.wire in client.event_hooks["response"]
        before = running.wire.checked["get_v2_sandboxes"]
        assert client.get("/v2/sandboxes").status_code == 200
        assert running.wire.checked["get_v2_sandboxes"] == before + 1


# -- the check fails on drift ------------------------------------------------------------------


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


DRIFT = [
    # (why, method, path, status, body, message)
    (
        "required field missing",
        "POST",
        "/v2/sandboxes",
        201,
        _without(SANDBOX, "clientID"),
        "KeyError",
    ),
    ("null for a plain string", "POST", "/v2/sandboxes", 201, {**SANDBOX, "alias": None}, "alias"),
    (
        "null access token",
        "POST",
        "/sandboxes",
        201,
        {**SANDBOX, "envdAccessToken": None},
        "envd_access_token",
    ),
    ("field E2B lacks", "POST", "/v2/sandboxes", 201, {**SANDBOX, "surprise": 1}, "surprise"),
    ("int for a string", "POST", "/v2/sandboxes", 201, {**SANDBOX, "sandboxID": 5}, "sandbox_id"),
    ("unknown state", "GET", "/v2/sandboxes", 200, [{**LISTED, "state": "pausing"}], "pausing"),
    ("string for an int", "GET", "/v2/sandboxes", 200, [{**LISTED, "cpuCount": "2"}], "cpu_count"),
    ("bool for an int", "GET", "/sandboxes", 200, [{**LISTED, "memoryMB": True}], "memory_mb"),
    (
        "timestamp without offset",
        "GET",
        "/v2/sandboxes",
        200,
        [{**LISTED, "endAt": "2026-08-21T10:00:00"}],
        "end_at",
    ),
    ("not a timestamp", "GET", f"/sandboxes/{SID}", 200, {**DETAIL, "startedAt": "soon"}, "soon"),
    (
        "second item drifts",
        "GET",
        "/v2/sandboxes",
        200,
        [LISTED, _without(LISTED, "endAt")],
        "endAt",
    ),
    ("object for a list", "GET", "/v2/sandboxes", 200, LISTED, "cannot parse"),
    (
        "nested enum",
        "GET",
        f"/sandboxes/{SID}",
        200,
        {**DETAIL, "lifecycle": {"autoResume": False, "onTimeout": "stop"}},
        "stop",
    ),
    (
        "nested extra field",
        "GET",
        f"/sandboxes/{SID}",
        200,
        {**DETAIL, "lifecycle": {"autoResume": False, "onTimeout": "kill", "x": 1}},
        "SandboxLifecycle",
    ),
    (
        "string for a nullable bool",
        "GET",
        f"/sandboxes/{SID}",
        200,
        {**DETAIL, "allowInternetAccess": "yes"},
        "allow_internet_access",
    ),
    (
        "string for a number",
        "GET",
        f"/sandboxes/{SID}/metrics",
        200,
        [{**METRIC, "cpuUsedPct": "0.5"}],
        "cpu_used_pct",
    ),
    (
        "unknown log level",
        "GET",
        f"/sandboxes/{SID}/logs",
        200,
        {**LOGS, "logEntries": [{**ENTRY, "level": "fatal"}]},
        "fatal",
    ),
    (
        "non-string map value",
        "GET",
        f"/sandboxes/{SID}/logs",
        200,
        {**LOGS, "logEntries": [{**ENTRY, "fields": {"seq": 1}}]},
        "seq",
    ),
    ("FastAPI's default error", "GET", f"/sandboxes/{SID}", 404, {"detail": "Not Found"}, "code"),
    (
        "error code differs from status",
        "GET",
        f"/sandboxes/{SID}",
        404,
        {**ERROR, "code": 400},
        "differs",
    ),
    (
        "error code as a string",
        "DELETE",
        f"/sandboxes/{SID}",
        404,
        {**ERROR, "code": "404"},
        "is not int",
    ),
    ("undocumented error, bad shape", "POST", "/v2/sandboxes", 501, {"error": "no"}, "Error"),
    ("undocumented success status", "POST", "/v2/sandboxes", 200, SANDBOX, "does not document 200"),
    ("route E2B lacks", "GET", "/sandboxes/metrics/extra", 200, {}, "no operation"),
]


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in DRIFT],
)
def test_drifted_bodies_fail(
    checker: E2bWireChecker, method: str, path: str, status: int, body: Any, message: str
) -> None:
    with pytest.raises(WireDrift, match=message):
        checker.check_json(method, path, status, body)


def test_non_json_bodies_fail(checker: E2bWireChecker) -> None:
    for method, path, status in (("GET", f"/sandboxes/{SID}", 200), ("GET", "/health", 500)):
        request = httpx.Request(method, "http://x" + path)
        with pytest.raises(WireDrift):
            checker.check(httpx.Response(status, text="Internal Server Error", request=request))


def test_an_extra_field_passes_only_when_allowed_with_a_reason() -> None:
    body = {**SANDBOX, "surprise": 1}
    with pytest.raises(WireDrift, match="surprise"):
        E2bWireChecker().check_json("POST", "/v2/sandboxes", 201, body)
    allowed = E2bWireChecker(allowed_extra={("Sandbox", "surprise"): "a test"})
    assert allowed.check_json("POST", "/v2/sandboxes", 201, body).additional_properties
    with pytest.raises(AssertionError, match="without a reason"):
        E2bWireChecker(allowed_extra={("Sandbox", "surprise"): " "})


# -- our response models, every field set and every optional field unset ----------------------


def _dump(model: BaseModel) -> Any:
    """What FastAPI sends for a ``response_model``."""
    return model.model_dump(mode="json", by_alias=True)


def _full(model: BaseModel) -> BaseModel:
    unset = sorted(name for name in type(model).model_fields if getattr(model, name) is None)
    assert not unset, f"give {type(model).__name__}.{unset} a value: every field is checked"
    return model


T = dt.datetime(2026, 8, 21, 10, tzinfo=dt.UTC)
MIN_SANDBOX = ours.Sandbox(templateID="base", sandboxID=SID, clientID="c", envdVersion="0.6.13")
FULL_SANDBOX = MIN_SANDBOX.model_copy(
    update={"alias": "base", "envdAccessToken": "t", "trafficAccessToken": "t", "domain": "d.test"}
)
MIN_LISTED = ours.ListedSandbox(
    templateID="base",
    sandboxID=SID,
    clientID="c",
    envdVersion="0.6.13",
    startedAt=T,
    endAt=T,
    cpuCount=2,
    memoryMB=512,
    diskSizeMB=1024,
    state="paused",
)
FULL_LISTED = MIN_LISTED.model_copy(
    update={
        "alias": "base",
        "metadata": {"k": "v"},
        "envdUnresponsiveAtPause": True,
        "pausedBytes": 4096,
        "volumeMounts": [{"name": "v", "path": "/mnt"}],
    }
)
FULL_DETAIL = ours.SandboxDetail(
    **FULL_LISTED.model_dump(),
    envdAccessToken="t",
    domain="d.test",
    allowInternetAccess=False,
    network={"allowOut": ["198.18.0.1/32"], "denyOut": ["0.0.0.0/0"], "allowPublicTraffic": False},
    lifecycle=ours.Lifecycle(autoResume=True, onTimeout="pause"),
    pauseMode="filesystem",
)
MIN_DETAIL = ours.SandboxDetail(**MIN_LISTED.model_dump())
METRIC_MODEL = ours.SandboxMetric.model_validate(METRIC)
LOG_ENTRY = ours.SandboxLogEntry(timestamp=T, level="warn", message="m", fields={"seq": "1"})
LOGS_MODEL = ours.SandboxLogs(logs=[ours.SandboxLog(timestamp=T, line="m")], logEntries=[LOG_ENTRY])
OUR_RESPONSES = [
    ("POST", "/v2/sandboxes", 201, [MIN_SANDBOX, _full(FULL_SANDBOX)]),
    ("GET", "/v2/sandboxes", 200, [[MIN_LISTED, _full(FULL_LISTED)]]),
    ("GET", f"/sandboxes/{SID}", 200, [MIN_DETAIL, _full(FULL_DETAIL)]),
    ("GET", f"/sandboxes/{SID}/metrics", 200, [[_full(METRIC_MODEL)]]),
    ("GET", f"/sandboxes/{SID}/logs", 200, [_full(LOGS_MODEL), _full(LOG_ENTRY)]),
    (
        "GET",
        f"/sandboxes/{SID}",
        404,
        [
            ours.Error(code=404, message="m"),
            _full(ours.Error(code=404, message="m", error_code="x")),
        ],
    ),
]


@pytest.mark.parametrize(("method", "path", "status", "samples"), OUR_RESPONSES)
def test_our_response_models_parse_with_the_e2b_sdk(
    checker: E2bWireChecker, method: str, path: str, status: int, samples: list[Any]
) -> None:
    for sample in samples:
        if isinstance(sample, ours.SandboxLogEntry):  # only checked for having every field set
            continue
        body = [_dump(m) for m in sample] if isinstance(sample, list) else _dump(sample)
        checker.check_json(method, path, status, body)


# -- requests: what the SDK sends is what we declare and accept --------------------------------

NETWORK = {
    "allowPublicTraffic": True,
    "allowOut": ["1.1.1.1"],
    "denyOut": ["0.0.0.0/0"],
    "dnsServers": ["1.1.1.1"],
    "egressProxy": {
        "address": "p:1",
        "username": "u",
        "password": "p",
        "tls": {"enabled": True, "serverName": "p", "caCert": "c"},
    },
    "maskRequestHost": "h",
    "httpsPorts": [443],
    "rules": {"h": [{"transform": {"headers": {"a": "b"}}}]},
}
FULL_NEW_V2 = {
    "templateID": "base",
    "timeout": 60,
    "autoPause": False,
    "autoPauseMemory": True,
    "autoResume": {"enabled": False},
    "allow_internet_access": True,
    "network": NETWORK,
    "metadata": {"k": "v"},
    "envVars": {"A": "1"},
    "mcp": {"server": {"x": 1}},
    "iam": {"tokens": {"t": {"audience": "a", "tokenType": "jwt"}}},
    "volumeMounts": [{"name": "v", "path": "/mnt"}],
}
# (method, our path, the SDK's request model, a body using every field it has)
SDK_REQUESTS: list[tuple[str, str, type[Any], dict[str, Any]]] = [
    ("post", "/v2/sandboxes", e2b.NewSandboxV2, FULL_NEW_V2),
    ("post", "/sandboxes", e2b.NewSandbox, {**FULL_NEW_V2, "secure": True}),
    (
        "post",
        "/v2/sandboxes/{sandbox_id}/connect",
        e2b.ConnectSandboxV2,
        {"timeout": 60, "memory": True},
    ),
    (
        "post",
        "/sandboxes/{sandbox_id}/connect",
        e2b.ConnectSandbox,
        {"timeout": 60, "memory": True},
    ),
    ("post", "/sandboxes/{sandbox_id}/timeout", e2b.SandboxTimeoutRequest, {"timeout": 60}),
    (
        "post",
        "/sandboxes/{sandbox_id}/pause",
        e2b.SandboxPauseRequest,
        {"memory": True, "requireHealthyGuest": False},
    ),
]

RESUME = pytest.param(
    "post",
    "/sandboxes/{sandbox_id}/resume",
    e2b.ResumedSandbox,
    {"timeout": 60, "autoPause": False, "memory": True},
)


def _sdk_body(checker: E2bWireChecker, model: type[Any], body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the SDK's model sends it, after proving every key is one the model has."""
    parsed = model.from_dict(body)
    checker.check_models(parsed, f"{model.__name__} request")
    sent: dict[str, Any] = parsed.to_dict()
    assert {k: sent.get(k) for k in body} == body  # the SDK's model carries every key as given
    return body


@pytest.mark.parametrize(("method", "path", "model", "body"), [*SDK_REQUESTS, RESUME])
def test_our_openapi_declares_every_field_the_sdk_sends(
    running: Running,
    checker: E2bWireChecker,
    method: str,
    path: str,
    model: type[Any],
    body: dict[str, Any],
) -> None:
    spec = httpx.get(running.server.api_url + "/openapi.json").json()
    sent = _sdk_body(checker, model, body)
    schema = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    OpenApiChecker(spec)._validate(sent, schema, f"{method} {path} request")  # undocumented: fails


def test_the_server_accepts_every_create_shape_the_sdk_sends(
    api: httpx.Client, checker: E2bWireChecker
) -> None:
    """Every field is accepted (201) or refused as unsupported (501), never a 400."""
    optional = [k for k in FULL_NEW_V2 if k != "templateID"]
    for path, model in (("/v2/sandboxes", e2b.NewSandboxV2), ("/sandboxes", e2b.NewSandbox)):
        for key in optional:
            body = _sdk_body(checker, model, {"templateID": "base", key: FULL_NEW_V2[key]})
            r = api.post(path, json=body)
            assert r.status_code in (201, 501), (path, key, r.text)
            if r.status_code == 201:
                assert api.delete(f"/sandboxes/{r.json()['sandboxID']}").status_code == 204


def test_workload_identity_is_refused_not_ignored(api: httpx.Client) -> None:
    body = {"templateID": "base", "iam": FULL_NEW_V2["iam"]}
    r = api.post("/v2/sandboxes", json=body)
    if r.status_code == 201:
        api.delete(f"/sandboxes/{r.json()['sandboxID']}")
    assert r.status_code == 501, r.text


def test_the_server_accepts_what_the_sdk_sends_to_a_sandbox(
    api: httpx.Client, checker: E2bWireChecker
) -> None:
    created = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60})
    assert created.status_code == 201, created.text
    sid = created.json()["sandboxID"]
    try:
        for method, path, model, body in SDK_REQUESTS[2:5]:
            url = path.format(sandbox_id=sid)
            r = api.request(method, url, json=_sdk_body(checker, model, body))
            assert r.status_code in (200, 201, 204), (path, r.text)
    finally:
        assert api.delete(f"/sandboxes/{sid}").status_code == 204
