"""Routing rules of protocol §2.1, as pure functions."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from emberbox.server.proxy.routing import RouteError, Target, hostname, route

SID = "abc123def456ghi789jk"


def _h(**kw: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in kw.items()})


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost:3002", "localhost"),
        ("LOCALHOST", "localhost"),
        ("[::1]:3002", "::1"),
        ("::1", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("8000-x.example.com:443", "8000-x.example.com"),
    ],
)
def test_hostname(host: str, expected: str) -> None:
    assert hostname(host) == expected


@pytest.mark.parametrize("host", ["localhost:3002", "127.0.0.1", "[::1]:9", "sandbox.e2b.local"])
def test_header_routing_on_local_hosts(host: str) -> None:
    headers = _h(host=host, e2b_sandbox_id=SID, e2b_sandbox_port="49983")
    assert route(headers) == Target(SID, 49983)


def test_host_form() -> None:
    assert route(_h(host=f"8080-{SID}.localhost:3002")) == Target(SID, 8080)
    assert route(_h(host=f"49983-{SID}.sandboxes.example.org")) == Target(SID, 49983)


def test_host_form_wins_on_a_custom_domain_even_with_headers() -> None:
    headers = _h(host=f"8080-{SID}.example.org", e2b_sandbox_id="other", e2b_sandbox_port="1")
    assert route(headers) == Target(SID, 8080)


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "localhost", "e2b-sandbox-id": SID},
        {"host": "localhost", "e2b-sandbox-port": "49983"},
        {"host": "localhost", "e2b-sandbox-id": "Bad-ID", "e2b-sandbox-port": "1"},
        {"host": "localhost", "e2b-sandbox-id": SID, "e2b-sandbox-port": "70000"},
        {"host": "localhost", "e2b-sandbox-id": SID, "e2b-sandbox-port": "x"},
        {"host": "localhost", "e2b-sandbox-id": SID, "e2b-sandbox-port": "\u00b2"},  # isdigit()
        {"host": "localhost", "e2b-sandbox-id": SID, "e2b-sandbox-port": "0" * 5000 + "1"},
        {"host": f"\u00b2-{SID}.example.org"},
        {"host": "localhost"},
        {"host": "example.org"},
        {"host": f"abc-{SID}.example.org"},
        {"host": "8080-ab_c.example.org"},
        {},
    ],
)
def test_bad_routes(headers: dict[str, str]) -> None:
    with pytest.raises(RouteError):
        route(Headers(headers))
