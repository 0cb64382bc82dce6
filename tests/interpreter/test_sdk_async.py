"""The official ``e2b_code_interpreter.AsyncSandbox`` against the real service."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from e2b import NotFoundException, SandboxException, TimeoutException


async def test_state_callbacks_and_results(async_sandbox: Any) -> None:
    await async_sandbox.run_code("base = 40")
    seen: list[float] = []

    async def on_stdout(message: Any) -> None:
        seen.append(time.monotonic())

    execution = await async_sandbox.run_code(
        "import time\nprint('a', flush=True)\ntime.sleep(1.2)\nfrom IPython.display import HTML\n"
        "display(HTML('<i>x</i>'))\nbase + 2",
        on_stdout=on_stdout,
    )
    assert time.monotonic() - seen[0] > 0.8  # streamed while the cell still ran
    assert execution.text == "42" and execution.results[0].html == "<i>x</i>"


async def test_error_timeout_and_recovery(async_sandbox: Any) -> None:
    failed = await async_sandbox.run_code("raise ValueError('nope')")
    assert failed.error is not None
    assert (failed.error.name, failed.error.value) == ("ValueError", "nope")
    with pytest.raises(TimeoutException):
        await async_sandbox.run_code("import time; time.sleep(60)", timeout=1.5)
    started = time.monotonic()
    assert (await async_sandbox.run_code("'ok'")).text == "ok"
    assert time.monotonic() - started < 5


async def test_contexts_in_parallel(async_sandbox: Any) -> None:
    contexts = await asyncio.gather(*(async_sandbox.create_code_context() for _ in range(5)))
    listed = {c.id for c in await async_sandbox.list_code_contexts()}
    assert {c.id for c in contexts} <= listed

    async def run(index: int) -> Any:
        code = f"import time\nfor i in range(30):\n    print('c{index}', i)\n    time.sleep(0.01)"
        return await async_sandbox.run_code(code, context=contexts[index])

    executions = await asyncio.gather(*(run(i) for i in range(5)))
    for index, execution in enumerate(executions):
        assert "".join(execution.logs.stdout) == "".join(f"c{index} {i}\n" for i in range(30))

    await async_sandbox.restart_code_context(contexts[0])
    for context in contexts:
        await async_sandbox.remove_code_context(context)
    with pytest.raises(NotFoundException):
        await async_sandbox.restart_code_context(contexts[0])
    with pytest.raises(SandboxException, match="supported: python"):
        await async_sandbox.run_code("1", language="typescript")
