"""Who may use the service: the sandbox's envd access token, checked the way envd checks it.

In a sandbox the service starts before envd learns its token (the template's start command
runs at boot; the token arrives later in envd's ``/init``, and may change when the sandbox is
resumed), so the service never holds a copy it could get wrong: it asks envd. A presented
token (or none) is shown to envd's ``GET /envs`` on loopback, which envd guards with the very
same middleware as every other route — 200 means envd would accept the caller, 401 means it
would not. An accepted token is remembered for a few seconds, so a tight ``run_code`` loop
costs one loopback request per ``ttl``, not one per call (a token envd replaces stays valid
here that long). A *missing* token is never remembered: envd has none only before its
``/init``, and that must not outlive the ``/init``. Nor does anything remembered survive a
jump between the wall clock and the monotonic clock, which is what a sandbox restored from a
snapshot (a resume, a fork with its own token) sees first.

The same answer carries the sandbox's env vars (``/envs`` is what envd gives every command),
which kernels need: a sandbox restored from its template's snapshot runs a service and kernels
started before any sandbox's ``/init``, with none of its create-time ``envs`` (see
:meth:`.kernels.Context.execute`).

Outside a sandbox (tests, a bare host) a fixed token can be given instead.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Protocol

import httpx

from ..vocabulary import ENVD_TOKEN_HEADER

ACCEPT_TTL_SECONDS = 5.0
CLOCK_JUMP_SECONDS = 1.0


class TokenCheckFailed(Exception):
    """envd could not be asked (it is down or answered something unexpected)."""


class TokenCheck(Protocol):
    async def accepts(self, token: str | None) -> bool:
        """Whether a caller presenting ``token`` (None: no header) may use the service."""

    def sandbox_env(self) -> dict[str, str] | None:
        """The sandbox's env vars as of the last check, when the checker knows them."""


class FixedToken:
    """A token given on the command line; None requires none."""

    def __init__(self, token: str | None) -> None:
        self.token = token.encode() if token else None

    async def accepts(self, token: str | None) -> bool:
        if self.token is None:
            return True
        return token is not None and hmac.compare_digest(token.encode(), self.token)

    def sandbox_env(self) -> dict[str, str] | None:
        return None


class EnvdToken:
    """Delegates to envd at ``envd_url`` (``http://127.0.0.1:49983`` in a sandbox)."""

    def __init__(self, envd_url: str, ttl: float = ACCEPT_TTL_SECONDS) -> None:
        self.url = envd_url.rstrip("/") + "/envs"
        self.ttl = ttl
        self._accepted: dict[str, float] = {}  # token → until when (monotonic)
        self._clocks = _clocks()  # wall minus monotonic when the cache was last filled
        self._env: dict[str, str] | None = None  # what envd's /envs last answered
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=False)

    async def accepts(self, token: str | None) -> bool:
        now = time.monotonic()
        if abs(_clocks() - self._clocks) > CLOCK_JUMP_SECONDS:
            self._accepted.clear()  # restored from a snapshot (or the clock was set)
        if token is not None and self._accepted.get(token, 0.0) > now:
            return True
        headers = {ENVD_TOKEN_HEADER: token} if token is not None else {}
        try:
            response = await self._http.get(self.url, headers=headers)
        except httpx.HTTPError as exc:
            raise TokenCheckFailed(f"cannot ask envd about the access token: {exc}") from None
        if response.status_code == 401:
            return False
        if response.status_code != 200:
            raise TokenCheckFailed(f"envd answered {response.status_code} to a token check")
        with contextlib.suppress(ValueError):
            env = response.json()
            if isinstance(env, dict):
                self._env = {str(k): str(v) for k, v in env.items()}
        if token is not None:
            if len(self._accepted) > 64:
                self._accepted.clear()
            self._accepted[token] = now + self.ttl
            self._clocks = _clocks()
        return True

    def sandbox_env(self) -> dict[str, str] | None:
        return self._env

    async def aclose(self) -> None:
        await self._http.aclose()


def _clocks() -> float:
    return time.time() - time.monotonic()
