"""``emberbox sandbox create --allow-out/--deny-out/--no-internet/--private/--mask-host`` and
``emberbox sandbox network`` as real processes against a real server on gVisor, whose sandboxes
reach only a fake internet this test made (its own DNS and web servers)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from emberbox.server.testing import ServerProcess
from tests.cli.conftest import Cli
from tests.fake_internet import FakeInternet, fake_internet
from tests.runtimes.gvisor_support import gvisor_server

ALLOWED, OTHER = "allowed.cli.test", "other.cli.test"


@pytest.fixture(scope="module")
def inet() -> Iterator[FakeInternet]:
    with fake_internet(names={ALLOWED: 0, OTHER: 0}) as net:
        yield net


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, inet: FakeInternet) -> Iterator[ServerProcess]:
    with gvisor_server(tmp_path_factory.mktemp("cli-network"), inet.node_env) as srv:
        yield srv


def _get(cli: Cli, sandbox_id: str, name: str, at: str | None = None) -> str:
    pin = ["--resolve", f"{name}:80:{at}"] if at else []
    argv = ["curl", "-s", "-m", "5", *pin, f"http://{name}/"]
    done = cli("sandbox", "exec", sandbox_id, "--", *argv)
    return done.stdout.strip() if done.returncode == 0 else "refused"


def test_create_with_rules_then_replace_them(cli: Cli, inet: FakeInternet) -> None:
    made = cli(
        "sandbox", "create", "--no-internet", "--allow-out", ALLOWED, "--private",
        "--mask-host", "localhost:${PORT}", "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    sandbox_id = created["sandboxID"]
    try:
        assert created["trafficAccessToken"]
        assert _get(cli, sandbox_id, ALLOWED) == inet.named_body(ALLOWED)
        assert _get(cli, sandbox_id, OTHER, at=inet.names[OTHER]) == "refused"
        info = json.loads(cli("sandbox", "info", sandbox_id, "--json").stdout)
        assert info["network"] == {
            "allow_out": [ALLOWED],
            "allow_public_traffic": False,
            "mask_request_host": "localhost:${PORT}",
        }

        changed = cli("sandbox", "network", sandbox_id, "--no-internet", "--allow-out", OTHER)
        assert changed.returncode == 0, changed.stderr
        assert _get(cli, sandbox_id, OTHER) == inet.named_body(OTHER)
        assert _get(cli, sandbox_id, ALLOWED, at=inet.names[ALLOWED]) == "refused"

        bad = cli("sandbox", "network", sandbox_id, "--deny-out", "example.com")
        assert bad.returncode == 1 and "denyOut" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        cli("sandbox", "kill", sandbox_id)


def test_a_secret_and_a_header_rule(cli: Cli, inet: FakeInternet) -> None:
    """``emberbox secret create`` reads the value from stdin; ``sandbox create --header`` puts
    it into the sandbox's requests to the domain; ``secret delete`` removes it."""
    made = cli("secret", "create", "cli-key", "--meta", "owner=cli", stdin="sk-cli-value\n")
    assert made.returncode == 0, made.stderr
    assert "cli-key" in made.stdout and "version 1" in made.stdout
    listed = json.loads(cli("secret", "list", "--json").stdout)
    assert [s["metadata"] for s in listed if s["name"] == "cli-key"] == [{"owner": "cli"}]
    assert "sk-cli-value" not in cli("secret", "info", "cli-key", "--json").stdout

    header = f"{ALLOWED}:Authorization=Bearer ${{e2b.secrets.cli-key}}"
    created = cli("sandbox", "create", "--no-internet", "--allow-out", ALLOWED,
                  "--header", header, "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    sandbox_id = json.loads(created.stdout)["sandboxID"]
    try:
        got = cli("sandbox", "exec", sandbox_id, "--", "curl", "-s", "-m", "5",
                  f"https://{ALLOWED}/cli-rule")  # fmt: skip
        assert got.stdout.strip() == inet.named_body(ALLOWED), got.stderr
        seen = [r for r in inet.requests() if r["path"] == "/cli-rule"]
        assert seen[-1]["headers"]["Authorization"] == "Bearer sk-cli-value"
        bad = cli("sandbox", "create", "--header", "no-colon")
        assert bad.returncode != 0 and "DOMAIN:NAME=VALUE" in bad.stderr
    finally:
        cli("sandbox", "kill", sandbox_id)
    assert cli("secret", "delete", "cli-key").returncode == 0
    gone = cli("secret", "delete", "cli-key")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_the_egress_log(cli: Cli, inet: FakeInternet) -> None:
    """``emberbox logs --egress``: what the sandbox reached and what it was refused."""
    made = cli("sandbox", "create", "--no-internet", "--allow-out", ALLOWED, "--json")
    assert made.returncode == 0, made.stderr
    sandbox_id = json.loads(made.stdout)["sandboxID"]
    try:
        assert _get(cli, sandbox_id, ALLOWED) == inet.named_body(ALLOWED)
        assert _get(cli, sandbox_id, OTHER, at=inet.names[OTHER]) == "refused"
        deadline = time.monotonic() + 20
        while True:
            done = cli("logs", sandbox_id, "--egress", "--json")
            assert done.returncode == 0, done.stderr
            records = [json.loads(line) for line in done.stdout.splitlines()]
            seen = {(r["name"], r["protocol"], r["verdict"]) for r in records}
            if {(ALLOWED, "http", "allowed"), (OTHER, "http", "denied")} <= seen:
                break
            assert time.monotonic() < deadline, done.stdout
            time.sleep(0.5)
        assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
        text = cli("logs", sandbox_id, "--egress").stdout
        assert f"denied  http  {OTHER} {inet.names[OTHER]}:80 GET /" in text
    finally:
        cli("sandbox", "kill", sandbox_id)
