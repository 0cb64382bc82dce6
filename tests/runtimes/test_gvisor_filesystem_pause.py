"""A filesystem-only pause on real gVisor sandboxes: only the files the sandbox changed are
kept (``guest_files.py``), its processes end, and a resume boots it afresh from them."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from emberbox.envd_client import handshake
from emberbox.runtimes.base import CapabilityMissing, RuntimeSandbox, SandboxStatus
from emberbox.runtimes.gvisor import GVisorRuntime
from tests import background_counter

from .conftest import SandboxFactory
from .gvisor_support import healthy, inventory, run

# Changes of every kind a user makes: new and rewritten files in the root and in /tmp (its own
# overlay), a deleted template file and a deleted template directory, a mode and an owner
# changed, a symlink, a hard link, an empty new directory, a file turned into a directory,
# a name that is not UTF-8.
CHANGES = r"""
set -e
echo kept > /home/user/notes.txt
echo tmp-kept > /tmp/scratch.txt
echo rewritten > /etc/motd
rm /etc/issue.net
rm -r /usr/share/doc/bash
chmod 700 /usr/bin/ls
chown user /opt
ln -s /home/user/notes.txt /home/user/link
ln /home/user/notes.txt /home/user/hard
mkdir -p /srv/empty
rm /etc/issue && mkdir /etc/issue && echo inside > /etc/issue/file
touch "$(printf '/home/user/caf\xe9')"
"""
CHECK = r"""
cat /home/user/notes.txt /tmp/scratch.txt /etc/motd /etc/issue/file
test ! -e /etc/issue.net && echo no-issue-net
test ! -e /usr/share/doc/bash && echo no-bash-doc
test -d /usr/share/doc && echo doc-dir-stays
stat -c %a /usr/bin/ls
stat -c %U /opt
readlink /home/user/link
stat -c %h /home/user/hard
test -d /srv/empty && echo empty-dir
ls /home/user | od -c | grep -c 351
ls /usr/bin/ls > /dev/null && echo ls-runs
"""
SLEEPER = "setsid sleep 1000 >/dev/null 2>&1 </dev/null &"
COUNTER = f"setsid sh -c '{background_counter.LOOP}' >/dev/null 2>&1 </dev/null &"
EXPECTED = [
    "kept", "tmp-kept", "rewritten", "inside", "no-issue-net", "no-bash-doc", "doc-dir-stays",
    "700", "user", "/home/user/notes.txt", "2", "empty-dir", "1", "ls-runs",
]  # fmt: skip


async def _handshake(sandbox: RuntimeSandbox) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        await handshake(http, sandbox.envd_url, sandbox.defaults, "", timeout_s=60)


async def test_a_filesystem_pause_keeps_the_files_and_a_resume_boots_from_them(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
) -> None:
    sandbox = await make_sandbox(disk_mb=256)
    sid = sandbox.sandbox_id
    result = await run(sandbox, CHANGES, user="root")
    assert result.exit_code == 0, result.stderr
    await run(sandbox, SLEEPER, user="root")
    assert (await run(sandbox, "pgrep -x sleep || echo none")).text.strip() != "none"
    size = await runtime.pause(sid, memory=False)
    assert 0 < size < 8 * 2**20, size  # what changed, not the template
    paused = await runtime.get(sid)
    assert paused.status is SandboxStatus.PAUSED and paused.kept_memory is False
    assert [s.kept_memory for s in await runtime.list() if s.sandbox_id == sid] == [False]
    assert not await healthy(sandbox, timeout=1.0)
    with pytest.raises(Exception, match="paused"):
        await runtime.pause(sid, memory=False)

    resumed = await runtime.resume(sid)
    assert resumed.rebooted and resumed.defaults.user == "user"
    await _handshake(resumed)
    checked = await run(resumed, CHECK, user="root")
    assert checked.text.split() == EXPECTED, checked.text
    # Booted afresh: the old processes are gone, envd is a new one.
    procs = await run(resumed, "pgrep -x sleep || echo none", user="root")
    assert procs.text.strip() == "none"
    assert (await runtime.get(sid)).status is SandboxStatus.RUNNING
    root = runtime.config.sandboxes_dir / sid
    deadline = asyncio.get_running_loop().time() + 10
    while any("files" in p.name for p in root.iterdir()):
        assert asyncio.get_running_loop().time() < deadline, list(root.iterdir())
        await asyncio.sleep(0.05)

    # Twice over, and a memory pause of a rebooted sandbox works as any other.
    await run(resumed, "echo second >> /home/user/notes.txt", user="root")
    await runtime.pause(sid, memory=False)
    again = await runtime.resume(sid, memory=False)
    await _handshake(again)
    await runtime.pause(sid)
    await runtime.resume(sid)
    assert (await run(again, "cat /home/user/notes.txt")).text.split() == ["kept", "second"]


async def test_a_memory_pause_resumed_without_memory_boots_from_its_files(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
) -> None:
    """Its files are inside its memory image: they come out, its processes do not."""
    before = await inventory(runtime.config)
    sandbox = await make_sandbox()
    sid = sandbox.sandbox_id
    await run(sandbox, f"echo from-memory > /home/user/a; {SLEEPER}")
    assert (await run(sandbox, "pgrep -x sleep || echo none")).text.strip() != "none"
    await runtime.pause(sid)
    resumed = await runtime.resume(sid, memory=False)
    assert resumed.rebooted
    await _handshake(resumed)
    assert (await run(resumed, "cat /home/user/a")).text.strip() == "from-memory"
    assert (await run(resumed, "pgrep -x sleep || echo none")).text.strip() == "none"
    await runtime.kill(sid)
    assert (await inventory(runtime.config)).leaked_since(before) == {}


async def test_a_failed_save_leaves_the_sandbox_running(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save stops every other process while it reads; one that fails lets them go."""
    from emberbox.runtimes.gvisor import runtime as runtime_module

    sandbox = await make_sandbox()
    sid = sandbox.sandbox_id
    await run(sandbox, COUNTER)
    failing = runtime_module._GUEST_FILES + "\nsave()\nraise SystemExit(3)\n"
    monkeypatch.setattr(runtime_module, "_GUEST_SAVE", failing)
    with pytest.raises(Exception, match="exit 3"):
        await runtime.pause(sid, memory=False)
    assert (await runtime.get(sid)).status is SandboxStatus.RUNNING
    assert await healthy(sandbox)
    first = int((await run(sandbox, background_counter.READ)).text)
    await asyncio.sleep(0.5)
    assert int((await run(sandbox, background_counter.READ)).text) > first, (
        "its processes stay stopped"
    )
    assert not (runtime.config.sandboxes_dir / sid / "files.tar").exists()


async def test_a_filesystem_snapshot_keeps_its_source_running_and_boots_new_sandboxes(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
) -> None:
    """The save stops the source's processes while it reads, then lets them go; a sandbox
    created from it boots with the files and none of the processes; no rollback to it."""
    sandbox = await make_sandbox()
    sid = sandbox.sandbox_id
    await run(sandbox, f"echo kept > /home/user/a; {COUNTER}")
    # One its user stopped stays stopped: the save lets go only of what it stopped itself.
    await run(sandbox, "setsid sh -c 'kill -STOP $$; exec sleep 1000' >/dev/null 2>&1 </dev/null &")
    ref = await runtime.checkpoint(sid, f"snap{secrets.token_hex(6)}", memory=False)
    try:
        assert not ref.memory and (Path(ref.path) / "files.tar").is_file()
        first = int((await run(sandbox, background_counter.READ)).text)
        await asyncio.sleep(0.5)
        assert int((await run(sandbox, background_counter.READ)).text) > first, (
            "the source stayed stopped"
        )
        held = await run(sandbox, "ps -o stat= -p $(pgrep -f '^sh -c kill -STOP')")
        assert held.text.strip().startswith("T"), held.text
        child = await make_sandbox(snapshot=ref)
        assert (await run(child, "cat /home/user/a")).text.strip() == "kept"
        counted = (await run(child, background_counter.READ)).text
        await asyncio.sleep(0.5)
        assert (await run(child, background_counter.READ)).text == counted, "a process came along"
        with pytest.raises(CapabilityMissing, match="files only"):
            await runtime.restore(sid, ref)
        assert await healthy(sandbox)
    finally:
        await runtime.delete_snapshot(ref)


async def test_files_past_the_disk_fail_the_save_and_the_sandbox_runs_on(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory
) -> None:
    """A sparse file costs the disk nothing but the tar holds it whole, outside the quota."""
    sandbox = await make_sandbox(disk_mb=64)
    await run(sandbox, "truncate -s 1G /home/user/sparse")
    with pytest.raises(Exception, match="more than its disk"):
        await runtime.pause(sandbox.sandbox_id, memory=False)
    assert (await runtime.get(sandbox.sandbox_id)).status is SandboxStatus.RUNNING
    assert await healthy(sandbox)
    root = runtime.config.sandboxes_dir / sandbox.sandbox_id
    assert not [p.name for p in root.iterdir() if p.name.startswith(("files", "saving"))]
