"""Jupyter IOPub messages → the JSON events of ``POST /execute``, one per line.

The shapes are the ones ``e2b_code_interpreter.models._parse_output`` reads:

``{"type": "stdout"|"stderr", "text", "timestamp"}``
``{"type": "result", <format>: ..., "is_main_result": bool}``
``{"type": "error", "name", "value", "traceback"}``
``{"type": "number_of_executions", "execution_count"}``
``{"type": "keepalive"}`` (ignored by the SDKs) and finally ``{"type": "end_of_execution"}``.

Pure functions, no I/O: the kernel side lives in :mod:`.kernels`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from .kernel_ext import CHART_MIME

Event = dict[str, Any]

# Jupyter MIME type → field of the SDK's ``Result``. Anything else lands in ``extra``.
# ``e2b/chart`` is what our kernel extension adds to matplotlib figures (:mod:`.kernel_ext`).
RESULT_FORMATS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    CHART_MIME: "chart",
}

END_OF_EXECUTION: Event = {"type": "end_of_execution"}
KEEPALIVE: Event = {"type": "keepalive"}


def encode(event: Event) -> bytes:
    """One NDJSON line."""
    return json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n"


def _timestamp(message: dict[str, Any]) -> str:
    date = message.get("header", {}).get("date")
    if isinstance(date, datetime):
        return date.isoformat()
    return str(date) if date is not None else datetime.now().astimezone().isoformat()


def result_event(bundle: dict[str, Any], *, is_main_result: bool) -> Event:
    """A MIME bundle (``execute_result`` / ``display_data`` content ``data``) as a result event."""
    event: Event = {"type": "result"}
    extra: dict[str, Any] = {}
    for mime, value in bundle.items():
        field = RESULT_FORMATS.get(mime)
        if field is None:
            extra[mime] = value
            continue
        # A string's repr: the SDKs show the string itself, as E2B's server does.
        if field == "text" and _is_quoted(value):
            value = value[1:-1]
        event[field] = value
    if extra:
        event["extra"] = extra
    event["is_main_result"] = is_main_result
    return event


def _is_quoted(value: Any) -> bool:
    return isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == "'"


def error_event(name: str, value: str, traceback: list[str] | str) -> Event:
    text = traceback if isinstance(traceback, str) else "\n".join(traceback)
    return {"type": "error", "name": name, "value": value, "traceback": text}


def from_iopub(message: dict[str, Any]) -> Event | None:
    """The event for one IOPub message of the running cell, or None for bookkeeping ones."""
    kind = message.get("msg_type") or message.get("header", {}).get("msg_type")
    content = message.get("content", {})
    if kind == "stream":
        name = content.get("name")
        if name not in ("stdout", "stderr"):
            return None
        return {"type": name, "text": content.get("text", ""), "timestamp": _timestamp(message)}
    if kind == "execute_result":
        return result_event(dict(content.get("data", {})), is_main_result=True)
    if kind == "display_data":
        return result_event(dict(content.get("data", {})), is_main_result=False)
    if kind == "error":
        return error_event(
            str(content.get("ename", "Error")),
            str(content.get("evalue", "")),
            content.get("traceback", []),
        )
    if kind == "execute_input":
        count = content.get("execution_count")
        if isinstance(count, int):
            return {"type": "number_of_executions", "execution_count": count}
    return None
