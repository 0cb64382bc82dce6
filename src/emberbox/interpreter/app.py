"""The HTTP face of the code interpreter (E2B's port-49999 protocol), a plain Starlette app.

Routes (shapes from the official ``e2b-code-interpreter`` SDK's own parsing code):

``GET /health`` → 200 ``"OK"``
``POST /execute`` ``{code, context_id?, language?, env_vars?}`` → 200 NDJSON (:mod:`.events`)
``POST /contexts`` ``{language?, cwd?}`` → 200 ``{id, language, cwd}``
``GET /contexts`` → 200 ``[{id, language, cwd}]``
``DELETE /contexts/{id}`` → 200 ``null``;  ``POST /contexts/{id}/restart`` → 200 ``null``

Every error is ``{"code": <status>, "message": ...}``: 400 bad input (unknown language names
the supported ones), 401 a missing (on ``/execute``) or wrong ``X-Access-Token``, 404 unknown
context, 503 when envd cannot be asked about a token (:mod:`.tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..vocabulary import ENVD_TOKEN_HEADER
from . import events
from .contexts import BadRequest, Contexts, UnknownContext
from .kernels import KernelStartFailed, Run
from .tokens import FixedToken, TokenCheck, TokenCheckFailed

log = logging.getLogger(__name__)

UNAUTHORIZED_MESSAGE = "unauthorized access, please provide a valid access token"
KEEPALIVE_SECONDS = 5.0


def problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


class EventStream(Response):
    """Streams a :class:`Run` as NDJSON; a client that goes away abandons (interrupts) it.

    Written as a raw ASGI response because the disconnect must be noticed while the kernel is
    silent, not only at the next write.
    """

    media_type = "application/x-ndjson"

    def __init__(self, run: Run, keepalive: float) -> None:
        super().__init__(media_type=self.media_type)
        self.raw_headers = [(b"content-type", self.media_type.encode())]  # chunked, no length
        self.run = run
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.run
        finished = False

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    run.abandon()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        getter: asyncio.Task[events.Event | None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while not run.abandoned.is_set():
                if getter is None:
                    getter = asyncio.create_task(run.events.get())
                done, _ = await asyncio.wait(
                    {getter, watcher}, timeout=self.keepalive, return_when="FIRST_COMPLETED"
                )
                if getter not in done:
                    if not done:  # silence: tell proxies the stream is alive
                        await send(_body(events.encode(events.KEEPALIVE)))
                    continue
                event, getter = getter.result(), None
                if event is None:
                    finished = True
                    break
                await send(_body(events.encode(event)))
            if finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away between two writes
            pass
        finally:
            if not finished:
                run.abandon()
            for task in (watcher, getter):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task


def _body(chunk: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{key!r} must be a string")


def create_app(
    contexts: Contexts,
    *,
    access_token: str | None = None,
    tokens: TokenCheck | None = None,
    keepalive: float = KEEPALIVE_SECONDS,
    prestart: Sequence[str] = (),
) -> Starlette:
    """The ASGI app over ``contexts``.

    **Parameters:**

    * `contexts` - the service's :class:`Contexts` (kernels are closed on shutdown).
    * `access_token` - (optional) require this ``X-Access-Token``; default none.
    * `tokens` - (optional) who decides about tokens instead (:class:`.tokens.EnvdToken`).
    * `keepalive` - (optional) seconds of kernel silence before a keepalive line; default 5.
    * `prestart` - (optional) languages whose default context starts before the service
      answers, so the first call does not wait for a kernel; default none.
    """

    checker = tokens or FixedToken(access_token)

    async def health(request: Request) -> Response:
        return PlainTextResponse("OK")

    async def execute(request: Request) -> Response:
        body = await _json_object(request)
        code = body.get("code")
        if not isinstance(code, str):
            raise BadRequest("'code' must be a string")
        context_id = _optional_str(body, "context_id")
        language = _optional_str(body, "language")
        if context_id and language:
            raise BadRequest("give 'context_id' or 'language', not both")
        env_vars = body.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise BadRequest("'env_vars' must map strings to strings")
        context = contexts.get(context_id) if context_id else await contexts.default(language)
        contexts.check_env(context, env_vars)
        sandbox_env = checker.sandbox_env()
        if sandbox_env is not None:  # envd's own settings stay out, as in kernel_env()
            sandbox_env = {k: v for k, v in sandbox_env.items() if not k.startswith("EMBERBOX_")}
        return EventStream(context.execute(code, env_vars, sandbox_env), keepalive)

    async def create_context(request: Request) -> Response:
        body = await _json_object(request)
        context = await contexts.create(_optional_str(body, "language"), _optional_str(body, "cwd"))
        return JSONResponse(context.describe())

    async def list_contexts(request: Request) -> Response:
        return JSONResponse([c.describe() for c in contexts.list()])

    async def delete_context(request: Request) -> Response:
        await contexts.delete(request.path_params["context_id"])
        return JSONResponse(None)

    async def restart_context(request: Request) -> Response:
        await contexts.get(request.path_params["context_id"]).restart()
        return JSONResponse(None)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/execute", execute, methods=["POST"]),
        Route("/contexts", create_context, methods=["POST"]),
        Route("/contexts", list_contexts, methods=["GET"]),
        Route("/contexts/{context_id}", delete_context, methods=["DELETE"]),
        Route("/contexts/{context_id}/restart", restart_context, methods=["POST"]),
    ]

    async def unknown_context(request: Request, exc: Exception) -> Response:
        return problem(404, str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return problem(400, str(exc))

    async def no_kernel(request: Request, exc: Exception) -> Response:
        return problem(500, str(exc))

    return Starlette(
        routes=routes,
        middleware=[Middleware(AccessTokenMiddleware, tokens=checker)],
        exception_handlers={
            UnknownContext: unknown_context,
            BadRequest: bad_request,
            KernelStartFailed: no_kernel,
        },
        lifespan=lambda _app: _lifespan(contexts, tokens, prestart),
    )


class AccessTokenMiddleware:
    """401 ``{code, message}`` on ``POST /execute`` unless ``X-Access-Token`` is accepted.

    Only ``/execute`` runs code, and it is the only route the official SDK (2.11.5) sends the
    token on: requiring it on ``/contexts`` would break every context call of a secured sandbox.
    A wrong token is refused everywhere; a missing one only on ``/execute``.
    """

    def __init__(self, app: ASGIApp, tokens: TokenCheck) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = Headers(scope=scope).get(ENVD_TOKEN_HEADER)
            if given is not None or scope["path"] == "/execute":
                try:
                    accepted = await self.tokens.accepts(given)
                except TokenCheckFailed as exc:
                    await problem(503, str(exc))(scope, receive, send)
                    return
                if not accepted:
                    await problem(401, UNAUTHORIZED_MESSAGE)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(
    contexts: Contexts, tokens: TokenCheck | None, prestart: Sequence[str]
) -> AsyncIterator[None]:
    for language in prestart:
        try:
            await contexts.default(language)
        except Exception:  # the service still serves; the first call starts the kernel
            log.exception("could not pre-start the default %s context", language)
    try:
        yield
    finally:
        await contexts.close()
        aclose = getattr(tokens, "aclose", None)
        if aclose is not None:
            await aclose()
