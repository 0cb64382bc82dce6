"""E2B's ``egressProxy`` with the official SDK: a sandbox's allowed TCP is tunneled by the
node through a SOCKS5 proxy (``pproxy`` in the fake internet, password required), after the
allow/deny rules; names an ``allowOut`` domain allowed are resolved by the proxy; it fails
closed; the API shows the proxy without its password; forks and updates keep or drop it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b import Sandbox
from e2b.sandbox.sandbox_api import SandboxEgressProxyOpts, SandboxNetworkOpts

from emberbox.server.testing import ServerProcess
from tests.fake_internet import FakeInternet, fake_internet
from tests.socks_proxy import SocksProxy, socks_proxy

NAMED = "named.proxy.test"


@pytest.fixture(scope="module")
def inet() -> Iterator[FakeInternet]:
    with fake_internet(names={NAMED: 0}) as net:
        yield net


@pytest.fixture(scope="module")
def proxy(inet: FakeInternet) -> Iterator[SocksProxy]:
    with socks_proxy(inet, "ebx", secrets.token_hex(8)) as running:
        yield running


@pytest.fixture(scope="module")
def gvisor_server(
    tmp_path_factory: pytest.TempPathFactory, inet: FakeInternet
) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import gvisor_server as start

    with start(tmp_path_factory.mktemp("gvisor-egress-proxy"), inet.node_env) as server:
        yield server


def _settings(proxy: SocksProxy, password: str | None = None) -> SandboxEgressProxyOpts:
    return {"address": proxy.address, "username": proxy.username,
            "password": password or proxy.password}  # fmt: skip


def _run(sbx: Sandbox, cmd: str) -> str:
    return sbx.commands.run(cmd + " || echo failed", timeout=60).stdout.strip()


def _whoami(sbx: Sandbox, inet: FakeInternet) -> str:
    """Where the fake internet saw the connection come from: the proxy's namespace (an
    address of its own) or the host (its end of the fake internet's link)."""
    return _run(sbx, f"curl -s -m 8 http://{inet.address}:{inet.port}/whoami")


def _through_proxy(inet: FakeInternet, seen: str) -> bool:
    return seen.startswith(inet.address.rsplit(".", 1)[0] + ".")


def test_tcp_is_tunneled_after_the_rules(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet, proxy: SocksProxy
) -> None:
    network: SandboxNetworkOpts = {"egress_proxy": _settings(proxy)}
    sbx = Sandbox.create(timeout=180, network=network)
    try:
        before = len(proxy.tunnels())
        assert _through_proxy(inet, _whoami(sbx, inet))
        assert f"{inet.address}:{inet.port}" in proxy.tunnels()[before:]

        # The API shows the proxy, never its password.
        detail = httpx.get(f"{gvisor_server.api_url}/sandboxes/{sbx.sandbox_id}",
                           headers={"X-API-KEY": gvisor_key})  # fmt: skip
        assert detail.json()["network"]["egressProxy"] == {
            "address": proxy.address, "username": proxy.username}  # fmt: skip
        assert proxy.password not in detail.text

        # Filtering comes first: a denied address never reaches the proxy.
        sbx.update_network({"deny_out": [f"{inet.address}/32"], "egress_proxy": _settings(proxy)})
        before = len(proxy.tunnels())
        assert _whoami(sbx, inet) == "failed"
        assert proxy.tunnels()[before:] == []

        # An update without the proxy stops tunneling (E2B's replace semantics).
        sbx.update_network({})
        seen = _whoami(sbx, inet)
        assert seen != "failed" and not _through_proxy(inet, seen)
        detail = httpx.get(f"{gvisor_server.api_url}/sandboxes/{sbx.sandbox_id}",
                           headers={"X-API-KEY": gvisor_key})  # fmt: skip
        assert "egressProxy" not in (detail.json().get("network") or {})
    finally:
        sbx.kill()


def test_allowed_names_are_resolved_by_the_proxy_and_forks_keep_it(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet, proxy: SocksProxy
) -> None:
    network: Any = {"allow_out": [NAMED], "deny_out": ["0.0.0.0/0"],
                    "egress_proxy": _settings(proxy)}  # fmt: skip
    sbx = Sandbox.create(timeout=180, network=network)
    try:
        sbx.files.write("/tmp/ca.pem", inet.ca_pem)
        before = len(proxy.tunnels())
        got = _run(sbx, f"curl -s -m 8 --cacert /tmp/ca.pem https://{NAMED}/")
        assert got == inet.named_body(NAMED)
        assert proxy.tunnels()[before:] == [f"{NAMED}:443"]
        # Another address stays refused: the proxy is not a way around the rules.
        assert _whoami(sbx, inet) == "failed"

        (fork,) = sbx.fork()
        assert isinstance(fork, Sandbox), fork
        try:
            fork.files.write("/tmp/ca.pem", inet.ca_pem)
            before = len(proxy.tunnels())
            got = _run(fork, f"curl -s -m 8 --cacert /tmp/ca.pem https://{NAMED}/")
            assert got == inet.named_body(NAMED)
            assert proxy.tunnels()[before:] == [f"{NAMED}:443"]
        finally:
            fork.kill()
    finally:
        sbx.kill()


def test_it_fails_closed(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet, proxy: SocksProxy
) -> None:
    """A wrong password, or no proxy listening at the address: connections fail, never go
    out directly."""
    refusing: SandboxNetworkOpts = {"egress_proxy": _settings(proxy, "wrong")}
    absent: SandboxNetworkOpts = {"egress_proxy": {"address": f"{inet.address}:1080"}}
    wrong = Sandbox.create(timeout=180, network=refusing)
    nobody = Sandbox.create(timeout=180, network=absent)
    try:
        for sbx in (wrong, nobody):
            assert _whoami(sbx, inet) == "failed"
            log = httpx.get(f"{gvisor_server.api_url}/sandboxes/{sbx.sandbox_id}/egress",
                            headers={"X-API-KEY": gvisor_key}).json()  # fmt: skip
            assert [(r["ip"], r["verdict"], r["rule"]) for r in log] == [
                (inet.address, "denied", "proxy")]  # fmt: skip
    finally:
        wrong.kill()
        nobody.kill()


@pytest.mark.parametrize(
    ("proxy_setting", "status"),
    [
        ({"address": "no-port.example"}, 400),
        ({"address": "10.1.2.3:1080"}, 400),  # internal: the node would dial its own network
        ({"address": "proxy.example:1080", "password": "p"}, 400),
        ({"address": "proxy.example:1080", "username": "u" * 256}, 400),
        ({"address": "proxy.example:1080", "color": "red"}, 400),
        ({"address": "proxy.example:1080", "tls": {"enabled": True}}, 501),
        ({"address": "[2001:db8::1]:1080"}, 501),
    ],
)
def test_bad_proxies_are_refused(
    gvisor_server: ServerProcess, gvisor_key: str, proxy_setting: dict[str, Any], status: int
) -> None:
    api = httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key})
    before = len(api.get("/sandboxes").json())
    made = api.post("/sandboxes", json={"templateID": "base",
                                        "network": {"egressProxy": proxy_setting}})  # fmt: skip
    assert made.status_code == status, made.text
    assert made.json()["message"].startswith("egressProxy")
    assert len(api.get("/sandboxes").json()) == before


def test_the_proxy_and_the_egress_log_outlive_a_server_restart(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet, proxy: SocksProxy
) -> None:
    """The node keeps the password in memory only: the server, SIGKILLed and restarted (its
    embedded node with it), sends it again, and tunneling goes on; the sandbox's egress log
    keeps what came before. Last in the module: its server is a new process afterwards."""
    network: SandboxNetworkOpts = {"egress_proxy": _settings(proxy)}
    sbx = Sandbox.create(timeout=300, network=network)
    try:
        assert _through_proxy(inet, _whoami(sbx, inet))
        log_url = f"{gvisor_server.api_url}/sandboxes/{sbx.sandbox_id}/egress"
        headers = {"X-API-KEY": gvisor_key}
        before = httpx.get(log_url, headers=headers).json()
        assert [r["port"] for r in before] == [inet.port]

        gvisor_server.sigkill()
        gvisor_server.start(timeout_s=60)
        tunnels = len(proxy.tunnels())
        assert _through_proxy(inet, _whoami(sbx, inet))
        assert len(proxy.tunnels()) == tunnels + 1
        after = httpx.get(log_url, headers=headers).json()
        kept = [(r["seq"], r["timestamp"]) for r in before]
        assert [(r["seq"], r["timestamp"]) for r in after[:-1]] == kept
        assert len(after) == len(before) + 1 and after[-1]["seq"] > before[-1]["seq"]
    finally:
        sbx.kill()
