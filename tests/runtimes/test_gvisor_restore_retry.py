"""A restore whose sentry died under it (runsc's ``"containerManager.Restore" failed: EOF``,
met once in CI by a fork) is tried once more; a second death is the caller's error, and the
failed tries leave nothing behind. The death is injected: runsc is wrapped by a script that
answers the first restores with that error instead of running them."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from emberbox.runtimes.base import NetworkPolicy, SandboxSpec
from emberbox.runtimes.gvisor import GVisorRuntime
from emberbox.runtimes.gvisor.runsc import RunscError

from .conftest import SandboxFactory
from .gvisor_support import failing_restores, healthy, inventory, run

DEATH = 'restoring container: urpc method "containerManager.Restore" failed: EOF'


async def test_a_sentry_that_dies_restoring_is_given_one_more_try(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    source = await make_sandbox()
    assert (await run(source, "echo from-the-source > /home/user/mark")).exit_code == 0
    ref = await runtime.checkpoint(source.sandbox_id, f"s{secrets.token_hex(5)}")

    def spec() -> SandboxSpec:
        return SandboxSpec(sandbox_id=f"t{secrets.token_hex(5)}", template_id="base",
                           network=NetworkPolicy(), snapshot=ref)  # fmt: skip

    try:
        with failing_restores(runtime, tmp_path, DEATH, code=128) as deaths:
            # One death: the second try restores it, with the source's files.
            deaths.write_text("1")
            child = await runtime.create(spec())
            try:
                assert deaths.read_text().strip() == "0", "the injected death never happened"
                assert await healthy(child, timeout=30)
                assert (await run(child, "cat /home/user/mark")).text == "from-the-source\n"
            finally:
                await runtime.kill(child.sandbox_id)

            # Two deaths: the error is the caller's, and nothing of either try is left.
            before = await inventory(runtime.config)
            deaths.write_text("2")
            doomed = spec()
            with pytest.raises(RunscError, match="failed: EOF"):
                await runtime.create(doomed)
            assert deaths.read_text().strip() == "0"
            await asyncio.sleep(0.5)  # (teardowns finish in the background)
            assert (await inventory(runtime.config)).leaked_since(before) == {}
            assert not (runtime.config.sandboxes_dir / doomed.sandbox_id).exists()
    finally:
        await runtime.delete_snapshot(ref)
