"""Commands and PTYs through our SDK, once per face."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from emberbox import CommandExitException, InvalidArgumentException, PtySize, TimeoutException
from tests.sdk.conftest import items, maybe


async def test_run_returns_output_and_exit_code(sandbox: Any) -> None:
    result = await maybe(sandbox.commands.run("echo out; echo err >&2; printf 'é'"))
    assert (result.stdout, result.stderr, result.exit_code) == ("out\né", "err\n", 0)


async def test_non_zero_exit_raises_with_the_result(sandbox: Any) -> None:
    with pytest.raises(CommandExitException) as info:
        await maybe(sandbox.commands.run("echo so-far; exit 5"))
    assert (info.value.exit_code, info.value.stdout) == (5, "so-far\n")


async def test_streaming_callbacks_user_cwd_envs(sandbox: Any) -> None:
    out: list[str] = []
    result = await maybe(
        sandbox.commands.run(
            "id -un; pwd; echo $X",
            user="root",
            cwd="/tmp",
            envs={"X": "y"},
            on_stdout=out.append,
        )
    )
    assert result.stdout == "root\n/tmp\ny\n"
    assert "".join(out) == result.stdout


async def test_bad_cwd_is_an_invalid_argument(sandbox: Any) -> None:
    with pytest.raises(InvalidArgumentException):
        await maybe(sandbox.commands.run("true", cwd="/nowhere/at/all"))


async def test_timeout_raises(sandbox: Any) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        await maybe(sandbox.commands.run("sleep 5", timeout=0.5))
    assert time.monotonic() - started < 4


async def test_background_handle_stdin_iteration_and_kill(sandbox: Any) -> None:
    handle = await maybe(sandbox.commands.run("cat", background=True, stdin=True, timeout=0))
    await maybe(handle.send_stdin("line one\n"))
    await maybe(handle.close_stdin())
    chunks = await items(handle)
    assert "".join(c[0] for c in chunks if c[0]) == "line one\n"

    sleeper = await maybe(sandbox.commands.run("sleep 60", background=True, timeout=0))
    pids = [p.pid for p in await maybe(sandbox.commands.list())]
    assert sleeper.pid in pids
    await maybe(sleeper.disconnect())
    again = await maybe(sandbox.commands.connect(sleeper.pid))
    assert await maybe(sandbox.commands.kill(sleeper.pid)) is True
    with pytest.raises(CommandExitException) as info:
        await maybe(again.wait())
    assert info.value.exit_code == -1
    assert await maybe(sandbox.commands.kill(sleeper.pid)) is False


async def test_pty_round_trip(sandbox: Any) -> None:
    terminal = await maybe(sandbox.pty.create(PtySize(rows=20, cols=70)))
    await maybe(sandbox.pty.resize(terminal.pid, PtySize(rows=33, cols=90)))
    marker = uuid.uuid4().hex[:8]
    await maybe(sandbox.pty.send_stdin(terminal.pid, f"stty size; echo {marker}-done; exit 0\n"))
    seen: list[bytes] = []
    result = await maybe(terminal.wait(on_pty=seen.append))
    output = b"".join(seen)
    assert result.exit_code == 0
    assert b"33 90" in output
    assert f"{marker}-done".encode() in output


async def test_pty_kill(sandbox: Any) -> None:
    terminal = await maybe(sandbox.pty.create())
    assert await maybe(sandbox.pty.kill(terminal.pid)) is True
    with pytest.raises(CommandExitException):
        await maybe(terminal.wait())
