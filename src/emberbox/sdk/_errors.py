"""The one place where wire failures become SDK exceptions."""

from __future__ import annotations

import json

import httpx

from .._connect.errors import Code, ConnectError
from ..vocabulary import GUEST_UNRESPONSIVE_ERROR
from .exceptions import (
    AuthenticationException,
    FileNotFoundException,
    GuestUnresponsiveException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxUnavailableException,
    TemplateException,
    TimeoutException,
    UnsupportedException,
)


def from_connect(err: ConnectError, *, files: bool = False) -> SandboxException:
    """Map an envd RPC error; ``files`` makes not_found a :class:`FileNotFoundException`."""
    message = err.message
    if err.code is Code.NOT_FOUND:
        return FileNotFoundException(message) if files else NotFoundException(message)
    if err.code in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.OUT_OF_RANGE):
        return InvalidArgumentException(message)
    if err.code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED):
        return AuthenticationException(message)
    if "not enough disk space" in message and err.code in (
        Code.INTERNAL,  # (envd's code for it: the official SDK reads RESOURCE_EXHAUSTED as a
        Code.RESOURCE_EXHAUSTED,  # rate limit; older envds sent that)
    ):
        return NotEnoughSpaceException(message)
    if err.code is Code.RESOURCE_EXHAUSTED:
        return RateLimitException(message)
    if err.code in (Code.DEADLINE_EXCEEDED, Code.CANCELED):
        return TimeoutException(message)
    if err.code is Code.UNAVAILABLE:
        return SandboxUnavailableException(message)
    return SandboxException(f"{err.code}: {message}")


def _body(response: httpx.Response) -> dict[str, object] | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _message(response: httpx.Response) -> str:
    body = _body(response)
    if body is None:
        return response.text or response.reason_phrase
    return str(body["message"]) if "message" in body else response.text


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def from_http(
    response: httpx.Response, *, what: str = "request", files: bool = False
) -> SandboxException:
    """Map a non-2xx REST or envd HTTP answer (bodies are ``{code, message}``, some with an
    ``error_code``)."""
    body = _body(response) or {}
    if response.status_code == 409 and body.get("error_code") == GUEST_UNRESPONSIVE_ERROR:
        return GuestUnresponsiveException(f"{what}: {_message(response)}")
    return from_status(
        response.status_code,
        f"{what}: {_message(response)}",
        files=files,
        template=what.startswith("template"),
        retry_after=retry_after(response),
    )


def from_status(
    status: int,
    message: str,
    *,
    files: bool = False,
    template: bool = False,
    retry_after: float | None = None,
) -> SandboxException:
    """Map a status and message, from a response or from a ``{code, message}`` inside a 2xx
    body (one failed fork of several)."""
    if status == 400:
        return InvalidArgumentException(message)
    if status in (401, 403):
        return AuthenticationException(message)
    if status == 404:
        return FileNotFoundException(message) if files else NotFoundException(message)
    if status == 409:
        return SandboxUnavailableException(message)
    if status == 413:
        return InvalidArgumentException(message)
    if status == 429:
        return RateLimitException(message, retry_after)
    if status == 501:
        return UnsupportedException(message)
    if status == 507:
        return NotEnoughSpaceException(message)
    if status == 502:
        return SandboxUnavailableException(message)
    if status in (408, 504):
        return TimeoutException(message)
    if status == 422 and template:
        return TemplateException(message)
    return SandboxException(f"{status}: {message}")


def from_transport(exc: httpx.HTTPError, what: str) -> SandboxException:
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutException(f"{what}: timed out ({type(exc).__name__})")
    return SandboxUnavailableException(f"{what}: {type(exc).__name__}: {exc}")
