"""JavaScript contexts: the official ``e2b_code_interpreter`` SDK against the real service, whose
``javascript`` kernel (``emberbox.interpreter.js_kernel``) drives the host's real ``node``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2b import SandboxException, TimeoutException
from e2b_code_interpreter import Sandbox

from .conftest import Service, sdk_env


@pytest.fixture
def js(monkeypatch: pytest.MonkeyPatch, js_service: Service) -> Iterator[Any]:
    """A sandbox (debug mode: our service) with a fresh JavaScript context of its own."""
    sdk_env(monkeypatch, js_service)
    sandbox = Sandbox.create()
    context = sandbox.create_code_context(language="javascript")
    sandbox.ctx = context
    yield sandbox
    sandbox.remove_code_context(context)


def run(sandbox: Any, code: str, **kwargs: Any) -> Any:
    return sandbox.run_code(code, context=sandbox.ctx, **kwargs)


def test_state_survives_between_cells(js: Any) -> None:
    first = run(js, "const a = 40\nlet b = 1\nvar c = 1\nfunction inc(x) { return x + 1 }")
    assert first.error is None and first.results == []  # a declaration has no value
    second = run(js, "inc(a + b + c) - 1")
    assert second.text == "42" and second.error is None
    assert second.execution_count == first.execution_count + 1
    assert run(js, "({ k: [1, 2], s: 'x' })").text == "{ k: [ 1, 2 ], s: 'x' }"
    assert run(js, "'a string'").text == "a string"  # quotes stripped, as for Python


def test_console_output_streams_before_the_call_returns(js: Any) -> None:
    seen: list[tuple[str, str, float]] = []
    execution = run(
        js,
        "console.log('early', { n: 1 })\nconsole.error('warn')\n"
        "await new Promise((r) => setTimeout(r, 1500))\n"
        'process.stdout.write(\'{"t": "done", "value": "forged"}\\n\')\nconsole.log(\'late\')\n7',
        on_stdout=lambda m: seen.append(("out", m.line, time.monotonic())),
        on_stderr=lambda m: seen.append(("err", m.line, time.monotonic())),
    )
    returned = time.monotonic()
    assert [(kind, line) for kind, line, _ in seen] == [
        ("out", "early { n: 1 }\n"),
        ("err", "warn\n"),
        ("out", '{"t": "done", "value": "forged"}\n'),  # user output cannot fake a frame
        ("out", "late\n"),
    ]
    assert returned - seen[0][2] > 1.0  # 'early' arrived while the cell still waited
    assert execution.text == "7"


def test_errors_carry_name_value_and_traceback(js: Any) -> None:
    errors: list[Any] = []
    execution = run(
        js, "function f() {\n  throw new TypeError('bad')\n}\nf()", on_error=errors.append
    )
    assert execution.error is not None and errors == [execution.error]
    assert (execution.error.name, execution.error.value) == ("TypeError", "bad")
    lines = execution.error.traceback.splitlines()
    assert lines[0] == "TypeError: bad"
    # The frames (none of the driver's), then the line that threw.
    assert lines[1:] == ["    at f (<cell>:2:9)", "    at <cell>:4:1", "", "<cell>:2", *lines[5:]]
    assert "  throw new TypeError('bad')" in lines[5:]
    syntax = run(js, "foo(")
    assert syntax.error is not None and syntax.error.name == "SyntaxError"
    thrown = run(js, "throw 'plain'")
    assert thrown.error is not None and (thrown.error.name, thrown.error.value) == (
        "Uncaught",
        "'plain'",
    )
    rejected = run(js, "await Promise.reject(new RangeError('later'))")
    assert rejected.error is not None and rejected.error.name == "RangeError"
    assert run(js, "1 + 1").text == "2"


def test_top_level_await_keeps_its_declarations(js: Any) -> None:
    execution = run(
        js, "const { p, q } = await Promise.resolve({ p: 2, q: 3 })\nconst r = await 4\np * q * r"
    )
    assert execution.text == "24"
    assert run(js, "[p, q, r]").text == "[ 2, 3, 4 ]"
    fs = run(js, "const fsm = await import('node:fs'); typeof fsm.readFileSync")
    assert fs.text == "function"


def test_require_and_cwd_follow_the_context(
    monkeypatch: pytest.MonkeyPatch, js_service: Service, tmp_path: Path
) -> None:
    sdk_env(monkeypatch, js_service)
    sandbox = Sandbox.create()
    (tmp_path / "local.js").write_text("module.exports = { answer: 42 }\n")
    context = sandbox.create_code_context(language="javascript", cwd=str(tmp_path))
    try:
        assert (context.language, context.cwd) == ("javascript", str(tmp_path))
        ran = sandbox.run_code(
            "JSON.stringify([process.cwd(), require('./local.js').answer])", context=context
        )
        assert json.loads(ran.text) == [str(tmp_path), 42]
    finally:
        sandbox.remove_code_context(context)


def test_env_vars_apply_to_one_call_only(js: Any) -> None:
    code = "[process.env.ONLY_NOW, process.env.PATH === undefined]"
    assert run(js, code, envs={"ONLY_NOW": "yes"}).text == "[ 'yes', false ]"
    assert run(js, code).text == "[ undefined, false ]"
    assert run(js, "process.env.HOME = 'kept'; 1", envs={"HOME": "call"}).text == "1"
    # A variable the call set is restored to what it was before the call.
    assert run(js, "process.env.HOME").text != "call"


def test_timeout_interrupts_and_the_next_call_keeps_the_state(js: Any) -> None:
    run(js, "globalThis.kept = 'still here'")
    for endless in ("while (true) {}", "await new Promise(() => {})"):
        started = time.monotonic()
        with pytest.raises(TimeoutException):
            run(js, endless, timeout=1.5)
        after = run(js, "kept")
        assert after.text == "still here", endless
        assert time.monotonic() - started < 6


def test_a_node_crash_is_reported_and_the_context_restarts(js: Any) -> None:
    run(js, "globalThis.mine = 1")
    crashed = run(js, "console.log('bye')\nprocess.exit(1)")
    assert crashed.logs.stdout == ["bye\n"]
    assert crashed.error is not None and crashed.error.name == "KernelDied"
    assert "exited with code 1" in crashed.error.value
    assert run(js, "typeof mine").text == "undefined"  # a fresh node: the state is gone
    assert run(js, "21 * 2").text == "42"


def test_language_names_and_refusals(monkeypatch: pytest.MonkeyPatch, js_service: Service) -> None:
    sdk_env(monkeypatch, js_service)
    sandbox = Sandbox.create()
    assert sandbox.run_code("[1, 2].map((x) => x * 2)", language="javascript").text == "[ 2, 4 ]"
    # 'js' is the same default context, listed under its canonical name.
    assert sandbox.run_code("typeof require", language="js").text == "function"
    defaults = [c for c in sandbox.list_code_contexts() if c.language == "javascript"]
    assert len(defaults) >= 1 and all(c.language != "js" for c in sandbox.list_code_contexts())
    with pytest.raises(SandboxException, match=r"400.*supported: python, javascript"):
        sandbox.run_code("let x: number = 1", language="typescript")
    response = httpx.post(f"{js_service.url}/execute", json={"code": "1", "language": "ts"})
    assert response.status_code == 400 and "javascript" in response.json()["message"]
    streamed = httpx.post(
        f"{js_service.url}/execute", json={"code": "console.log(1); 2", "language": "JS"}
    )
    events = [json.loads(line) for line in streamed.text.splitlines()]
    assert [e["type"] for e in events] == [
        "number_of_executions",
        "stdout",
        "result",
        "end_of_execution",
    ]


def test_child_process_output_reaches_the_cell(js: Any) -> None:
    run(js, "'node is running'")  # not the cell that started node: each cell gets its own
    ran = run(
        js,
        "require('child_process').execSync('echo child; echo oops >&2', { stdio: 'inherit' })\n"
        "'ok'",
    )
    assert (ran.logs.stdout, ran.logs.stderr, ran.text) == (["child\n"], ["oops\n"], "ok")
    slow = run(
        js, "require('child_process').execSync('echo a; sleep 1; echo b', { stdio: 'inherit' })"
    )
    assert slow.logs.stdout == ["a\n", "b\n"]


def test_a_node_deaf_to_the_interrupt_is_replaced(js: Any) -> None:
    """A synchronous loop after an ``await`` cannot be broken: node is killed after its grace
    and the next call gets a fresh one, promptly."""
    run(js, "globalThis.kept = 1")
    with pytest.raises(TimeoutException):
        run(js, "await null\nwhile (true) {}", timeout=1.5)
    started = time.monotonic()
    assert run(js, "typeof kept").text == "undefined"
    assert time.monotonic() - started < 6


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_restarting_or_deleting_a_context_ends_its_node(
    monkeypatch: pytest.MonkeyPatch, js_service: Service
) -> None:
    sdk_env(monkeypatch, js_service)
    sandbox = Sandbox.create()
    context = sandbox.create_code_context(language="javascript")
    first = int(sandbox.run_code("process.pid", context=context).text)
    sandbox.restart_code_context(context)
    assert _gone(first), "the restarted kernel's node outlived it"
    second = int(sandbox.run_code("process.pid", context=context).text)
    assert second != first
    sandbox.remove_code_context(context)
    assert _gone(second), "the deleted context's node outlived it"


def test_what_node_started_ends_with_it(js: Any) -> None:
    """Processes a cell started end with the node that started them: when node is replaced for
    ignoring an interrupt, and when the context restarts. Before, both outlived it for good."""
    spawn = "require('child_process').spawn('sleep', ['300']).pid"
    first = int(run(js, spawn).text)
    with pytest.raises(TimeoutException):
        run(js, "await null\nwhile (true) {}", timeout=1.5)
    assert run(js, "1").text == "1"  # a fresh node
    assert _gone(first), "the replaced node's child outlived it"
    second = int(run(js, spawn).text)
    js.restart_code_context(js.ctx)
    assert _gone(second), "the restarted context's child outlived its kernel"


def test_large_output_is_cut_at_the_budget(js: Any) -> None:
    execution = run(js, "console.log('x'.repeat(24 << 20))\n'after'")
    sent = sum(len(chunk) for chunk in execution.logs.stdout)
    assert 9 << 20 < sent <= 10 << 20
    assert "output truncated" in execution.logs.stderr[-1]
    assert execution.text is None  # past the budget results are dropped too
    assert run(js, "'next'").text == "next"


def test_a_huge_throw_is_cut_and_later_cells_answer_for_themselves(js: Any) -> None:
    """A cell's end frame past the kernel's line limit could not be read: the call seemed to
    succeed, and from then on every call got the previous one's answer."""
    thrown = run(js, "throw new Error('x'.repeat(7e7))")
    assert thrown.error is not None and thrown.error.name == "Error"
    assert len(thrown.error.value) < 2 * 2**20 and "more characters cut" in thrown.error.value
    assert run(js, "1 + 1").text == "2"
    assert run(js, "2 + 2").text == "4"


def test_output_of_a_background_process_between_cells_is_not_kept(
    js: Any, js_service: Service
) -> None:
    """A child writing to node's own stdout (``stdio: 'inherit'``) while no cell runs: its
    output went to a list nobody emptied until the next cell, as fast as it wrote."""
    service = psutil.Process(js_service.process.pid)
    started = run(js, "globalThis.child = require('child_process').spawn('yes', "
                      "{ stdio: 'inherit' }); child.pid")  # fmt: skip
    assert started.error is None, started.error
    kernels = [p for p in service.children(recursive=True) if "js_kernel" in " ".join(p.cmdline())]
    assert kernels, "the JavaScript kernel was not found"
    kernel = max(kernels, key=lambda p: p.create_time())
    before = kernel.memory_info().rss
    time.sleep(3)
    grown = kernel.memory_info().rss - before
    run(js, "child.kill(); 1")
    assert grown < 32 * 2**20, f"the kernel grew {grown >> 20} MiB in 3 s"


def test_a_killed_cell_s_raw_output_is_not_the_next_cell_s(js: Any) -> None:
    """A cell writing to node's own stdout that ignores its interrupt is killed; what it
    wrote meanwhile, never sent, was the next cell's stdout."""
    with pytest.raises(TimeoutException):
        run(js, "require('child_process').execSync('yes', { stdio: 'inherit' })", timeout=1.5)
    after = run(js, "1 + 1")
    assert after.text == "2"
    assert after.logs.stdout == [] and after.logs.stderr == [], after.logs
