"""Our SDK's ``run_code`` and code contexts, both faces, against the real interpreter service
on loopback (real ipykernel kernels): state, streaming, every result format, errors, contexts,
timeouts, env vars, the access token and how each failure maps to our exceptions."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from emberbox import (
    AuthenticationException,
    Context,
    Execution,
    ExecutionError,
    InvalidArgumentException,
    NotFoundException,
    OutputMessage,
    Result,
    SandboxUnavailableException,
    TimeoutException,
)
from emberbox.host.ports import free_loopback_port
from tests.interpreter.conftest import Service
from tests.sdk.conftest import INTERPRETER_TOKEN, code_sandbox, maybe

ANSI = re.compile(r"\x1b\[[0-9;]*m")


async def _context(coder: Any, **kwargs: Any) -> Context:
    context: Context = await maybe(coder.create_code_context(**kwargs))
    return context


async def test_state_persists_and_the_count_grows(coder: Any) -> None:
    context = await _context(coder)
    first = await maybe(coder.run_code("counter = 41", context=context))
    second = await maybe(coder.run_code("counter += 1\ncounter", context=context))
    assert isinstance(second, Execution)
    assert second.text == "42" and second.error is None
    assert first.text is None and first.results == []  # an assignment has no value
    assert second.execution_count == first.execution_count + 1
    await maybe(coder.remove_code_context(context))


async def test_callbacks_fire_while_the_cell_still_runs(coder: Any) -> None:
    seen: list[tuple[str, Any, float]] = []

    def record(kind: str) -> Any:
        return lambda item: seen.append((kind, item, time.monotonic()))

    execution = await maybe(
        coder.run_code(
            "import sys, time\nfrom IPython.display import display\n"
            "print('early', flush=True)\nsys.stderr.write('warn\\n'); sys.stderr.flush()\n"
            "display('shown')\ntime.sleep(1.5)\nprint('late')\n1 / 0",
            on_stdout=record("out"),
            on_stderr=record("err"),
            on_result=record("result"),
            on_error=record("error"),
        )
    )
    returned = time.monotonic()
    kinds = [kind for kind, _, _ in seen]
    assert kinds == ["out", "err", "result", "out", "error"]
    out, err, shown, late, error = (item for _, item, _ in seen)
    assert isinstance(out, OutputMessage) and (out.line, out.error) == ("early\n", False)
    assert (err.line, err.error, str(err)) == ("warn\n", True, "warn\n")
    assert re.match(r"\d{4}-\d\d-\d\dT", out.timestamp)  # the kernel's ISO 8601 time
    assert isinstance(shown, Result) and shown.text == "shown" and not shown.is_main_result
    assert late.line == "late\n"
    assert isinstance(error, ExecutionError) and error == execution.error
    for _, _, arrived in seen[:3]:  # they came while the cell slept, not with the answer
        assert returned - arrived > 1.0
    assert execution.logs.stdout == ["early\n", "late\n"]
    assert execution.logs.stderr == ["warn\n"]
    assert execution.results == [shown]


async def test_sync_callbacks_run_on_the_calling_thread(interpreter: Service) -> None:
    sbx = await code_sandbox("sync", interpreter.url)
    threads: list[threading.Thread] = []
    sbx.run_code("print('x')", on_stdout=lambda _: threads.append(threading.current_thread()))
    assert threads == [threading.current_thread()]
    sbx.close()


async def test_async_face_awaits_coroutine_callbacks(interpreter: Service) -> None:
    sbx = await code_sandbox("async", interpreter.url)
    seen: list[str] = []

    async def on_stdout(message: OutputMessage) -> None:
        await asyncio.sleep(0.01)
        seen.append(message.line)

    await sbx.run_code("print('awaited')", on_stdout=on_stdout)
    assert seen == ["awaited\n"]
    await sbx.close()


async def test_every_result_format(coder: Any) -> None:
    execution = await maybe(
        coder.run_code(
            "from IPython.display import display, HTML, Markdown, JSON\n"
            "import matplotlib.pyplot as plt\n"
            "display(HTML('<b>bold</b>'))\n"
            "display(Markdown('# Title'))\n"
            "display(JSON({'k': [1, 2]}))\n"
            "display({'text/plain': 'raw', 'image/svg+xml': '<svg/>', 'image/jpeg': '/9j/4A==',"
            " 'application/pdf': 'JVBERi0xLjQ=', 'text/latex': '$x^2$',"
            " 'application/javascript': 'alert(1)', 'e2b/data': {'rows': [1]},"
            " 'application/x-thing': 'x'}, raw=True)\n"
            "plt.plot([1, 2, 3], [3, 1, 2]); plt.show()\n"
            "'done'"
        )
    )
    assert execution.error is None, execution.error
    html, markdown, json_, raw, figure, main = execution.results
    assert (html.html, html["html"]) == ("<b>bold</b>", "<b>bold</b>")
    assert html._repr_html_() == "<b>bold</b>"
    assert markdown.markdown == "# Title"
    assert json_.json == {"k": [1, 2]}
    assert (raw.svg, raw.jpeg, raw.pdf, raw.latex) == (
        "<svg/>",
        "/9j/4A==",
        "JVBERi0xLjQ=",
        "$x^2$",
    )
    assert (raw.javascript, raw.data, raw.extra) == (
        "alert(1)",
        {"rows": [1]},
        {"application/x-thing": "x"},
    )
    assert raw.formats() == [
        *("text", "svg", "jpeg", "pdf", "latex", "javascript", "data", "application/x-thing"),
    ]
    assert base64.b64decode(figure.png).startswith(b"\x89PNG\r\n\x1a\n")
    assert figure.formats() == ["text", "png", "chart"] and not figure.is_main_result
    assert isinstance(figure.chart, dict) and figure.chart["type"] == "line"  # kept as sent
    assert figure.chart["elements"][0]["points"] == [[1, 3], [2, 1], [3, 2]]
    assert main.is_main_result and main.text == "done" == execution.text and str(main) == "done"
    assert all(not r.is_main_result for r in execution.results[:-1])
    assert '"png": "iVBOR' in execution.to_json()


async def test_an_exception_is_the_executions_error_and_the_context_goes_on(coder: Any) -> None:
    errors: list[ExecutionError] = []
    execution = await maybe(
        coder.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    )
    assert execution.error is not None and errors == [execution.error]
    assert (execution.error.name, execution.error.value) == (
        "ZeroDivisionError",
        "division by zero",
    )
    plain = ANSI.sub("", execution.error.traceback)
    assert "return 1 / 0" in plain and plain.endswith("ZeroDivisionError: division by zero")
    assert '"name": "ZeroDivisionError"' in execution.error.to_json()
    assert (await maybe(coder.run_code("1 + 1"))).text == "2"


async def test_a_dead_kernel_is_an_error_and_the_context_restarts(coder: Any) -> None:
    context = await _context(coder)
    crashed = await maybe(coder.run_code("import os\nos._exit(1)", context=context))
    assert crashed.error is not None and crashed.error.name == "KernelDied"
    assert (await maybe(coder.run_code("21 * 2", context=context))).text == "42"
    await maybe(coder.remove_code_context(context))


async def test_env_vars_apply_to_one_call(coder: Any) -> None:
    name = f"EMBERBOX_{uuid.uuid4().hex[:8].upper()}"
    code = f"import os; str(os.environ.get({name!r}))"
    during = await maybe(coder.run_code(code, envs={name: "set"}))
    assert during.text == "set"
    assert (await maybe(coder.run_code(code))).text == "None"


async def test_contexts_create_list_run_restart_remove(coder: Any, tmp_path: Path) -> None:
    context = await _context(coder, cwd=str(tmp_path), language="python")
    assert isinstance(context, Context)
    assert (context.language, context.cwd) == ("python", str(tmp_path))
    listed = await maybe(coder.list_code_contexts())
    assert context in listed and all(isinstance(c, Context) for c in listed)
    here = await maybe(coder.run_code("import os; os.getcwd()", context=context))
    assert here.text == str(tmp_path)

    await maybe(coder.run_code("mine = 1", context=context.id))  # an id works as well
    assert (await maybe(coder.run_code("'mine' in globals()"))).text == "False"
    assert (await maybe(coder.run_code("mine", context=context))).text == "1"
    await maybe(coder.restart_code_context(context.id))
    gone = await maybe(coder.run_code("mine", context=context))
    assert gone.error is not None and gone.error.name == "NameError"

    await maybe(coder.remove_code_context(context))
    assert context.id not in [c.id for c in await maybe(coder.list_code_contexts())]
    for call in (
        lambda: coder.run_code("1", context=context),
        lambda: coder.restart_code_context(context),
        lambda: coder.remove_code_context(context.id),
    ):
        with pytest.raises(NotFoundException, match=context.id):
            await maybe(call())


async def test_bad_input_is_invalid_argument(coder: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentException, match=r"cobol.*supported.*python"):
        await maybe(coder.run_code("1", language="cobol"))
    with pytest.raises(InvalidArgumentException, match=r"supported.*python"):
        await maybe(coder.create_code_context(language="cobol"))
    with pytest.raises(InvalidArgumentException):
        await maybe(coder.create_code_context(cwd=str(tmp_path / "missing")))
    with pytest.raises(InvalidArgumentException, match="not both"):
        await maybe(coder.run_code("1", language="python", context="some-id"))
    assert (await maybe(coder.run_code("'fine'", language="python"))).text == "fine"


async def test_a_silent_cell_past_its_timeout_is_interrupted(coder: Any) -> None:
    """The service sends keepalives every 0.2 s here, so only the call's own deadline ends it."""
    context = await _context(coder)
    await maybe(coder.run_code("kept = 'still here'", context=context))
    started = time.monotonic()
    with pytest.raises(TimeoutException, match=r"timeout of 1\.5 s"):
        await maybe(
            coder.run_code(
                "import time\ntime.sleep(60)\nfinished = 1", context=context, timeout=1.5
            )
        )
    assert 1.4 < time.monotonic() - started < 4
    started = time.monotonic()
    after = await maybe(coder.run_code("kept, 'finished' in globals()", context=context))
    assert after.text == "('still here', False)"  # interrupted, not restarted
    assert time.monotonic() - started < 4
    await maybe(coder.remove_code_context(context))


async def test_a_chatty_cell_past_its_timeout_is_interrupted(coder: Any) -> None:
    context = await _context(coder)
    printed: list[str] = []
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        await maybe(
            coder.run_code(
                "import time\nfor i in range(600):\n    print(i, flush=True)\n    time.sleep(0.05)",
                context=context,
                timeout=1.5,
                on_stdout=lambda m: printed.append(m.line),
            )
        )
    assert time.monotonic() - started < 4
    assert len(printed) > 5  # output streamed until the deadline
    assert (await maybe(coder.run_code("'next'", context=context))).text == "next"
    await maybe(coder.remove_code_context(context))


async def test_zero_timeout_means_no_limit(coder: Any) -> None:
    execution = await maybe(coder.run_code("import time; time.sleep(0.5); 'slept'", timeout=0))
    assert execution.text == "slept"


async def test_async_contexts_run_in_parallel(interpreter: Service) -> None:
    sbx = await code_sandbox("async", interpreter.url)
    contexts = [await sbx.create_code_context() for _ in range(3)]
    code = "import time\nfor i in range(10):\n    print('{}', i, flush=True)\n    time.sleep(0.1)"
    started = time.monotonic()
    runs = await asyncio.gather(*(sbx.run_code(code.format(c.id), context=c) for c in contexts))
    assert time.monotonic() - started < 2.5  # three 1 s cells, side by side
    for context, execution in zip(contexts, runs, strict=True):
        assert "".join(execution.logs.stdout) == "".join(f"{context.id} {i}\n" for i in range(10))
        await sbx.remove_code_context(context)
    await sbx.close()


@pytest.mark.parametrize("face", ["sync", "async"])
async def test_the_envd_access_token_is_sent(face: str, secured_interpreter: Service) -> None:
    anonymous = await code_sandbox(face, secured_interpreter.url)
    with pytest.raises(AuthenticationException, match="access token"):
        await maybe(anonymous.run_code("1"))
    wrong = await code_sandbox(face, secured_interpreter.url, access_token="wrong")
    with pytest.raises(AuthenticationException):
        await maybe(wrong.list_code_contexts())

    sandbox = await code_sandbox(face, secured_interpreter.url, access_token=INTERPRETER_TOKEN)
    context = await maybe(sandbox.create_code_context())
    assert (await maybe(sandbox.run_code("6 * 7", context=context))).text == "42"
    assert context in await maybe(sandbox.list_code_contexts())
    await maybe(sandbox.restart_code_context(context))
    await maybe(sandbox.remove_code_context(context))
    for sbx in (anonymous, wrong, sandbox):
        await maybe(sbx.close())


@pytest.mark.parametrize("face", ["sync", "async"])
async def test_no_interpreter_listening_is_unavailable(face: str) -> None:
    sbx = await code_sandbox(face, f"http://127.0.0.1:{free_loopback_port()}")
    with pytest.raises(SandboxUnavailableException, match="run_code"):
        await maybe(sbx.run_code("1"))
    with pytest.raises(SandboxUnavailableException, match="list_code_contexts"):
        await maybe(sbx.list_code_contexts())
    await maybe(sbx.close())
