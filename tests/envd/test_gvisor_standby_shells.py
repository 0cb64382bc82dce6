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
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def _settle(sbx: Sandbox, user: str, cwd: str | None = None) -> None:
    """Leave standby shells started (and finished with their login) before what follows."""
    for _ in range(3):
        sbx.commands.run("true", user=user, cwd=cwd)


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


# Kills every idle standby shell (one still holding the control pipe its BOOT loop reads; a
# shell that took its command has closed it), as ``pkill bash`` would, sparing busy ones.
KILL_IDLE = r"""
n=0
for p in $(pgrep -f __eb_go); do
  fd=$(tr '\0' ' ' < /proc/$p/cmdline | grep -o 'read -r -u [0-9]* __eb_go' | grep -o '[0-9]*')
  [ -n "$fd" ] && [ -e /proc/$p/fd/$fd ] && kill -KILL $p 2>/dev/null && n=$((n + 1))
done
echo $n
"""


def test_many_clients_while_the_login_changes_and_idle_shells_are_killed(sandbox: Sandbox) -> None:
    """Four clients run commands at once (two back to back, two paced) while the profile
    changes under them and idle standby shells are killed. Each command prints what a fresh
    login would (the version of the profile written before it was sent, or a newer one), or
    ends killed when a kill caught its shell as it took the command; none hangs or fails
    otherwise. Afterwards the sandbox holds as many shells as before, none a zombie."""
    run = sandbox.commands.run
    profile = "/etc/profile.d/zz-version.sh"
    sandbox.files.write("/tmp/kill-idle.sh", KILL_IDLE, user="root")

    def write(version: int) -> None:  # renamed in: a login never reads half a file
        run(f"echo 'export VERSION={version}' > {profile}.new && mv -f {profile}.new {profile}",
            user="root")  # fmt: skip

    def shells() -> str:
        live = "ps -eo stat=,args= | grep -c '^[^Z].*[_]_eb_go'"  # ([_]: not grep itself)
        return run(f"{live}; ps -eo stat= | grep -c Z || true", user="root").stdout

    write(0)
    for user, cwd in (("user", None), ("root", None), ("user", "/tmp")):
        _settle(sandbox, user, cwd)
    before = shells()
    written: list[float] = [0.0]  # when each version's write returned (monotonic)

    def edit() -> None:
        for version in range(1, 9):
            time.sleep(0.15)
            write(version)
            written.append(time.monotonic())

    def kill() -> int:
        killed = 0
        for _ in range(12):
            time.sleep(0.1)
            killed += int(run("sh /tmp/kill-idle.sh", user="root").stdout)
        return killed

    def client(n: int) -> list[tuple[float, str | None, CommandExitException | None]]:
        seen: list[tuple[float, str | None, CommandExitException | None]] = []
        paced = n % 2 == 1  # their shells (of their own cwd) sit idle across the edits
        for _ in range(12):
            time.sleep(0.06 if paced else 0)
            sent = time.monotonic()
            try:
                cwd = "/tmp" if paced else None
                seen.append((sent, run("echo ${VERSION:-none}", cwd=cwd).stdout.strip(), None))
            except CommandExitException as exc:
                seen.append((sent, None, exc))
        return seen

    with ThreadPoolExecutor(6) as pool:
        editing, killing = pool.submit(edit), pool.submit(kill)
        results = [r for done in pool.map(client, range(4)) for r in done]
        editing.result()
        shells_killed = killing.result()
    assert shells_killed > 0, "no idle standby shell was found to kill"

    killed = 0
    for sent, version, exc in results:
        if exc is not None:  # its shell was killed as it took the command
            assert exc.exit_code == -1 and "killed" in (exc.error or ""), exc
            killed += 1
            continue
        floor = max(v for v, at in enumerate(written) if at <= sent)
        assert version is not None and version.isdigit() and int(version) >= floor, (
            sent, version, floor, written,
        )  # fmt: skip
    print(f"{shells_killed} idle shells killed; {killed} of {len(results)} commands with them")
    assert killed < len(results) // 4, f"{killed} of {len(results)} commands were killed"
    assert run("echo ${VERSION}").stdout == "8\n"
    _settle(sandbox, "user", "/tmp")  # and, its shells idle, an edit still reaches the next one
    write(9)
    assert run("echo ${VERSION}", cwd="/tmp").stdout == "9\n"

    for user, cwd in (("user", None), ("root", None), ("user", "/tmp")):
        _settle(sandbox, user, cwd)
    deadline = time.monotonic() + 10  # dropped shells exit once their login is done
    while (now := shells()) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now == before, (now, before)
