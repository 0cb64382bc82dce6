"""The egress audit log (``GET /sandboxes/{id}/egress``, our extension), with sandboxes made by
the official SDK: connections the kernel forwards or refuses (conntrack and NFLOG, through
ulogd) and those the node's gateway judges by name, DNS questions, intercepted requests with a
header rule; bytes each way once a connection ends; paging; nothing of an injected secret."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from e2b import Sandbox, Secret

import emberbox
from emberbox.server.testing import ServerProcess
from tests.fake_internet import FakeInternet, fake_internet

ALLOWED, OTHER, RULED = "allowed.audit.test", "other.audit.test", "ruled.audit.test"
INTERNAL = "169.254.169.254"  # a stand-in the fake internet serves (never the real one)
Record = dict[str, Any]


@pytest.fixture(scope="module")
def inet() -> Iterator[FakeInternet]:
    with fake_internet(internal=(INTERNAL,), names={ALLOWED: 0, OTHER: 0, RULED: 1}) as net:
        yield net


@pytest.fixture(scope="module")
def gvisor_server(
    tmp_path_factory: pytest.TempPathFactory, inet: FakeInternet
) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import gvisor_server as start

    with start(tmp_path_factory.mktemp("gvisor-egress-log"), inet.node_env) as server:
        yield server


def _run(sbx: Sandbox, cmd: str) -> str:
    return sbx.commands.run(cmd + " || echo failed", timeout=60).stdout.strip()


def _page(server: ServerProcess, key: str, sandbox_id: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.api_url}/sandboxes/{sandbox_id}/egress", params=params,
                     headers={"X-API-KEY": key}, timeout=30)  # fmt: skip


def _wait_for(
    server: ServerProcess, key: str, sandbox_id: str, *wanted: Callable[[Record], bool]
) -> list[Record]:
    """The log once each of ``wanted`` matches a record (records arrive asynchronously)."""
    deadline = time.monotonic() + 20
    while True:
        response = _page(server, key, sandbox_id, limit=1000)
        assert response.status_code == 200, response.text
        records: list[Record] = response.json()
        if all(any(w(r) for r in records) for w in wanted):
            return records
        assert time.monotonic() < deadline, json.dumps(records, indent=1)
        time.sleep(0.3)


def _one(records: list[Record], match: Callable[[Record], bool]) -> Record:
    found = [r for r in records if match(r)]
    assert found, json.dumps(records, indent=1)
    return found[-1]


def test_the_kernel_side_records_forwarded_and_refused_connections(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """Default internet with one address denied: the allowed connection is recorded when it
    opens and completed with its bytes when the kernel forgets it; refusals name their rule."""
    reached, denied = inet.public
    sbx = Sandbox.create(timeout=180, network={"deny_out": [f"{denied}/32"]})
    try:
        assert _run(sbx, f"curl -s -m 5 {inet.url_of(reached)}") == inet.body_of(reached)
        assert _run(sbx, f"curl -s -m 3 {inet.url_of(denied)}") == "failed"
        assert _run(sbx, f"curl -s -m 3 http://{INTERNAL}:{inet.port}/") == "failed"

        def to(ip: str, verdict: str) -> Callable[[Record], bool]:
            return lambda r: r["ip"] == ip and r["verdict"] == verdict and r["port"] == inet.port

        records = _wait_for(gvisor_server, gvisor_key, sbx.sandbox_id, to(reached, "allowed"),
                            to(denied, "denied"), to(INTERNAL, "denied"))  # fmt: skip
        allowed = _one(records, to(reached, "allowed"))
        assert (allowed["protocol"], allowed["rule"]) == ("tcp", "internet")
        assert _one(records, to(denied, "denied"))["rule"] == "denyOut"
        assert _one(records, to(INTERNAL, "denied"))["rule"] == "internal"
        # A retransmitted SYN is not a second attempt.
        assert len([r for r in records if to(denied, "denied")(r)]) == 1

        # The kernel keeps a closed connection for TIME_WAIT; dropping it (the test's own
        # address) ends it now, and the record gets its bytes.
        subprocess.run(["conntrack", "-D", "-d", reached], capture_output=True, check=False)

        def ended(r: Record) -> bool:
            return to(reached, "allowed")(r) and r["endedAt"] is not None

        done = _one(_wait_for(gvisor_server, gvisor_key, sbx.sandbox_id, ended), ended)
        assert done["bytesIn"] > len(inet.body_of(reached)) > 0
        assert done["bytesOut"] > len("GET / HTTP/1.1")
    finally:
        sbx.kill()
    assert _page(gvisor_server, gvisor_key, sbx.sandbox_id).status_code == 404


def test_the_gateway_records_names_requests_and_dns(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    network: Any = {"allow_out": [ALLOWED], "deny_out": ["0.0.0.0/0"]}
    sbx = Sandbox.create(timeout=180, network=network)
    try:
        sbx.files.write("/tmp/ca.pem", inet.ca_pem)
        got = _run(sbx, f"curl -s -m 5 --cacert /tmp/ca.pem https://{ALLOWED}/")
        assert got == inet.named_body(ALLOWED)
        assert _run(sbx, f"curl -s -m 5 'http://{ALLOWED}/seen/path?q=1'") == got
        # Its DNS answer is refused; asked at the address anyway, the name is refused too.
        at = f"--resolve {OTHER}:443:{inet.names[OTHER]}"
        assert _run(sbx, f"curl -s -m 5 {at} --cacert /tmp/ca.pem https://{OTHER}/") == "failed"
        assert _run(sbx, "getent hosts nowhere.audit.test") == "failed"
        records = _wait_for(
            gvisor_server, gvisor_key, sbx.sandbox_id,
            lambda r: r["protocol"] == "tls" and r["endedAt"] is not None,
            lambda r: r["protocol"] == "http" and r["endedAt"] is not None,
            lambda r: r["name"] == OTHER and r["protocol"] == "tls",
            lambda r: r["name"] == "nowhere.audit.test",
        )  # fmt: skip
        tls = _one(records, lambda r: r["protocol"] == "tls" and r["name"] == ALLOWED)
        assert (tls["ip"], tls["port"], tls["verdict"], tls["rule"]) == (
            inet.names[ALLOWED],
            443,
            "allowed",
            "allowOut",
        )
        assert tls["method"] is None  # inside TLS: not visible
        assert tls["bytesIn"] > len(got) and tls["bytesOut"] > 0
        http = _one(records, lambda r: r["protocol"] == "http")
        assert (http["name"], http["method"], http["path"]) == (ALLOWED, "GET", "/seen/path?q=1")
        assert http["bytesIn"] > len(got)
        refused = _one(records, lambda r: r["name"] == OTHER and r["protocol"] == "tls")
        assert (refused["verdict"], refused["rule"], refused["bytesIn"]) == ("denied", "name", None)
        dns = _one(records, lambda r: r["name"] == "nowhere.audit.test")
        assert (dns["protocol"], dns["verdict"], dns["rule"]) == ("dns", "denied", "name")
        asked = _one(records, lambda r: r["protocol"] == "dns" and r["name"] == ALLOWED)
        assert (asked["verdict"], asked["rule"]) == ("allowed", "allowOut")
    finally:
        sbx.kill()


def test_intercepted_requests_are_recorded_without_the_secret(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    value = "sk-" + secrets.token_hex(16)
    name = f"audit-{secrets.token_hex(4)}"
    info = Secret.create(name, value)
    rules = {RULED: [{"transform": {"headers": {"Authorization": Secret.fill(name)}}}]}
    network: Any = {"allow_out": [RULED], "deny_out": ["0.0.0.0/0"], "rules": rules}
    sbx = Sandbox.create(timeout=180, network=network)
    try:
        got = _run(sbx, f"curl -s -m 10 -X POST -d x=1 https://{RULED}/api/v1?tok=2")
        assert got.startswith("posted")
        refused = _run(sbx, f"curl -s -m 10 -H 'Host: {OTHER}' https://{RULED}/front")
        assert refused == "failed"
        records = _wait_for(
            gvisor_server, gvisor_key, sbx.sandbox_id,
            lambda r: r["protocol"] == "https" and r["method"] == "POST" and r["endedAt"],
            lambda r: r["rule"] == "request",
        )  # fmt: skip
        posted = _one(records, lambda r: r["method"] == "POST")
        assert (posted["name"], posted["path"], posted["rule"], posted["verdict"]) == (
            RULED,
            "/api/v1?tok=2",
            "rules",
            "allowed",
        )
        assert posted["bytesOut"] > 0 and posted["bytesIn"] > 0
        front = _one(records, lambda r: r["rule"] == "request")
        assert (front["verdict"], front["path"]) == ("denied", "/front")
        text = _page(gvisor_server, gvisor_key, sbx.sandbox_id, limit=1000).text
        assert value not in text
    finally:
        sbx.kill()
        Secret.destroy(info.secret_id)


def test_paging_refusals_and_other_teams(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    sbx = Sandbox.create(timeout=180)
    try:
        for _ in range(3):
            assert _run(sbx, f"curl -s -m 5 {inet.url}") == inet.body
        _wait_for(gvisor_server, gvisor_key, sbx.sandbox_id, lambda r: r["ip"] == inet.address)
        everything = _page(gvisor_server, gvisor_key, sbx.sandbox_id, limit=1000).json()
        assert len([r for r in everything if r["ip"] == inet.address]) >= 3
        walked: list[Record] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1} | ({"nextToken": token} if token else {})
            page = _page(gvisor_server, gvisor_key, sbx.sandbox_id, **params)
            assert page.status_code == 200 and len(page.json()) == 1
            walked += page.json()
            token = page.headers.get("x-next-token")
            if token is None:
                break
        assert [r["timestamp"] for r in walked] == [
            r["timestamp"] for r in everything[: len(walked)]
        ]
        assert len(walked) >= len(everything)

        # Our SDK walks the same records, a page at a time.
        ours = list(emberbox.Sandbox.connect(sbx.sandbox_id).egress_log(limit=2))
        assert [r.seq for r in ours][: len(everything)] == [r["seq"] for r in everything]
        assert all(isinstance(r, emberbox.EgressRecord) for r in ours)

        for bad in ({"nextToken": "abc"}, {"limit": 0}, {"limit": 5000}):
            response = _page(gvisor_server, gvisor_key, sbx.sandbox_id, **bad)
            assert response.status_code == 400, response.text
            assert response.json()["message"]
        other = gvisor_server.create_key("audit-other-team")
        assert _page(gvisor_server, other, sbx.sandbox_id).status_code == 404
        assert _page(gvisor_server, gvisor_key, "inowhere00000000000").status_code == 404
    finally:
        sbx.kill()
