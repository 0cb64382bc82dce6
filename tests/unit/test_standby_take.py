"""``StandbyPool.take`` with real ``bash -l`` shells in a home of the test's own: a standby
whose login files changed since it started is dropped, a take looks at no more than
``TAKE_TRIES`` of them, and files edited while shells start never make it start and drop shells
without end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from emberbox.envd.process.standby import TAKE_TRIES, Standby, StandbyPool
from emberbox.envd.users import User


def _me(home: Path) -> User:
    entry = pwd.getpwuid(os.geteuid())
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, str(home), "/bin/bash")


def _env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "USER": "u", "LOGNAME": "u"}


class Counting:
    """A spawner that starts each shell in a thread, as envd's does, and counts them;
    ``before`` runs in that thread just before each start (as the user, in envd)."""

    def __init__(self, before: Callable[[], None] = lambda: None) -> None:
        self.started = 0
        self.before = before
        self.shells: list[Standby] = []

    async def __call__(self, user: User, start: Callable[[], Standby]) -> Standby:
        self.started += 1

        def run() -> Standby:
            self.before()
            return start()

        shell = await asyncio.to_thread(run)
        self.shells.append(shell)
        return shell


def _edit(profile: Path) -> Callable[[], None]:
    def edit() -> None:
        profile.write_text(profile.read_text() + "X=1\n")

    return edit


def _home_with_a_profile(
    home: Path, text: str = "X=0\n"
) -> tuple[Path, Counting, StandbyPool, User]:
    """A ``~/.profile`` of ``text`` in ``home``, and a pool of two shells per key that counts
    its starts."""
    profile = home / ".profile"
    profile.write_text(text)
    spawner = Counting()
    return profile, spawner, StandbyPool(spawner, size=2), _me(home)


async def _pooled(pool: StandbyPool, user: User, home: Path, n: int) -> None:
    """Fill the key's pool with ``n`` started shells (a first take makes the key known)."""
    first = await pool.take(user, str(home), _env(home), False)
    assert first is not None
    first.discard()
    pool.size = n
    pool.refill(user, str(home), False)
    for slot in pool._slots.values():
        await asyncio.gather(*slot.shells)


async def test_login_files_edited_as_each_shell_starts_still_give_a_shell(tmp_path: Path) -> None:
    """An install that keeps touching the profile while commands start (pip, apt-get): each
    new shell's stamp was taken before its start, as the take's, so it fits at once. Before,
    the shell's stamp was taken inside its start, after the edit, and no shell ever fit."""
    profile = tmp_path / ".profile"
    profile.write_text("X=0\n")
    spawner = Counting(_edit(profile))
    pool = StandbyPool(spawner, size=2)
    try:
        took = await asyncio.wait_for(pool.take(_me(tmp_path), str(tmp_path), _env(tmp_path),
                                                False), 30)  # fmt: skip
        assert took is not None and took.popen.poll() is None
        assert spawner.started == 1
        took.discard()
    finally:
        pool.close()


async def test_pooled_shells_older_than_an_edit_are_dropped(tmp_path: Path) -> None:
    profile, spawner, pool, user = _home_with_a_profile(tmp_path)
    try:
        await _pooled(pool, user, tmp_path, 2)
        assert spawner.started == 3
        _edit(profile)()
        took = await asyncio.wait_for(pool.take(user, str(tmp_path), _env(tmp_path), False), 30)
        assert took is not None
        assert spawner.started == 4  # both pooled ones dropped, one started for the command
        took.discard()
    finally:
        pool.close()


async def test_a_take_gives_up_after_a_few_stale_shells(tmp_path: Path) -> None:
    """A pool larger than ``TAKE_TRIES``, all stale: the command starts the ordinary way
    (None) rather than waiting on every one; the rest are looked at by later commands."""
    profile, spawner, pool, user = _home_with_a_profile(tmp_path)
    try:
        await _pooled(pool, user, tmp_path, TAKE_TRIES + 2)
        started = spawner.started
        _edit(profile)()
        took = await asyncio.wait_for(pool.take(user, str(tmp_path), _env(tmp_path), False), 30)
        assert took is None
        assert spawner.started == started  # none started for it
        (slot,) = pool._slots.values()
        assert len(slot.shells) == 2  # the ones not looked at stay for later commands
    finally:
        pool.close()


async def test_a_variable_the_login_files_mention_takes_a_shell_that_saw_it(
    tmp_path: Path,
) -> None:
    """Standbys log in before the ``/init`` that brings a template's variables (a restored
    template snapshot): one whose login read a variable that changed since is dropped, one
    whose login did not is used, the variable exported before the command."""
    _, spawner, pool, user = _home_with_a_profile(tmp_path, 'export PATH="$TOOL_HOME/bin:$PATH"\n')
    env = _env(tmp_path)
    try:
        await _pooled(pool, user, tmp_path, 2)
        started = spawner.started
        took = await pool.take(user, str(tmp_path), {**env, "OTHER": "1"}, False)
        assert took is not None and took.pending == {"OTHER": "1"}  # a pooled one
        assert spawner.started == started
        took.discard()
        took = await pool.take(user, str(tmp_path), {**env, "TOOL_HOME": "/opt/tool"}, False)
        assert took is not None and took.pending == {}  # started with it
        assert spawner.started == started + 1  # the other pooled one dropped, one started
        took.discard()
    finally:
        pool.close()


async def test_wake_ups_a_shell_stuck_in_its_login_never_reads_do_not_block_envd(
    tmp_path: Path,
) -> None:
    """Every /health wakes the idle standbys with a line on their control pipe. A shell
    whose login hangs reads none: ~32k of them filled the pipe, and the next write stopped
    envd's event loop. Now they are dropped, and such a shell is not handed a command."""
    (tmp_path / ".profile").write_text("sleep 60\n")  # a login that hangs
    spawner = Counting()
    pool = StandbyPool(spawner, size=2)
    user = _me(tmp_path)
    try:
        await _pooled(pool, user, tmp_path, 1)

        def wake_often() -> None:
            for _ in range(40_000):
                pool.wake()

        await asyncio.wait_for(asyncio.to_thread(wake_often), 20)
        stuck = await pool.take(user, str(tmp_path), _env(tmp_path), False)
        assert stuck is not None
        with pytest.raises(BlockingIOError):
            stuck.hand_over("true", {})
        stuck.discard()
    finally:
        pool.close()
        for shell in spawner.shells:  # the login's sleep too: it holds the pipe's read end
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.popen.pid, signal.SIGKILL)


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


async def test_a_login_that_turns_hashing_off_still_runs_its_commands(tmp_path: Path) -> None:
    """The standby forgets the login's remembered command paths (``hash -r``) only where
    hashing is on: under ``set +h`` that builtin fails, and with ``set -e`` the shell exited
    without running the command."""
    (tmp_path / ".profile").write_text("set +h\nset -e\n")
    pool = StandbyPool(Counting(), size=2)
    try:
        shell = await pool.take(_me(tmp_path), str(tmp_path), _env(tmp_path), False)
        assert shell is not None
        shell.hand_over("echo ran", {})
        out, err = await asyncio.gather(
            asyncio.to_thread(_read_all, shell.stdout), asyncio.to_thread(_read_all, shell.stderr)
        )
        assert (out, err, await asyncio.to_thread(shell.popen.wait)) == (b"ran\n", b"", 0)
        shell.discard()
    finally:
        pool.close()


async def test_a_request_variable_the_login_reads_takes_the_ordinary_way(tmp_path: Path) -> None:
    """A standby logged in before the request existed: a profile that builds PATH from
    ``TOOL_HOME`` must see the request's, as ``bash -l -c`` does. A variable the login does
    not read (and PATH, exported over the profile's: docs/envd.md) is a standby's."""
    _, spawner, pool, user = _home_with_a_profile(
        tmp_path, 'export PATH="${TOOL_HOME:-/opt/default}/bin:$PATH"\n'
    )
    env = _env(tmp_path)
    try:
        await _pooled(pool, user, tmp_path, 2)
        started = spawner.started
        assert await pool.take(user, str(tmp_path), env, False, given=["TOOL_HOME"]) is None
        assert await pool.take(user, str(tmp_path), env, False, given=["HOME"]) is None
        for given in (["OTHER"], ["PATH"]):
            took = await pool.take(user, str(tmp_path), env, False, given=given)
            assert took is not None
            took.discard()
        assert spawner.started == started  # (the two pooled ones served those)
    finally:
        pool.close()


async def test_a_command_whose_request_variable_the_profile_reads_sees_what_a_login_made_of_it(
    tmp_path: Path,
) -> None:
    """The same command through envd's process manager with standbys and without: equal."""
    import dataclasses

    from emberbox._proto.process import process_pb2 as pb
    from emberbox.envd.process.manager import Exit, Output, ProcessManager
    from emberbox.envd.state import EnvdState

    (tmp_path / ".profile").write_text('export PATH="${TOOL_HOME:-/opt/default}/bin:$PATH"\n')
    user = dataclasses.replace(_me(tmp_path), home=str(tmp_path))

    async def run(manager: ProcessManager, envs: dict[str, str]) -> str:
        config = pb.ProcessConfig(
            cmd="/bin/bash", args=["-l", "-c", 'echo "${PATH%%:*}"'], envs=envs, cwd=str(tmp_path)
        )
        _, feed = await manager.start(config, user, pty=None, stdin=False, tag=None)
        out = b""
        while not isinstance(event := await feed.get(), Exit):
            out += event.data if isinstance(event, Output) else b""
        return out.decode()

    standby = ProcessManager(EnvdState(standby_shells=2))
    fresh = ProcessManager(EnvdState(standby_shells=0))
    try:
        await run(standby, {})  # (its key is known now: standbys log in)
        for slot in standby.standbys._slots.values():
            await asyncio.gather(*slot.shells)
        given = {"TOOL_HOME": "/opt/tool-2"}
        assert await run(standby, given) == await run(fresh, given) == "/opt/tool-2/bin\n"
    finally:
        await standby.close()
        await fresh.close()
