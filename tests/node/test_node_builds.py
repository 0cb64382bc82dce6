"""Template builds through the node seam with a *remote* node: ``emberbox node`` on gVisor in
its own data dir, a server with another data dir pointed at it, and the official e2b SDK.

The server keeps the uploads; the node gets the files a build needs through ``PutBuildFile``
(one archive larger than a chunk), runs every step in its own build sandboxes, streams the log
back through ``BuildStatus``, and the template it built boots on it. A failing step leaves no
template on the node; deleting the template frees the node's copy of it and of its files; a
server restart in the middle of a build fails that build and stops it on the node.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from e2b import BuildException, LogEntry, Sandbox, Template

from emberbox.node.builds import FILES_DIR
from emberbox.runtimes.gvisor import GVisorConfig
from emberbox.server.testing import NodeProcess, ServerProcess
from emberbox.templates.store import TemplateStore
from tests.runtimes.gvisor_support import inventory

pytestmark = pytest.mark.timeout(900)


def _context(where: Path) -> tuple[Path, str]:
    """A context with a small text file and a 1.5 MiB binary (more than one chunk); returns
    it and the binary's sha256."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "hello.txt").write_text("hello from the server's upload\n")
    blob = os.urandom(3 << 19)
    (where / "big.bin").write_bytes(blob)
    return where, hashlib.sha256(blob).hexdigest()


def test_a_remote_node_builds_from_uploaded_files(
    remote: tuple[NodeProcess, ServerProcess], tmp_path: Path
) -> None:
    node, server = remote
    config = GVisorConfig(data_dir=node.data_dir)
    before = asyncio.run(inventory(config))
    context, digest = _context(tmp_path / "context")
    name = f"remote-{uuid.uuid4().hex[:6]}"
    template = (
        Template(file_context_path=str(context))
        .from_base_image()
        .set_envs({"RUN_ID": uuid.uuid4().hex})  # every layer key fresh: nothing cached
        .copy("hello.txt", "/home/user/hello.txt")
        .copy("big.bin", "/home/user/big.bin")
        .run_cmd("sha256sum /home/user/big.bin | cut -d' ' -f1 > /home/user/big.sum")
    )
    logs: list[LogEntry] = []
    info = Template.build(template, name, on_build_logs=logs.append)
    messages = [e.message for e in logs]
    assert any("[4/4] RUN sha256sum" in m for m in messages), messages
    assert any("Build finished" in m for m in messages), messages

    # The files reached the node through its messages: the server's data dir is another one.
    node_files = node.data_dir / FILES_DIR / info.template_id
    server_files = server.data_dir / FILES_DIR / info.template_id
    sent = sorted(p.name for p in node_files.glob("*.tar"))
    assert len(sent) == 2 and sent == sorted(p.name for p in server_files.glob("*.tar"))
    for tar in node_files.glob("*.tar"):
        assert tar.read_bytes() == (server_files / tar.name).read_bytes()
    assert not list(node_files.glob(".*")), "no half-sent file stays"

    with Sandbox.create(name, timeout=120) as sandbox:
        hello = sandbox.commands.run("cat /home/user/hello.txt").stdout
        assert hello == "hello from the server's upload\n"
        assert sandbox.commands.run("cat /home/user/big.sum").stdout.strip() == digest

    store = TemplateStore(node.data_dir)
    built = f"b-{info.build_id}"
    assert built in store.names()
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key or ""})
    assert api.delete(f"/templates/{info.template_id}").status_code == 204
    assert built not in store.names(), "the node freed the deleted template's build"
    assert not node_files.exists(), "and the files uploaded for it"
    # The create also had the node snapshot the new template, in a sandbox of its own: gone
    # once that snapshot is taken.
    deadline = time.monotonic() + 60
    while leaked := asyncio.run(inventory(config)).leaked_since(before):
        assert time.monotonic() < deadline, leaked
        time.sleep(0.5)


def test_a_failed_build_on_a_remote_node_leaves_nothing(
    remote: tuple[NodeProcess, ServerProcess],
) -> None:
    node, server = remote
    store = TemplateStore(node.data_dir)
    manifests = set(store.names())
    template = (
        Template()
        .from_base_image()
        .run_cmd(f"echo {uuid.uuid4().hex} && echo about-to-fail && exit 3")
        .run_cmd("echo never-runs")
    )
    with pytest.raises(BuildException) as failed:
        Template.build(template, f"remote-fail-{uuid.uuid4().hex[:6]}")
    assert "[1/2] RUN" in str(failed.value) and "exit code 3" in str(failed.value)
    assert set(store.names()) == manifests

    # Refusals come back through the seam with the API's statuses.
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key or ""})
    made = api.post("/v3/templates", json={"name": f"remote-x-{uuid.uuid4().hex[:6]}"}).json()
    start = f"/v2/templates/{made['templateID']}/builds/{made['buildID']}"
    r = api.post(start, json={"fromImage": "localhost:1/none:latest", "steps": [],
                              "fromImageRegistry": {"type": "aws"}})  # fmt: skip
    assert r.status_code == 501 and "aws" in r.json()["message"]


def test_a_server_restart_mid_build_stops_it_on_the_node(
    remote: tuple[NodeProcess, ServerProcess],
) -> None:
    node, server = remote
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key or ""})
    made = api.post("/v3/templates", json={"name": f"remote-slow-{uuid.uuid4().hex[:6]}"}).json()
    tid, bid = made["templateID"], made["buildID"]
    marker = uuid.uuid4().hex
    body = {
        "fromTemplate": "base",
        "steps": [{"type": "RUN", "args": [f"echo {marker}; sleep 600"]}],
    }
    assert api.post(f"/v2/templates/{tid}/builds/{bid}", json=body).status_code == 202
    status = f"/templates/{tid}/builds/{bid}/status"
    deadline = time.monotonic() + 120
    while not any(marker in e["message"] for e in api.get(status).json()["logEntries"]):
        assert time.monotonic() < deadline, api.get(status).text
        time.sleep(0.5)

    server.stop()  # the build's step sandbox is running on the node right now
    server.start()
    api = httpx.Client(base_url=server.api_url, headers={"X-API-KEY": server.first_key or ""})
    ended = api.get(status).json()
    assert ended["status"] == "error", ended
    assert "stopped" in ended["reason"]["message"]
    config = GVisorConfig(data_dir=node.data_dir)
    deadline = time.monotonic() + 60
    while asyncio.run(inventory(config)).sandbox_dirs:
        assert time.monotonic() < deadline, "the node kept running the stopped build's step"
        time.sleep(0.5)
    assert f"b-{bid}" not in TemplateStore(node.data_dir).names()
