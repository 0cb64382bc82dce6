"""Template snapshots: the first create of a template boots it and snapshots a ready copy in
the background; later creates restore that memory and get their own identity from the
handshake. A snapshot that no longer restores is dropped and the create boots."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pytest

from emberbox.envd_client import EnvdClient
from emberbox.envd_client.handshake import handshake
from emberbox.runtimes.base import RuntimeSandbox, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.sdk.exceptions import AuthenticationException
from emberbox.templates.store import Template, TemplateStore
from emberbox.vocabulary import GUEST_HOSTNAME

from .gvisor_support import inventory, tcp_read


async def _create(runtime: GVisorRuntime, token: str, memory_mb: int = 512) -> RuntimeSandbox:
    sandbox_id = f"ts{secrets.token_hex(5)}"
    sandbox = await runtime.create(
        SandboxSpec(sandbox_id=sandbox_id, template_id="base", memory_mb=memory_mb)
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        await handshake(http, sandbox.envd_url, sandbox.defaults, token)
    return sandbox


async def _identity(sandbox: RuntimeSandbox, token: str) -> list[str]:
    async with EnvdClient(sandbox.envd_url, token) as envd:
        result = await envd.run(
            "echo $E2B_SANDBOX_ID; cat /etc/hostname; hostname; grep MemTotal /proc/meminfo; "
            "echo $RANDOM $RANDOM $RANDOM; echo $SECONDS"
        )
    assert result.exit_code == 0, result.stderr
    return result.text.splitlines()


async def test_creates_restore_the_template_snapshot(
    base_template: Template, tmp_path: Path
) -> None:
    runtime = GVisorRuntime(GVisorConfig(data_dir=tmp_path), TemplateStore())
    before = await inventory(runtime.config)
    made: list[str] = []
    try:
        cold = await _create(runtime, "t-cold")
        made.append(cold.sandbox_id)
        await runtime.warm.wait()
        spec = SandboxSpec(sandbox_id="x", template_id="base", memory_mb=512)
        image = runtime.warm.ready(base_template, spec)
        assert image is not None, "the first create did not leave a template snapshot"
        # A different size is a different image: the guest keeps the memory size it booted with.
        assert runtime.warm.ready(base_template, SandboxSpec("x", "base", memory_mb=384)) is None

        randoms = []
        for token in ("t-one", "t-two"):
            warm = await _create(runtime, token)
            made.append(warm.sandbox_id)
            lines = await _identity(warm, token)
            # Its first command runs in a login shell started before the snapshot was taken,
            # yet with a seed and a clock of its own.
            randoms.append(lines[4])
            assert int(lines[5]) <= 1, "SECONDS counts from the command"
            assert lines[0] == warm.sandbox_id  # its own identity, from the handshake
            assert lines[1] == warm.sandbox_id  # /etc/hostname is the sandbox's own file
            assert lines[2] == GUEST_HOSTNAME  # the UTS name, in the saved memory, is everyone's
            assert lines[3].split()[1] == str(512 * 1024)
            async with EnvdClient(warm.envd_url, "t-cold") as envd:  # another's token: refused
                with pytest.raises(AuthenticationException):
                    await envd.run("true")
        assert randoms[0] != randoms[1], "two restores of one snapshot: one RANDOM sequence"
        # A loopback-only port is relayed on the restored sandbox's own address (the guest's
        # forwarder woke up in another network than the one the snapshot was taken in).
        async with EnvdClient(warm.envd_url, "t-two") as envd:
            started = await envd.run(
                "cd /tmp && (python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 &)"
            )
            assert started.exit_code == 0
        deadline = time.monotonic() + 20
        while not (await tcp_read(warm.address, 8123) or b"").startswith(b"HTTP/1.0 200"):
            assert time.monotonic() < deadline, "the restored sandbox's port was never relayed"
            await asyncio.sleep(0.3)
    finally:
        for sandbox_id in made:
            await runtime.kill(sandbox_id)
        await runtime.close()
    assert await inventory(runtime.config) == before


async def test_a_snapshot_that_does_not_restore_is_dropped(
    base_template: Template, tmp_path: Path
) -> None:
    runtime = GVisorRuntime(GVisorConfig(data_dir=tmp_path), TemplateStore())
    spec = SandboxSpec(sandbox_id="x", template_id="base", memory_mb=512)
    broken = runtime.warm.path(base_template, spec)
    broken.mkdir(parents=True)
    (broken / "checkpoint.img").write_bytes(b"not a checkpoint")
    sandbox = await _create(runtime, "t")
    try:
        lines = await _identity(sandbox, "t")
        assert lines[:3] == [sandbox.sandbox_id, sandbox.sandbox_id, GUEST_HOSTNAME]  # booted
        await runtime.warm.wait()  # and a good snapshot replaced the broken one
        assert runtime.warm.ready(base_template, spec) == broken
        assert (broken / "checkpoint.img").read_bytes()[:16] != b"not a checkpoint"
    finally:
        await runtime.kill(sandbox.sandbox_id)
        await runtime.close()


async def test_a_close_during_the_snapshot_boots_teardown_leaves_nothing(
    base_template: Template, tmp_path: Path
) -> None:
    """A runtime closed while its template snapshot's boot is being torn down (the snapshot
    taken) lets that teardown finish: cut off, it had left the boot's rootfs and disk mounted
    (every run of a suite that closed its runtime about then)."""
    runtime = GVisorRuntime(GVisorConfig(data_dir=tmp_path), TemplateStore())
    before = await inventory(runtime.config)
    tearing_down = asyncio.Event()

    async def slow_kill(sandbox_id: str) -> bool:
        tearing_down.set()
        await asyncio.sleep(0.5)  # the window a close falls into
        return await runtime.kill(sandbox_id)

    spec = SandboxSpec(sandbox_id="x", template_id="base", memory_mb=256)
    runtime.warm.make_later(base_template, spec, runtime._boot_for_snapshot,
                            runtime._checkpoint_to, slow_kill)  # fmt: skip
    await asyncio.wait_for(tearing_down.wait(), 60)
    await runtime.close()
    assert runtime.warm.ready(base_template, spec) is not None, "no snapshot was taken"
    assert (await inventory(runtime.config)).leaked_since(before) == {}
