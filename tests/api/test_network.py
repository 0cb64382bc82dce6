"""Network policy end to end: the official e2b SDK (sync and async) and ours, a real server,
real gVisor sandboxes, and a fake internet in a namespace this test made (every address a
sandbox sends to lives there). Each "refused" is paired with an "allowed" on the same server.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dnslib import DNSRecord
from e2b import AsyncSandbox, Sandbox

from emberbox.server.testing import ServerProcess
from tests.api.npm import JS, needs_node, run_script
from tests.fake_internet import FakeInternet, fake_internet

METADATA = "169.254.169.254"


ALLOWED, OTHER, UNDER_WILD = "allowed.egress.test", "other.egress.test", "a.wild.egress.test"


@pytest.fixture(scope="module")
def inet() -> Iterator[FakeInternet]:
    names = {ALLOWED: 0, OTHER: 0, UNDER_WILD: 1}
    with fake_internet(internal=(METADATA,), names=names) as net:
        yield net


@pytest.fixture(scope="module")
def gvisor_server(
    tmp_path_factory: pytest.TempPathFactory, inet: FakeInternet
) -> Iterator[ServerProcess]:
    """This module's server: its node's egress gateway resolves through the fake internet."""
    from tests.runtimes.gvisor_support import gvisor_server as start

    env = {"EMBERBOX_EGRESS_DNS": inet.dns}
    with start(tmp_path_factory.mktemp("gvisor-server"), env) as server:
        yield server


def _probe(inet: FakeInternet, address: str) -> str:
    return f"curl -s -m 3 {inet.url_of(address)} || echo refused"


def fetch(sbx: Sandbox, inet: FakeInternet, address: str) -> str:
    return sbx.commands.run(_probe(inet, address)).stdout.strip()


async def afetch(sbx: AsyncSandbox, inet: FakeInternet, address: str) -> str:
    return (await sbx.commands.run(_probe(inet, address))).stdout.strip()


def _detail(server: ServerProcess, key: str, sandbox_id: str) -> dict[str, object]:
    r = httpx.get(f"{server.api_url}/sandboxes/{sandbox_id}", headers={"X-API-KEY": key})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_default_egress_is_public_only(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        assert fetch(sbx, inet, inet.address) == inet.body
        assert fetch(sbx, inet, METADATA) == "refused"
    finally:
        sbx.kill()


def test_allow_out_and_deny_out_at_create_then_update(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    one, other = inet.public
    sbx = Sandbox.create(
        timeout=120, network={"allow_out": [one, f"{METADATA}/32"], "deny_out": ["0.0.0.0/0"]}
    )
    try:
        assert fetch(sbx, inet, one) == inet.body_of(one)
        assert fetch(sbx, inet, METADATA) == inet.body_of(METADATA)
        assert fetch(sbx, inet, other) == "refused"
        detail = _detail(gvisor_server, gvisor_key, sbx.sandbox_id)
        assert detail["network"] == {
            "allowOut": [f"{one}/32", f"{METADATA}/32"],
            "denyOut": ["0.0.0.0/0"],
        }

        start = time.monotonic()
        sbx.update_network({"deny_out": [one]})  # replaces: allowOut is cleared
        assert fetch(sbx, inet, one) == "refused"
        assert fetch(sbx, inet, other) == inet.body_of(other)
        assert fetch(sbx, inet, METADATA) == "refused"  # the safe default is back
        assert time.monotonic() - start < 10
        assert _detail(gvisor_server, gvisor_key, sbx.sandbox_id)["network"] == {
            "denyOut": [f"{one}/32"]
        }

        Sandbox.update_network(sbx.sandbox_id, {"allow_internet_access": False})
        assert fetch(sbx, inet, other) == "refused"
        assert _detail(gvisor_server, gvisor_key, sbx.sandbox_id)["allowInternetAccess"] is False
    finally:
        sbx.kill()


def _https(sbx: Sandbox, name: str, at: str | None = None) -> str:
    pin = f"--resolve {name}:443:{at} " if at else ""
    probe = f"curl -s -m 5 --cacert /tmp/ca.pem {pin}https://{name}/ || echo refused"
    return sbx.commands.run(probe).stdout.strip()


def test_domains_with_the_official_sdk(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    sbx = Sandbox.create(timeout=120, network={"allow_out": [ALLOWED], "deny_out": ["0.0.0.0/0"]})
    try:
        sbx.files.write("/tmp/ca.pem", inet.ca_pem)
        assert _https(sbx, ALLOWED) == inet.named_body(ALLOWED)
        assert _https(sbx, OTHER, at=inet.names[OTHER]) == "refused"  # same address
        assert fetch(sbx, inet, inet.names[ALLOWED]) == "refused"  # the address, port 8080
        assert _detail(gvisor_server, gvisor_key, sbx.sandbox_id)["network"] == {
            "allowOut": [ALLOWED],
            "denyOut": ["0.0.0.0/0"],
        }
        sbx.update_network({"allow_out": ["*.wild.egress.test"], "deny_out": ["0.0.0.0/0"]})
        assert _https(sbx, UNDER_WILD) == inet.named_body(UNDER_WILD)
        assert _https(sbx, ALLOWED, at=inet.names[ALLOWED]) == "refused"
    finally:
        sbx.kill()


@needs_node
def test_domains_with_the_npm_sdk(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet, tmp_path: Path
) -> None:
    out = run_script(JS / "network.mjs", gvisor_server, gvisor_key, tmp_path, 180, ALLOWED=ALLOWED,
                     OTHER=OTHER, OTHER_ADDRESS=inet.names[OTHER])  # fmt: skip
    assert out["allowed"] == inet.named_body(ALLOWED)
    assert out["other"] == "refused"
    assert out["network"]["allowOut"] == [ALLOWED]
    assert out["network"]["denyOut"] == ["0.0.0.0/0"]


def test_rules_survive_pause_and_resume_and_forks_inherit_them_and_the_host_mask(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    one, other = inet.public
    mask = "localhost:${PORT}"
    sbx = Sandbox.create(timeout=120, network={"deny_out": [other], "mask_request_host": mask})
    forks: list[Sandbox] = []
    try:
        sbx.update_network({"deny_out": [one]})
        sbx.pause()
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert fetch(resumed, inet, one) == "refused"
        assert fetch(resumed, inet, other) == inet.body_of(other)
        forks = [f for f in sbx.fork() if isinstance(f, Sandbox)]
        assert len(forks) == 1
        assert fetch(forks[0], inet, one) == "refused"
        assert fetch(forks[0], inet, other) == inet.body_of(other)
        assert _detail(gvisor_server, gvisor_key, forks[0].sandbox_id)["network"] == {
            "denyOut": [f"{one}/32"],
            "maskRequestHost": mask,
        }
    finally:
        for s in [sbx, *forks]:
            s.kill()


async def test_async_sdk_deny_all_then_open(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    sbx = await AsyncSandbox.create(timeout=120, allow_internet_access=False)
    try:
        assert await afetch(sbx, inet, inet.address) == "refused"
        await sbx.update_network({"allow_out": [inet.address]})
        assert await afetch(sbx, inet, inet.address) == inet.body
        assert await afetch(sbx, inet, METADATA) == "refused"
    finally:
        await sbx.kill()


def test_bad_update_changes_nothing(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    one, _ = inet.public
    sbx = Sandbox.create(timeout=120, network={"deny_out": [one]})
    try:
        from e2b import SandboxException

        with pytest.raises(SandboxException, match="not a CIDR"):
            sbx.update_network({"allow_out": ["1.2.3.4/99"]})
        with pytest.raises(SandboxException, match="only"):
            sbx.update_network({"deny_out": ["example.com"]})
        # Set at create only: true was taken and dropped (a private sandbox stayed private).
        with httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key}) as api:
            for value in (True, False):
                r = api.put(f"/sandboxes/{sbx.sandbox_id}/network",
                            json={"allowPublicTraffic": value})  # fmt: skip
                assert r.status_code == 501 and "allowPublicTraffic" in r.json()["message"]
        assert fetch(sbx, inet, one) == "refused"
    finally:
        sbx.kill()


def test_dns_servers_are_reachable_beside_domains(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """E2B's dnsServers: with a domain in allowOut, the sandbox may reach these resolvers
    (every port) itself, so a name the rules do not allow reaches the fake resolver; without
    a domain they open nothing."""
    name = f"d{secrets.token_hex(6)}.servers.egress.test"
    query = DNSRecord.question(name).pack().hex()
    ask = (
        'python3 -c "import socket; s = socket.socket(2, 2); s.settimeout(3); '
        f"s.sendto(bytes.fromhex('{query}'), ('{inet.dns}', 53)); print(len(s.recv(512)))\""
    )
    network: Any = {"allow_out": [ALLOWED], "deny_out": ["0.0.0.0/0"], "dns_servers": [inet.dns]}
    sbx = Sandbox.create(timeout=120, network=network)
    try:
        assert sbx.commands.run(ask).exit_code == 0
        assert name in inet.queried()  # asked there, not answered by the node
        assert fetch(sbx, inet, inet.dns) == inet.body_of(inet.dns)  # every port
        assert fetch(sbx, inet, inet.public[1]) == "refused"
        assert _detail(gvisor_server, gvisor_key, sbx.sandbox_id)["network"] == {
            "allowOut": [ALLOWED], "denyOut": ["0.0.0.0/0"], "dnsServers": [inet.dns]}  # fmt: skip
        sbx.update_network({"deny_out": ["0.0.0.0/0"], "dns_servers": [inet.dns]})  # no domain
        assert fetch(sbx, inet, inet.dns) == "refused"
    finally:
        sbx.kill()
    api = httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key})
    bad = ((["nope"], 400), (["1.1.1.1"] * 11, 400), ([METADATA], 400), (["2001:db8::1"], 501))
    for servers, status in bad:
        made = api.post("/sandboxes", json={"templateID": "base",
                                            "network": {"dnsServers": servers}})  # fmt: skip
        assert made.status_code == status, made.text
        assert made.json()["message"].startswith("dnsServers")


def _wait_for(url: str, headers: dict[str, str]) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(url, headers=headers)
        if r.status_code != 502:
            return r
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_private_ports_with_the_official_sdk(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    sbx = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        token = sbx.traffic_access_token
        assert token
        port = 8123
        sbx.files.write("/tmp/site/index.html", "private page")
        sbx.commands.run(f"cd /tmp/site && python3 -m http.server {port}", background=True)
        url = gvisor_server.sandbox_url + "/index.html"
        by_host = {"Host": sbx.get_host(port)}
        by_header = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
        assert _wait_for(url, {**by_host, "e2b-traffic-access-token": token}).text == (
            "private page"
        )
        for routing in (by_host, by_header):
            assert httpx.get(url, headers=routing).status_code == 401
            ok = httpx.get(url, headers={**routing, "e2b-traffic-access-token": token})
            assert ok.status_code == 200 and ok.text == "private page"
        detail = _detail(gvisor_server, gvisor_key, sbx.sandbox_id)
        assert detail["network"] == {"allowPublicTraffic": False}
    finally:
        sbx.kill()


def test_secure_sandbox_with_the_official_sdk(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """``secure: true`` (every sandbox is secured): envd refuses calls without the access
    token, the SDK's own calls carry it, and signed file URLs work without it until they expire."""
    sbx = Sandbox.create(timeout=120, secure=True)
    try:
        token = _detail(gvisor_server, gvisor_key, sbx.sandbox_id)["envdAccessToken"]
        assert isinstance(token, str) and token
        sbx.files.write("/tmp/s.txt", "signed")
        envd = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
        files = gvisor_server.sandbox_url + "/files"
        assert httpx.get(files, params={"path": "/tmp/s.txt"}, headers=envd).status_code == 401
        r = httpx.get(
            files, params={"path": "/tmp/s.txt"}, headers={**envd, "X-Access-Token": token}
        )
        assert r.text == "signed"

        def local(url: str) -> str:  # the signed query, sent to our proxy with routing headers
            return files + "?" + url.split("?", 1)[1]

        assert httpx.get(local(sbx.download_url("/tmp/s.txt")), headers=envd).text == "signed"
        up = httpx.post(
            local(sbx.upload_url("/tmp/up.txt")),
            headers=envd,
            files={"file": ("up.txt", b"uploaded")},
        )
        assert up.status_code == 200, up.text
        assert sbx.files.read("/tmp/up.txt") == "uploaded"
        short = local(sbx.download_url("/tmp/s.txt", use_signature_expiration=1))
        time.sleep(2.1)
        expired = httpx.get(short, headers=envd)
        assert expired.status_code == 401, expired.text
        tampered = local(sbx.download_url("/tmp/s.txt")).replace("s.txt", "up.txt")
        assert httpx.get(tampered, headers=envd).status_code == 401
    finally:
        sbx.kill()


def test_our_sdk_sync_and_async(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """Our SDK (``emberbox.Sandbox``/``AsyncSandbox``): the same rules through its own create
    and update_network."""
    import asyncio

    from emberbox import AsyncSandbox as OurAsyncSandbox
    from emberbox import Sandbox as OurSandbox

    one, other = inet.public
    probe = f"curl -s -m 3 {inet.url_of(one)} || echo refused"
    with OurSandbox.create(
        timeout=120, network={"allow_out": [one], "deny_out": ["0.0.0.0/0"]}
    ) as s:
        assert s.commands.run(probe).stdout.strip() == inet.body_of(one)
        assert s.commands.run(_probe(inet, other)).stdout.strip() == "refused"
        s.update_network({"deny_out": [one]})
        assert s.commands.run(probe).stdout.strip() == "refused"
        assert s.commands.run(_probe(inet, other)).stdout.strip() == inet.body_of(other)
        assert s.traffic_access_token is None

    async def run_async() -> None:
        sbx = await OurAsyncSandbox.create(
            timeout=120, allow_internet_access=False, network={"allow_public_traffic": False}
        )
        try:
            assert sbx.traffic_access_token
            assert (await sbx.commands.run(probe)).stdout.strip() == "refused"
            await sbx.update_network({"allow_out": [one]})
            assert (await sbx.commands.run(probe)).stdout.strip() == inet.body_of(one)
        finally:
            await sbx.kill()
        # A domain entry through our SDK (plain HTTP: judged by Host), and get_info's view.
        named = await OurAsyncSandbox.create(
            timeout=120,
            allow_internet_access=False,
            network={"allow_out": [ALLOWED], "mask_request_host": "localhost:${PORT}"},
        )
        try:
            page = await named.commands.run(f"curl -s -m 5 http://{ALLOWED}/ || echo refused")
            assert page.stdout.strip() == inet.named_body(ALLOWED)
            pinned = f"curl -s -m 5 --resolve {OTHER}:80:{inet.names[OTHER]} http://{OTHER}/"
            other_page = await named.commands.run(f"{pinned} || echo refused")
            assert other_page.stdout.strip() == "refused"
            info = await named.get_info()
            assert info.network == {
                "allow_out": [ALLOWED],
                "mask_request_host": "localhost:${PORT}",
            }
        finally:
            await named.kill()

    asyncio.run(run_async())


def test_concurrent_clients_leave_no_rules_behind(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """Four clients at once create sandboxes with rules, update them and kill them: every
    chain, set and map element they made is gone afterwards (checked in the kernel)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from emberbox.host import network
    from emberbox.runtimes.gvisor import GVisorConfig
    from tests.runtimes.gvisor_support import DATA_DIR

    instance = GVisorConfig(data_dir=DATA_DIR).instance
    before = set(asyncio.run(network.list_rule_objects(instance)))
    one, other = inet.public

    def client(i: int) -> str:
        sbx = Sandbox.create(timeout=120, network={"deny_out": [one if i % 2 else other]})
        try:
            sbx.update_network({"deny_out": [other if i % 2 else one]})
            blocked = other if i % 2 else one
            assert fetch(sbx, inet, blocked) == "refused"
            objects = asyncio.run(network.list_rule_objects(instance))
            assert any(o.startswith("chain:") for o in objects)
            return sbx.sandbox_id
        finally:
            sbx.kill()

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(client, range(4)))
    assert len(set(ids)) == 4
    deadline = time.monotonic() + 20
    while set(asyncio.run(network.list_rule_objects(instance))) - before:
        assert time.monotonic() < deadline, asyncio.run(network.list_rule_objects(instance))
        time.sleep(0.2)


def test_domain_rules_hold_after_the_server_is_killed_and_restarted(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """SIGKILL (no clean stop: the redirect chains still name the dead gateway's ports), then
    a new server adopts the sandbox: its new gateway judges it by the rules in its record.
    Last in the module: the module's server is a new process afterwards."""
    sbx = Sandbox.create(timeout=300, network={"allow_out": [ALLOWED], "deny_out": ["0.0.0.0/0"]})
    try:
        sbx.files.write("/tmp/ca.pem", inet.ca_pem)
        assert _https(sbx, ALLOWED) == inet.named_body(ALLOWED)
        gvisor_server.sigkill()
        gvisor_server.start(timeout_s=60)
        assert _https(sbx, ALLOWED) == inet.named_body(ALLOWED)
        assert _https(sbx, OTHER, at=inet.names[OTHER]) == "refused"
        lookup = sbx.commands.run(f"getent hosts {OTHER} || echo refused").stdout.strip()
        assert lookup == "refused"
    finally:
        sbx.kill()
