"""The official ``e2b_code_interpreter`` SDK (sync and async), unchanged, against a real server
with real gVisor sandboxes of the ``code-interpreter`` template: ``Sandbox.create()`` asks for
``code-interpreter-v1``, and every port-49999 call goes through the control plane's proxy.

One sandbox serves the module (each test leaves the default context usable); tests that need
a fresh kernel make their own context.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox
from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    LineChart,
    PieChart,
    ScatterChart,
    SuperChart,
)

from emberbox.server.testing import ServerProcess
from tests.api.npm import NODE_MODULES, needs_node, run_script

from .sandbox_support import code_interpreter_server, point_sdk_at

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with code_interpreter_server(tmp_path_factory.mktemp("code-interpreter")) as running:
        yield running


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch:
        point_sdk_at(server, patch)
        sbx = Sandbox.create(timeout=900, envs={"FROM_CREATE": "set at create"})
        try:
            yield sbx
        finally:
            sbx.kill()


@pytest.fixture
def sdk_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    point_sdk_at(server, monkeypatch)


def test_the_default_template_is_the_code_interpreter(sandbox: Any, server: ServerProcess) -> None:
    info = sandbox.get_info()
    assert info.template_id == "code-interpreter"
    assert sandbox.commands.run("cat /proc/version").stdout.startswith("Linux version 4.4.0")
    listed = sandbox.commands.run("ps -eo args").stdout
    assert "emberbox.interpreter --port 49999" in listed
    assert "ipykernel_launcher" in listed  # the default Python kernel was pre-started


def test_state_survives_between_calls(sandbox: Any) -> None:
    first = sandbox.run_code("counter = 41")
    second = sandbox.run_code("counter += 1\ncounter")
    assert second.text == "42" and second.error is None
    assert second.execution_count == first.execution_count + 1


def test_streaming_callbacks_arrive_before_the_call_returns(sandbox: Any) -> None:
    seen: list[tuple[str, str, float]] = []
    execution = sandbox.run_code(
        "import sys, time\nprint('early', flush=True)\nsys.stderr.write('warn\\n')\n"
        "time.sleep(1.5)\nprint('late')",
        on_stdout=lambda m: seen.append(("out", m.line, time.monotonic())),
        on_stderr=lambda m: seen.append(("err", m.line, time.monotonic())),
    )
    returned = time.monotonic()
    assert [(kind, line) for kind, line, _ in seen] == [
        ("out", "early\n"),
        ("err", "warn\n"),
        ("out", "late\n"),
    ]
    assert returned - seen[0][2] > 1.0
    assert execution.logs.stdout == ["early\n", "late\n"]


def test_every_result_format(sandbox: Any) -> None:
    results: list[Any] = []
    execution = sandbox.run_code(
        "from IPython.display import HTML, Markdown, JSON, Latex, Javascript, SVG, display\n"
        "import pandas as pd, numpy as np\n"
        "display(HTML('<b>bold</b>')); display(Markdown('# Title'))\n"
        "display(JSON({'k': [1, 2]})); display(Latex('$x^2$'))\n"
        "display(Javascript('alert(1)')); display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'))\n"
        "display({'image/png': 'iVBORw0KGgo=', 'image/jpeg': '/9j/', 'application/pdf': 'JVBERi0=',"
        " 'application/x-thing': 'x', 'text/plain': 'raw'}, raw=True)\n"
        "pd.DataFrame({'a': np.arange(3)})",
        on_result=results.append,
    )
    assert execution.error is None, execution.error
    html, markdown, json_, latex, js, svg, raw, frame = execution.results
    assert results == execution.results
    assert html.html == "<b>bold</b>" and not html.is_main_result
    assert markdown.markdown == "# Title" and json_.json == {"k": [1, 2]}
    assert latex.latex == "$x^2$" and js.javascript == "alert(1)"
    assert svg.svg.startswith("<svg")
    assert (raw.png, raw.jpeg, raw.pdf, raw.text) == ("iVBORw0KGgo=", "/9j/", "JVBERi0=", "raw")
    assert raw.extra == {"application/x-thing": "x"}
    assert frame.is_main_result and "<table" in frame.html and frame.text.split()[0] == "a"


def test_each_chart_type_with_its_png(sandbox: Any) -> None:
    execution = sandbox.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [2, 4, 3], label='l'); plt.title('line'); plt.show()\n"
        "plt.scatter([1, 2], [3, 4]); plt.show()\n"
        "plt.bar(['a', 'b'], [5, 6]); plt.show()\n"
        "plt.pie([1, 1, 2], labels=['x', 'y', 'z']); plt.show()\n"
        "plt.boxplot([[1, 2, 3, 4, 50]]); plt.show()\n"
        "fig, (l, r) = plt.subplots(1, 2); l.plot([0, 1]); r.bar(['q'], [1]); plt.show()"
    )
    assert execution.error is None, execution.error
    charts = [r.chart for r in execution.results]
    assert all(base64.b64decode(r.png).startswith(b"\x89PNG") for r in execution.results)
    assert [type(c) for c in charts] == [
        LineChart, ScatterChart, BarChart, PieChart, BoxAndWhiskerChart, SuperChart,
    ]  # fmt: skip
    line, scatter, bar, pie, box, superchart = charts
    assert line.title == "line" and line.elements[0].points == [(1, 2), (2, 4), (3, 3)]
    assert scatter.elements[0].points == [(1, 3), (2, 4)]
    assert [(e.label, e.value) for e in bar.elements] == [("a", 5), ("b", 6)]
    assert [(e.label, e.angle) for e in pie.elements] == [("x", 90), ("y", 90), ("z", 180)]
    assert (box.elements[0].median, box.elements[0].outliers) == (3, [50])
    assert [type(c) for c in superchart.elements] == [LineChart, BarChart]


def test_error_with_traceback_and_the_context_goes_on(sandbox: Any) -> None:
    errors: list[Any] = []
    execution = sandbox.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert execution.error is not None and errors == [execution.error]
    assert (execution.error.name, execution.error.value) == (
        "ZeroDivisionError",
        "division by zero",
    )
    plain = ANSI.sub("", execution.error.traceback)
    assert "return 1 / 0" in plain and plain.endswith("ZeroDivisionError: division by zero")
    assert sandbox.run_code("1 + 1").text == "2"


def test_env_vars_from_create_and_per_call(sandbox: Any) -> None:
    code = "import os; (os.environ.get('FROM_CREATE'), os.environ.get('ONLY_NOW'))"
    during = sandbox.run_code(code, envs={"ONLY_NOW": "yes"})
    assert during.text == "('set at create', 'yes')"
    own_id = sandbox.run_code("os.environ['E2B_SANDBOX_ID']").text
    assert own_id == sandbox.sandbox_id
    assert sandbox.run_code(code).text == "('set at create', None)"
    bash = 'echo "$FROM_CREATE/${ONLY_NOW:-unset}"'
    assert sandbox.run_code(bash, language="bash", envs={"ONLY_NOW": "b"}).logs.stdout == [
        "set at create/b\n"
    ]
    assert sandbox.run_code(bash, language="bash").logs.stdout == ["set at create/unset\n"]


def test_a_sandbox_restored_from_the_template_snapshot_is_its_own(
    sandbox: Any, server: ServerProcess
) -> None:
    """The node snapshots each template once it booted (kernel running, before any sandbox's
    /init) and restores later creates from it: their service and kernels must still take on
    the new sandbox's env and token."""
    from tests.runtimes.gvisor_support import DATA_DIR, wait_for_template_snapshot

    wait_for_template_snapshot(DATA_DIR, "code-interpreter")
    restored = Sandbox.create(timeout=120, envs={"FROM_CREATE": "restored"})
    try:
        code = "import os; os.environ['E2B_SANDBOX_ID'], os.environ.get('FROM_CREATE')"
        assert restored.run_code(code).text == str((restored.sandbox_id, "restored"))
        ran = restored.run_code("echo $E2B_SANDBOX_ID $FROM_CREATE", language="bash")
        assert ran.logs.stdout == [f"{restored.sandbox_id} restored\n"]
        others = httpx.post(
            f"{server.sandbox_url}/execute",
            json={"code": "1"},
            headers={
                "E2b-Sandbox-Id": restored.sandbox_id,
                "E2b-Sandbox-Port": "49999",
                "X-Access-Token": sandbox._envd_access_token,  # another sandbox's token
            },
        )
        assert others.status_code == 401
    finally:
        restored.kill()


def test_sandboxes_restored_from_one_snapshot_draw_different_random_numbers(
    sandbox: Any,
) -> None:
    """The prestarted kernel is in the template snapshot with its generators' state: each
    restored sandbox reseeds it before the first cell, so they never draw the same numbers."""
    from tests.runtimes.gvisor_support import DATA_DIR, wait_for_template_snapshot

    wait_for_template_snapshot(DATA_DIR, "code-interpreter")
    draw = "import random, numpy; (random.random(), float(numpy.random.random()))"
    made = [Sandbox.create(timeout=120) for _ in range(2)]
    try:
        first, second = (m.run_code(draw).text for m in made)
        assert first != second and first.split(",")[0] != second.split(",")[0], (first, second)
    finally:
        for m in made:
            m.kill()


def test_contexts_in_python_and_bash(sandbox: Any) -> None:
    py = sandbox.create_code_context(cwd="/tmp", language="python")
    sh = sandbox.create_code_context(language="bash")
    try:
        assert (py.language, py.cwd, sh.language, sh.cwd) == (
            "python",
            "/tmp",
            "bash",
            "/home/user",
        )
        assert {py.id, sh.id} <= {c.id for c in sandbox.list_code_contexts()}
        assert sandbox.run_code("import os; os.getcwd()", context=py).text == "/tmp"
        sandbox.run_code("GREETING=hello", context=sh)
        ran = sandbox.run_code('echo "$GREETING from $(whoami) in $PWD"', context=sh)
        assert ran.logs.stdout == ["hello from user in /home/user\n"] and ran.error is None
        failed = sandbox.run_code("false", context=sh)
        assert failed.error is not None  # bash_kernel reports a non-zero status as an error
        supported = "supported: python, bash, javascript, typescript, r"
        with pytest.raises(SandboxException, match=rf"400.*{supported}"):
            sandbox.run_code("1", language="java")
    finally:
        sandbox.remove_code_context(py)
        sandbox.remove_code_context(sh)
    with pytest.raises(NotFoundException):
        sandbox.run_code("1", context=py)


def test_javascript_context(sandbox: Any) -> None:
    """Our JavaScript kernel with the template's node: state, streaming, errors, await, env,
    cwd, an interrupted cell and a node crash."""
    js = sandbox.create_code_context(language="javascript", cwd="/tmp")
    try:
        assert (js.language, js.cwd) == ("javascript", "/tmp")
        version = sandbox.run_code("process.version", context=js).text
        assert version.startswith("v18."), version  # Debian bookworm's nodejs
        sandbox.run_code("const base = 40\nfunction inc(x) { return x + 1 }", context=js)
        assert sandbox.run_code("inc(base) + 1", context=js).text == "42"
        seen: list[tuple[str, float]] = []
        streamed = sandbox.run_code(
            "console.log('early')\nawait new Promise((r) => setTimeout(r, 1500))\n"
            "console.error('late')\nconst waited = await Promise.resolve('yes')\nwaited",
            context=js,
            on_stdout=lambda m: seen.append((m.line, time.monotonic())),
        )
        assert time.monotonic() - seen[0][1] > 1.0  # 'early' arrived while the cell waited
        assert (streamed.logs.stdout, streamed.logs.stderr) == (["early\n"], ["late\n"])
        assert streamed.text == "yes" and sandbox.run_code("waited", context=js).text == "yes"
        child = "require('child_process').execSync('id -un', { stdio: 'inherit' }); 1"
        assert sandbox.run_code(child, context=js).logs.stdout == ["user\n"]
        failed = sandbox.run_code("null.x", context=js)
        assert failed.error is not None and failed.error.name == "TypeError"
        assert failed.error.traceback.startswith("TypeError: Cannot read properties of null")
        env = "[process.cwd(), process.env.FROM_CREATE, process.env.ONLY_NOW, process.getuid()]"
        assert sandbox.run_code(env, context=js, envs={"ONLY_NOW": "js"}).text == (
            "[ '/tmp', 'set at create', 'js', 1000 ]"
        )
        assert (
            sandbox.run_code(env, context=js).text == "[ '/tmp', 'set at create', undefined, 1000 ]"
        )
        for endless in ("while (true) {}", "await new Promise(() => {})"):
            with pytest.raises(TimeoutException):
                sandbox.run_code(endless, context=js, timeout=2)
            started = time.monotonic()
            assert sandbox.run_code("base", context=js).text == "40", endless
            assert time.monotonic() - started < 5
        crashed = sandbox.run_code("console.log('bye'); process.exit(3)", context=js)
        assert crashed.logs.stdout == ["bye\n"]
        assert crashed.error is not None and crashed.error.name == "KernelDied"
        assert "exited with code 3" in crashed.error.value
        assert sandbox.run_code("typeof base", context=js).text == "undefined"
        assert sandbox.run_code("6 * 7", language="js").text == "42"  # the default JS context
    finally:
        sandbox.remove_code_context(js)


def test_typescript_context(sandbox: Any) -> None:
    """TypeScript: the same kernel, each cell's types stripped by Debian's compiler."""
    ts = sandbox.create_code_context(language="ts")
    try:
        assert ts.language == "typescript"
        declared = sandbox.run_code(
            "interface Point { x: number; y: number }\n"
            "const p: Point = { x: 3, y: 4 }\n"
            "function norm(q: Point): number { return Math.hypot(q.x, q.y) }\n"
            "enum Color { Red, Green }",
            context=ts,
        )
        assert declared.error is None, declared.error
        assert sandbox.run_code("norm(p) + Color.Green", context=ts).text == "6"
        awaited = sandbox.run_code(
            "import { promisify } from 'util'\n"
            "const sleep = promisify(setTimeout)\n"
            "const slept: string = await sleep(10, 'typed')\nslept",
            context=ts,
        )
        assert awaited.text == "typed", awaited.error
        bad = sandbox.run_code("const broken: = 1", context=ts)
        assert bad.error is not None and bad.error.name == "SyntaxError"
        assert "TS1110" in bad.error.value or "TS" in bad.error.traceback
        env = sandbox.run_code("process.env.ONLY_NOW as string", context=ts, envs={"ONLY_NOW": "t"})
        assert env.text == "t"
    finally:
        sandbox.remove_code_context(ts)


def test_r_context(sandbox: Any) -> None:
    """R through Debian's IRkernel: state, printed output, a data frame, a plot as PNG, an
    error, and env vars from create and per call (set, then restored)."""
    r = sandbox.create_code_context(language="r")

    def shown(code: str, **opts: Any) -> str:
        """IRkernel shows a value as display data, not as the cell's main result."""
        execution = sandbox.run_code(code, context=r, **opts)
        assert execution.error is None, execution.error
        return str(execution.results[0].text)

    try:
        assert r.language == "r"
        sandbox.run_code("x <- c(1, 2, 3)", context=r)
        assert shown("sum(x) * 7") == "[1] 42"
        printed = sandbox.run_code('cat("hello from R\\n")', context=r)
        assert printed.logs.stdout == ["hello from R\n"]
        frame = sandbox.run_code("data.frame(a = 1:2, b = c('x', 'y'))", context=r)
        assert "<table" in (frame.results[0].html or ""), frame.results
        plot = sandbox.run_code("plot(x, x^2)", context=r)
        assert any(res.png for res in plot.results), plot.results
        failed = sandbox.run_code('stop("broken on purpose")', context=r)
        assert failed.error is not None and "broken on purpose" in failed.error.value
        env = 'cat(Sys.getenv("FROM_CREATE"), Sys.getenv("ONLY_NOW", unset = "-"), sep = "|")'
        per_call = sandbox.run_code(env, context=r, envs={"ONLY_NOW": 'q"uote ü'})
        assert per_call.logs.stdout == ['set at create|q"uote ü'], per_call.logs
        assert sandbox.run_code(env, context=r).logs.stdout == ["set at create|-"]
        sandbox.run_code('.k <- "mine"', context=r)  # (the restore's loop used .k and .v)
        sandbox.run_code("1", context=r, envs={"ONLY_NOW": "x"})
        assert shown(".k") == '[1] "mine"'
        assert shown('Sys.info()[["user"]]') == '[1] "user"'
    finally:
        sandbox.remove_code_context(r)


def test_timeout_interrupts_and_the_next_call_works(sandbox: Any) -> None:
    sandbox.run_code("kept = 'still here'")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.run_code("import time\ntime.sleep(60)\nfinished = True", timeout=2)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    after = sandbox.run_code("kept, 'finished' in globals()")
    assert after.text == "('still here', False)"
    assert time.monotonic() - started < 5


def test_restart_and_kernel_crash(sandbox: Any) -> None:
    context = sandbox.create_code_context()
    try:
        sandbox.run_code("mine = 1", context=context)
        sandbox.restart_code_context(context)
        gone = sandbox.run_code("mine", context=context)
        assert gone.error is not None and gone.error.name == "NameError"
        crashed = sandbox.run_code(
            "import os\nprint('bye', flush=True)\nimport time; time.sleep(0.3)\nos._exit(1)",
            context=context,
        )
        assert crashed.error is not None and crashed.error.name == "KernelDied"
        assert crashed.logs.stdout == ["bye\n"]
        assert sandbox.run_code("21 * 2", context=context).text == "42"
    finally:
        sandbox.remove_code_context(context)


def test_large_output_is_truncated_with_a_marker(sandbox: Any) -> None:
    execution = sandbox.run_code(
        "import sys\nfor _ in range(24):\n    sys.stdout.write('x' * (1 << 20))\nprint('end')"
    )
    sent = sum(len(chunk) for chunk in execution.logs.stdout)
    assert 9 << 20 < sent <= 10 << 20  # the 10 MiB budget, not the 24 MiB printed
    assert "end" not in execution.logs.stdout[-1]
    assert "output truncated" in execution.logs.stderr[-1]
    assert sandbox.run_code("'next'").text == "next"


def test_parallel_contexts_do_not_interleave(sandbox: Any) -> None:
    contexts = [sandbox.create_code_context() for _ in range(4)]
    outputs: dict[int, Any] = {}

    def run(index: int) -> None:
        code = f"import time\nfor i in range(30):\n    print('ctx{index}', i)\n    time.sleep(0.01)"
        outputs[index] = sandbox.run_code(code, context=contexts[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contexts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        for index in range(len(contexts)):
            text = "".join(outputs[index].logs.stdout)
            assert text == "".join(f"ctx{index} {i}\n" for i in range(30))
    finally:
        for context in contexts:
            sandbox.remove_code_context(context)


def test_the_envd_token_guards_port_49999(sandbox: Any, server: ServerProcess) -> None:
    url = f"{server.sandbox_url}/execute"
    route = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999"}
    anonymous = httpx.post(url, json={"code": "1"}, headers=route)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == 401
    wrong = httpx.post(url, json={"code": "1"}, headers={**route, "X-Access-Token": "nope"})
    assert wrong.status_code == 401
    token = sandbox._envd_access_token
    assert token
    right = httpx.post(url, json={"code": "6 * 7"}, headers={**route, "X-Access-Token": token})
    assert right.status_code == 200 and '"text":"42"' in right.text


def test_kernels_survive_pause_resume_fork_and_snapshot(sdk_env: None) -> None:
    """A paused code interpreter sandbox comes back with its kernels as they were (a variable
    in the default Python context and one in a bash context of its own), three times over,
    the SDK's connections to port 49999 cut by each pause; a fork and a create from a
    snapshot go on from the same kernels and diverge."""
    sbx = Sandbox.create(timeout=300)
    made: list[Any] = []
    snapshot_id: str | None = None
    try:
        sh = sbx.create_code_context(language="bash")
        sbx.run_code("x = 41")
        sbx.run_code("Y=shell", context=sh)
        for i in range(3):
            assert sbx.pause()
            sbx = Sandbox.connect(sbx.sandbox_id, timeout=300)
            assert sbx.run_code("x += 1; x").text == str(42 + i)
            assert sbx.run_code("echo $Y", context=sh).logs.stdout == ["shell\n"]

        forks = sbx.fork(count=2, timeout=120)
        made += [f for f in forks if not isinstance(f, Exception)]
        assert len(made) == 2, forks
        for k, fork in enumerate(made):
            assert fork.run_code(f"x += {100 + k}; x").text == str(144 + k)
        assert sbx.run_code("x").text == "44"

        snapshot_id = sbx.create_snapshot().snapshot_id
        sbx.run_code("x = 0")
        made.append(Sandbox.create(snapshot_id, timeout=120))
        assert made[-1].run_code("x").text == "44"
        assert made[-1].run_code("echo $Y", context=sh).logs.stdout == ["shell\n"]
        assert [m.run_code("x").text for m in made] == ["144", "145", "44"]
    finally:
        for m in made:
            m.kill()
        sbx.kill()
        if snapshot_id is not None:
            Sandbox.delete_snapshot(snapshot_id)


async def test_async_sdk(sandbox: Any, sdk_env: None) -> None:
    sbx = await AsyncSandbox.connect(sandbox.sandbox_id)
    seen: list[str] = []

    async def on_stdout(message: Any) -> None:
        seen.append(message.line)

    context = await sbx.create_code_context()
    try:
        await sbx.run_code("value = 20", context=context)
        execution = await sbx.run_code(
            "print('async'); value + 1", context=context, on_stdout=on_stdout
        )
        assert (execution.text, seen) == ("21", ["async\n"])
        chart = await sbx.run_code(
            "import matplotlib.pyplot as plt\nplt.bar(['k'], [3]); plt.show()", context=context
        )
        assert isinstance(chart.results[0].chart, BarChart)
        failed = await sbx.run_code("raise ValueError('bad')", context=context)
        assert failed.error is not None and failed.error.name == "ValueError"
        with pytest.raises(TimeoutException):
            await sbx.run_code("import time; time.sleep(30)", context=context, timeout=1.5)
        assert (await sbx.run_code("value", context=context)).text == "20"
    finally:
        await sbx.remove_code_context(context)


@needs_node
def test_npm_code_interpreter_sdk(server: ServerProcess, tmp_path: Path) -> None:
    assert (Path(NODE_MODULES) / "@e2b" / "code-interpreter").is_dir(), "run scripts/setup"
    assert server.first_key
    script = Path(__file__).with_name("js") / "code_interpreter.mjs"
    out = run_script(script, server, server.first_key, tmp_path, 180)
    assert out["state"] == "42"
    assert out["streamed"] == ["early\n", "late\n"] and out["earlyBeforeReturnMs"] > 1000
    assert out["pngs"] == ["PNG", "PNG"] and "png" in out["formats"]
    line, pie = out["charts"]
    assert (line["type"], line["title"], line["elements"]) == (
        "line", "t", [{"label": "js", "points": [[1, 3], [2, 4]]}],
    )  # fmt: skip
    assert line["x_scale"] == "linear" and len(line["x_ticks"]) == len(line["x_tick_labels"])
    assert pie["type"] == "pie" and [e["label"] for e in pie["elements"]] == ["a", "b"]
    assert (out["error"]["name"], out["error"]["value"]) == ("KeyError", "'k'")
    assert "KeyError" in ANSI.sub("", out["error"]["tb"])
    assert out["envs"] == "from-js+call"
    assert out["bash"] == ["42\n"] and out["listed"][:2] == ["bash", "python"]
    assert out["timedOut"] and out["afterTimeout"] == "42"
    assert out["jsContext"] == ["javascript", "/tmp"]
    assert out["js"] == {"text": "42", "stdout": ["js says 3\n"], "seen": ["js says 3\n"]}
    assert out["jsError"] == ["ReferenceError", "undefinedFunction is not defined"]
    assert out["jsEnvs"] == "from-js+js"
    assert out["jsDefault"] == "undefined"  # the default JS context is another kernel
    assert out["ts"] == "42"
    assert out["rError"] is None  # (in 512 MiB, the fifth kernel's start was killed)
    assert out["r"] == ["[1] 42"]  # IRkernel shows values as display data
    assert out["unsupported"] == "400 Bad Request"  # this SDK drops the body naming them
    assert out["killed"] is True
    assert server.sandbox_states()[out["id"]] == ("killed", "killed by user")
