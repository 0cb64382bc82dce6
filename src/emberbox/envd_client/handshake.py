"""envd's first minutes, written once: wait for ``/health``, one ``POST /init``, the ready check.

The node runs this after a runtime started a machine (any runtime: gVisor, Firecracker, a
plain process); template builds use :func:`wait_healthy` to check that a built image boots.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

import httpx

from ..vocabulary import ENVD_TOKEN_HEADER, ENVD_VERSION
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


@dataclass(frozen=True)
class Greeting:
    """What a handshake learned: envd's ``version``, and ``inherited_env``, the variables a
    restored envd held that this ``/init`` kept over the defaults (its source had them: from
    its create, or from a source of its own). The node keeps those: a later boot from the
    sandbox's files starts from its own defaults, not from that memory."""

    version: str
    inherited_env: Mapping[str, str] = field(default_factory=dict)


async def _always() -> bool:
    return True


async def wait_healthy(
    http: httpx.AsyncClient, envd_url: str, timeout_s: float, alive: Alive = _always
) -> str:
    """Poll ``/health`` until it answers 204; returns envd's version (``X-Envd-Version``).

    ``alive`` lets the runtime say the machine died, so a crashed boot fails at once.
    """
    response = await _first_answer(
        lambda: http.get(f"{envd_url}/health", timeout=1.0), envd_url, timeout_s, alive,
        accept=lambda r: r.status_code == 204, waiting_for="healthy",
    )  # fmt: skip
    return str(response.headers.get("x-envd-version", ENVD_VERSION))


async def _first_answer(
    send: Callable[[], Awaitable[httpx.Response]],
    envd_url: str,
    timeout_s: float,
    alive: Alive,
    *,
    accept: Callable[[httpx.Response], bool] = lambda _r: True,
    waiting_for: str = "answering",
) -> httpx.Response:
    """``send``'s answer from an envd that may not listen yet (a boot, a restore): a failed
    attempt, or an answer ``accept`` refuses, is tried again every 20 ms until it passes, the
    machine stops, or ``timeout_s`` passes. What it sends must be safe to send twice."""
    deadline = time.monotonic() + timeout_s
    failure: object = "no attempt"
    while True:
        try:
            response = await send()
            if accept(response):
                return response
            failure = f"answered {response.status_code}"
        except httpx.HTTPError as exc:
            failure = repr(exc)
        if not await alive():
            raise HandshakeFailed(f"the sandbox stopped before envd answered at {envd_url}")
        if time.monotonic() >= deadline:
            raise HandshakeFailed(f"envd not {waiting_for} at {envd_url} after "
                                  f"{timeout_s:.0f}s: {failure}")  # fmt: skip
        await asyncio.sleep(0.02)


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
    envd_url: str,
    user: str,
    workdir: str,
    token: str = "",
    settle_s: float = 0.0,
    commands: int = 1,
) -> None:
    """Run ``commands`` commands, one after another, as ``user`` in ``workdir``, the (user,
    cwd) the SDKs' commands run with by default: envd then keeps standby login shells ready for
    them (``envd/process/standby``), so the first command after a restore or a warm-pool claim
    need not wait for a login. Each command takes the oldest standby; as many as envd keeps
    leave only shells started after the first. ``settle_s`` lets the shells finish their login
    (before a checkpoint). Best effort: a failure only means the first command starts its own
    shell."""
    try:
        async with EnvdClient(envd_url, token or None) as envd:
            for _ in range(commands):
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
    own: Collection[str] | None = None,
) -> Greeting:
    """Bring a freshly started envd into service; what it learned is a :class:`Greeting`.

    One ``/init`` carries everything (env vars, default user and workdir, the access token and
    the clock), so envd is never reachable with a half-set identity. An envd restored from a
    checkpoint still holds the token it had then: ``previous_token`` proves the right to
    replace it, and the env vars its source had are kept (``inherit_env``; a warm-pool
    sandbox's are the template's, which ``defaults`` holds already), over the template's:
    only the ``own`` keys of ``defaults.env`` win over them (the new sandbox's identity and
    its create's vars; None: every key).
    ``known_version``: envd was seen healthy already, with this version.

    The first request waits for envd to listen (no ``/health`` poll before it: one round trip
    less, and after a restore the first answer is the slow one). An ``/init`` without a
    previous token proves the token it sets, so one retried after it had been applied passes.
    """
    first = not known_version
    timeout = httpx.Timeout(min(10.0, timeout_s), connect=1.0)
    proof = previous_token or access_token
    headers = {ENVD_TOKEN_HEADER: proof} if proof else {}

    async def answer(send: Callable[[], Awaitable[httpx.Response]], what: str) -> httpx.Response:
        nonlocal first
        try:
            if first:
                return await _first_answer(send, envd_url, timeout_s, alive)
            return await send()
        except httpx.HTTPError as exc:
            raise HandshakeFailed(f"envd {what} failed: {exc}") from exc
        finally:
            first = False

    env = dict(defaults.env)
    inherited: dict[str, str] = {}
    if previous_token and inherit_env:  # restored: keep what its callers set, our identity on top
        held = await answer(
            lambda: http.get(f"{envd_url}/envs", headers=headers, timeout=timeout), "/envs"
        )
        if held.status_code == 200 and isinstance(held.json(), dict):
            ours = env.keys() if own is None else own
            inherited = {
                str(k): str(v)
                for k, v in held.json().items()
                if k not in ours and env.get(str(k)) != str(v)
            }
            env = {**env, **inherited}
    body: dict[str, object] = {
        "envVars": env,
        "defaultUser": defaults.user,
        "defaultWorkdir": defaults.workdir,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
    }
    if access_token:
        body["accessToken"] = access_token
    response = await answer(
        lambda: http.post(f"{envd_url}/init", json=body, headers=headers, timeout=timeout), "/init"
    )
    if response.status_code != 204:
        raise HandshakeFailed(f"envd /init answered {response.status_code}: {response.text[:200]}")
    version = known_version or str(response.headers.get("x-envd-version", ENVD_VERSION))
    if defaults.ready_cmd:
        await wait_ready(envd_url, defaults.ready_cmd, timeout_s, access_token)
    return Greeting(version, inherited)
