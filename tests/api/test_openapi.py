"""``/openapi.json`` describes what we serve: every documented operation exists and answers with a
documented status, and our real responses carry the documented required fields."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import Running

PROTOCOL_OPERATIONS = {
    ("post", "/v2/sandboxes"),
    ("post", "/sandboxes"),
    ("post", "/v2/sandboxes/{sandbox_id}/connect"),
    ("post", "/sandboxes/{sandbox_id}/connect"),
    ("post", "/sandboxes/{sandbox_id}/resume"),
    ("get", "/v2/sandboxes"),
    ("get", "/sandboxes"),
    ("get", "/sandboxes/{sandbox_id}"),
    ("delete", "/sandboxes/{sandbox_id}"),
    ("post", "/sandboxes/{sandbox_id}/timeout"),
    ("post", "/sandboxes/{sandbox_id}/pause"),
    ("get", "/sandboxes/{sandbox_id}/metrics"),
    ("get", "/sandboxes/{sandbox_id}/logs"),
    ("get", "/v2/sandboxes/{sandbox_id}/logs"),
    ("get", "/health"),
    ("post", "/sandboxes/{sandbox_id}/snapshots"),
    ("get", "/snapshots"),
    ("delete", "/templates/{template_id}"),
    ("post", "/sandboxes/{sandbox_id}/fork"),
    ("post", "/sandboxes/{sandbox_id}/rollback"),  # our extension
    ("get", "/sandboxes/{sandbox_id}/egress"),  # our extension: the egress audit log
    ("put", "/sandboxes/{sandbox_id}/network"),
    # templates (server/api/templates.py)
    ("post", "/v3/templates"),
    ("post", "/v2/templates"),
    ("post", "/templates"),
    ("get", "/templates"),
    ("get", "/v2/templates"),
    ("get", "/templates/{template_id}/files/{files_hash}"),
    ("post", "/v2/templates/{template_id}/builds/{build_id}"),
    ("get", "/templates/{template_id}/builds/{build_id}/status"),
    ("get", "/templates/{template_id}/builds/{build_id}/logs"),
    ("get", "/templates/{template_id}"),
    ("patch", "/templates/{template_id}"),
    ("patch", "/v2/templates/{template_id}"),
    ("get", "/templates/aliases/{alias}"),
    ("post", "/templates/tags"),
    ("delete", "/templates/tags"),
    ("get", "/templates/{template_id}/tags"),
    # volumes (server/api/volumes.py)
    ("post", "/volumes"),
    ("get", "/volumes"),
    ("get", "/volumes/{volume_id}"),
    ("delete", "/volumes/{volume_id}"),
    ("get", "/volumecontent/{volume_id}/dir"),
    ("post", "/volumecontent/{volume_id}/dir"),
    ("get", "/volumecontent/{volume_id}/path"),
    ("patch", "/volumecontent/{volume_id}/path"),
    ("delete", "/volumecontent/{volume_id}/path"),
    ("get", "/volumecontent/{volume_id}/file"),
    ("put", "/volumecontent/{volume_id}/file"),
    # secrets (server/api/secrets.py)
    ("post", "/secrets"),
    ("get", "/secrets"),
    ("get", "/secrets/{secret}"),
    ("post", "/secrets/{secret}"),
    ("delete", "/secrets/{secret}"),
}


def _spec(running: Running) -> dict[str, Any]:
    r = httpx.get(running.server.api_url + "/openapi.json")  # public, no key
    assert r.status_code == 200
    spec: dict[str, Any] = r.json()
    return spec


def test_documents_exactly_the_protocol_operations(running: Running) -> None:
    spec = _spec(running)
    ops = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert ops == PROTOCOL_OPERATIONS
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-KEY"
    # we answer validation errors with 400, never FastAPI's default 422
    for item in spec["paths"].values():
        for op in item.values():
            assert "422" not in op["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_every_operation_answers_a_documented_status(running: Running, api: httpx.Client) -> None:
    spec = _spec(running)
    sid = "z" * 20
    bodies = {"/v2/sandboxes": {"templateID": "no-such"}, "/sandboxes": {"templateID": "no-such"}}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            url = path.replace("{sandbox_id}", sid).replace("{template_id}", "no-such")
            r = api.request(method, url, json=bodies.get(path, {"timeout": 5}))
            assert str(r.status_code) in op["responses"], (method, path, r.status_code)


def test_real_responses_match_the_schemas(running: Running, api: httpx.Client) -> None:
    schemas = _spec(running)["components"]["schemas"]
    created = api.post("/v2/sandboxes", json={"templateID": "base", "metadata": {"k": "v"}})
    assert created.status_code == 201
    sid = created.json()["sandboxID"]
    try:
        samples = {
            "Sandbox": created.json(),
            "SandboxDetail": api.get(f"/sandboxes/{sid}").json(),
            "ListedSandbox": api.get("/v2/sandboxes", params={"metadata": "k=v"}).json()[0],
            "SandboxMetric": api.get(f"/sandboxes/{sid}/metrics").json()[0],
            "Error": api.get("/sandboxes/nope").json(),
        }
        for name, sample in samples.items():
            schema = schemas[name]
            missing = set(schema.get("required", [])) - sample.keys()
            assert not missing, (name, missing)
            undocumented = sample.keys() - schema["properties"].keys()
            assert not undocumented, (name, undocumented)
        version = tuple(int(x) for x in samples["Sandbox"]["envdVersion"].split("."))
        assert version >= (0, 6, 4)
        assert samples["Sandbox"]["envdAccessToken"]
    finally:
        api.delete(f"/sandboxes/{sid}")


def test_the_response_checker_catches_drift(running: Running) -> None:
    """The hook that validates every API test response must be able to fail."""
    from tests.api.openapi_check import OpenApiChecker, SpecMismatch

    checker = OpenApiChecker(_spec(running))
    post = httpx.Request("POST", running.server.api_url + "/v2/sandboxes")
    ok = {"templateID": "t", "sandboxID": "s", "clientID": "c", "envdVersion": "0.6.13"}
    checker(httpx.Response(201, json=ok, request=post))
    bad_bodies = [
        {k: v for k, v in ok.items() if k != "clientID"},  # required field missing
        {**ok, "sandboxID": 5},  # wrong type
        {**ok, "surprise": True},  # undocumented field
    ]
    for body in bad_bodies:
        with pytest.raises(SpecMismatch):
            checker(httpx.Response(201, json=body, request=post))
    with pytest.raises(SpecMismatch, match="418 is not documented"):
        checker(httpx.Response(418, json={"code": 418, "message": "x"}, request=post))
    with pytest.raises(SpecMismatch):
        checker(httpx.Response(404, json={"detail": "Not Found"}, request=post))
