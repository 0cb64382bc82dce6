"""Each template snapshot boots a sandbox of its own. Two templates built alike (same layers and
config under another name: two teams' ``FROM base``) share a content id; their snapshot boots
shared one sandbox id, so the second's boot failed on the first's directory and its teardown
killed the first's boot: neither template got a snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from emberbox.runtimes.base import RuntimeSandbox, SandboxSpec
from emberbox.runtimes.gvisor.warm import WARM_PREFIX, TemplateSnapshots
from emberbox.templates.store import Template, TemplateConfig


async def test_templates_built_alike_boot_their_snapshots_apart(tmp_path: Path) -> None:
    first, second = (Template(name, ["layer-a"], TemplateConfig()) for name in ("one", "two"))
    assert first.id == second.id
    snapshots = TemplateSnapshots(tmp_path)
    booting: list[str] = []
    killed: list[str] = []
    release, both = asyncio.Event(), asyncio.Event()

    async def boot(spec: SandboxSpec, template: Template) -> RuntimeSandbox:
        assert spec.sandbox_id not in booting, "a boot of a sandbox another boot holds"
        booting.append(spec.sandbox_id)
        if len(booting) == 2:
            both.set()
        await release.wait()
        raise ValueError("no machine here")  # (logged: nobody awaits the snapshot's task)

    async def checkpoint(sandbox_id: str, image: Path) -> None:
        raise AssertionError("no boot succeeds")

    async def kill(sandbox_id: str) -> None:
        killed.append(sandbox_id)

    spec = SandboxSpec(sandbox_id="s", template_id="one", cpu_count=1, memory_mb=512)
    for template in (first, second):
        snapshots.make_later(template, spec, boot, checkpoint, kill)
    snapshots.make_later(first, spec, boot, checkpoint, kill)  # (once per template and size)
    await asyncio.wait_for(both.wait(), 5)
    release.set()
    await snapshots.wait()
    assert len(set(booting)) == 2 and all(i.startswith(WARM_PREFIX) for i in booting)
    assert sorted(killed) == sorted(booting)  # each boot torn down once, by its own task
    assert not list(tmp_path.iterdir())  # no partial image left
