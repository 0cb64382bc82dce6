from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from emberbox.envd_client import handshake
from emberbox.runtimes.base import NetworkPolicy, RuntimeSandbox, SandboxSpec
from emberbox.runtimes.gvisor import GVisorConfig, GVisorRuntime
from emberbox.templates.store import Template, TemplateStore
from tests import lanes

from .gvisor_support import ensure_base, require_host

SandboxFactory = Callable[..., Awaitable[RuntimeSandbox]]


@pytest.fixture(scope="session")
async def base_template() -> Template:
    require_host()
    return await ensure_base(TemplateStore())


@pytest.fixture(scope="session")
def gvisor_config() -> GVisorConfig:
    """Creates boot (this suite tests the boot path; test_template_snapshots.py the restore
    path), and no background snapshot outlives the test that started it."""
    lanes.require(lanes.SHARED_DATA_DIR)
    return GVisorConfig(template_snapshots=False)


@pytest.fixture(scope="session")
async def runtime(
    base_template: Template, gvisor_config: GVisorConfig
) -> AsyncIterator[GVisorRuntime]:
    """Closed after the test, as a node closes it (its gateway and ulogd stop)."""
    runtime = GVisorRuntime(gvisor_config)
    yield runtime
    await runtime.close()


@pytest.fixture
async def make_sandbox(runtime: GVisorRuntime) -> AsyncIterator[SandboxFactory]:
    """Create sandboxes from ``base`` (or a given template), envd handed its identity as the
    node would (one handshake), killed after the test."""
    created: list[str] = []

    async def make(template: str = "base", *, allow_internet: bool = False,
                   network: NetworkPolicy | None = None,
                   **spec: object) -> RuntimeSandbox:  # fmt: skip
        sandbox_id = f"t{secrets.token_hex(5)}"
        created.append(sandbox_id)
        sandbox = await runtime.create(
            SandboxSpec(sandbox_id=sandbox_id, template_id=template,
                        network=network or NetworkPolicy(allow_internet=allow_internet),
                        **spec)  # type: ignore[arg-type]
        )  # fmt: skip
        async with httpx.AsyncClient(trust_env=False) as http:
            await handshake(http, sandbox.envd_url, sandbox.defaults, "",
                            alive=lambda: runtime.alive(sandbox_id))  # fmt: skip
        return sandbox

    yield make
    await asyncio.gather(*(runtime.kill(sandbox_id) for sandbox_id in created))
