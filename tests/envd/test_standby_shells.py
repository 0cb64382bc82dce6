"""Standby login shells (docs/envd.md) change nothing a command can see.

Differential: the same commands through an envd with standby shells and one that starts every
command afresh (``--standby-shells 0``) must print the same, exit the same and see the same
environment, user, cwd, fds and shell state. Both run on loopback as real processes and are
driven by the official SDK (debug mode, pointed at each envd's port).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2b import AsyncSandbox, CommandExitException, InvalidArgumentException, Sandbox

from tests.conftest import EnvdProcess

# What legitimately differs between two shells: pids, clocks, PIPESTATUS before the first
# command (a standby ran its own since the login), the values and attributes of the dynamic
# variables (a standby sets SECONDS and seeds RANDOM as its command starts, and bash shows such
# a variable with ``-i`` and a value once it was used: only the name is kept), and the label
# bash puts on a syntax error (``-c:`` for a fresh ``bash -c``, ``eval:`` for a standby's eval).
_VOLATILE = re.compile(
    r"^(declare -[-a-zA-Z]* )?(BASHPID|PPID|_|BASH_COMMAND|SECONDS|EPOCHREALTIME|EPOCHSECONDS"
    r"|RANDOM|SRANDOM|PIPESTATUS)(=.*)?$",
    re.M,
)

PROBES = [
    "env | sort",
    "declare -p; declare -f; alias; shopt -p; set -o; trap -p",
    "pwd; id; umask; ulimit -a; echo $0 $# $- $SHLVL $LINENO",
    'ls /proc/self/fd; [ -t 0 ] && echo tty || echo "no tty"; cat',
    "shopt -q login_shell && echo login",
    "echo out; echo err >&2; exit 3",
    "echo $LINENO\necho $LINENO; return 2; echo after",
    "kill -TERM $$",
    "nonexistent-command-xyz",
    'echo "$FOO|$BAR"; printenv FOO',
]


def _normalise(text: str, pid: int) -> str:
    return _VOLATILE.sub(r"\2", text).replace(str(pid), "<pid>")


def _outcome(sandbox: Sandbox, cmd: str, **kw: Any) -> tuple[int, str, str]:
    handle = sandbox.commands.run(cmd, background=True, **kw)
    try:
        result = handle.wait()
    except CommandExitException as exc:
        result = exc
    return (
        result.exit_code,
        _normalise(result.stdout, handle.pid),
        _normalise(result.stderr, handle.pid),
    )


@pytest.fixture
def pair(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> tuple[Sandbox, Sandbox]:
    """(with standby shells, every command afresh), both through the official SDK."""
    monkeypatch.setenv("E2B_DEBUG", "true")
    sandboxes = []
    for flags in ((), ("--standby-shells", "0")):
        envd = envd_factory(*flags)
        monkeypatch.setenv("E2B_SANDBOX_URL", envd.url)
        sandboxes.append(Sandbox.create())
    return sandboxes[0], sandboxes[1]


@pytest.mark.parametrize("user", ["user", "root"])
def test_a_standby_shell_is_indistinguishable_from_a_fresh_login_shell(
    pair: tuple[Sandbox, Sandbox], user: str
) -> None:
    """As root only stdout and exit codes are compared: a host's root profile may print from
    its own races (pyenv's rehash warns when two logins overlap, whichever envd started them);
    gVisor sandboxes have the template's clean profiles (test_gvisor_standby_shells.py)."""
    standby, fresh = pair
    for cwd in (None, "/tmp"):
        for cmd in PROBES:
            kw = {"user": user, "cwd": cwd, "envs": {"FOO": "a b\nc=d", "BAR": "$HOME '\"x"}}
            for _ in range(2):  # the first may be started on demand, the second was waiting
                got, want = _outcome(standby, cmd, **kw), _outcome(fresh, cmd, **kw)
                compared = 2 if user == "root" else 3  # root: stdout and exit code only
                assert got[:compared] == want[:compared], (cmd, user, cwd)


def test_syntax_errors_differ_only_in_their_label(pair: tuple[Sandbox, Sandbox]) -> None:
    standby, fresh = pair
    code, out, err = _outcome(standby, "echo a\nfi")
    assert (code, out) == (2, "a\n")
    assert err == _outcome(fresh, "echo a\nfi")[2].replace("-c:", "eval:")


def test_request_envs_override_what_the_profile_set(pair: tuple[Sandbox, Sandbox]) -> None:
    """The profile runs before the request's vars are exported, so a request's PATH wins (a
    fresh login shell lets /etc/profile overwrite it: E2B's behaviour)."""
    standby, fresh = pair
    path = "/opt/custom/bin:/usr/bin:/bin"
    assert standby.commands.run("echo $PATH", envs={"PATH": path}).stdout == path + "\n"
    assert fresh.commands.run("echo $PATH", envs={"PATH": path}).stdout != path + "\n"


def test_a_nul_in_a_command_or_its_envs_is_refused_and_runs_nothing(
    pair: tuple[Sandbox, Sandbox],
) -> None:
    """No exec can carry a NUL. A standby splits its request at NULs: a value holding one
    ran its tail as the command, and a command was cut at it; a fresh start failed inside."""
    where = Path(tempfile.mkdtemp())
    where.chmod(0o777)  # the commands' user may write there
    mark = where / "ran"
    for sandbox in pair:
        for cmd, envs in (
            (f"echo the-command > {mark}", {"A": f"x\0echo injected > {mark}"}),
            (f"echo cut > {mark}\0; echo whole", {}),
            (f"echo the-command > {mark}", {f"B\0echo injected > {mark}": "y"}),
        ):
            with pytest.raises(InvalidArgumentException, match="NUL"):
                sandbox.commands.run(cmd, envs=envs)
            assert not mark.exists(), (cmd, envs)
        sandbox.commands.run(f"echo fine > {mark}")
        assert mark.read_text() == "fine\n"  # the user could have written the mark
        mark.unlink()
    shutil.rmtree(where)


def test_envs_bash_owns_start_a_fresh_shell(pair: tuple[Sandbox, Sandbox]) -> None:
    standby, fresh = pair
    for envs in ({"IFS": ":"}, {"SHLVL": "7"}, {"MY-VAR": "x"}):
        cmd = 'printf "%s|" "$SHLVL" $PATH; env | grep -c MY-VAR'
        assert _outcome(standby, cmd, envs=envs) == _outcome(fresh, cmd, envs=envs), envs


def test_the_pid_is_the_shell_itself_a_child_of_envd(
    pair: tuple[Sandbox, Sandbox], envd_factory: Callable[..., EnvdProcess]
) -> None:
    standby, _ = pair
    for _ in range(3):
        handle = standby.commands.run("echo $$; read -r _ _ _ ppid _ < /proc/$$/stat; echo $ppid",
                                      background=True)  # fmt: skip
        pid, ppid = handle.wait().stdout.split()
        assert int(pid) == handle.pid
        assert ppid != "1" and os.path.exists(f"/proc/{ppid}")
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            assert b"emberbox.envd" in f.read()


def test_stdin_kill_list_and_connect(pair: tuple[Sandbox, Sandbox]) -> None:
    standby, _ = pair
    handle = standby.commands.run("cat; echo done", background=True, stdin=True)
    standby.commands.send_stdin(handle.pid, "hello\n")
    standby.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello\ndone\n"

    handle = standby.commands.run(
        "sleep 0.2; echo late; sleep 60", background=True, timeout=0, envs={"MARK": "y"}
    )
    listed = {p.pid: p for p in standby.commands.list()}
    assert listed[handle.pid].envs.get("MARK") == "y"
    assert listed[handle.pid].args == ["-l", "-c", "sleep 0.2; echo late; sleep 60"]
    handle.disconnect()
    time.sleep(0.5)
    again = standby.commands.connect(handle.pid)
    assert standby.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        again.wait()
    assert (info.value.exit_code, info.value.stdout) == (-1, "late\n")
    assert handle.pid not in {p.pid for p in standby.commands.list()}


async def test_twenty_concurrent_commands(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> None:
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", envd_factory().url)
    sandbox = await AsyncSandbox.create()

    async def one(i: int) -> tuple[str, int]:
        user = "root" if i % 3 == 0 else "user"
        handle = await sandbox.commands.run(
            "echo $N $(id -un) $$; exit $((N % 4))", envs={"N": str(i)}, user=user,
            background=True,
        )  # fmt: skip
        try:
            result = await handle.wait()
        except CommandExitException as exc:
            result = exc
        assert result.exit_code == i % 4
        return result.stdout, handle.pid

    results = await asyncio.gather(*(one(i) for i in range(20)))
    for i, (stdout, pid) in enumerate(results):
        assert stdout == f"{i} {'root' if i % 3 == 0 else 'user'} {pid}\n"
    assert len({pid for _, pid in results}) == 20


def _started_before(sandbox: Sandbox, moment: float) -> bool:
    """Whether the shell running a command was started before ``moment`` (epoch seconds): a
    standby waiting since then, not a shell started for the command."""
    out = sandbox.commands.run("read -ra s < /proc/$$/stat; echo ${s[21]}").stdout
    with open("/proc/uptime") as f:
        booted = time.time() - float(f.read().split()[0])
    return booted + int(out) / os.sysconf("SC_CLK_TCK") < moment


def _pair_with_standbys_waiting(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[EnvdProcess, Sandbox]]:
    """(envd with standby shells, envd starting every command afresh), each with the
    official SDK on it; the first's standbys for the default key have started (with no
    ``/init`` vars) and finished their login."""
    monkeypatch.setenv("E2B_DEBUG", "true")
    pair = []
    for flags in ((), ("--standby-shells", "0")):
        envd = envd_factory(*flags)
        monkeypatch.setenv("E2B_SANDBOX_URL", envd.url)
        pair.append((envd, Sandbox.create()))
    for _, sandbox in pair:
        sandbox.commands.run("true")  # the key's standbys start now
    time.sleep(1.0)  # their logins are done
    return pair


def test_an_init_after_the_standbys_started_reaches_their_commands(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> None:
    """A restore or a warm-pool claim sends ``/init`` to an envd whose standbys started long
    before: a change in vars no login reads is exported to them (and they are used); removing
    a var or changing one the login reads (PATH) makes them stale. Either way every command sees
    what a fresh login shell sees."""
    import httpx

    pair = _pair_with_standbys_waiting(envd_factory, monkeypatch)
    inits = [
        {"E2B_SANDBOX_ID": "one", "FOO": "a b"},  # new vars: exported to the standby
        {"E2B_SANDBOX_ID": "two", "FOO": "a b"},  # a changed one: the same
        {"E2B_SANDBOX_ID": "two"},  # FOO removed: the standby is stale
        {"E2B_SANDBOX_ID": "two", "PATH": "/opt/x:/usr/bin:/bin"},  # read by the login: stale
    ]
    for i, env in enumerate(inits):
        moment = time.time()
        for envd, _ in pair:
            assert httpx.post(f"{envd.url}/init", json={"envVars": env}).status_code == 204
        standby, fresh = pair[0][1], pair[1][1]
        assert _outcome(standby, "env | sort") == _outcome(fresh, "env | sort"), env
        if i < 2:
            assert _started_before(standby, moment), f"the standby was not used after {env}"
        time.sleep(0.5)  # the used standbys are replaced before the next /init


def test_a_woken_standby_still_runs_its_command_as_a_fresh_shell_would(
    envd_factory: Callable[..., EnvdProcess], monkeypatch: pytest.MonkeyPatch, sandbox_user: str
) -> None:
    """Every ``/init`` and ``/health`` wakes the idle standbys (after a restore they pay
    their first run then, not in a command): a woken shell goes back to waiting and is used
    as before."""
    import httpx

    pair = _pair_with_standbys_waiting(envd_factory, monkeypatch)
    moment = time.time()
    for envd, _ in pair:
        for _ in range(2):  # woken four times; the shells read each wake-up
            assert httpx.post(f"{envd.url}/init", json={}).status_code == 204
            assert httpx.get(f"{envd.url}/health").status_code == 204
    time.sleep(0.2)
    standby, fresh = pair[0][1], pair[1][1]
    assert _started_before(standby, moment), "a woken standby was not used"
    # The other woken standby (the oldest now): its shell state is a fresh login's.
    assert _outcome(standby, PROBES[1]) == _outcome(fresh, PROBES[1])


def test_a_directory_made_again_under_its_name_is_where_the_next_command_runs(
    pair: tuple[Sandbox, Sandbox],
) -> None:
    """``rm -rf repo && git clone ... repo``: the standbys waiting in the old ``repo`` (deleted)
    are let go, and the command runs in the new one, as a fresh login would."""
    for sandbox in pair:
        base = f"/tmp/emberbox-cwd-{time.monotonic_ns()}"
        sandbox.commands.run(f"mkdir -p {base}/repo")
        sandbox.commands.run("true", cwd=f"{base}/repo")  # its standbys now wait in repo
        time.sleep(0.5)
        sandbox.commands.run(f"rm -rf {base}/repo && mkdir {base}/repo && touch {base}/repo/x")
        assert sandbox.commands.run("ls", cwd=f"{base}/repo").stdout == "x\n"
        sandbox.commands.run(f"ln -sfn {base}/repo {base}/link && mkdir {base}/other")
        sandbox.commands.run("true", cwd=f"{base}/link")
        time.sleep(0.5)
        sandbox.commands.run(f"ln -sfn {base}/other {base}/link")  # pointed elsewhere
        assert sandbox.commands.run("pwd -P; ls", cwd=f"{base}/link").stdout == f"{base}/other\n"
        sandbox.commands.run(f"rm -rf {base}")


def test_a_standby_counts_seconds_from_its_command_and_seeds_random_afresh(
    pair: tuple[Sandbox, Sandbox],
) -> None:
    """``until ready || (( SECONDS > 60 ))`` in a fresh shell counts from the command; a standby
    waiting since long before must not give the script its age. And one started before a
    snapshot was taken is restored many times: its ``RANDOM`` must not repeat in each."""
    standby, _ = pair
    standby.commands.run("true")  # the standbys for the next commands start now
    time.sleep(2.5)
    assert standby.commands.run("echo $SECONDS").stdout.strip() in ("0", "1")
    seeded = standby.commands.run("declare -p RANDOM; echo $RANDOM").stdout
    assert seeded.startswith('declare -i RANDOM="'), "RANDOM was not seeded as the command began"
