"""A rollback pauses the sandbox at the snapshot before it restores it: a restore that fails
leaves it paused there (its snapshot's checkpoint linked in as its saved memory), with
nothing of it running, and a resume brings it back at the snapshot. The failure is injected:
runsc is wrapped by a script that answers the next restores with an error."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from emberbox.host import cgroups
from emberbox.runtimes.base import SandboxStatus
from emberbox.runtimes.gvisor import GVisorRuntime
from emberbox.runtimes.gvisor.runsc import RunscError

from .conftest import SandboxFactory
from .gvisor_support import failing_restores, healthy, run


async def test_a_rollback_whose_restore_fails_leaves_it_paused_at_the_snapshot(
    runtime: GVisorRuntime, make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    sandbox = await make_sandbox()
    sid = sandbox.sandbox_id
    assert (await run(sandbox, "echo then > /home/user/mark")).exit_code == 0
    ref = await runtime.checkpoint(sid, f"s{secrets.token_hex(5)}")
    assert (await run(sandbox, "echo now > /home/user/mark; touch /home/user/later")).exit_code == 0
    try:
        with failing_restores(runtime, tmp_path, "restoring container: injected failure") as fails:
            fails.write_text("1")
            with pytest.raises(RunscError, match="injected failure"):
                await runtime.restore(sid, ref)
            assert fails.read_text().strip() == "0", "the injected failure never happened"

        # Paused at the snapshot: listed so with its saved memory's size, nothing running.
        view = {s.sandbox_id: s for s in await runtime.list()}[sid]
        assert view.status is SandboxStatus.PAUSED and view.paused_bytes > 1 << 20
        assert cgroups.procs(runtime._cgroup(sid)) == []
        assert list((runtime.config.sandboxes_dir / sid).glob("*.partial")) == []

        resumed = await runtime.resume(sid)
        assert await healthy(resumed, timeout=30)
        back = await run(resumed, "cat /home/user/mark; test -e /home/user/later || echo gone")
        assert back.text == "then\ngone\n"

        # The snapshot is whole still (the sandbox's copy was links to it, now gone).
        assert (Path(ref.path) / "checkpoint.img").is_file()
        assert (await run(resumed, "echo again > /home/user/mark")).exit_code == 0
        await runtime.restore(sid, ref)
        assert (await run(resumed, "cat /home/user/mark")).text == "then\n"
    finally:
        await runtime.delete_snapshot(ref)
