"""I/O-free pieces of ``run_code`` both faces share: the request, the NDJSON event stream
folded into an :class:`Execution`, and the deadline.

Event shapes (docs/code-interpreter.md): ``stdout``/``stderr`` ``{text, timestamp}``,
``result`` ``{<format>..., is_main_result}``, ``error`` ``{name, value, traceback}``,
``number_of_executions`` ``{execution_count}``, ``keepalive`` and a final ``end_of_execution``.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import httpx

from ..interpreter import INTERPRETER_PORT as INTERPRETER_PORT  # re-exported for the faces
from .code_models import Context, Execution, ExecutionError, OutputMessage, Result
from .exceptions import InvalidArgumentException, SandboxUnavailableException, TimeoutException

DEFAULT_EXECUTION_TIMEOUT = 300.0  # seconds, as E2B's SDK


def execute_body(
    code: str,
    language: str | None,
    context: Context | str | None,
    envs: dict[str, str] | None,
) -> dict[str, Any]:
    if context is not None and language is not None:
        raise InvalidArgumentException("give run_code a context or a language, not both")
    return {
        "code": code,
        "context_id": context_id(context) if context is not None else None,
        "language": language,
        "env_vars": envs,
    }


def context_id(context: Context | str) -> str:
    return context.id if isinstance(context, Context) else context


def context_path(context: Context | str, suffix: str = "") -> str:
    """``/contexts/<id>``, the id escaped so it stays one path segment."""
    return f"/contexts/{quote(context_id(context), safe='')}{suffix}"


def execution_limit(timeout: float | None) -> float | None:
    """``None`` → E2B's default 300 s; ``0`` → no limit."""
    if timeout is None:
        return DEFAULT_EXECUTION_TIMEOUT
    return None if timeout == 0 else float(timeout)


def stream_timeout(limit: float | None, request_timeout: float) -> httpx.Timeout:
    """Connecting is bounded by ``request_timeout``; any silence longer than the limit ends the
    call (the service sends keepalives every 5 s, so a long silent cell is not mistaken)."""
    return httpx.Timeout(limit, connect=request_timeout)


def execution_timed_out(limit: float | None) -> TimeoutException:
    return TimeoutException(
        f"run_code: the execution ran past its timeout of {limit} s "
        "(the kernel is interrupted; pass a larger `timeout`, or 0 for none)"
    )


class ExecutionStream:
    """Folds the ``/execute`` lines into an :class:`Execution` and says which callback is due.

    It also enforces the whole call's deadline on every line, so a chatty or keepalive-ing cell
    cannot outlive ``timeout``.
    """

    def __init__(self, limit: float | None) -> None:
        self.execution = Execution()
        self.ended = False
        self._limit = limit
        self._deadline = time.monotonic() + limit if limit is not None else None

    def feed(self, line: str) -> tuple[str, Any] | None:
        """Apply one line; return ``(callback, payload)`` when a user callback is due."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise execution_timed_out(self._limit)
        if not line.strip():
            return None
        try:
            event = json.loads(line)
            kind = event["type"]
        except (ValueError, TypeError, KeyError):
            raise SandboxUnavailableException(
                f"run_code: the interpreter sent a line that is not an event: {line[:200]!r}"
            ) from None
        execution = self.execution
        if kind == "stdout" or kind == "stderr":
            text = str(event.get("text", ""))
            getattr(execution.logs, kind).append(text)
            return kind, OutputMessage(text, str(event.get("timestamp", "")), kind == "stderr")
        if kind == "result":
            result = Result.from_event(event)
            execution.results.append(result)
            return "result", result
        if kind == "error":
            execution.error = ExecutionError(
                str(event.get("name", "")),
                str(event.get("value", "")),
                str(event.get("traceback", "")),
            )
            return "error", execution.error
        if kind == "number_of_executions":
            execution.execution_count = event.get("execution_count")
        elif kind == "end_of_execution":
            self.ended = True
        return None  # keepalive, or a kind a newer service added

    def finish(self) -> Execution:
        if not self.ended:
            raise SandboxUnavailableException(
                "run_code: the interpreter's stream ended before end_of_execution"
            )
        return self.execution
