# Generated from ../_async/code.py by scripts/unasync.py; edit that file instead.
"""``run_code`` and code contexts: the sandbox's code interpreter (port 49999, E2B's protocol).

Mixed into :class:`Sandbox`, which sets the interpreter's URL and headers (routing, the
envd access token) in ``_setup``. Output callbacks fire as each NDJSON line arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .. import _errors
from .._callbacks import Handlers
from .._code import (
    ExecutionStream,
    context_path,
    execute_body,
    execution_limit,
    execution_timed_out,
    stream_timeout,
)
from .._config import ConnectionConfig
from ..code_models import (
    Context,
    Execution,
    ExecutionError,
    OutputMessage,
    Result,
    RunCodeLanguage,
)
from ..exceptions import SandboxUnavailableException

OnOutput = Callable[[OutputMessage], object]
OnResult = Callable[[Result], object]
OnError = Callable[[ExecutionError], object]


class CodeInterpreter:
    """Stateful notebook cells: variables, imports and the working directory persist per
    context; each language has a default context, created on first use."""

    _http: httpx.Client
    _config: ConnectionConfig
    _interpreter_url: str
    _interpreter_headers: dict[str, str]

    def run_code(
        self,
        code: str,
        language: RunCodeLanguage | None = None,
        context: Context | str | None = None,
        on_stdout: OnOutput | None = None,
        on_stderr: OnOutput | None = None,
        on_result: OnResult | None = None,
        on_error: OnError | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> Execution:
        """Run ``code`` in ``context`` (a :class:`Context` or its id) or the default context of
        ``language`` (default Python); not both.

        A cell's exception is returned as ``Execution.error``; the call raises only when it
        could not run: :class:`NotFoundException` (unknown context),
        :class:`InvalidArgumentException` (bad language or arguments),
        :class:`TimeoutException` (``timeout`` seconds passed, default 300, 0 = none; the
        kernel is interrupted and keeps its variables). ``envs`` apply to this call only.
        """
        body = execute_body(code, language, context, envs)
        limit = execution_limit(timeout)
        handlers = Handlers(
            stdout=on_stdout, stderr=on_stderr, result=on_result, error=on_error
        )
        stream = ExecutionStream(limit)
        try:
            with self._http.stream(
                "POST",
                f"{self._interpreter_url}/execute",
                json=body,
                headers=self._interpreter_headers,
                timeout=stream_timeout(limit, request_timeout or self._config.request_timeout),
            ) as response:
                if not response.is_success:
                    response.read()
                    raise _errors.from_http(response, what="run_code")
                for line in response.iter_lines():
                    due = stream.feed(line)
                    if due is not None:
                        handlers.emit(*due)
        except httpx.ReadTimeout as exc:
            raise execution_timed_out(limit) from exc
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, "run_code") from exc
        return stream.finish()

    def create_code_context(
        self,
        cwd: str | None = None,
        language: RunCodeLanguage | None = None,
        request_timeout: float | None = None,
    ) -> Context:
        """A new context (its own kernel), started before this returns; ``cwd`` defaults to
        ``/home/user``, ``language`` to Python."""
        body = {k: v for k, v in (("language", language), ("cwd", cwd)) if v}
        data = self._interpreter(
            "POST", "/contexts", "create_code_context", body, request_timeout
        )
        return Context.from_json(data)

    def list_code_contexts(self, request_timeout: float | None = None) -> list[Context]:
        data = self._interpreter(
            "GET", "/contexts", "list_code_contexts", None, request_timeout
        )
        return [Context.from_json(item) for item in data]

    def remove_code_context(
        self, context: Context | str, request_timeout: float | None = None
    ) -> None:
        """Stop the context's kernel; an unknown id raises :class:`NotFoundException`."""
        self._interpreter(
            "DELETE", context_path(context), "remove_code_context", None, request_timeout
        )

    def restart_code_context(
        self, context: Context | str, request_timeout: float | None = None
    ) -> None:
        """A fresh kernel in the same context: its state is gone, its id and cwd stay."""
        path = context_path(context, "/restart")
        self._interpreter("POST", path, "restart_code_context", None, request_timeout)

    def _interpreter(
        self,
        method: str,
        path: str,
        what: str,
        body: dict[str, Any] | None,
        request_timeout: float | None,
    ) -> Any:
        try:
            response = self._http.request(
                method,
                f"{self._interpreter_url}{path}",
                json=body,
                headers=self._interpreter_headers,
                timeout=request_timeout or self._config.request_timeout,
            )
        except httpx.HTTPError as exc:
            raise _errors.from_transport(exc, what) from exc
        if not response.is_success:
            raise _errors.from_http(response, what=what)
        try:
            return response.json()
        except ValueError:
            raise SandboxUnavailableException(f"{what}: the answer is not JSON") from None
