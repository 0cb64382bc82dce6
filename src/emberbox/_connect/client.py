"""Connect client calls (JSON codec) over an ``httpx.AsyncClient``: unary and server-stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TypeVar

import httpx
from google.protobuf.message import Message

from .codec import decode_json, encode_json
from .envelope import FLAG_END_STREAM, EnvelopeDecoder, encode_envelope
from .errors import Code, ConnectError

R = TypeVar("R", bound=Message)

_BASE_HEADERS = {"Connect-Protocol-Version": "1"}


def _timeout_headers(timeout: float | None) -> dict[str, str]:
    return {} if timeout is None else {"Connect-Timeout-Ms": str(int(timeout * 1000))}


async def unary(
    http: httpx.AsyncClient,
    url: str,
    request: Message,
    response_type: type[R],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
) -> R:
    response = await http.post(
        url,
        content=encode_json(request),
        headers={
            **_BASE_HEADERS,
            "Content-Type": "application/json",
            **_timeout_headers(timeout),
            **(headers or {}),
        },
        timeout=None if timeout is None else timeout + 5,
    )
    if response.status_code != 200:
        raise ConnectError.from_http(response.status_code, response.content)
    return decode_json(response.content, response_type)


async def server_stream(
    http: httpx.AsyncClient,
    url: str,
    request: Message,
    response_type: type[R],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
) -> AsyncIterator[R]:
    """Yield each message; raise :class:`ConnectError` from the end-of-stream frame."""
    async with http.stream(
        "POST",
        url,
        content=encode_envelope(encode_json(request)),
        headers={
            **_BASE_HEADERS,
            "Content-Type": "application/connect+json",
            **_timeout_headers(timeout),
            **(headers or {}),
        },
        timeout=httpx.Timeout(10.0, read=None if timeout is None else timeout + 5),
    ) as response:
        if response.status_code != 200:
            raise ConnectError.from_http(response.status_code, await response.aread())
        decoder = EnvelopeDecoder()
        async for chunk in response.aiter_raw():
            for flags, payload in decoder.feed(chunk):
                if flags & FLAG_END_STREAM:
                    error = ConnectError.from_end_stream(json.loads(payload or b"{}"))
                    if error is not None:
                        raise error
                    return
                yield decode_json(payload, response_type)
    raise ConnectError(Code.UNAVAILABLE, "stream ended without an end-of-stream frame")
