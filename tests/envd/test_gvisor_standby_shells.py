"""Standby login shells in a real gVisor sandbox, through a real server and the official SDK.

What only a sandbox can show: the base template's own profiles, and that editing them (as root
in /etc/profile.d, as the user in ~/.profile, or creating ~/.local/bin, which Debian's
~/.profile tests for) reaches the very next command although shells were started before the
edit. Skipped without root/runsc. The server keeps its own data dir, so it runs next to
other gVisor test runs (each server owns the sandboxes of its data dir).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import CommandExitException, Sandbox

from emberbox.server.testing import ServerProcess
from emberbox.templates.store import TemplateStore

DATA_DIR = Path(os.environ.get("EMBERBOX_STANDBY_TEST_DATA_DIR") or "/var/lib/emberbox-standby")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.runtimes.gvisor_support import ensure_base, require_host

    require_host()
    asyncio.run(ensure_base(TemplateStore(DATA_DIR)))
    tmp = tmp_path_factory.mktemp("gvisor-standby")
    started = ServerProcess(
        DATA_DIR,
        database_url=f"sqlite+aiosqlite:///{tmp / 'emberbox.db'}",
        env={"EMBERBOX_BACKEND": "gvisor"},
        log_dir=tmp,
    )
    started.start(timeout_s=60)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def sandbox(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    assert server.first_key
    for k, v in server.sdk_env(server.first_key).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    sbx = Sandbox.create(timeout=300)
    try:
        yield sbx
    finally:
        sbx.kill()


def _settle(sbx: Sandbox, user: str) -> None:
    """Leave standby shells started (and finished with their login) before what follows."""
    for _ in range(3):
        sbx.commands.run("true", user=user)


def test_login_profile_edits_reach_the_next_command(sandbox: Sandbox) -> None:
    run = sandbox.commands.run
    assert run("echo $PATH").stdout == "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games\n"
    assert run("echo $PATH", user="root").stdout.startswith("/usr/local/sbin:")
    assert run("id -un; pwd", user="root", cwd="/tmp").stdout == "root\n/tmp\n"

    _settle(sandbox, "user")
    sandbox.files.write("/etc/profile.d/zz-emberbox.sh", "export FROM_PROFILE_D=one\n", user="root")
    assert run("echo $FROM_PROFILE_D").stdout == "one\n"
    sandbox.files.write("/etc/profile.d/zz-emberbox.sh", "export FROM_PROFILE_D=two\n", user="root")
    assert run("echo $FROM_PROFILE_D").stdout == "two\n"
    assert run("echo $FROM_PROFILE_D", user="root").stdout == "two\n"

    _settle(sandbox, "user")
    run("echo 'export FROM_HOME=mine; greet() { echo hi from $1; }' >> ~/.profile")
    assert run("echo $FROM_HOME; greet profile").stdout == "mine\nhi from profile\n"
    assert run("echo ${FROM_HOME:-unset}", user="root").stdout == "unset\n"

    _settle(sandbox, "user")
    run("mkdir -p ~/.local/bin && printf '#!/bin/sh\\necho local tool\\n' > ~/.local/bin/tool"
        " && chmod +x ~/.local/bin/tool")  # fmt: skip
    assert run("tool").stdout == "local tool\n"
    assert run("echo $PATH").stdout.startswith("/home/user/.local/bin:")


def test_semantics_in_gvisor(sandbox: Sandbox) -> None:
    run = sandbox.commands.run
    result = run("echo $FOO; ls /proc/self/fd | tr '\\n' ' '", envs={"FOO": "per call"})
    assert result.stdout == "per call\n0 1 2 3 "
    with pytest.raises(CommandExitException) as info:
        run("echo partial; exit 7")
    assert (info.value.exit_code, info.value.stdout) == (7, "partial\n")

    handle = run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "typed\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "typed\n"

    handle = run("echo $$; sleep 600", background=True, timeout=0)
    assert handle.pid in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert (info.value.exit_code, info.value.stdout) == (-1, f"{handle.pid}\n")
    assert run("pgrep -x sleep || echo none").stdout == "none\n"
