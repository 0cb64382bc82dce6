"""The official ``e2b_code_interpreter.AsyncSandbox`` against the real service."""

from __future__ import annotations

import asyncio
import os
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


async def test_a_cell_running_when_its_context_restarts_ends_with_an_error(
    async_sandbox: Any,
) -> None:
    """Closing the kernel's channels cancelled the cell's wait for output: the execution
    ended as a success, with half its output and no error."""
    context = await async_sandbox.create_code_context()
    started = asyncio.Event()

    async def on_stdout(message: Any) -> None:
        started.set()

    running = asyncio.create_task(
        async_sandbox.run_code(
            "import time\nprint('start', flush=True)\ntime.sleep(30)",
            context=context,
            on_stdout=on_stdout,
        )
    )
    await asyncio.wait_for(started.wait(), 20)
    await async_sandbox.restart_code_context(context)
    execution = await asyncio.wait_for(running, 20)
    assert execution.error is not None and "restarted" in execution.error.value, execution
    assert (await async_sandbox.run_code("1 + 1", context=context)).text == "2"
    await async_sandbox.remove_code_context(context)


async def test_a_context_deleted_amid_its_restart_leaves_no_kernel(async_sandbox: Any) -> None:
    """A delete that came while a restart was starting the new kernel found none to stop; the
    restart then started one nobody would ever stop."""
    for _ in range(3):
        context = await async_sandbox.create_code_context()
        await asyncio.gather(
            async_sandbox.restart_code_context(context),
            async_sandbox.remove_code_context(context),
            return_exceptions=True,
        )
        deadline = time.monotonic() + 10
        while _kernels_of(context.id):
            assert time.monotonic() < deadline, f"kernel of {context.id} left running"
            await asyncio.sleep(0.1)


def _kernels_of(context_id: str) -> list[int]:
    """Kernel processes whose sockets live in the context's private directory."""
    marker = f"emberbox-kernel-{context_id[:8]}-".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids
