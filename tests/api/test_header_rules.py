"""Header rules (E2B's ``network.rules``) with secrets, through the official SDK: the node's
egress gateway intercepts HTTPS to a ruled domain with its own CA (which the sandbox trusts),
sets the headers, and re-encrypts to the real server, which the fake internet's log shows
got them. Other names pass through untouched (their own certificate). The secret's value
never enters the sandbox: not its env, files or responses, nor the API's answers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox, Secret

from emberbox.server.testing import NodeProcess, ServerProcess
from tests.api.conftest import point_sdks_at
from tests.fake_internet import FakeInternet, fake_internet
from tests.node.support import data_dir_sharing_templates
from tests.runtimes.gvisor_support import DATA_DIR

RULED, OTHER, WILD = "api.rules.test", "plain.rules.test", "x.wild.rules.test"


@pytest.fixture(scope="module")
def inet() -> Iterator[FakeInternet]:
    with fake_internet(names={RULED: 0, OTHER: 0, WILD: 1}) as net:
        yield net


@pytest.fixture(scope="module")
def gvisor_server(
    tmp_path_factory: pytest.TempPathFactory, inet: FakeInternet
) -> Iterator[ServerProcess]:
    """Its gateway resolves through the fake internet and trusts the fake internet's CA."""
    from tests.runtimes.gvisor_support import gvisor_server as start

    with start(tmp_path_factory.mktemp("gvisor-rules"), inet.node_env) as server:
        yield server


def _rules(secret: str) -> Any:
    auth = {"Authorization": "Bearer " + Secret.fill(secret), "X-Static": "yes"}
    return {RULED: [{"transform": {"headers": auth}}]}


def _last(inet: FakeInternet, path: str) -> dict[str, str]:
    matching = [r for r in inet.requests() if r["path"] == path]
    assert matching, f"the fake internet got no request for {path}"
    headers: dict[str, str] = {k.lower(): v for k, v in matching[-1]["headers"].items()}
    return headers


def _run(sbx: Sandbox, cmd: str) -> str:
    return sbx.commands.run(cmd + " || echo failed", timeout=60).stdout.strip()


def _memory(sandbox_id: str) -> Path:
    """Where the node keeps a paused sandbox's memory (this module's server uses DATA_DIR)."""
    return DATA_DIR / "gvisor" / "sandboxes" / sandbox_id / "memory"


def _absent(sbx: Sandbox, value: str) -> None:
    """``value`` is in no env var, file we look at, or command line in the sandbox. The
    pattern is written reversed, so the search itself does not plant it."""
    sbx.files.write("/tmp/pattern", value[::-1])
    places = "/etc /home /tmp /root /usr/local /var /run /opt"
    found = _run(
        sbx,
        "(env; cat /proc/*/environ /proc/*/cmdline | tr '\\0' '\\n'; "
        f"grep -rsI --exclude=pattern . {places} 2>/dev/null) | rev | grep -c -F -f /tmp/pattern",
    )
    assert found in ("0", "0\nfailed"), found


def test_a_header_rule_puts_a_secret_into_https_requests(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    value = "sk-" + secrets.token_hex(16)
    name = f"rules-{secrets.token_hex(4)}"
    info = Secret.create(name, value)
    network: Any = {"allow_out": [RULED, OTHER], "deny_out": ["0.0.0.0/0"], "rules": _rules(name)}
    sbx = Sandbox.create(timeout=180, network=network)
    try:
        # curl and Python use the system trust store, which now holds the node's egress CA;
        # the sandbox's own Authorization header is replaced, not doubled.
        got = _run(sbx, f"curl -s -m 10 -H 'Authorization: Bearer mine' https://{RULED}/curl")
        assert got == inet.named_body(RULED)
        seen = _last(inet, "/curl")
        assert seen["authorization"] == f"Bearer {value}"
        assert seen["x-static"] == "yes"
        py = "import urllib.request as u; print(u.urlopen('https://%s/py').read().decode())"
        assert _run(sbx, f'python3 -c "{py % RULED}"') == inet.named_body(RULED)
        assert _last(inet, "/py")["authorization"] == f"Bearer {value}"

        # A body streams through whole; plain HTTP gets the headers too.
        blob = "head -c 300000 /dev/urandom > /tmp/blob && sha256sum /tmp/blob | cut -c1-64"
        digest = _run(sbx, blob)
        posted = _run(sbx, f"curl -s -m 20 --data-binary @/tmp/blob https://{RULED}/post")
        assert posted == f"posted 300000 bytes {digest}"
        assert _run(sbx, f"curl -s -m 10 http://{RULED}/plain") == inet.named_body(RULED)
        assert _last(inet, "/plain")["authorization"] == f"Bearer {value}"

        # Another allowed name is not intercepted: its own certificate, no injected header.
        sbx.files.write("/tmp/fake-ca.pem", inet.ca_pem)
        other = _run(sbx, f"curl -s -m 10 --cacert /tmp/fake-ca.pem https://{OTHER}/other")
        assert other == inet.named_body(OTHER)
        assert "authorization" not in _last(inet, "/other")
        # ... and a request for another host on the intercepted connection is refused.
        fronted = _run(sbx, f"curl -s -m 10 -H 'Host: {OTHER}' https://{RULED}/front")
        assert fronted == "failed"

        # The API shows the rules as given: the placeholder, never the value.
        detail = httpx.get(
            f"{gvisor_server.api_url}/sandboxes/{sbx.sandbox_id}",
            headers={"X-API-KEY": gvisor_key},
        )
        assert detail.json()["network"]["rules"] == _rules(name)
        assert value not in detail.text
        _absent(sbx, value)

        # Nor in its memory: paused, all of it is a file on the node. A string a process in
        # the sandbox holds is found there (the search works); the value is not.
        marker = "mark-" + secrets.token_hex(8)
        hold = f"import time; s = '{marker[::-1]}'[::-1]; open('/tmp/held', 'w'); time.sleep(900)"
        sbx.commands.run(f'python3 -c "{hold}"', background=True)
        # Paused only once the process holds it (a background start returns before Python ran).
        assert _run(sbx, "for i in $(seq 100); do test -e /tmp/held && break; sleep 0.1; done; "
                         "test -e /tmp/held && echo held") == "held"  # fmt: skip
        assert sbx.pause()
        image = b"".join(p.read_bytes() for p in _memory(sbx.sandbox_id).rglob("*") if p.is_file())
        assert marker.encode() in image
        assert value.encode() not in image
        Sandbox.connect(sbx.sandbox_id)
        assert _run(sbx, f"curl -s -m 10 https://{RULED}/resumed") == inet.named_body(RULED)
        assert _last(inet, "/resumed")["authorization"] == f"Bearer {value}"

        # A rotation reaches the running sandbox; a deleted secret makes its rule refuse.
        Secret.update(name, value + "-rotated")
        assert _run(sbx, f"curl -s -m 10 https://{RULED}/rotated") == inet.named_body(RULED)
        assert _last(inet, "/rotated")["authorization"] == f"Bearer {value}-rotated"
        Secret.destroy(name)
        assert _run(sbx, f"curl -s -m 10 https://{RULED}/deleted") == "failed"
        assert not [r for r in inet.requests() if r["path"] == "/deleted"]
        still = _run(sbx, f"curl -s -m 10 --cacert /tmp/fake-ca.pem https://{OTHER}/still")
        assert still == inet.named_body(OTHER)
    finally:
        sbx.kill()
        Secret.destroy(info.secret_id)


UPGRADE = """
import socket, ssl, sys
name = sys.argv[1]
s = ssl.create_default_context().wrap_socket(
    socket.create_connection((name, 443), 10), server_hostname=name)
s.sendall(("GET /upgrade HTTP/1.1\\r\\nHost: %s\\r\\nUpgrade: echo\\r\\n"
           "Connection: Upgrade\\r\\n\\r\\n" % name).encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(1)
print(head.split(b"\\r\\n")[0].decode())
s.sendall(b"ping-after-the-switch")
print(s.recv(100).decode())
"""


def test_upgrades_and_concurrent_requests_through_the_interception(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """A protocol switch (WebSocket-style ``101``) gets its headers, then bytes both ways;
    two sandboxes with ten requests each at once all get theirs (and a POST with ``Expect:
    100-continue`` is not held back)."""
    value = "sk-" + secrets.token_hex(16)
    name = f"rules-{secrets.token_hex(4)}"
    info = Secret.create(name, value)
    network: Any = {"allow_out": [RULED], "deny_out": ["0.0.0.0/0"], "rules": _rules(name)}
    boxes = [Sandbox.create(timeout=180, network=network) for _ in range(2)]
    try:
        sbx = boxes[0]
        sbx.files.write("/tmp/upgrade.py", UPGRADE)
        switched = _run(sbx, f"python3 /tmp/upgrade.py {RULED}").splitlines()
        assert switched == ["HTTP/1.1 101 Switching Protocols", "ping-after-the-switch"]
        assert _last(inet, "/upgrade")["authorization"] == f"Bearer {value}"

        # curl would wait 30 s for a 100 Continue before sending the body: it must come at once.
        expect = (
            "head -c 5000 /dev/zero > /tmp/z && curl -s -m 10 --expect100-timeout 30 "
            f"-H 'Expect: 100-continue' --data-binary @/tmp/z https://{RULED}/expect"
        )
        assert _run(sbx, expect).startswith("posted 5000 bytes")

        burst = (
            "seq 10 | xargs -P 10 -I{} curl -s -m 30 -o /dev/null -w '%{http_code}\\n' "
            f"https://{RULED}/burst-$E2B_SANDBOX_ID-{{}}"
        )
        results = [b.commands.run(burst, background=True) for b in boxes]
        for handle in results:
            assert handle.wait().stdout.split() == ["200"] * 10
        burst_seen = [r for r in inet.requests() if r["path"].startswith("/burst-")]
        assert len(burst_seen) == 20
        assert all(r["headers"]["Authorization"] == f"Bearer {value}" for r in burst_seen)
    finally:
        for b in boxes:
            b.kill()
        Secret.destroy(info.secret_id)


KEEP_ALIVE = """
import http.client, os, ssl, sys, time
name = sys.argv[1]
c = http.client.HTTPSConnection(name, context=ssl.create_default_context(), timeout=20)
c.request("GET", "/keep-1"); r = c.getresponse(); r.read(); print(r.status, flush=True)
open("/tmp/first-done", "w").close()
while not os.path.exists("/tmp/go"):
    time.sleep(0.05)
try:
    c.request("GET", "/keep-2"); r = c.getresponse(); r.read(); print(r.status)
except Exception as e:
    print("closed", type(e).__name__)
"""


def test_the_credential_cannot_be_steered_and_follows_the_rule_on_open_connections(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """Requests that would send the header elsewhere (an absolute-form target, a Host with
    more after the name, CONNECT) or echo it back (TRACE) are refused before anything is
    sent; a connection opened before a rotation carries the new value on its next request."""
    value = "sk-" + secrets.token_hex(16)
    name = f"rules-{secrets.token_hex(4)}"
    info = Secret.create(name, value)
    network: Any = {"allow_out": [RULED], "deny_out": ["0.0.0.0/0"], "rules": _rules(name)}
    sbx = Sandbox.create(timeout=180, network=network)
    try:
        attempts = {
            "/absolute": f"--request-target https://{OTHER}/absolute https://{RULED}/",
            "/junk": f"-H 'Host: {RULED}:443, {OTHER}' https://{RULED}/junk",
            "/trace": f"-X TRACE https://{RULED}/trace",
            "/connect": f"-X CONNECT https://{RULED}/connect",
        }
        for path, args in attempts.items():
            assert _run(sbx, f"curl -s -m 10 {args}") == "failed", path
        logged = {r["path"] for r in inet.requests()}
        assert not logged & {*attempts, f"https://{OTHER}/absolute"}
        assert _run(sbx, f"curl -s -m 10 https://{RULED}:443/port") == inet.named_body(RULED)

        sbx.files.write("/tmp/keep.py", KEEP_ALIVE)
        handle = sbx.commands.run(f"python3 /tmp/keep.py {RULED}", background=True)
        deadline = time.monotonic() + 30
        while not sbx.files.exists("/tmp/first-done"):
            assert time.monotonic() < deadline, "the first request did not finish"
            time.sleep(0.1)
        assert _last(inet, "/keep-1")["authorization"] == f"Bearer {value}"
        Secret.update(name, value + "-new")
        sbx.files.write("/tmp/go", "")
        assert handle.wait().stdout.split() == ["200", "200"]
        assert _last(inet, "/keep-2")["authorization"] == f"Bearer {value}-new"
    finally:
        sbx.kill()
        Secret.destroy(info.secret_id)


def test_a_separate_node_restarted_under_the_server_gets_the_values_again(
    gvisor_server: ServerProcess,
    inet: FakeInternet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``emberbox node`` keeps header values in memory only; SIGKILLed and restarted while
    the server runs, it refuses ruled requests until the server, seeing a new boot id in its
    reconcile, sends them again."""
    node_dir = data_dir_sharing_templates(tmp_path / "node", DATA_DIR)
    node = NodeProcess(node_dir, "gvisor", inet.node_env)
    node.start()
    server_env = {"EMBERBOX_NODE_URL": node.url, "EMBERBOX_NODE_TOKEN": node.token,
                  "EMBERBOX_RECONCILE_INTERVAL_S": "0.5"}  # fmt: skip
    server = ServerProcess(tmp_path / "server", env=server_env)
    sbx = None
    try:
        server.start()
        assert server.first_key is not None
        point_sdks_at(server, server.first_key, monkeypatch)
        value = "sk-" + secrets.token_hex(16)
        info = Secret.create("remote-node", value)
        network: Any = {"allow_out": [RULED], "deny_out": ["0.0.0.0/0"], "rules": _rules(info.name)}
        sbx = Sandbox.create(timeout=180, network=network)
        assert _run(sbx, f"curl -s -m 10 https://{RULED}/remote-1") == inet.named_body(RULED)
        node.sigkill()
        node.start()
        deadline = time.monotonic() + 30
        while (got := _run(sbx, f"curl -s -m 5 https://{RULED}/remote-2")) == "failed":
            assert time.monotonic() < deadline, "the values never came back"
            time.sleep(0.5)
        assert got == inet.named_body(RULED)
        assert _last(inet, "/remote-2")["authorization"] == f"Bearer {value}"
    finally:
        if sbx is not None:
            sbx.kill()
        server.stop()
        node.stop()


def test_our_sdk_header_rules(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    import emberbox

    value = "sk-" + secrets.token_hex(16)
    info = emberbox.Secret.create(f"ours-{secrets.token_hex(4)}", value)
    auth = {"Authorization": "Bearer " + emberbox.Secret.fill(info.name)}
    rules = {RULED: [{"transform": {"headers": auth}}]}
    with emberbox.Sandbox.create(
        timeout=120, network={"allow_out": [RULED], "deny_out": ["0.0.0.0/0"], "rules": rules}
    ) as sbx:
        got = sbx.commands.run(f"curl -s -m 10 https://{RULED}/ours", timeout=60).stdout
        assert got.strip() == inet.named_body(RULED)
        assert _last(inet, "/ours")["authorization"] == f"Bearer {value}"
        assert sbx.get_info().network == {
            "allow_out": [RULED],
            "deny_out": ["0.0.0.0/0"],
            "rules": rules,
        }
    emberbox.Secret.destroy(info.secret_id)


@pytest.mark.parametrize(
    ("rules", "status", "words"),
    [
        ({RULED: [{"transform": {"headers": {"X-Key": "${e2b.secrets.nosuch}"}}}]}, 400,
         "unknown secret 'nosuch'"),
        ({RULED: [{"transform": {"headers": {"Host": "evil"}}}]}, 400, "Host header cannot"),
        ({RULED: [{"transform": {"headers": {"Bad Name": "x"}}}]}, 400, "not a header name"),
        ({RULED: [{"transform": {"headers": {f"X-{i}": "v" for i in range(33)}}}]}, 400, "32"),
        ({"10.0.0.0/8": [{"transform": {"headers": {"X-Key": "x"}}}]}, 501, "domains only"),
        ({RULED: [{"transform": {"body": "x"}}]}, 501, "only headers"),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_and_leave_nothing(
    gvisor_server: ServerProcess, gvisor_key: str, rules: object, status: int, words: str
) -> None:
    with httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key}) as api:
        before = api.get("/v2/sandboxes").json()
        r = api.post("/v2/sandboxes", json={"templateID": "base", "network": {"rules": rules}})
        assert r.status_code == status, r.text
        assert words in r.json()["message"]
        assert api.get("/v2/sandboxes").json() == before


def test_rules_added_by_update_network_and_kept_across_a_restart(
    gvisor_server: ServerProcess, gvisor_key: str, inet: FakeInternet
) -> None:
    """A running sandbox gets rules later (and then trusts the gateway); the server is
    SIGKILLed and restarted, and sends the rules' values to its node again. Last in the
    module: the module's server is a new process afterwards."""
    value = "sk-" + secrets.token_hex(16)
    name = f"rules-{secrets.token_hex(4)}"
    info = Secret.create(name, value)
    sbx = Sandbox.create(timeout=300, network={"allow_out": [RULED], "deny_out": ["0.0.0.0/0"]})
    try:
        sbx.files.write("/tmp/fake-ca.pem", inet.ca_pem)
        plain = _run(sbx, f"curl -s -m 10 --cacert /tmp/fake-ca.pem https://{RULED}/before")
        assert plain == inet.named_body(RULED)
        assert "authorization" not in _last(inet, "/before")

        sbx.update_network({"allow_out": [RULED], "deny_out": ["0.0.0.0/0"], "rules": _rules(name)})
        assert _run(sbx, f"curl -s -m 10 https://{RULED}/after") == inet.named_body(RULED)
        assert _last(inet, "/after")["authorization"] == f"Bearer {value}"

        gvisor_server.sigkill()
        gvisor_server.start(timeout_s=60)
        assert _run(sbx, f"curl -s -m 10 https://{RULED}/restarted") == inet.named_body(RULED)
        assert _last(inet, "/restarted")["authorization"] == f"Bearer {value}"
        _absent(sbx, value)
    finally:
        sbx.kill()
        Secret.destroy(info.secret_id)
