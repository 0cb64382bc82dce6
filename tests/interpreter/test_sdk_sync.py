"""The official ``e2b_code_interpreter.Sandbox`` (sync) against the real service."""

from __future__ import annotations

import base64
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import Context, Sandbox
from e2b_code_interpreter.charts import LineChart

from .conftest import TOKEN, Service, sdk_env, with_token


def test_state_survives_between_calls(sandbox: Any) -> None:
    first = sandbox.run_code("counter = 41")
    second = sandbox.run_code("counter += 1\ncounter")
    assert second.text == "42" and second.error is None
    assert second.execution_count == first.execution_count + 1


def test_stdout_and_stderr_stream_before_the_call_returns(sandbox: Any) -> None:
    seen: list[tuple[str, str, float]] = []
    execution = sandbox.run_code(
        "import sys, time\nprint('early')\nsys.stderr.write('warn\\n')\ntime.sleep(1.5)\n"
        "print('late')",
        on_stdout=lambda m: seen.append(("out", m.line, time.monotonic())),
        on_stderr=lambda m: seen.append(("err", m.line, time.monotonic())),
    )
    returned = time.monotonic()
    assert [(kind, line) for kind, line, _ in seen] == [
        ("out", "early\n"),
        ("err", "warn\n"),
        ("out", "late\n"),
    ]
    assert returned - seen[0][2] > 1.0  # 'early' arrived while the cell still slept
    assert execution.logs.stdout == ["early\n", "late\n"]
    assert execution.logs.stderr == ["warn\n"]


def test_rich_results(sandbox: Any) -> None:
    results: list[Any] = []
    execution = sandbox.run_code(
        "from IPython.display import HTML, Markdown, JSON, display\n"
        "import matplotlib.pyplot as plt\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Markdown('# Title'))\n"
        "display(JSON({'k': [1, 2]}))\n"
        "plt.plot([1, 2, 3], [3, 1, 2]); plt.title('t'); plt.show()\n"
        "'done'",
        on_result=results.append,
    )
    assert execution.error is None, execution.error
    html, markdown, json_, figure, main = execution.results
    assert results == execution.results
    assert html.html == "<b>bold</b>" and not html.is_main_result
    assert markdown.markdown == "# Title"
    assert json_.json == {"k": [1, 2]}
    assert base64.b64decode(figure.png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "png" in figure.formats() and "chart" in figure.formats()
    assert isinstance(figure.chart, LineChart) and figure.chart.title == "t"
    assert main.is_main_result and main.text == "done" and execution.text == "done"


def test_every_other_format_from_a_raw_bundle(sandbox: Any) -> None:
    execution = sandbox.run_code(
        "from IPython.display import display\n"
        "display({'text/plain': 'p', 'image/svg+xml': '<svg/>', 'image/jpeg': '/9j/',"
        " 'application/pdf': 'JVBERi0=', 'text/latex': '$x^2$',"
        " 'application/javascript': 'alert(1)', 'application/x-thing': 'x'}, raw=True)"
    )
    (result,) = execution.results
    assert (result.svg, result.jpeg, result.pdf) == ("<svg/>", "/9j/", "JVBERi0=")
    assert (result.latex, result.javascript) == ("$x^2$", "alert(1)")
    assert result.extra == {"application/x-thing": "x"}


def test_error_with_traceback(sandbox: Any) -> None:
    errors: list[Any] = []
    execution = sandbox.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert execution.error is not None and errors == [execution.error]
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", execution.error.traceback)  # IPython colours it
    assert "return 1 / 0" in plain and plain.endswith("ZeroDivisionError: division by zero")
    assert sandbox.run_code("1 + 1").text == "2"  # the context goes on


def test_env_vars_apply_to_one_call_only(sandbox: Any) -> None:
    sandbox.run_code("import os; os.environ['KEEP'] = 'before'")
    code = "import os; (os.environ.get('KEEP'), os.environ.get('ONLY_NOW'))"
    during = sandbox.run_code(code, envs={"KEEP": "during", "ONLY_NOW": "yes"})
    assert during.text == "('during', 'yes')"
    assert sandbox.run_code(code).text == "('before', None)"


def test_env_vars_for_a_call_leave_the_users_names_alone(sandbox: Any) -> None:
    """Putting the variables back after the call ran in the user's namespace, and deleted
    the user's own ``_k`` and ``_v``."""
    sandbox.run_code("_k, _v, k, v = 'mine', 'also mine', 1, 2")
    assert sandbox.run_code("(_k, ONLY := 1)", envs={"ONLY_NOW": "yes"}).text == "('mine', 1)"
    assert sandbox.run_code("(_k, _v, k, v)").text == "('mine', 'also mine', 1, 2)"


def test_timeout_interrupts_and_the_next_call_works(sandbox: Any) -> None:
    sandbox.run_code("kept = 'still here'")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.run_code("import time\ntime.sleep(60)\nfinished = True", timeout=2)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    after = sandbox.run_code("kept, 'finished' in globals()")
    assert after.text == "('still here', False)"  # interrupted, not restarted
    assert time.monotonic() - started < 5


def test_client_disconnect_interrupts(service: Service, sandbox: Any) -> None:
    with httpx.stream(
        "POST",
        f"{service.url}/execute",
        json={"code": "import time\nprint('go', flush=True)\ntime.sleep(60)\ngone = 1"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if '"stdout"' in line:
                break  # and hang up mid-cell
    started = time.monotonic()
    assert sandbox.run_code("'gone' in globals()").text == "False"
    assert time.monotonic() - started < 5


def test_contexts_create_list_restart_delete(sandbox: Any, tmp_path: Path) -> None:
    context = sandbox.create_code_context(cwd=str(tmp_path), language="python")
    assert (context.language, context.cwd) == ("python", str(tmp_path))
    assert context.id in [c.id for c in sandbox.list_code_contexts()]
    assert sandbox.run_code("import os; os.getcwd()", context=context).text == str(tmp_path)

    sandbox.run_code("mine = 1", context=context)
    assert sandbox.run_code("'mine' in globals()").text == "False"  # default context is apart
    sandbox.restart_code_context(context)
    restarted = sandbox.run_code("mine", context=context)
    assert restarted.error is not None and restarted.error.name == "NameError"

    sandbox.remove_code_context(context.id)
    assert context.id not in [c.id for c in sandbox.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sandbox.run_code("1", context=context)


def test_kernel_crash_is_reported_and_the_context_recovers(sandbox: Any) -> None:
    context = sandbox.create_code_context()
    crashed = sandbox.run_code(
        "import os, time\nprint('bye', flush=True)\ntime.sleep(0.5)\nos._exit(1)", context=context
    )
    assert crashed.error is not None and crashed.error.name == "KernelDied"
    assert crashed.logs.stdout == ["bye\n"]
    recovered = sandbox.run_code("21 * 2", context=context)
    assert recovered.text == "42" and recovered.error is None
    sandbox.remove_code_context(context)


def test_parallel_contexts_do_not_interleave(sandbox: Any) -> None:
    contexts = [sandbox.create_code_context() for _ in range(5)]
    outputs: dict[int, Any] = {}

    def run(index: int) -> None:
        code = f"import time\nfor i in range(40):\n    print('ctx{index}', i)\n    time.sleep(0.01)"
        outputs[index] = sandbox.run_code(code, context=contexts[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index in range(5):
        text = "".join(outputs[index].logs.stdout)
        assert text == "".join(f"ctx{index} {i}\n" for i in range(40))
    for context in contexts:
        sandbox.remove_code_context(context)


def test_unknown_context_is_404(sandbox: Any) -> None:
    ghost = Context(context_id="no-such-context", language="python", cwd="/")
    with pytest.raises(NotFoundException, match="no-such-context"):
        sandbox.run_code("1", context=ghost)
    with pytest.raises(NotFoundException):
        sandbox.restart_code_context(ghost)
    with pytest.raises(NotFoundException):
        sandbox.remove_code_context("no-such-context")


def test_unknown_language_is_400_naming_python(sandbox: Any, service: Service) -> None:
    with pytest.raises(SandboxException, match=r"400 Bad Request.*supported: python"):
        sandbox.run_code("1", language="cobol")
    with pytest.raises(SandboxException, match=r"400 Bad Request.*supported: python"):
        sandbox.create_code_context(language="java")
    response = httpx.post(f"{service.url}/execute", json={"code": "1", "language": "r"})
    assert response.status_code == 400
    assert response.json()["code"] == 400 and "python" in response.json()["message"]
    response = httpx.delete(f"{service.url}/contexts/nope")
    assert response.json() == {"code": 404, "message": "context 'nope' not found"}


def test_access_token(monkeypatch: pytest.MonkeyPatch, secured_service: Service) -> None:
    sdk_env(monkeypatch, secured_service)
    anonymous = Sandbox.create()
    with pytest.raises(SandboxException, match="401"):
        anonymous.run_code("1")
    response = httpx.post(f"{secured_service.url}/execute", json={"code": "1"})
    assert response.status_code == 401 and response.json()["code"] == 401
    wrong = httpx.get(f"{secured_service.url}/contexts", headers={"X-Access-Token": "nope"})
    assert wrong.status_code == 401 and set(wrong.json()) == {"code", "message"}

    # The SDK sends the token on /execute only; its context calls must still work.
    sandbox = with_token(Sandbox, anonymous, TOKEN)
    context = sandbox.create_code_context()
    assert sandbox.run_code("6 * 7", context=context).text == "42"
    sandbox.remove_code_context(context)
