"""The one shape every error leaves the server in: JSON ``{code, message}``, ``code`` being the
HTTP status, for the API, its middlewares (auth, rate limits) and the sandbox proxy alike.

The generated E2B clients parse every documented error body as that shape and crash on
anything else, and the JS SDK decides "not found" from the body's ``code``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import Send


def error_body(status: int, message: str, error_code: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"code": status, "message": message}
    if error_code:
        body["error_code"] = error_code
    return body


async def send_json_error(
    send: Send, status: int, message: str, headers: Mapping[str, str] | None = None
) -> None:
    """The error body from plain ASGI code that runs outside FastAPI's handlers."""
    payload = json.dumps(error_body(status, message)).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
