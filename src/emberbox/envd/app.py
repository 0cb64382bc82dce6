"""Assembles envd: Connect RPCs, plain-HTTP routes, access-token checks, JSON errors."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._connect.errors import Code, ConnectError
from ..signed_urls import FILES_PATH
from ..vocabulary import ENVD_TOKEN_HEADER
from . import files, journal, system
from .filesystem.service import FilesystemService
from .http_errors import UNAUTHORIZED_MESSAGE, HTTPProblem, problem_response
from .metrics import MetricsSampler
from .process.manager import ProcessManager
from .process.service import ProcessService
from .rpc import ConnectApp
from .state import EnvdState

if TYPE_CHECKING:  # loaded by __main__ only for --guest
    from .guest.duties import GuestDuties

# Reachable without X-Access-Token: health probes, /files (token or signature, checked there),
# and /init (checks the current token itself).
_OPEN_PATHS = {"/health", FILES_PATH, "/init"}
_RPC_PATH = re.compile(r"^/[a-z][\w]*\.[A-Z]\w*/\w+$")


class AccessTokenMiddleware:
    def __init__(self, app: ASGIApp, state: EnvdState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.state.access_token
            and scope["path"] not in _OPEN_PATHS
            and not self.state.token_ok(Headers(scope=scope).get(ENVD_TOKEN_HEADER))
        ):
            await problem_response(401, UNAUTHORIZED_MESSAGE)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class EnvdApp:
    """Top-level ASGI app: Connect paths go to :class:`ConnectApp`, the rest to Starlette."""

    def __init__(self, state: EnvdState, duties: GuestDuties | None = None) -> None:
        self.state = state
        self.duties = duties
        self.processes = ProcessManager(state)
        self.filesystem = FilesystemService(state)
        self.rpc = ConnectApp(
            {**ProcessService(state, self.processes).methods(), **self.filesystem.methods()}
        )
        sampler = MetricsSampler()
        self.journal = journal.install()

        def bind(
            fn: Callable[..., Awaitable[Response]], *first: Any
        ) -> Callable[[Request], Awaitable[Response]]:
            return functools.partial(fn, *first)

        wake = self.processes.standbys.wake
        routes = [
            Route("/health", bind(system.health, wake), methods=["GET", "HEAD"]),
            Route("/init", bind(system.init, state, wake), methods=["POST"]),
            Route("/detach", bind(system.detach, self.processes.detach_streams), methods=["POST"]),
            Route("/envs", bind(system.envs, state), methods=["GET"]),
            Route("/metrics", bind(system.metrics, sampler), methods=["GET"]),
            Route("/logs", bind(system.logs, self.journal), methods=["GET"]),
            Route(FILES_PATH, bind(files.download, state), methods=["GET", "HEAD"]),
            Route(FILES_PATH, bind(files.upload, state), methods=["POST"]),
        ]
        self.http = Starlette(
            routes=routes,
            exception_handlers={HTTPProblem: _problem, HTTPException: _http_exception},
            lifespan=self._lifespan,
        )
        self._asgi = AccessTokenMiddleware(self._dispatch, state)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # anyio loads its event-loop backend at its first use (a download's streamed answer):
        # loaded now, it is in the template's snapshot, not in each sandbox's first file read
        # (~70 ms in gVisor). It costs every sandbox ~1.2 MiB, which nearly all would pay at
        # their first download anyway.
        await anyio.lowlevel.checkpoint()
        if self.duties is not None:
            self.duties.start()
        # Whether PTYs can start without a fork of envd (``process/terminal.py``): asked in
        # the background now, so a template's snapshot holds the answer.
        self.processes.probe_terminals()
        try:
            yield
        finally:
            try:
                if self.duties is not None:
                    await self.duties.stop()
            finally:
                await self.processes.close()
                self.filesystem.close()

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if self.rpc.handles(path):
                await self.rpc(scope, receive, send)
                return
            if _RPC_PATH.match(path):
                err = ConnectError(Code.UNIMPLEMENTED, f"unknown procedure {path}")
                await Response(err.to_json(), 404, media_type="application/json")(
                    scope, receive, send
                )
                return
        await self.http(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return problem_response(exc.status, exc.message)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem_response(exc.status_code, exc.detail)


def create_app(state: EnvdState | None = None, duties: GuestDuties | None = None) -> EnvdApp:
    return EnvdApp(state or EnvdState(), duties)
