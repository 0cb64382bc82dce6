"""envd's first minutes, written once: wait for ``/health``, one ``POST /init``, the ready check.

The node runs this after a runtime started a machine (any runtime: gVisor, Firecracker, a
plain process); template builds use :func:`wait_healthy` to check that a built image boots.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from ..vocabulary import ENVD_VERSION
from .client import EnvdClient

Alive = Callable[[], Awaitable[bool]]


class HandshakeFailed(Exception):
    """envd never became healthy, refused ``/init``, or the ready check never passed."""


@dataclass(frozen=True)
class EnvdDefaults:
    """What envd is told at ``/init``: the sandbox's identity and the template's defaults.

    ``env`` holds every variable commands see (E2B's, the template's, the caller's);
    ``ready_cmd`` is the template's check that its start command serves.
    """

    user: str
    workdir: str
    env: Mapping[str, str] = field(default_factory=dict)
    ready_cmd: str | None = None


async def _always() -> bool:
    return True


async def wait_healthy(
    http: httpx.AsyncClient, envd_url: str, timeout_s: float, alive: Alive = _always
) -> str:
    """Poll ``/health`` until it answers 204; returns envd's version (``X-Envd-Version``).

    ``alive`` lets the runtime say the machine died, so a crashed boot fails at once.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            response = await http.get(f"{envd_url}/health", timeout=1.0)
            if response.status_code == 204:
                return str(response.headers.get("x-envd-version", ENVD_VERSION))
        if not await alive():
            raise HandshakeFailed(f"the sandbox stopped before envd answered at {envd_url}")
        await asyncio.sleep(0.02)
    raise HandshakeFailed(f"envd not healthy at {envd_url} after {timeout_s:.0f}s")


async def wait_ready(envd_url: str, command: str, timeout_s: float, token: str = "") -> None:
    """Run the template's ready check until it exits 0 (E2B hands out sandboxes after it)."""
    deadline = time.monotonic() + timeout_s
    async with EnvdClient(envd_url, token or None) as envd:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if (await envd.run(command, timeout=10)).exit_code == 0:
                    return
            await asyncio.sleep(0.2)
    raise HandshakeFailed(f"ready check {command!r} never passed within {timeout_s:.0f}s")


async def prime_standbys(
    envd_url: str, user: str, workdir: str, token: str = "", settle_s: float = 0.0
) -> None:
    """Run one command as ``user`` in ``workdir``, the (user, cwd) the SDKs' commands run with
    by default: envd then keeps standby login shells ready for them (``envd/process/standby``),
    so the first command after a restore or a warm-pool claim need not wait for a login.
    ``settle_s`` lets those shells finish their login (before a checkpoint). Best effort: a
    failure only means the first command starts its own shell."""
    try:
        async with EnvdClient(envd_url, token or None) as envd:
            await envd.run("true", user=user, cwd=workdir, timeout=30)
    except Exception:  # an optimisation, never a reason to fail a sandbox
        return
    await asyncio.sleep(settle_s)


async def handshake(
    http: httpx.AsyncClient,
    envd_url: str,
    defaults: EnvdDefaults,
    access_token: str,
    *,
    timeout_s: float = 30.0,
    alive: Alive = _always,
    previous_token: str = "",
    known_version: str = "",
    inherit_env: bool = True,
) -> str:
    """Bring a freshly started envd into service; returns its version.

    One ``/init`` carries everything (env vars, default user and workdir, the access token and
    the clock), so envd is never reachable with a half-set identity. An envd restored from a
    checkpoint still holds the token it had then: ``previous_token`` proves the right to
    replace it, and the env vars the source's callers set are kept (``inherit_env``; a
    warm-pool sandbox's are the template's, which ``defaults`` holds already).
    ``known_version``: envd was seen healthy already, with this version.
    """
    # An envd already seen healthy (a warm-pool sandbox) is not asked again: one round trip less.
    version = known_version or await wait_healthy(http, envd_url, timeout_s, alive)
    headers = {"X-Access-Token": previous_token} if previous_token else {}
    env = dict(defaults.env)
    if (
        previous_token and inherit_env
    ):  # restored: keep what the source's callers set, with our identity on top
        try:
            inherited = await http.get(f"{envd_url}/envs", headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise HandshakeFailed(f"envd /envs failed: {exc}") from exc
        if inherited.status_code == 200 and isinstance(inherited.json(), dict):
            env = {**inherited.json(), **env}
    body: dict[str, object] = {
        "envVars": env,
        "defaultUser": defaults.user,
        "defaultWorkdir": defaults.workdir,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
    }
    if access_token:
        body["accessToken"] = access_token
    try:
        response = await http.post(f"{envd_url}/init", json=body, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        raise HandshakeFailed(f"envd /init failed: {exc}") from exc
    if response.status_code != 204:
        raise HandshakeFailed(f"envd /init answered {response.status_code}: {response.text[:200]}")
    if defaults.ready_cmd:
        await wait_ready(envd_url, defaults.ready_cmd, timeout_s, access_token)
    return version
