"""The I/O-free fold of ``/execute`` lines into an Execution: what the service cannot yet send
(charts), what a newer service may send (unknown events and fields), and broken streams."""

from __future__ import annotations

import json
import time

import pytest

from emberbox import Result, SandboxUnavailableException, TimeoutException
from emberbox.sdk._code import ExecutionStream, execute_body, execution_limit

CHART = {
    "type": "line",
    "title": "t",
    "x_label": "x",
    "y_label": "y",
    "x_unit": None,
    "y_unit": None,
    "x_ticks": [1, 2],
    "x_tick_labels": ["1", "2"],
    "x_scale": "linear",
    "y_ticks": [3],
    "y_tick_labels": ["3"],
    "y_scale": "linear",
    "elements": [{"label": "a", "points": [[1, 3], [2, 3]]}],
}


def _line(**event: object) -> str:
    return json.dumps(event)


def test_a_chart_is_kept_as_the_dict_sent_and_unknown_things_are_ignored() -> None:
    stream = ExecutionStream(None)
    assert stream.feed(_line(type="number_of_executions", execution_count=7)) is None
    kind, result = stream.feed(
        _line(type="result", png="iVBOR", chart=CHART, is_main_result=False, new_field=1)
    ) or (None, None)
    assert kind == "result" and isinstance(result, Result)
    assert result.chart == CHART and result.formats() == ["png", "chart"]
    assert stream.feed(_line(type="keepalive")) is None
    assert stream.feed(_line(type="some_future_event", x=1)) is None
    assert stream.feed("") is None
    assert stream.feed(_line(type="end_of_execution")) is None
    execution = stream.finish()
    assert execution.execution_count == 7 and execution.results == [result]
    assert json.loads(execution.to_json())["results"][0]["chart"] == CHART


def test_a_stream_cut_before_its_end_is_an_error() -> None:
    stream = ExecutionStream(None)
    stream.feed(_line(type="stdout", text="partial", timestamp="2025-01-01T00:00:00Z"))
    with pytest.raises(SandboxUnavailableException, match="end_of_execution"):
        stream.finish()


def test_a_line_that_is_no_event_is_an_error() -> None:
    with pytest.raises(SandboxUnavailableException, match="not an event"):
        ExecutionStream(None).feed("<html>502 Bad Gateway</html>")
    with pytest.raises(SandboxUnavailableException):
        ExecutionStream(None).feed(_line(text="no type"))


def test_the_deadline_is_checked_on_every_line() -> None:
    stream = ExecutionStream(0.05)
    stream.feed(_line(type="keepalive"))
    time.sleep(0.1)
    with pytest.raises(TimeoutException):
        stream.feed(_line(type="keepalive"))


def test_limits_and_body() -> None:
    assert (execution_limit(None), execution_limit(0), execution_limit(2)) == (300.0, None, 2.0)
    assert execute_body("1", None, "ctx", {"A": "b"}) == {
        "code": "1",
        "context_id": "ctx",
        "language": None,
        "env_vars": {"A": "b"},
    }
