"""A gVisor sandbox from ``base`` behaves like the machine E2B users expect, driven via envd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from emberbox.egress import HeaderRule
from emberbox.envd_client import EnvdClient
from emberbox.host import cgroups
from emberbox.host.errors import HostError
from emberbox.runtimes.base import NetworkPolicy, SandboxSpec, SandboxStatus, UnknownTemplate
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.runtimes.gvisor import runsc as runsc_module
from emberbox.runtimes.gvisor.runtime import FREEZE_TIMEOUT_S
from emberbox.templates.store import Template, TemplateStore
from emberbox.vocabulary import GUEST_HOSTNAME

from .conftest import SandboxFactory
from .gvisor_support import healthy, inventory, run, tcp_read


async def test_command_runs_through_envd_with_sandbox_conventions(make_sandbox: SandboxFactory):
    sandbox = await make_sandbox(memory_mb=384)
    result = await run(
        sandbox,
        'id -un; hostname; grep -w "$(hostname)" /etc/hosts | cut -f2; cat /.e2b; '
        'echo "sid=$E2B_SANDBOX_ID sb=$E2B_SANDBOX tpl=$E2B_TEMPLATE_ID"; pwd; '
        "grep MemTotal /proc/meminfo; sudo id -u; python --version",
    )
    assert result.exit_code == 0, result.stderr
    lines = result.text.splitlines()
    assert lines[0] == "user"
    assert lines[1] == GUEST_HOSTNAME  # a cold boot's, as a restored sandbox's
    assert lines[2] == f"{GUEST_HOSTNAME} {sandbox.sandbox_id}"
    assert "TEMPLATE_ID=base" in lines
    assert f"sid={sandbox.sandbox_id} sb=true tpl=base" in lines
    assert "/home/user" in lines
    mem_kb = int(next(line for line in lines if line.startswith("MemTotal")).split()[1])
    assert mem_kb == 384 * 1024
    assert "0" in lines  # sudo works for user
    assert any(line.startswith("Python 3.11") for line in lines)

    async with EnvdClient(sandbox.envd_url) as envd:
        await envd.write_file("/home/user/note.txt", b"written via envd")
        assert await envd.read_file("/home/user/note.txt") == b"written via envd"


async def test_a_sudo_command_ends_with_the_command_that_ran_it(make_sandbox: SandboxFactory):
    """gVisor's sudo hands the command to a root broker (guest/sudo_broker.py), so it is not
    the caller's child: killed at its end of time (a SIGKILL to its group), the caller's
    ``sudo`` must take what it ran with it, as real sudo's would."""
    sandbox = await make_sandbox()
    with contextlib.suppress(Exception):  # (the stream ends at its deadline)
        await run(sandbox, "sudo sleep 301; echo unreachable", timeout=3)
    sleeping = "grep -lx sleep /proc/[0-9]*/comm || true"
    for _ in range(40):
        if not (left := await run(sandbox, sleeping)).text.strip():
            break
        await asyncio.sleep(0.25)
    assert left.text.strip() == "", f"still running: {left.text}"
    assert (await run(sandbox, "sudo id -u")).text.strip() == "0"


async def test_writes_never_touch_the_template(
    make_sandbox: SandboxFactory, base_template: Template
):
    marker = f"marker-{secrets.token_hex(4)}"
    first = await make_sandbox()
    result = await run(first, f"echo {marker} | sudo tee /etc/{marker} >/dev/null"
                       f" && sudo rm /usr/bin/git && cat /etc/{marker}")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.text.strip() == marker
    store = TemplateStore()
    for layer in store.layer_paths(base_template):
        assert not (layer / "etc" / marker).exists()
    assert (store.layer_path(base_template.layers[0]) / "usr" / "bin" / "git").exists()
    second = await make_sandbox()
    other = await run(second, f"test -e /etc/{marker}; echo $?; test -x /usr/bin/git; echo $?")
    assert other.text.split() == ["1", "0"]


async def test_host_files_are_invisible(make_sandbox: SandboxFactory, tmp_path):
    secret = tmp_path / f"secret-{secrets.token_hex(4)}"
    secret.write_text("host secret")
    sandbox = await make_sandbox()
    result = await run(
        sandbox,
        f"cat {secret} 2>&1; ls /work /var/lib/emberbox 2>&1; cat /proc/1/cmdline | tr '\\0' ' '",
        user="root",
    )
    assert "host secret" not in result.text
    assert "No such file or directory" in result.text
    assert "/opt/emberbox/init" in result.text  # PID 1 is ours, not the host's


async def test_pid_1_reaps_orphans_and_envd_is_the_only_interpreter(make_sandbox: SandboxFactory):
    """PID 1 is a shell that reaps; envd (``--guest``) does the rest in its own process."""
    sandbox = await make_sandbox()
    result = await run(
        sandbox,
        "for i in 1 2 3 4 5; do sh -c 'sleep 0.1 &'; done; sleep 1;"
        " echo zombies=$(ps -eo stat= | grep -c '^Z');"
        " echo pythons=$(ps -eo comm= | grep -c python);"
        " tr '\\0' ' ' < /proc/1/cmdline; echo;"
        " ps -o args= -p \"$(pgrep -f '^/opt/emberbox/venv/bin/python -m emberbox.envd')\"",
        user="root",
    )
    lines = result.text.splitlines()
    assert lines[0] == "zombies=0", result.text  # five orphans came and went
    assert lines[1] == "pythons=1", result.text
    assert lines[2].split()[:2] == ["/bin/sh", "/opt/emberbox/init"], result.text
    assert "--guest" in lines[3].split(), result.text


async def test_sandboxes_cannot_reach_each_other_or_the_host(make_sandbox: SandboxFactory):
    a, b = await make_sandbox(), await make_sandbox()
    started = await run(a, "nohup python3 -m http.server 8000 >/dev/null 2>&1 & sleep 1; echo ok")
    assert started.exit_code == 0
    # The host reaches A's server: the server is really there...
    assert (await tcp_read(a.address, 8000) or b"").startswith(b"HTTP/1.0 200")

    # ...and a server on the host is really there for the host itself.
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhost")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    gateway_b = b.address.rsplit(".", 1)[0] + "." + str(int(b.address.rsplit(".", 1)[1]) - 1)
    try:
        assert await tcp_read(gateway_b, port) is not None
        probe = await run(
            b,
            f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{a.address}:8000/; echo;"
            f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{gateway_b}:{port}/; echo",
        )
    finally:
        server.close()
    assert probe.text.split() == ["000", "000"], probe.text


async def test_the_egress_gateway_reaches_no_sandbox_nor_the_host_whatever_allow_out_says(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    """A sandbox with header rules has every port-80 connection made by the node's gateway,
    which dials from the host, past the firewall that keeps sandboxes apart: with allowOut
    naming everything it reached other sandboxes and the host on port 80."""
    # The redirect chains pointing at this process's gateway (a server that shared the data
    # dir earlier in the session pointed them at its own, then stopped and removed them).
    runtime.egress._ready = False
    await runtime.egress.ready()
    a = await make_sandbox()
    served = await run(a, "nohup python3 -m http.server 80 >/dev/null 2>&1 & sleep 1; echo ok",
                       user="root")  # fmt: skip
    assert served.exit_code == 0
    assert (await tcp_read(a.address, 80) or b"").startswith(b"HTTP/1.0 200")
    rule = HeaderRule("api.rules.test", (("X-Test", "1"),))
    b = await make_sandbox(network=NetworkPolicy(allow_out=("0.0.0.0/0",), rewrites=(rule,)))
    host_b = b.address.rsplit(".", 1)[0] + "." + str(int(b.address.rsplit(".", 1)[1]) - 1)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhost")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host_b, 80)
    try:
        assert await tcp_read(host_b, 80) is not None
        probe = await run(
            b,
            f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{a.address}/; echo;"
            f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' http://{host_b}/; echo;"
            "curl -s -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1/; echo",
        )
    finally:
        server.close()
    assert probe.text.split() == ["000", "000", "000"], probe.text


async def test_loopback_ports_are_reachable_from_the_host(make_sandbox: SandboxFactory):
    sandbox = await make_sandbox()
    await run(sandbox, "nohup python3 -m http.server --bind 127.0.0.1 8001 >/dev/null 2>&1 &"
              " sleep 0.5")  # fmt: skip
    inside = await run(sandbox, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8001/")
    assert inside.text == "200"
    for _ in range(40):
        reply = await tcp_read(sandbox.address, 8001)
        if reply:
            break
        await asyncio.sleep(0.25)
    assert reply is not None and reply.startswith(b"HTTP/1.0 200")


async def test_full_disk_fails_writes_inside_only(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    sandbox = await make_sandbox(disk_mb=64)
    result = await run(
        sandbox,
        "dd if=/dev/zero of=/home/user/big bs=1M count=200 2>&1; echo rc=$?; "
        "head -c 2000000 /dev/zero > /home/user/more; echo rc2=$?",
    )
    assert "No space left on device" in result.text
    assert "rc=1" in result.text and "rc2=1" in result.text
    # The host holds no more than the disk image: its own directory, not the host's free
    # space, which other tests on the host may be using at the same time.
    root = runtime._paths(sandbox.sandbox_id).root
    du = await asyncio.to_thread(
        subprocess.run, ["du", "-sxB1", str(root)], capture_output=True, text=True, check=True
    )
    assert 32 * 2**20 < int(du.stdout.split()[0]) < 100 * 2**20
    freed = await run(sandbox, "rm /home/user/big && echo fine >/home/user/ok && cat /home/user/ok")
    assert freed.text.strip() == "fine"
    assert await healthy(sandbox)


async def test_stats_and_pause_resume(runtime: GVisorRuntime, make_sandbox: SandboxFactory):
    sandbox = await make_sandbox(cpu_count=1, memory_mb=256, disk_mb=128)
    stats = await runtime.stats(sandbox.sandbox_id)
    assert stats.cpu_count == 1 and stats.mem_total == 256 * 2**20
    assert 0 < stats.mem_used < stats.mem_total
    assert 100 * 2**20 < stats.disk_total <= 128 * 2**20
    await runtime.pause(sandbox.sandbox_id)
    assert (await runtime.get(sandbox.sandbox_id)).status is SandboxStatus.PAUSED
    assert not await healthy(sandbox, timeout=1.0)
    await runtime.resume(sandbox.sandbox_id)
    assert await healthy(sandbox)
    # The saved memory is removed after the resume returns, never left behind.
    root = runtime.config.sandboxes_dir / sandbox.sandbox_id
    deadline = asyncio.get_running_loop().time() + 10
    while any("memory" in p.name for p in root.iterdir()):
        assert asyncio.get_running_loop().time() < deadline, list(root.iterdir())
        await asyncio.sleep(0.05)


async def test_envd_keeps_serving_after_checkpoints_taken_amid_its_traffic(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
):
    """Health checks stream into envd (and wake its standby shells) while each checkpoint is
    taken; the checkpoint resets their connections. On this runsc that could corrupt envd's
    epoll set: after the resume a connection envd had closed was reported for ever, envd spun
    a core, and a command whose exit pipe got its fd number never ended (with uvloop: 5 of 6
    runs failed). envd polls (``envd/loop.py``): commands end and envd idles."""
    sandbox = await make_sandbox()
    await run(sandbox, "sleep 600 & echo started")  # a second process envd watches throughout
    assert "emberbox.envd" in (await run(sandbox, "tr '\\0' ' ' </proc/2/cmdline")).text
    stop = asyncio.Event()

    async def health_checks() -> None:  # kept-alive connections, reset by the checkpoint
        async with httpx.AsyncClient(timeout=1, trust_env=False) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(f"{sandbox.envd_url}/health")

    for i in range(15):
        stop.clear()
        checks = [asyncio.create_task(health_checks()) for _ in range(2)]
        await asyncio.sleep(0.1)
        try:
            await runtime.pause(sandbox.sandbox_id)
        finally:
            stop.set()
            await asyncio.gather(*checks)
        await runtime.resume(sandbox.sandbox_id)
        for j in range(3):
            result = await asyncio.wait_for(run(sandbox, f"echo {i}.{j}"), 20)
            assert result.text == f"{i}.{j}\n"
        # envd idles: CPU ticks (1/100 s) over one idle second
        first = await run(sandbox, "cut -d' ' -f14,15 /proc/2/stat")
        await asyncio.sleep(1)
        second = await run(sandbox, "cut -d' ' -f14,15 /proc/2/stat")
        busy = sum(map(int, second.text.split())) - sum(map(int, first.text.split()))
        assert busy < 50, f"envd used {busy} of 100 ticks idle after resume {i}"


async def test_a_sandbox_whose_processes_died_is_known_stopped(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
) -> None:
    """The cost-free look a warm-pool hand-over relies on: a running sandbox is never taken
    for stopped, one whose processes were killed (as the host's OOM killer would) is."""
    sandbox = await make_sandbox()
    assert not runtime.known_stopped(sandbox.sandbox_id)
    group = f"{runtime.config.cgroup_base}/{sandbox.sandbox_id}"
    for pid in cgroups.procs(group):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = asyncio.get_running_loop().time() + 10
    while not runtime.known_stopped(sandbox.sandbox_id):
        assert asyncio.get_running_loop().time() < deadline, cgroups.procs(group)
        await asyncio.sleep(0.05)


async def test_a_frozen_sandbox_costs_no_cpu_and_is_answered_for_without_runsc(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the warm pool relies on: a frozen sandbox is never scheduled, the runtime answers
    for it without asking runsc (which would wait for the thaw), it runs on once thawed, and
    the clean-up of a node that died leaving it frozen removes it."""
    before = await inventory(runtime.config)
    sandbox = await make_sandbox()
    sandbox_id = sandbox.sandbox_id
    group = f"{runtime.config.cgroup_base}/{sandbox_id}"
    await runtime.freeze(sandbox_id)
    assert cgroups.frozen(group)

    def cpu_ns() -> int:
        used = cgroups.usage(group)
        assert used is not None
        return used.cpu_ns

    cpu = cpu_ns()
    await asyncio.sleep(1)
    assert cpu_ns() == cpu
    async with asyncio.timeout(5):
        assert (await runtime.get(sandbox_id)).status is SandboxStatus.RUNNING
        assert await runtime.alive(sandbox_id)
        listed = [s.status for s in await runtime.list() if s.sandbox_id == sandbox_id]
        assert listed == [SandboxStatus.RUNNING]
        # Others are served meanwhile: a kill of an id with nothing left asks runsc which
        # containers it knows, a create fails as it should.
        assert not await runtime.kill(f"tnone{secrets.token_hex(4)}")
        with pytest.raises(UnknownTemplate):
            await runtime.create(SandboxSpec(f"tbad{secrets.token_hex(4)}", "no-such-template"))
    # Frozen while ``runsc state`` was asking: the question times out, the cgroup answers.
    with monkeypatch.context() as patch:
        patch.setattr(runsc_module, "STATE_TIMEOUT_S", 1.0)
        looks: list[str] = []

        def thawed_at_first_look(rel: str) -> bool:
            looks.append(rel)
            return len(looks) > 1

        patch.setattr(cgroups, "frozen", thawed_at_first_look)
        async with asyncio.timeout(5):
            assert (await runtime.get(sandbox_id)).status is SandboxStatus.RUNNING
        assert len(looks) == 2, "runsc was not asked first"
    assert not await healthy(sandbox, timeout=0.5)
    await runtime.thaw(sandbox_id)
    assert not cgroups.frozen(group)
    assert await healthy(sandbox)

    await runtime.freeze(sandbox_id)
    others = [s.sandbox_id for s in await runtime.list() if s.sandbox_id != sandbox_id]
    async with asyncio.timeout(30):
        assert sandbox_id in await runtime.cleanup_orphans(keep=others)
    after = await inventory(runtime.config)
    assert after.leaked_since(before) == {}
    assert after.mentions(sandbox_id) == []


async def test_a_freeze_that_does_not_finish_or_is_cancelled_leaves_the_sandbox_running(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A freeze can hang (seen freezing a sandbox still booting): the node must get an error
    and a sandbox that keeps running and answering, never one stuck half frozen."""
    sandbox = await make_sandbox()
    sandbox_id = sandbox.sandbox_id
    group = f"{runtime.config.cgroup_base}/{sandbox_id}"
    real_state = cgroups.freezer_state

    def never_done(rel: str) -> str:
        state = real_state(rel)
        return "freezing" if rel == group and state == "frozen" else state

    with monkeypatch.context() as patch:
        patch.setattr(cgroups, "freezer_state", never_done)
        asked = time.monotonic()
        with pytest.raises(HostError, match="did not freeze"):
            await runtime.freeze(sandbox_id)
        assert time.monotonic() - asked < FREEZE_TIMEOUT_S + 2
        assert real_state(group) == "thawed"

        freezing = asyncio.create_task(runtime.freeze(sandbox_id))
        await asyncio.sleep(FREEZE_TIMEOUT_S / 5)
        assert real_state(group) == "frozen"
        freezing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await freezing
        assert real_state(group) == "thawed"

    assert await healthy(sandbox, timeout=5)
    used = cgroups.usage(group)
    assert used is not None
    await asyncio.sleep(0.5)
    later = cgroups.usage(group)
    assert later is not None and later.cpu_ns > used.cpu_ns, "the sandbox is not scheduled"
    assert (await runtime.get(sandbox_id)).status is SandboxStatus.RUNNING


async def test_kill_releases_everything(runtime: GVisorRuntime, make_sandbox: SandboxFactory):
    before = await inventory(runtime.config)
    sandbox = await make_sandbox()
    during = await inventory(runtime.config)
    assert during.mentions(sandbox.sandbox_id)  # the inventory does see a live sandbox
    assert during.runsc_pids - before.runsc_pids
    await runtime.kill(sandbox.sandbox_id)
    await runtime.kill(sandbox.sandbox_id)  # idempotent
    after = await inventory(runtime.config)
    assert after.leaked_since(before) == {}
    assert after.mentions(sandbox.sandbox_id) == []
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=1) as http:
            await http.get(f"{sandbox.envd_url}/health")


async def test_a_create_cut_off_part_way_leaves_no_runsc_running(runtime: GVisorRuntime):
    """Cancelled once runsc has started the sandbox but before it saved its state (what a node
    stopping mid warm-pool refill does): runsc itself no longer knows the sandbox, yet its
    processes must not outlive the clean-up."""
    before = await inventory(runtime.config)
    sandbox_id = f"tcut{secrets.token_hex(4)}"
    sock = runtime.config.runsc_root / f"runsc-{sandbox_id}.sock"
    create = asyncio.ensure_future(
        runtime.create(SandboxSpec(sandbox_id=sandbox_id, template_id="base"))
    )
    for _ in range(600):
        if sock.exists() or create.done():
            break
        await asyncio.sleep(0.01)
    assert sock.exists(), "runsc never started the sandbox"
    create.cancel()
    with pytest.raises(asyncio.CancelledError):
        await create
    await runtime.kill(sandbox_id)  # what a node's clean-up does with whatever is left
    after = await inventory(runtime.config)
    assert after.leaked_since(before) == {}
    assert after.mentions(sandbox_id) == []
    assert not sock.exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"sandbox_id": "Bad_Id", "template_id": "base"}, "invalid sandbox id"),
        ({"sandbox_id": "tnotemplate", "template_id": "nope"}, "does not exist"),
        ({"sandbox_id": "ttinymem", "template_id": "base", "memory_mb": 8}, "memory_mb"),
        ({"sandbox_id": "ttinydisk", "template_id": "base", "disk_mb": 1}, "disk_mb"),
    ],
)
async def test_bad_input_is_refused_without_leaks(runtime: GVisorRuntime, spec, message):
    before = await inventory(runtime.config)
    with pytest.raises((ValueError, UnknownTemplate), match=message):
        await runtime.create(SandboxSpec(**spec))
    assert (await inventory(runtime.config)).leaked_since(before) == {}


async def test_close_removes_the_data_dirs_cgroup_once_no_sandbox_is_left(
    base_template: Template, tmp_path
):
    """A node that stops leaves its running sandboxes (and so their parent cgroup) alone; one
    that stops with none left removes the parent too (one per data dir had piled up, 471 on
    this host, from nodes that came and went)."""
    config = GVisorConfig(data_dir=tmp_path, template_snapshots=False)
    runtime = GVisorRuntime(config, TemplateStore())
    sandbox_id = f"t{secrets.token_hex(5)}"
    try:
        await runtime.create(SandboxSpec(sandbox_id=sandbox_id, template_id=base_template.name))
        await runtime.close()
        assert _existing(config.cgroup_base), "the running sandbox's parent went"
        assert await runtime.alive(sandbox_id)
    finally:
        successor = GVisorRuntime(config, TemplateStore())  # as a restarted node
        await successor.kill(sandbox_id)
        await successor.close()
    assert _existing(config.cgroup_base) == []


def _existing(rel: str) -> list[Path]:
    return [d for d in cgroups.directories(rel) if d.exists()]
