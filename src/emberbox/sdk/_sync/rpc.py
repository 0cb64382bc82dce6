# Generated from ../_async/rpc.py by scripts/unasync.py; edit that file instead.
"""Connect calls (JSON codec) to envd over httpx: unary, server-stream and client-stream.

Errors leave this module as SDK exceptions (through ``_errors``), never as httpx errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TypeVar

import httpx
from google.protobuf.message import Message

from ..._connect.codec import decode_json, encode_json
from ..._connect.envelope import FLAG_END_STREAM, EnvelopeDecoder, encode_envelope
from ..._connect.errors import Code, ConnectError
from .. import _errors

R = TypeVar("R", bound=Message)

_BASE_HEADERS = {"Connect-Protocol-Version": "1"}


def _timeout_headers(timeout: float | None) -> dict[str, str]:
    return {"Connect-Timeout-Ms": str(int(timeout * 1000))} if timeout else {}


def _http_timeout(timeout: float | None) -> httpx.Timeout:
    return httpx.Timeout(10.0, read=timeout + 5 if timeout else None)


class Rpc:
    """A base URL plus the headers every call carries (access token, routing)."""

    def __init__(self, http: httpx.Client, base_url: str, headers: Mapping[str, str]) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)

    def _headers(
        self, content_type: str, timeout: float | None, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        return {
            **_BASE_HEADERS,
            "Content-Type": content_type,
            **_timeout_headers(timeout),
            **self.headers,
            **(extra or {}),
        }

    def unary(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 60.0,
        files: bool = False,
    ) -> R:
        try:
            response = self.http.post(
                f"{self.base_url}/{method}",
                content=encode_json(request),
                headers=self._headers("application/json", timeout, headers),
                timeout=_http_timeout(timeout),
            )
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, method) from exc
        if response.status_code != 200:
            err = ConnectError.from_http(response.status_code, response.content)
            raise _errors.from_connect(err, files=files)
        return decode_json(response.content, response_type)

    def server_stream(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 60.0,
        files: bool = False,
    ) -> Iterator[R]:
        """Yield each message; the end-of-stream frame's error is raised as an SDK exception."""
        try:
            with self.http.stream(
                "POST",
                f"{self.base_url}/{method}",
                content=encode_envelope(encode_json(request)),
                headers=self._headers("application/connect+json", timeout, headers),
                timeout=_http_timeout(timeout),
            ) as response:
                if response.status_code != 200:
                    err = ConnectError.from_http(response.status_code, response.read())
                    raise _errors.from_connect(err, files=files)
                decoder = EnvelopeDecoder()
                for chunk in response.iter_raw():
                    for flags, payload in decoder.feed(chunk):
                        if flags & FLAG_END_STREAM:
                            end = ConnectError.from_end_stream(json.loads(payload or b"{}"))
                            if end is not None:
                                raise _errors.from_connect(end, files=files)
                            return
                        yield decode_json(payload, response_type)
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, method) from exc
        err = ConnectError(Code.UNAVAILABLE, f"{method}: stream ended without end-of-stream")
        raise _errors.from_connect(err)

    def client_stream(
        self,
        method: str,
        requests: Iterator[Message],
        response_type: type[R],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 60.0,
    ) -> R:
        def body() -> Iterator[bytes]:
            for message in requests:
                yield encode_envelope(encode_json(message))
            yield encode_envelope(b"{}", FLAG_END_STREAM)

        try:
            response = self.http.post(
                f"{self.base_url}/{method}",
                content=body(),
                headers=self._headers("application/connect+json", timeout, headers),
                timeout=_http_timeout(timeout),
            )
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, method) from exc
        if response.status_code != 200:
            err = ConnectError.from_http(response.status_code, response.content)
            raise _errors.from_connect(err)
        result: R | None = None
        for flags, payload in EnvelopeDecoder().feed(response.content):
            if flags & FLAG_END_STREAM:
                end = ConnectError.from_end_stream(json.loads(payload or b"{}"))
                if end is not None:
                    raise _errors.from_connect(end)
            else:
                result = decode_json(payload, response_type)
        return result if result is not None else response_type()
