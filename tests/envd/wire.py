"""Raw Connect calls for wire-level tests: we check frames and bodies, not an SDK's reading."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx


def envelope(payload: dict[str, Any] | bytes, flags: int = 0) -> bytes:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return struct.pack(">BI", flags, len(data)) + data


def frames(body: bytes) -> list[tuple[int, dict[str, Any]]]:
    out = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + size])))
        body = body[5 + size :]
    return out


def stream_call(
    url: str, method: str, message: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, list[tuple[int, dict[str, Any]]]]:
    response = httpx.post(
        f"{url}/{method}",
        content=envelope(message),
        headers={
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
            **(headers or {}),
        },
        timeout=30,
    )
    return response, frames(response.content) if response.status_code == 200 else []


def unary_call(
    url: str, method: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{url}/{method}",
        content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=30,
    )


def run(
    url: str, cmd: str, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    _, out = stream_call(
        url,
        "process.Process/Start",
        {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": False},
        headers,
    )
    return out
