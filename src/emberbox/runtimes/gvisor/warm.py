"""Template snapshots: each template booted once, made ready, and checkpointed, so creates
restore memory (~0.3 s) instead of booting (~1.3 s to the first command).

The snapshot is taken before envd's ``/init`` (after one command, so envd's standby login
shells are in it, ready): it holds no access token and no sandbox's identity; the node's
handshake gives each restored sandbox its own (env vars, token, clock, host name). It is keyed
by the template's content id, so a rebuilt template never restores an old image; one that fails
to restore is deleted and the create boots instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from ...envd_client.handshake import prime_standbys, wait_healthy, wait_ready
from ...envd_client.http import sandbox_http
from ...host.completion import to_completion
from ...templates.store import Template
from ...vocabulary import GUEST_HOSTNAME
from ..base import NetworkPolicy, RuntimeSandbox, SandboxSpec
from .state import PARTIAL_SUFFIX, partial

log = logging.getLogger("emberbox.gvisor.warm")

WARM_PREFIX = "warm-"  # the id of the sandbox a template snapshot is taken of
# Standby login shells (started by a first command) get this long to finish their login before
# the checkpoint, so every restore starts with them ready.
PRIME_SETTLE_S = 1.0

Boot = Callable[[SandboxSpec, Template], Awaitable[RuntimeSandbox]]
Checkpoint = Callable[[str, Path], Awaitable[None]]
Kill = Callable[[str], Awaitable[object]]


def image_key(template: Template) -> str:
    """What an image's memory holds: the template (its content id) and what the boot gave the
    kernel that no restore can change (the host name), so an image taken before either changed
    is never restored."""
    return hashlib.sha256(f"{template.id}\0{GUEST_HOSTNAME}".encode()).hexdigest()[:24]


class TemplateSnapshots:
    """**Parameters:** root - where the images live (one directory per ``image_key`` and size);
    boot_timeout_s - how long the one boot may take to become ready."""

    def __init__(self, root: Path, boot_timeout_s: float = 60.0) -> None:
        self.root = root
        self.boot_timeout_s = boot_timeout_s
        self._making: dict[str, asyncio.Task[None]] = {}

    def path(self, template: Template, spec: SandboxSpec) -> Path:
        """One image per template id and machine size: the guest learns its memory size at
        boot and keeps it across a restore."""
        size = f"{spec.cpu_count}c{spec.memory_mb}m"
        return self.root / f"{template.name}-{size}-{image_key(template)}"

    def ready(self, template: Template, spec: SandboxSpec) -> Path | None:
        path = self.path(template, spec)
        return path if (path / "checkpoint.img").is_file() else None

    def taken(self, template_name: str) -> bool:
        """Whether the template has a finished snapshot, of any size (what tests and benchmarks
        wait for before timing or checking restores)."""
        images = self.root.glob(f"{template_name}-*/checkpoint.img")
        return any(not image.parent.name.endswith(PARTIAL_SUFFIX) for image in images)

    def discard(self, template: Template, spec: SandboxSpec) -> None:
        shutil.rmtree(self.path(template, spec), ignore_errors=True)

    def make_later(
        self, template: Template, spec: SandboxSpec, boot: Boot, checkpoint: Checkpoint, kill: Kill
    ) -> None:
        """Take the snapshot in the background, once per template id and size."""
        dest = self.path(template, spec)
        key = dest.name
        if key in self._making or self.ready(template, spec) is not None:
            return
        # Named after the image, not the content id: two templates built alike (same layers
        # and config, another name) share an id, and their boots must not share a sandbox.
        image_id = hashlib.sha256(key.encode()).hexdigest()[:8]
        warm = SandboxSpec(
            sandbox_id=WARM_PREFIX + image_id + f"-{spec.cpu_count}-{spec.memory_mb}",
            template_id=spec.template_id,
            cpu_count=spec.cpu_count,
            memory_mb=spec.memory_mb,
            disk_mb=spec.disk_mb,
            pids_limit=spec.pids_limit,
            network=NetworkPolicy(allow_internet=False),
        )
        task = asyncio.create_task(self._make(template, warm, dest, boot, checkpoint, kill))
        self._making[key] = task
        task.add_done_callback(lambda _t: self._making.pop(key, None))

    async def wait(self) -> None:
        """Until every snapshot under way is done (tests, shutdown)."""
        while self._making:
            await asyncio.gather(*self._making.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._making.values()):
            task.cancel()
        await asyncio.gather(*self._making.values(), return_exceptions=True)

    async def _make(
        self,
        template: Template,
        warm: SandboxSpec,
        dest: Path,
        boot: Boot,
        checkpoint: Checkpoint,
        kill: Kill,
    ) -> None:
        image = partial(dest)
        sandbox_id = warm.sandbox_id
        try:
            shutil.rmtree(image, ignore_errors=True)
            image.mkdir(parents=True)
            sandbox = await boot(warm, template)
            async with sandbox_http(limits=httpx.Limits(max_keepalive_connections=0)) as http:
                await wait_healthy(http, sandbox.envd_url, self.boot_timeout_s)
            if template.config.ready_cmd:
                await wait_ready(sandbox.envd_url, template.config.ready_cmd, self.boot_timeout_s)
            cfg = template.config
            await prime_standbys(sandbox.envd_url, cfg.user, cfg.workdir, settle_s=PRIME_SETTLE_S)
            await checkpoint(sandbox_id, image)
            size = f"{warm.cpu_count}c{warm.memory_mb}m"
            for old in self.root.glob(f"{template.name}-{size}-*"):  # older builds' images
                if old != dest and not old.name.endswith(PARTIAL_SUFFIX):
                    shutil.rmtree(old, ignore_errors=True)
            os.replace(image, dest)
            log.info("template %s: snapshot taken (%s)", template.name, dest.name)
        except Exception as exc:  # (nobody awaits this task: every failure is logged here)
            log.warning("template %s: no snapshot, creates keep booting: %s", template.name, exc)
        finally:
            shutil.rmtree(image, ignore_errors=True)
            # A close cancels the snapshot, never its boot's teardown: cut off, that left the
            # boot's rootfs and disk mounted (measured: a close just after the checkpoint).
            try:
                await to_completion(kill(sandbox_id))
            except Exception as exc:  # the next start's orphan sweep removes what is left
                log.warning("template %s: tearing its snapshot boot down: %s", template.name, exc)
