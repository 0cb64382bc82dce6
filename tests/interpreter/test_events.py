"""IOPub message → event mapping, against the SDK's own parser."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from e2b_code_interpreter.models import Execution, parse_output

from emberbox.interpreter import events


def _message(kind: str, content: dict[str, object]) -> dict[str, object]:
    date = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return {"msg_type": kind, "header": {"msg_type": kind, "date": date}, "content": content}


def _parse(*messages: dict[str, object]) -> Execution:
    execution = Execution()
    for message in messages:
        event = events.from_iopub(message)
        if event is not None:
            line = events.encode(event)
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            parse_output(execution, line.decode())
    return execution


def test_every_format_lands_in_its_result_field() -> None:
    bundle = {
        "text/plain": "'quoted'",
        "text/html": "<b>h</b>",
        "text/markdown": "# m",
        "image/svg+xml": "<svg/>",
        "image/png": "iVBOR",
        "image/jpeg": "/9j/",
        "application/pdf": "JVBERi0=",
        "text/latex": "$x$",
        "application/json": {"a": 1},
        "application/javascript": "1;",
        "application/x-custom": "c",
    }
    execution = _parse(
        _message("execute_input", {"execution_count": 7}),
        _message("display_data", {"data": {"text/plain": "shown"}}),
        _message("execute_result", {"data": bundle, "execution_count": 7}),
    )
    shown, main = execution.results
    assert (shown.text, shown.is_main_result) == ("shown", False)
    assert main.is_main_result and execution.execution_count == 7
    assert (main.text, main.html, main.markdown) == ("quoted", "<b>h</b>", "# m")
    assert main.svg == "<svg/>"
    assert (main.png, main.jpeg, main.pdf, main.latex) == ("iVBOR", "/9j/", "JVBERi0=", "$x$")
    assert (main.json, main.javascript) == ({"a": 1}, "1;")
    assert main.extra == {"application/x-custom": "c"}
    assert main.chart is None  # not built in this slice


def test_streams_errors_and_bookkeeping() -> None:
    execution = _parse(
        _message("status", {"execution_state": "busy"}),
        _message("stream", {"name": "stdout", "text": "out\n"}),
        _message("stream", {"name": "stderr", "text": "err\n"}),
        _message("error", {"ename": "E", "evalue": "v", "traceback": ["a", "b"]}),
    )
    assert execution.logs.stdout == ["out\n"] and execution.logs.stderr == ["err\n"]
    assert execution.error is not None
    assert (execution.error.name, execution.error.value, execution.error.traceback) == (
        "E",
        "v",
        "a\nb",
    )
    event = events.from_iopub(_message("stream", {"name": "stdout"}))
    line = json.loads(events.encode(event or {}))
    assert line["timestamp"] == "2026-01-02T03:04:05+00:00"
