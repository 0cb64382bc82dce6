"""The template API's wire behaviour on a real server (process runtime, SQLite and PostgreSQL):
shapes parsed by the e2b SDK's own models, uploads with signed URLs, team scoping, and every
refusal (a field or operation we do not offer answers 400/501 with ``{code, message}``).

Builds themselves need gVisor; ``test_templates_gvisor.py`` runs them.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest

from tests.api.conftest import Running

HASH = "ab" * 32


def _tar(files: dict[str, bytes], compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue()) if compress else buf.getvalue()


def _request(api: httpx.Client, name: str, **extra: object) -> dict[str, Any]:
    r = api.post("/v3/templates", json={"name": name, **extra})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def test_request_upload_and_refusals(running: Running, api: httpx.Client) -> None:
    name = f"wire-{uuid.uuid4().hex[:6]}"
    created = _request(api, f"{name}:v2", tags=["extra"], cpuCount=1, memoryMB=256)
    assert created["names"] == [name] and created["aliases"] == [name]
    assert sorted(created["tags"]) == ["extra", "v2"] and created["public"] is False
    tid, bid = created["templateID"], created["buildID"]
    assert len(tid) == 20 and tid.isalnum()

    # A file by hash: absent, then uploaded through the signed URL (no API key), then present.
    link = api.get(f"/templates/{tid}/files/{HASH}")
    assert link.status_code == 201 and link.json()["present"] is False
    url = link.json()["url"]
    assert url.startswith(running.server.api_url + "/_uploads/templates/")
    assert httpx.put(url, content=_tar({"a.txt": b"A"})).status_code == 200
    again = api.get(f"/templates/{tid}/files/{HASH}").json()
    assert again["present"] is True  # and a URL still: the SDK's force_upload sends to it
    assert again["url"].startswith(running.server.api_url + "/_uploads/templates/")
    assert httpx.put(again["url"], content=_tar({"a.txt": b"A, again"})).status_code == 200

    other = "cd" * 32
    good = api.get(f"/templates/{tid}/files/{other}").json()["url"]
    parts = urlsplit(good)
    query = parse_qs(parts.query)
    bad_sig = good.replace(query["signature"][0], "0" * 64)
    expired = good.replace(f"expires={query['expires'][0]}", f"expires={int(time.time()) - 1}")
    moved = urlunsplit(parts._replace(path=parts.path.replace(other, HASH)))
    for wrong in (bad_sig, expired, moved):
        r = httpx.put(wrong, content=_tar({"b": b"B"}))
        assert r.status_code == 403 and r.json()["code"] == 403, r.text
    r = httpx.put(good, content=b"not a tar archive at all" * 40)
    assert r.status_code == 400 and "not a tar" in r.json()["message"]
    r = httpx.put(good, content=b"\x1f\x8b" + b"not gzip past its magic" * 40)  # (was a 500)
    assert r.status_code == 400 and "gzip stream is corrupt" in r.json()["message"], r.text
    assert httpx.put(good, content=_tar({"b": b"B"}, compress=False)).status_code == 200

    # Start: malformed bodies are refused before anything runs; then this node cannot build.
    start = f"/v2/templates/{tid}/builds/{bid}"
    for body, words in [
        ({"fromTemplate": "base", "steps": [{"type": "ADD", "args": ["x"]}]}, "not supported"),
        ({"fromTemplate": "base", "steps": [{"type": "RUN", "args": []}]}, "needs a command"),
        ({"fromTemplate": "base", "steps": [], "secrets": {}}, "secrets"),
        ({"fromTemplate": "base", "fromImage": "e2bdev/base"}, "exactly one"),
        ({"fromTemplate": "base", "steps": [{"type": "COPY", "args": ["x", "/x"],
          "filesHash": "ef" * 32}]}, "were not uploaded"),
        ({"fromTemplate": "base", "steps": [{"type": "COPY", "args": ["x", "/x", "", "99"],
          "filesHash": HASH}]}, "octal"),
    ]:  # fmt: skip
        r = api.post(start, json=body)
        assert r.status_code == 400 and words in r.json()["message"], (body, r.text)
    r = api.post(start, json={"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["x"]}]})
    assert r.status_code == 501 and "gVisor" in r.json()["message"]

    # Status of a build that never started, list/get/alias shapes (parsed by the SDK's models).
    status = api.get(f"/templates/{tid}/builds/{bid}/status").json()
    assert status["status"] == "waiting" and status["logEntries"] == []
    assert api.get(f"/templates/{tid}/builds/{bid}/logs").json() == {"logs": []}
    far = api.get(f"/templates/{tid}/builds/{bid}/logs", params={"cursor": 10**20})
    assert far.status_code == 400 and "cursor" in far.json()["message"]  # (was a 500)
    listed = {t["templateID"]: t for t in api.get("/templates").json()}
    assert listed[tid]["buildStatus"] == "waiting" and listed[tid]["names"] == [name]
    assert tid in {t["templateID"] for t in api.get("/v2/templates").json()}
    detail = api.get(f"/templates/{name}").json()
    assert [b["buildID"] for b in detail["builds"]] == [bid]
    assert api.get(f"/templates/aliases/{name}").json() == {"templateID": tid, "public": False}
    assert api.patch(f"/templates/{tid}", json={"public": True}).status_code == 200
    assert api.get(f"/templates/aliases/{name}").json()["public"] is True
    assert api.patch(f"/v2/templates/{tid}", json={"public": False}).json() == {"names": [name]}
    assert api.patch(f"/templates/{tid}", json={"private": True}).status_code == 400
    r = api.post("/templates/tags", json={"target": f"{name}:v2", "tags": ["x"]})
    assert r.status_code == 404 and "no ready build" in r.json()["message"]
    assert api.get(f"/templates/{tid}/tags").json() == []
    assert api.post("/v2/sandboxes", json={"templateID": name}).status_code == 404

    # Another team sees none of it.
    with running.client(running.other_key) as theirs:
        assert theirs.get(f"/templates/aliases/{name}").status_code == 404
        assert theirs.get(f"/templates/{tid}").status_code == 404
        assert theirs.get(f"/templates/{tid}/files/{HASH}").status_code == 404
        assert theirs.get(f"/templates/{tid}/builds/{bid}/status").status_code == 404
        assert theirs.post(start, json={"fromTemplate": "base"}).status_code == 404
        assert theirs.delete(f"/templates/{tid}").status_code == 404
        assert tid not in {t["templateID"] for t in theirs.get("/templates").json()}

    assert api.delete(f"/templates/{tid}").status_code == 204
    assert api.get(f"/templates/{tid}").status_code == 404
    assert api.get(f"/templates/{tid}/files/{HASH}").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/templates", {"alias": "x", "dockerfile": "FROM base"}),
        ("POST", "/templates/sometemplate", None),
        ("POST", "/templates/sometemplate/builds/somebuild", None),
        ("GET", "/templates/sometemplate/tags/count", None),
        ("GET", "/default-templates", None),
        ("GET", "/volumes", None),
        ("POST", "/volumes", {"name": "v"}),
        ("GET", "/volumecontent/v1/dir?path=/", None),  # volumes need gVisor
    ],
)
def test_refused_with_501(api: httpx.Client, method: str, path: str, body: object) -> None:
    r = api.request(method, path, json=body)
    assert r.status_code == 501 and r.json()["code"] == 501 and r.json()["message"], r.text


def test_names_and_sizes_are_checked(api: httpx.Client) -> None:
    for body, status in [
        ({"name": "Bad Name"}, 400),
        ({"name": "base"}, 409),  # a built-in template's name
        ({"name": "ok-name", "cpuCount": 999}, 400),
        ({"name": "ok-name", "memoryMB": 1}, 400),
        ({"name": "ok-name", "tags": ["no spaces"]}, 400),
        ({"name": "ok-name", "teamID": "someone-else"}, 403),
        ({}, 400),
    ]:
        r = api.post("/v3/templates", json=body)
        assert r.status_code == status and r.json()["code"] == status, (body, r.text)
    r = api.post("/v2/templates", json={"alias": f"legacy-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 202 and r.json()["buildID"]
    assert api.delete("/templates/base").status_code == 400


def test_templates_and_builds_page_with_next_tokens(api: httpx.Client) -> None:
    """``limit`` cut the list and ``nextToken`` was refused: past the limit, templates (the
    newest) and builds (the oldest) could not be reached at all."""
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    names = {f"{prefix}-{i}" for i in range(3)}
    for name in sorted(names):
        _request(api, name)

    seen: list[str] = []
    token = None
    while True:
        params = {"limit": 2, **({"nextToken": token} if token else {})}
        page = api.get("/v2/templates", params=params)
        assert page.status_code == 200 and len(page.json()) <= 2
        seen += [t["names"][0] for t in page.json()]
        token = page.headers.get("X-Next-Token")
        if token is None:
            break
    assert names <= set(seen) and len(seen) == len(set(seen))

    tid = _request(api, f"{prefix}-0")["templateID"]  # a second build, then a third
    _request(api, f"{prefix}-0")
    first = api.get(f"/templates/{tid}", params={"limit": 2})
    assert len(first.json()["builds"]) == 2 and "X-Next-Token" in first.headers
    rest = api.get(
        f"/templates/{tid}", params={"limit": 2, "nextToken": first.headers["X-Next-Token"]}
    )
    assert len(rest.json()["builds"]) == 1 and "X-Next-Token" not in rest.headers
    every = [b["buildID"] for b in api.get(f"/templates/{tid}").json()["builds"]]
    assert [b["buildID"] for b in first.json()["builds"] + rest.json()["builds"]] == every

    bad = api.get("/v2/templates", params={"nextToken": "not-a-token"})
    assert bad.status_code == 400 and "nextToken" in bad.json()["message"]
