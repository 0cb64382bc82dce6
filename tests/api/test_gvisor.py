"""The SDK round against real gVisor sandboxes through the embedded node.

Needs root and runsc (``require_host`` skips naming what is missing); ``base`` is built into the
node's data dir if missing. The node's start-up removes every sandbox of its data dir that it
does not own, and holds the data dir's lock, so never run this next to another gVisor test run.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import httpx
import pytest
from e2b import CommandExitException, Sandbox, SandboxQuery, SandboxState

from emberbox.host.ports import free_loopback_port
from emberbox.server.testing import ServerProcess


def test_sdk_round_in_gvisor(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    tag = uuid.uuid4().hex
    sbx = Sandbox.create(metadata={"suite": tag}, envs={"FOO": "gv"}, timeout=120)
    try:
        r = sbx.commands.run('echo "$FOO $(whoami) $(pwd)"; cat /proc/version')
        assert r.stdout.splitlines()[0] == "gv user /home/user"
        assert "gVisor" in r.stdout or "4.4.0" in r.stdout  # runsc's synthetic kernel
        sbx.files.write("hello.txt", "inside gvisor")
        assert sbx.files.read("/home/user/hello.txt") == "inside gvisor"
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": tag})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]

        port = free_loopback_port()
        sbx.files.write("site/index.html", "served from gvisor")
        sbx.commands.run(f"cd site && python3 -m http.server {port}", background=True)
        host = sbx.get_host(port)
        deadline = time.monotonic() + 20
        while True:
            resp = httpx.get(gvisor_server.sandbox_url + "/index.html", headers={"Host": host})
            if resp.status_code == 200:
                break
            assert resp.status_code == 502 and time.monotonic() < deadline, resp.text
            time.sleep(0.2)
        assert resp.text == "served from gvisor"

        again = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert again.commands.run("echo connected").stdout == "connected\n"
        sbx.set_timeout(30)
        assert sbx.get_metrics()
    finally:
        assert sbx.kill() is True
    assert not sbx.is_running()


def test_pause_and_resume_in_gvisor(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.commands.run("echo kept > /home/user/state.txt")
        sbx.pause()
        assert sbx.get_info().state == SandboxState.PAUSED
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert resumed.commands.run("cat /home/user/state.txt").stdout == "kept\n"
        assert sbx.get_info().state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_end_time_in_gvisor(gvisor_server: ServerProcess, gvisor_key: str) -> None:
    sbx = Sandbox.create(timeout=3)
    end_at = sbx.get_info().end_at
    while sbx.is_running():
        assert dt.datetime.now(dt.UTC) <= end_at + dt.timedelta(seconds=1.0)
        time.sleep(0.05)
    with httpx.Client(base_url=gvisor_server.api_url, headers={"X-API-KEY": gvisor_key}) as api:
        assert api.get(f"/sandboxes/{sbx.sandbox_id}").status_code == 404
    # and the runtime really let it go (the kill finishes after the API stops showing it)
    deadline = time.monotonic() + 20
    while gvisor_server.sandbox_states()[sbx.sandbox_id] != ("killed", "timeout"):
        assert time.monotonic() < deadline, gvisor_server.sandbox_states()[sbx.sandbox_id]
        time.sleep(0.1)


def test_allow_internet_access_false_is_enforced(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """Egress to a server in a namespace this test made (never a real address)."""
    from tests.fake_internet import fake_internet

    with fake_internet() as inet:
        fetch = (
            f'python3 -c "import urllib.request as u; '
            f"print(u.urlopen('{inet.url}', timeout=5).read().decode())\""
        )
        closed = Sandbox.create(timeout=60, allow_internet_access=False)
        opened = Sandbox.create(timeout=60)
        try:
            assert closed.get_info().allow_internet_access is False
            assert opened.get_info().allow_internet_access is True
            with pytest.raises(CommandExitException):
                closed.commands.run(fetch)
            assert opened.commands.run(fetch).stdout == inet.body + "\n"
        finally:
            closed.kill()
            opened.kill()


def test_paused_past_its_end_time_resumes_with_files(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """Regression: the node's own reaper used to kill a paused sandbox at its old end time."""
    sbx = Sandbox.create(timeout=3)
    try:
        sbx.files.write("/home/user/before-pause.txt", "still here")
        sbx.pause()
        time.sleep(5)  # the end time passes while paused
        assert sbx.get_info().state == SandboxState.PAUSED
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert resumed.files.read("/home/user/before-pause.txt") == "still here"
        assert gvisor_server.sandbox_states()[sbx.sandbox_id] == ("running", None)
    finally:
        sbx.kill()


def test_upload_larger_than_memory_lands_on_disk(
    gvisor_server: ServerProcess, gvisor_key: str
) -> None:
    """700 MB through the files API into /tmp of a 512 MiB sandbox: streamed to its disk, so
    neither envd nor the sandbox runs out of memory (it used to kill the whole sandbox)."""
    sbx = Sandbox.create(timeout=120)
    try:
        size = 700 * 10**6
        sbx.files.write("/tmp/big.bin", b"\x5a" * size, request_timeout=120)
        assert sbx.commands.run("stat -c %s /tmp/big.bin").stdout.strip() == str(size)
        assert sbx.commands.run("echo alive").stdout == "alive\n"
        assert sbx.get_info().state == SandboxState.RUNNING
    finally:
        sbx.kill()
