"""The proxy's own answers, in the shapes the SDKs recognise (protocol §2.1)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

from ...vocabulary import ENVD_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER

NOT_FOUND = "The sandbox was not found"
# E2B's proxy answers a paused sandbox 409 "The sandbox is paused"; both official SDKs treat only
# a 502 as "not running" (is_running() is False, calls raise SandboxNotRunningException on
# "was not found"), so we keep the 502 and that phrase, and add E2B's canAutoResume.
PAUSED = "The sandbox was not found running: it is paused (resume it with connect)"
PORT_CLOSED = "The sandbox is running but port is not open"
# Neither of the phrases above: the SDKs then probe the sandbox to learn whether it is gone.
NO_ANSWER = "The sandbox's server closed the connection without answering"


def sandbox_not_found(sandbox_id: str) -> dict[str, Any]:
    return {"sandboxId": sandbox_id, "message": NOT_FOUND, "code": 502}


def sandbox_paused(
    sandbox_id: str, can_auto_resume: bool, refused: str | None = None
) -> dict[str, Any]:
    """``can_auto_resume`` True means a wake was tried and failed, ``refused`` says why."""
    return {
        "sandboxId": sandbox_id,
        "message": PAUSED if refused is None else f"{PAUSED}; traffic could not wake it: {refused}",
        "code": 502,
        "canAutoResume": can_auto_resume,
    }


def port_not_open(sandbox_id: str, port: int) -> dict[str, Any]:
    return {"sandboxId": sandbox_id, "message": PORT_CLOSED, "port": port, "code": 502}


def upstream_failed(sandbox_id: str, port: int) -> dict[str, Any]:
    return {"sandboxId": sandbox_id, "message": NO_ANSWER, "port": port, "code": 502}


def traffic_token_missing(sandbox_id: str, port: int) -> dict[str, Any]:
    return {
        "sandboxId": sandbox_id,
        "message": f"this sandbox's ports are private: send its traffic access token in the "
        f"{TRAFFIC_TOKEN_HEADER} header",
        "port": port,
        "code": 401,
    }


def envd_credentials_missing(sandbox_id: str, port: int, reason: str) -> dict[str, Any]:
    return {
        "sandboxId": sandbox_id,
        "message": f"the sandbox is paused, and a request to envd wakes it only with its access "
        f"token in the {ENVD_TOKEN_HEADER} header or a valid signed file URL: {reason}",
        "port": port,
        "code": 401,
    }


def bad_route(message: str) -> dict[str, Any]:
    return {"message": message, "code": 400}


async def send_json(
    send: Send, status: int, body: dict[str, Any], *, websocket: bool = False
) -> None:
    """Plain HTTP JSON answer; for WebSockets, the ASGI denial-response extension."""
    payload = json.dumps(body).encode()
    prefix = "websocket.http.response" if websocket else "http.response"
    await send(
        {
            "type": f"{prefix}.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": f"{prefix}.body", "body": payload})
