from __future__ import annotations

import ssl

import httpx
import pytest

from emberbox import (
    AuthenticationException,
    FileNotFoundException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxUnavailableException,
    TimeoutException,
)
from emberbox._connect.errors import Code, ConnectError
from emberbox.sdk import _errors
from emberbox.sdk._async.api import encode_metadata_query
from emberbox.sdk._base import tls_context
from emberbox.sdk._config import ConnectionConfig
from emberbox.server.api.query import parse_metadata


def _response(status: int, body: bytes = b"{}", **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthenticationException),
        (404, NotFoundException),
        (429, RateLimitException),
        (502, SandboxUnavailableException),
        (504, TimeoutException),
        (507, NotEnoughSpaceException),
    ],
)
def test_http_statuses_map_to_the_tree(status: int, kind: type) -> None:
    assert isinstance(_errors.from_http(_response(status)), kind)


def test_rate_limit_carries_retry_after() -> None:
    err = _errors.from_http(
        _response(429, b'{"code":429,"message":"slow down"}', **{"Retry-After": "7"})
    )
    assert isinstance(err, RateLimitException)
    assert err.retry_after == 7.0
    assert "slow down" in str(err)


def test_connect_codes_map_to_the_tree() -> None:
    missing = ConnectError(Code.NOT_FOUND, "gone")
    assert isinstance(_errors.from_connect(missing, files=True), FileNotFoundException)
    assert type(_errors.from_connect(missing)) is NotFoundException
    for code in (Code.INTERNAL, Code.RESOURCE_EXHAUSTED):  # (envd's; older envds')
        full = ConnectError(code, "not enough disk space for '/x'")
        assert isinstance(_errors.from_connect(full), NotEnoughSpaceException)
    busy = ConnectError(Code.RESOURCE_EXHAUSTED, "request message exceeds the 4 byte limit")
    assert isinstance(_errors.from_connect(busy), RateLimitException)


def test_metadata_query_is_encoded_once_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the server reads back (``parse_metadata``, after the framework's own decoding)
    is what was asked: the official SDKs' double escape (once, '+' read as a space, '&' and
    '=' split the filter)."""
    asked = {"a": "b c", "k&": "v=", "plus": "a+b", "pct": "50%25", "ü/x": "ü y"}
    query = httpx.QueryParams({"metadata": encode_metadata_query(asked)})
    assert parse_metadata(httpx.QueryParams(str(query))["metadata"]) == asked


def test_config_prefers_arguments_then_emberbox_then_e2b(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b-key")
    monkeypatch.setenv("E2B_API_URL", "http://e2b:1")
    monkeypatch.setenv("EMBERBOX_API_URL", "http://ember:2/")
    config = ConnectionConfig.create()
    assert (config.api_key, config.api_url) == ("e2b-key", "http://ember:2")
    assert ConnectionConfig.create(api_key="arg").api_key == "arg"
    assert config.host("abc", 8080, None) == "8080-abc.localhost"
    assert config.host("abc", 8080, "sbx.example") == "8080-abc.sbx.example"
    monkeypatch.setenv("EMBERBOX_SANDBOX_URL", "http://127.0.0.1:9")
    assert ConnectionConfig.create().envd_url("abc", None) == "http://127.0.0.1:9"


def test_clients_share_one_tls_context_as_strict_as_httpxs_default() -> None:
    """Built once per process (25-40 ms per client otherwise), and sharing it weakens nothing:
    certificates and host names are verified against the CA bundle httpx would load."""
    context = tls_context()
    assert context is tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
