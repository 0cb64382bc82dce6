"""``emberbox node`` as a process of its own: a server drives it over HTTP, the official SDK
drives the server, and the node survives SIGKILL and restarts with its sandboxes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from emberbox.server.testing import NodeProcess, ServerProcess


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "node", "process")
    node.start()
    yield node
    node.stop()
    ServerProcess(node.data_dir).kill_sandboxes()  # whatever a failed test left running


@pytest.fixture
def server(tmp_path: Path, node: NodeProcess) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path / "server",
        env={"EMBERBOX_NODE_URL": node.url, "EMBERBOX_NODE_TOKEN": node.token},
    )
    server.start()
    yield server
    server.stop()


def test_sdk_through_a_remote_node_and_its_sigkill(
    server: ServerProcess, node: NodeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.first_key
    for k, v in server.sdk_env(server.first_key).items():
        monkeypatch.setenv(k, v)
    sandbox = Sandbox.create(timeout=120)
    try:
        assert sandbox.commands.run("echo $E2B_SANDBOX_ID").stdout.strip() == sandbox.sandbox_id
        note = f"{sandbox.commands.run('pwd').stdout.strip()}/note.txt"  # the sandbox's own dir
        sandbox.files.write(note, "kept")
        info = httpx.get(
            f"{server.api_url}/sandboxes/{sandbox.sandbox_id}",
            headers={"X-API-KEY": server.first_key},
        ).json()
        assert info["state"] == "running"

        node.sigkill()  # the node process dies; its sandboxes do not
        assert sandbox.commands.run(f"cat {note}").stdout == "kept"
        line = node.start()
        assert "adopted 1, removed 0" in line, line
        assert sandbox.commands.run("echo again").stdout == "again\n"
        assert [s.sandbox_id for s in Sandbox.list().next_items()] == [sandbox.sandbox_id]
    finally:
        sandbox.kill()
    assert not list((node.data_dir / "process-runtime").glob("*.json"))
    assert not list((node.data_dir / "node" / "sandboxes").glob("*.json"))


def test_node_refuses_calls_without_its_token(node: NodeProcess) -> None:
    r = httpx.post(f"{node.url}/node.Node/List", json={})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    ok = httpx.post(
        f"{node.url}/node.Node/Info", json={}, headers={"Authorization": f"Bearer {node.token}"}
    )
    assert ok.status_code == 200 and ok.json()["runtime"] == "process"
    auth = {"Authorization": f"Bearer {node.token}"}
    missing = httpx.post(
        f"{node.url}/node.Node/Checkpoint", json={"sandboxId": "nosuch"}, headers=auth
    )
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    bad = httpx.post(f"{node.url}/node.Node/Kill", json={"sandboxId": "../etc"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"


def test_second_node_or_server_on_one_data_dir_refuses_and_changes_nothing(
    server: ServerProcess, node: NodeProcess
) -> None:
    assert server.first_key
    headers = {"X-API-KEY": server.first_key}
    created = httpx.post(f"{server.api_url}/v2/sandboxes", json={"templateID": "base"},
                         headers=headers, timeout=30)  # fmt: skip
    assert created.status_code == 201, created.text
    sid = created.json()["sandboxID"]
    records = sorted(p.name for p in (node.data_dir / "node" / "sandboxes").iterdir())

    second = subprocess.run(
        [sys.executable, "-m", "emberbox.cli", "node"],
        env=node.env(), capture_output=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1 and b"already runs" in second.stderr, second.stderr
    twin = ServerProcess(server.data_dir, env={"EMBERBOX_NODE_URL": node.url})
    with pytest.raises(RuntimeError, match="already runs"):
        twin.start(timeout_s=30)

    assert sorted(p.name for p in (node.data_dir / "node" / "sandboxes").iterdir()) == records
    r = httpx.get(f"{server.api_url}/sandboxes/{sid}", headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert httpx.delete(f"{server.api_url}/sandboxes/{sid}", headers=headers).status_code == 204


def test_node_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "open", "process", env={"EMBERBOX_NODE_HOST": "0.0.0.0"})
    env = {**node.env(), "EMBERBOX_NODE_TOKEN": ""}
    done = subprocess.run(
        [sys.executable, "-m", "emberbox.cli", "node"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1 and b"without EMBERBOX_NODE_TOKEN" in done.stderr
    assert not (tmp_path / "open" / "node").exists()  # nothing was started or recovered


def test_a_non_ascii_authorization_header_is_a_401_not_a_500(node: NodeProcess) -> None:
    r = httpx.post(
        f"{node.url}/node.Node/List",
        content=b"{}",
        headers={
            b"Authorization": "Bearer \u00e9t\u00e9".encode("latin-1"),
            b"Content-Type": b"application/json",
        },
    )
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


def test_the_node_speaks_both_connect_codecs(node: NodeProcess) -> None:
    """``application/proto`` (what RemoteNode sends) and ``application/json`` answer the same
    message; a body that is not protobuf is a 400 in Connect's JSON error shape."""
    from emberbox._proto.node import node_pb2 as pb

    auth = {"Authorization": f"Bearer {node.token}"}
    url = f"{node.url}/node.Node/Info"
    binary = httpx.post(url, content=b"", headers={**auth, "Content-Type": "application/proto"})
    assert binary.status_code == 200 and binary.headers["content-type"] == "application/proto"
    as_json = httpx.post(url, content=b"{}", headers={**auth, "Content-Type": "application/json"})
    info = pb.InfoResponse.FromString(binary.content)
    assert info.runtime == as_json.json()["runtime"] == "process"
    bad = httpx.post(f"{node.url}/node.Node/List", content=b"\xff\xff\xff",
                     headers={**auth, "Content-Type": "application/proto"})  # fmt: skip
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"
    other = httpx.post(url, content=b"x", headers={**auth, "Content-Type": "text/plain"})
    assert other.json()["code"] == "unimplemented"
