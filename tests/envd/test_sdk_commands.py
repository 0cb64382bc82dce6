"""The official ``e2b`` SDK runs commands through our envd (debug mode, localhost:49983)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from e2b import CommandExitException, TimeoutException
from e2b.exceptions import InvalidArgumentException, NotFoundException


def test_run_collects_stdout_stderr_and_exit_code(sandbox: Any) -> None:
    result = sandbox.commands.run("echo out; echo err >&2; printf tail")
    assert result.stdout == "out\ntail"
    assert result.stderr == "err\n"
    assert result.exit_code == 0


def test_non_zero_exit_raises_with_result(sandbox: Any) -> None:
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo partial; exit 7")
    assert info.value.exit_code == 7
    assert info.value.stdout == "partial\n"


def test_default_user_home_env_and_cwd(sandbox: Any, sandbox_user: str) -> None:
    result = sandbox.commands.run("id -un; pwd; echo $HOME $USER $FOO", envs={"FOO": "bar"})
    assert result.stdout.splitlines() == [sandbox_user, "/home/user", "/home/user user bar"]


def test_run_as_root_in_cwd(sandbox: Any) -> None:
    result = sandbox.commands.run("id -u; pwd", user="root", cwd="/tmp")
    assert result.stdout.split() == ["0", "/tmp"]


def test_missing_cwd_is_invalid_argument(sandbox: Any) -> None:
    with pytest.raises(InvalidArgumentException, match="does not exist"):
        sandbox.commands.run("true", cwd="/definitely/not/here")


def test_streaming_callbacks_see_output_in_order(sandbox: Any) -> None:
    seen: list[tuple[str, str]] = []
    sandbox.commands.run(
        "for i in 1 2 3; do echo $i; sleep 0.05; done; echo e >&2",
        on_stdout=lambda line: seen.append(("out", line)),
        on_stderr=lambda line: seen.append(("err", line)),
    )
    assert "".join(text for kind, text in seen if kind == "out") == "1\n2\n3\n"
    assert ("err", "e\n") in seen


def test_stdin_is_delivered_and_closed(sandbox: Any) -> None:
    handle = sandbox.commands.run("cat; echo done", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "hello ")
    sandbox.commands.send_stdin(handle.pid, "world\n")
    sandbox.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.stdout == "hello world\ndone\n"


def test_stdin_disabled_reads_eof(sandbox: Any) -> None:
    assert sandbox.commands.run("cat; echo eof").stdout == "eof\n"


def test_timeout_kills_the_process(sandbox: Any) -> None:
    marker = f"/tmp/timeout-marker-{time.monotonic_ns()}"
    with pytest.raises(TimeoutException):
        sandbox.commands.run(f"sleep 1.5; touch {marker}", timeout=0.5)
    time.sleep(1.6)
    assert not sandbox.files.exists(marker), "the process outlived its deadline"


def test_background_list_connect_and_kill(sandbox: Any) -> None:
    handle = sandbox.commands.run(
        "sleep 0.3; echo started; sleep 60", background=True, timeout=0, envs={"MARK": "x"}
    )
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in listed
    assert listed[handle.pid].envs.get("MARK") == "x"
    handle.disconnect()
    time.sleep(0.6)  # "started" is printed while no client is attached

    again = sandbox.commands.connect(handle.pid)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        again.wait()
    # output produced while nobody listened is delivered on reconnect
    assert info.value.stdout == "started\n"
    assert info.value.exit_code == -1
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}


def test_kill_kills_the_whole_command_tree(sandbox: Any) -> None:
    # A duration no other process on the host uses: envd runs on the host here, and pgrep sees
    # every process (a plain "sleep 300" elsewhere once failed this test).
    seconds = str(random.randint(10_000, 99_999))
    handle = sandbox.commands.run(f"sleep {seconds} | cat", background=True, timeout=0)
    time.sleep(0.2)
    assert sandbox.commands.kill(handle.pid)
    with pytest.raises(CommandExitException):
        handle.wait()
    pattern = f"sleep {seconds[:-1]}[{seconds[-1]}]"  # the brackets keep pgrep from finding itself
    leftover = sandbox.commands.run(f"pgrep -f '{pattern}' || true", user="root").stdout
    assert leftover.strip() == ""


def test_unknown_pid(sandbox: Any) -> None:
    assert sandbox.commands.kill(999_999) is False
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999_999)


def test_exited_process_can_still_be_connected(sandbox: Any) -> None:
    handle = sandbox.commands.run("echo quick", background=True)
    assert handle.wait().stdout == "quick\n"
    late = sandbox.commands.connect(handle.pid)
    assert late.wait().exit_code == 0


def test_global_env_from_init_reaches_processes(sandbox: Any, e2b_debug_env: Any) -> None:
    import httpx

    url = e2b_debug_env.url
    httpx.post(f"{url}/init", json={"envVars": {"GLOBAL_X": "1", "OVERRIDE": "init"}})
    try:
        result = sandbox.commands.run("echo $GLOBAL_X $OVERRIDE", envs={"OVERRIDE": "request"})
        assert result.stdout == "1 request\n"
        assert httpx.get(f"{url}/envs").json() == {"GLOBAL_X": "1", "OVERRIDE": "init"}
    finally:
        httpx.post(f"{url}/init", json={"envVars": {}})


def test_two_inputs_at_once_each_arrive_whole_and_in_one_piece(sandbox: Any) -> None:
    """Both wait for the pipe to drain: the loop keeps one writability callback per fd, so
    the second replaced the first's, which then waited forever (and the bytes interleaved)."""
    out = f"/tmp/stdin-{time.monotonic_ns()}"
    handle = sandbox.commands.run(f"sleep 1; cat > {out}; wc -c < {out}", background=True,
                                  stdin=True)  # fmt: skip
    size = 300 * 1024
    sent: list[str] = []

    def send(letter: str) -> None:
        sandbox.commands.send_stdin(handle.pid, letter * size)
        sent.append(letter)

    threads = [threading.Thread(target=send, args=(c,), daemon=True) for c in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(sent) == ["a", "b"], "an input never returned"
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout.strip() == str(2 * size)
    data = sandbox.files.read(out)
    assert sorted([data[:size], data[size:]]) == ["a" * size, "b" * size]  # not interleaved
    sandbox.commands.run(f"rm -f {out}")
