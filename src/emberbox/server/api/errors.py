"""Every error leaves the API as JSON ``{code, message}`` (``wire_errors``); this is the one
place where the lifecycle's domain errors become HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ..lifecycle import errors as domain
from ..wire_errors import error_body
from .models import Error

log = logging.getLogger("emberbox.api")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route lists in ``/openapi.json``: those any route may give (400,
    401, 429, 500) and ``codes``, each an ``Error``."""
    return {code: {"model": Error} for code in (400, 401, 429, 500, *codes)}


class ApiError(Exception):
    """Raised anywhere below a route to produce one error response.

    ``should_retry`` False adds ``Should-Retry: false``: the Python SDK otherwise replays 429 and
    5xx answers, even for creates, which would turn one refused create into four.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        should_retry: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})
        if should_retry is not None:
            self.headers["Should-Retry"] = "true" if should_retry else "false"


def json_error(
    status: int,
    message: str,
    *,
    error_code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, error_code), status, headers=dict(headers or {})
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error")
            return "request body is not valid JSON" + (f": {reason}" if reason else "")
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "extra_forbidden":
            parts.append(f"{loc}: not a field this server knows (not supported)")
            continue
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


# Most specific first: Busy is a Conflict that is worth retrying.
_STATUS: list[tuple[type[domain.LifecycleError], int]] = [
    (domain.NotFound, 404),
    (domain.Invalid, 400),
    (domain.Busy, 409),
    (domain.Conflict, 409),
    (domain.QuotaExceeded, 429),
    (domain.Unsupported, 501),
    (domain.NoCapacity, 503),
    (domain.GuestUnhealthy, 503),
    (domain.Unreachable, 502),
    (domain.NodeFailed, 502),
    (domain.SandboxFailed, 500),
]


def status_of(exc: domain.LifecycleError) -> int:
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return json_error(exc.status, exc.message, error_code=exc.error_code, headers=exc.headers)

    async def on_domain_error(_: Request, exc: Exception) -> Response:
        """Only a Busy answer invites a retry: the Python SDK otherwise replays 429 and 5xx
        answers, even for creates, which would turn one refused create into four."""
        assert isinstance(exc, domain.LifecycleError)
        busy = isinstance(exc, domain.Busy)
        headers = {"Should-Retry": "true", "Retry-After": "1"} if busy else {}
        if not busy and status_of(exc) != 404:
            headers["Should-Retry"] = "false"
        return json_error(status_of(exc), exc.message, error_code=exc.error_code, headers=headers)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        elif exc.status_code == 405:
            message = "method not allowed on this endpoint"
        elif exc.status_code == 400 and "parsing the body" in message:
            message = "request body is not valid JSON"
        return json_error(exc.status_code, message, headers=exc.headers)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return json_error(400, _validation_message(exc))

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return json_error(500, "internal server error", headers={"Should-Retry": "false"})

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(domain.LifecycleError, on_domain_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
