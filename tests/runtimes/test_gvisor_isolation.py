"""Isolation: egress policy, memory limit, pids limit. Every "blocked" check is paired with a
check that the same thing works when allowed, so a broken setup cannot pass by accident."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from emberbox.host import cgroups
from emberbox.runtimes.base import SandboxStatus
from emberbox.runtimes.gvisor import GVisorRuntime

from .conftest import SandboxFactory
from .gvisor_support import healthy, run

TARGET_SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"egress-ok")
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


@pytest.fixture
def egress_target() -> Iterator[str]:
    """A host outside every sandbox: its own netns behind a veth, serving HTTP on :8080.
    Traffic never leaves this machine."""
    tag = secrets.token_hex(2)
    ns, host_if, peer_if = f"ebtgt-{tag}", f"ebtgt{tag}a", f"ebtgt{tag}b"
    octet = int(tag, 16) % 200 + 20
    host_ip, target_ip = f"10.99.{octet}.1", f"10.99.{octet}.2"
    cmds = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{target_ip}/30", "dev", peer_if],
        ["ip", "-n", ns, "link", "set", peer_if, "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", host_ip],
    ]
    server = None
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", TARGET_SERVER])
        time.sleep(0.5)
        yield target_ip
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)


async def test_egress_follows_the_network_policy(make_sandbox: SandboxFactory, egress_target: str):
    allowed = await make_sandbox(allow_internet=True)
    denied = await make_sandbox(allow_internet=False)
    probe = f"curl -s -m 3 http://{egress_target}:8080/ || echo blocked"
    assert (await run(allowed, probe)).text.strip() == "egress-ok"
    assert (await run(denied, probe)).text.strip() == "blocked"


async def test_memory_limit_kills_only_the_offender(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    """The guest's init kills the process with the most memory when the sandbox runs out (the
    host's OOM killer, confined to the sandbox's cgroup, is only a backstop that picks guest
    processes, never the sentry): the hog dies, the sandbox and its neighbours carry on, and
    the runtime reports the OOM kill."""
    offender = await make_sandbox(memory_mb=256)
    bystander = await make_sandbox(memory_mb=256)
    hog = "python3 -c 'b=[]\nwhile True: b.append(bytearray(16<<20))'"
    started = await run(offender, f"nohup {hog} >/dev/null 2>&1 & echo started")
    assert started.text.strip() == "started"
    hog_alive = True
    for _ in range(100):
        await asyncio.sleep(0.2)
        state = await runtime.get(offender.sandbox_id)
        if state.status is SandboxStatus.STOPPED:
            break
        if state.oom_killed:
            probe = "pgrep -f 'b[y]tearray' >/dev/null && echo alive || echo gone"
            check = await run(offender, probe)
            hog_alive = check.text.strip() == "alive"
            if not hog_alive:
                break
    assert state.oom_killed, "no OOM kill in the offender"
    assert state.status is not SandboxStatus.STOPPED, "the whole sandbox died, not the hog"
    assert not hog_alive
    assert (await run(offender, "echo recovered")).text.strip() == "recovered"
    assert await healthy(bystander)
    assert (await run(bystander, "echo alive")).text.strip() == "alive"
    assert (await runtime.get(bystander.sandbox_id)).oom_killed is False


async def test_fork_bomb_is_contained_by_the_pids_limit(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    sandbox = await make_sandbox(pids_limit=64)
    bomb = (
        "python3 - <<'EOF'\n"
        "import os, time\n"
        "children, refused = 0, 0\n"
        "deadline = time.time() + 4\n"
        "while time.time() < deadline:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        refused += 1; time.sleep(0.01); continue\n"
        "    if pid == 0:\n"
        "        time.sleep(3); os._exit(0)\n"
        "    children += 1\n"
        "print(children, refused)\n"
        "EOF"
    )
    result = await run(sandbox, bomb, timeout=60)
    children, refused = map(int, result.text.split())
    assert refused > 0, "fork never failed: no pids limit inside"
    usage = cgroups.usage(f"{runtime.config.cgroup_base}/{sandbox.sandbox_id}")
    assert usage is not None and usage.pids < 64 * 3 + 128  # host side stays under its cap
    await asyncio.sleep(3.5)  # the bomb's children exit; the sandbox is usable again
    assert (await run(sandbox, "echo survived")).text.strip() == "survived"
    assert children > 0
