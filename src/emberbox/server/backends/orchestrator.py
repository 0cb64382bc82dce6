"""``OrchestratorBackend``: sandboxes from the node orchestrator (gVisor, isolated).

The orchestrator keeps its own end times as a backstop; ours stay authoritative, so it is always
told a slightly later end (``BACKSTOP_S``) and the server's reaper kills first, recording why.
After the runtime's own ``/init`` (env vars, user, workdir), this backend sets the sandbox's
envd access token with a second ``/init`` carrying only ``accessToken``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import httpx

from ...runtimes.base import RuntimeError_, SandboxGone, SandboxStats, SandboxStatus
from ..orchestrator import Orchestrator, SandboxNotFound
from ..orchestrator import Sandbox as OrchSandbox
from ..orchestrator.orchestrator import MAX_TIMEOUT_S
from .base import BackendCapabilities, BackendError, BackendSandbox, BackendSpec, NotSupported

log = logging.getLogger("emberbox.backends.orchestrator")

BACKSTOP_S = 5
DEFAULT_ENVD_VERSION = "0.6.13"


def _backstop(timeout_s: int) -> int:
    return max(1, min(MAX_TIMEOUT_S, timeout_s + BACKSTOP_S))


class OrchestratorBackend:
    """Isolated sandboxes through :class:`Orchestrator` and the node's runtime (gVisor)."""

    name = "orchestrator"

    def __init__(self, data_dir: Path, runtime_name: str | None = None) -> None:
        from ...runtimes import select_runtime

        self.runtime = select_runtime(runtime_name)
        self.name = f"{self.runtime.name}"
        self.capabilities = BackendCapabilities(
            pause=self.runtime.capabilities.pause,
            no_internet=True,  # every runtime takes NetworkPolicy(allow_internet=False)
            egress_rules=self.runtime.capabilities.egress_rules,
            isolation=True,
        )
        self.orchestrator = Orchestrator(self.runtime, data_dir / "orchestrator")
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # No keep-alive: a later sandbox may reuse this address (port or IP lease), and a
        # pooled connection to the dead envd would fail its first request.
        self._client = httpx.AsyncClient(
            timeout=10.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        report = await self.orchestrator.start()
        log.info("orchestrator adopted %s, removed %s", report.adopted, report.removed)

    async def close(self) -> None:
        await self.orchestrator.close(kill_all=False)
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "backend not started"
        return self._client

    async def create(self, spec: BackendSpec) -> BackendSandbox:
        envs = {
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": spec.sandbox_id,
            "E2B_TEMPLATE_ID": spec.template_id,
            **spec.env_vars,
        }
        try:
            sb = await self.orchestrator.create(
                spec.template_id,
                timeout_s=_backstop(spec.timeout_s),
                cpu_count=spec.cpu_count,
                memory_mb=spec.memory_mb,
                disk_mb=spec.disk_mb,
                envs=envs,
                allow_internet=spec.allow_internet,
                sandbox_id=spec.sandbox_id,
            )
        except (RuntimeError_, ValueError, OSError) as e:
            raise BackendError(str(e)) from e
        try:
            version = await self._set_token(sb, spec.access_token)
        except BackendError:
            await self.kill(spec.sandbox_id)
            raise
        return BackendSandbox(
            sandbox_id=sb.sandbox_id,
            envd_url=sb.envd_url,
            host=sb.address,
            envd_version=version,
        )

    async def _set_token(self, sb: OrchSandbox, token: str) -> str:
        try:
            r = await self.client.post(f"{sb.envd_url}/init", json={"accessToken": token})
        except httpx.TransportError as e:
            raise BackendError(f"envd /init failed: {e}") from e
        if r.status_code != 204:
            raise BackendError(f"envd /init answered {r.status_code}: {r.text[:200]}")
        return str(r.headers.get("x-envd-version", DEFAULT_ENVD_VERSION))

    async def kill(self, sandbox_id: str) -> None:
        try:
            await self.orchestrator.kill(sandbox_id)
        except SandboxNotFound:  # not the orchestrator's (any more): make sure the runtime agrees
            with contextlib.suppress(SandboxGone):
                await self.runtime.kill(sandbox_id)

    async def list(self) -> list[BackendSandbox]:
        """What the runtime really runs (not the orchestrator's records), so crashes show."""
        return [
            BackendSandbox(
                sandbox_id=s.sandbox_id,
                envd_url=s.envd_url,
                host=s.address,
                envd_version=DEFAULT_ENVD_VERSION,
                stopped=s.status is SandboxStatus.STOPPED,
                oom_killed=s.oom_killed,
            )
            for s in await self.runtime.list()
        ]

    async def stats(self, sandbox_id: str) -> SandboxStats | None:
        try:
            return await self.orchestrator.stats(sandbox_id)
        except (SandboxNotFound, RuntimeError_, OSError):
            return None

    async def set_timeout(self, sandbox_id: str, timeout_s: int) -> None:
        with contextlib.suppress(SandboxNotFound):
            await self.orchestrator.set_timeout(sandbox_id, _backstop(timeout_s))

    async def pause(self, sandbox_id: str) -> None:
        if not self.capabilities.pause:
            raise NotSupported(f"the {self.name} runtime cannot pause sandboxes")
        await self.orchestrator.pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> BackendSandbox:
        if not self.capabilities.pause:
            raise NotSupported(f"the {self.name} runtime cannot resume sandboxes")
        sb = await self.orchestrator.resume(sandbox_id)
        return BackendSandbox(
            sandbox_id=sb.sandbox_id,
            envd_url=sb.envd_url,
            host=sb.address,
            envd_version=DEFAULT_ENVD_VERSION,
        )
