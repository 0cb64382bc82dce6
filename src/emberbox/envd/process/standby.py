"""Standby login shells: ``bash -l -c CMD`` without paying for the login per command.

Both SDKs run every command as ``/bin/bash -l -c CMD``. In gVisor the process start alone costs
tens of milliseconds and the login profile as much again, so envd keeps a few *standby* shells
per (user, cwd, stdin) ready: real ``bash -l`` children of envd, started exactly as a command
would be (same user, cwd, environment and stdio), that have already sourced the profile and now
block on a control pipe. A command is handed to one of them: the request's env vars and the
command text go into a memfd (bash reads a seekable file in bulk, a pipe one byte per system
call), one byte goes down the control pipe, and the shell exports the vars and ``eval``\\ s the
command. The shell's pid is the command's pid, its exit status the command's.

A standby is used only while it is still what a fresh start would produce: it still sits in the
directory its cwd names, none of the files the login reads (or tests for) may have changed
since it was started, and its base environment (``/init`` vars) must be unchanged, or changed
only in variables a login does not read (the sandbox's identity and the caller's own vars, set
by the ``/init`` that follows a restore or a warm-pool claim), which are then exported before
the command like its request vars. Otherwise it is let go and the command gets a new shell.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import select
import signal
import stat
import subprocess
import threading
from collections.abc import Awaitable, Callable, Collection, Container, Mapping
from dataclasses import dataclass, field

from ..users import User

log = logging.getLogger("emberbox.envd.process")

# On the control pipe, a line with this word makes a standby run, then wait again
# (``StandbyPool.wake``); any other line hands it its command.
_WAKE_WORD = "w"
WAKE = f"{_WAKE_WORD}\n".encode()

# One line, so LINENO inside the command starts at 1 as with ``bash -c``. Every name it uses is
# unset before the command runs; builtins are called as such in case the profile shadows them.
# ``$?`` after the login (the profile's last status, which ``bash -l -c`` shows the command) is
# handed on through a function that removes itself (not under ``set -e``: it would exit).
# ``SECONDS`` counts from the command, not from the shell's start, and ``RANDOM`` is seeded
# afresh: a shell started before a template snapshot was taken would otherwise give every
# sandbox restored from it the same sequence (unless the profile unset them).
BOOT = (
    '__eb_s=$?; __eb_ret() { builtin unset -f __eb_ret; return "$1"; }; '
    "[[ $- == *e* ]] && __eb_s=0; "
    "while builtin read -r -u @CTL@ __eb_go || builtin exit 0; [[ $__eb_go == @WAKE@ ]]; "
    "do builtin :; done; exec @CTL@<&-; [[ $- == *h* ]] && builtin hash -r; "
    "[[ -v SECONDS ]] && SECONDS=0; [[ -v RANDOM && -v SRANDOM ]] && RANDOM=$SRANDOM; "
    "IFS= builtin read -r -d '' -u @REQ@ __eb_n; "
    "while (( __eb_n-- > 0 )); do IFS= builtin read -r -d '' -u @REQ@ __eb_kv; "
    'builtin export -- "$__eb_kv"; done; '
    "IFS= builtin read -r -d '' -u @REQ@ __eb_cmd; exec @REQ@<&-; "
    "builtin unset -v __eb_go __eb_n __eb_kv; BASH_EXECUTION_STRING=$__eb_cmd; "
    'builtin eval "builtin unset -v __eb_cmd __eb_s; __eb_ret $__eb_s; $__eb_cmd"'
).replace("@WAKE@", _WAKE_WORD)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Variables bash sets or reads at start-up: exporting them after start-up would not mean what
# passing them in the environment means, so requests carrying them take a fresh shell.
_BASH_OWNED = frozenset({
    "BASH", "BASHOPTS", "BASHPID", "BASH_ARGC", "BASH_ARGV", "BASH_ARGV0", "BASH_COMMAND",
    "BASH_ENV", "BASH_EXECUTION_STRING", "BASH_LINENO", "BASH_SOURCE", "BASH_SUBSHELL",
    "BASH_VERSINFO", "BASH_VERSION", "DIRSTACK", "ENV", "EPOCHREALTIME", "EPOCHSECONDS", "EUID",
    "FUNCNAME", "GROUPS", "HISTCMD", "IFS", "LINENO", "OLDPWD", "OPTERR", "OPTIND",
    "POSIXLY_CORRECT", "PPID", "PWD", "RANDOM", "SECONDS", "SHELLOPTS", "SHLVL", "SRANDOM",
    "UID", "_",
})  # fmt: skip


# Variables a login reads (bash itself, Debian's profiles, locale and terminal set-up): a change
# in one of them could change what the login did, so it takes a fresh shell.
_LOGIN_READ = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "MAIL", "TERM", "TZ", "HOSTNAME", "LANG",
    "LANGUAGE", "PS1", "PS2", "PS4", "PROMPT_COMMAND", "INPUTRC", "HISTFILE", "HISTSIZE",
    "HISTFILESIZE", "HISTCONTROL", "CDPATH", "GLOBIGNORE", "TMOUT", "MAILCHECK", "MAILPATH",
})  # fmt: skip


def env_change(
    started: Mapping[str, str], now: Mapping[str, str], read: Container[str] = ()
) -> dict[str, str] | None:
    """What a standby started with ``started`` must export to run as if started with ``now``;
    None when that cannot be exact (a variable removed, or one the login reads changed: bash's
    and the profiles', and any name in ``read``, see :func:`login_names`)."""
    if any(name not in now for name in started):
        return None
    change = {k: v for k, v in now.items() if started.get(k) != v}
    for name in change:
        if (
            not _NAME.match(name)
            or name in _BASH_OWNED
            or name in _LOGIN_READ
            or name in read
            or name.startswith(("LC_", "XDG_", "BASH_FUNC_"))
        ):
            return None
    return change


def login_command(cmd: str, args: list[str], envs: Mapping[str, str], pty: bool) -> str | None:
    """The command text if this request is an SDK command a standby can run exactly."""
    if pty or cmd != "/bin/bash" or len(args) != 3 or args[:2] != ["-l", "-c"]:
        return None
    if any(not _NAME.match(name) or name in _BASH_OWNED for name in envs):
        return None
    return args[2]


def _in_dir(pid: int, cwd: str) -> bool:
    """Whether the shell still sits in the directory ``cwd`` names now: one deleted and made
    again (``rm -rf repo && git clone ... repo``), or a symlink pointed elsewhere, would have
    the command run where a fresh start would not (in the deleted one, empty)."""
    try:
        here, there = os.stat(f"/proc/{pid}/cwd"), os.stat(cwd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


# Each login file's path with its modification time (ns) and size, None when it is missing.
Stamp = tuple[tuple[str, tuple[int, int] | None], ...]


def _stat(path: str) -> tuple[int, int] | None:
    """Modification time (ns) and size. Not the inode: gVisor numbers inodes afresh on a
    restore, which would make every standby in a checkpoint look stale."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def login_stamp(home: str) -> Stamp:
    """What a login shell's result depends on: the files bash and Debian's profiles read, the
    directories ``~/.profile`` tests for, and the account databases (groups, home, shell)."""
    paths = [
        "/etc/passwd", "/etc/group", "/etc/profile", "/etc/bash.bashrc", "/etc/profile.d",
        f"{home}/.bash_profile", f"{home}/.bash_login", f"{home}/.profile", f"{home}/.bashrc",
        f"{home}/bin", f"{home}/.local/bin",
    ]  # fmt: skip
    with contextlib.suppress(OSError):
        paths += sorted(e.path for e in os.scandir("/etc/profile.d"))
    return tuple((path, _stat(path)) for path in paths)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ACCOUNTS = ("/etc/passwd", "/etc/group")  # stamped, but a login reads no variable there
_SCAN_BYTES = 1 << 20
_names: dict[Stamp, frozenset[str]] = {}


def login_names(stamp: Stamp) -> frozenset[str]:
    """Every word the login files of ``stamp`` (a :func:`login_stamp`) hold: a variable
    among them that changed since a standby's login may have changed what it did (a
    template's ``ENV NVM_DIR`` and ``/etc/profile.d/nvm.sh`` sourcing ``$NVM_DIR/nvm.sh``,
    when the standby logged in before the ``/init`` that brought the variable). Read once per
    stamp: the stamp changes with any of the files."""
    names = _names.get(stamp)
    if names is None:
        words: set[str] = set()
        for path, _ in stamp:
            if path not in _ACCOUNTS:
                words.update(_WORD.findall(_read_regular(path)))
        names = frozenset(words)
        if len(_names) >= 16:
            _names.clear()
        _names[stamp] = names
    return names


def _read_regular(path: str) -> str:
    """The start of a regular file, as text; nothing for anything else (a directory, a FIFO
    in ``/etc/profile.d`` that an open for reading would wait on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, _SCAN_BYTES).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Key:
    user: str
    uid: int
    cwd: str
    stdin: bool


@dataclass(eq=False)
class Standby:
    popen: subprocess.Popen[bytes]
    stdout: int
    stderr: int
    stdin: int | None
    control: int
    request: int
    env: dict[str, str]
    stamp: Stamp
    # Base vars that changed since the start (``env_change``), exported before the request's.
    pending: dict[str, str] = field(default_factory=dict)

    def hand_over(self, command: str, envs: Mapping[str, str]) -> None:
        """Give the shell its command; OSError if it is no longer there (BrokenPipeError) or
        reads no more (BlockingIOError: stuck in its login, its pipe full of wake-ups)."""
        envs = {**self.pending, **envs}
        fields = [str(len(envs)), *(f"{k}={v}" for k, v in envs.items()), command]
        os.pwrite(self.request, b"".join(f.encode() + b"\0" for f in fields), 0)
        os.write(self.control, b"g\n")
        self._close(self.control, self.request)

    def discard(self) -> None:
        """Let a shell that will never run a command go. Never killed: it may be in the middle
        of its login, and a profile killed there can leave state behind (pyenv's rehash lock
        made every later root login wait a minute). Closing the control pipe makes it exit as
        soon as the login is done; its output is read and dropped until then."""
        self._close(self.control, self.request, self.stdin)
        self._drain_and_reap()

    def kill(self) -> None:
        """Kill a shell that has its command (:meth:`hand_over`) but will never be followed
        (envd could not take it on): it and its group, then read and reap it as ``discard``."""
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError):
                kill(self.popen.pid, signal.SIGKILL)
        self._close(self.stdin)
        self._drain_and_reap()

    def _drain_and_reap(self) -> None:
        threading.Thread(
            target=_drain_and_reap,
            args=(self.popen, self.stdout, self.stderr),
            name=f"standby-{self.popen.pid}",
            daemon=True,
        ).start()

    @staticmethod
    def _close(*fds: int | None) -> None:
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _drain_and_reap(popen: subprocess.Popen[bytes], *fds: int) -> None:
    """Read a discarded shell's output (a chatty profile must not block on a full pipe) until
    it has exited, then reap it. A daemon its profile started may hold the pipes for longer:
    the shell's exit, not end of file, is what ends this."""
    open_fds = set(fds)
    try:
        while open_fds and popen.poll() is None:
            readable, _, _ = select.select(list(open_fds), [], [], 0.2)
            for fd in readable:
                if not os.read(fd, 65536):
                    open_fds.discard(fd)
    finally:
        Standby._close(*fds)
        popen.wait()


def spawn_standby(cwd: str, env: dict[str, str], stdin: bool, stamp: Stamp) -> Standby:
    """Start one standby login shell. Runs in the caller's credentials (see ``creds``);
    ``stamp`` is the login's :func:`login_stamp`, taken by envd just before."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    request = os.memfd_create("emberbox-command", os.MFD_CLOEXEC)
    in_r: int = subprocess.DEVNULL
    in_w: int | None = None
    if stdin:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
    child_ends = [out_w, err_w, ctl_r] + ([in_r] if in_w is not None else [])
    try:
        popen = subprocess.Popen(
            [
                "/bin/bash",
                "-l",
                "-c",
                BOOT.replace("@CTL@", str(ctl_r)).replace("@REQ@", str(request)),
            ],
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            cwd=cwd,
            env=env,
            process_group=0,
            pass_fds=(ctl_r, request),
        )
    except BaseException:
        Standby._close(out_r, err_r, ctl_w, request, in_w)
        raise
    finally:
        Standby._close(*child_ends)
    if in_w is not None:
        os.set_blocking(in_w, False)
    # Never waited on: a shell stuck in its login reads no wake-up, and ~32k of them (one per
    # /health) would fill the pipe and stop envd's event loop in a write.
    os.set_blocking(ctl_w, False)
    return Standby(popen, out_r, err_r, in_w, ctl_w, request, env, stamp)


Spawner = Callable[[User, Callable[[], Standby]], Awaitable[Standby]]
REFILL_DELAY_S = 0.1  # refill once the command ends, or after this: not while it starts
REFILL_AFTER_EXIT_S = 0.02
# Standbys a command looks at before it starts the ordinary way: a profile that exits, or
# login files that change while shells start (an ``apt-get install`` beside the command),
# would otherwise have it start and drop shells without end.
TAKE_TRIES = 3


@dataclass
class _Slot:
    """The standbys of one key, started or still starting, oldest first."""

    user: User
    cwd: str
    env: dict[str, str]
    stdin: bool
    shells: collections.deque[asyncio.Future[Standby]]


class StandbyPool:
    """Up to ``size`` standby shells for each of the ``max_keys`` most recently used keys."""

    def __init__(self, spawner: Spawner, size: int = 2, max_keys: int = 4) -> None:
        self.size = size
        self.max_keys = max_keys
        self._spawner = spawner
        self._slots: collections.OrderedDict[Key, _Slot] = collections.OrderedDict()

    async def take(
        self,
        user: User,
        cwd: str,
        env: dict[str, str],
        stdin: bool,
        given: Collection[str] = (),
    ) -> Standby | None:
        """A live standby started as this request would start a shell: the oldest pooled one
        (waiting for it if it is still starting), else one started now. None when none of
        ``TAKE_TRIES`` fits, or when one of the names ``given`` (the request's own vars,
        which a standby exports after its login) is one the login reads, PATH aside (see
        docs/envd.md): the caller starts the command the ordinary way."""
        if given and (set(given) - {"PATH"}) & (_LOGIN_READ | login_names(login_stamp(user.home))):
            return None  # (a profile that derives PATH from TOOL_HOME, say, must see it)
        key = Key(user.name, user.uid, cwd, stdin)
        slot = self._slots.pop(key, None) or _Slot(user, cwd, env, stdin, collections.deque())
        slot.env, slot.user = env, user
        self._slots[key] = slot  # most recently used last
        self._evict()
        for _ in range(TAKE_TRIES):
            stamp = login_stamp(user.home)  # now: a shell started after a change fits again
            future = slot.shells.popleft() if slot.shells else self._start(slot, stamp)
            try:
                standby = await asyncio.shield(future)
            except asyncio.CancelledError:
                future.add_done_callback(self._return_to(slot))
                raise
            alive = standby.popen.poll() is None
            if alive and standby.stamp == stamp and _in_dir(standby.popen.pid, cwd):
                change = env_change(standby.env, env, login_names(stamp))
                if change is not None:
                    standby.pending = change
                    return standby
            standby.discard()
        return None

    def refill(self, user: User, cwd: str, stdin: bool) -> None:
        """Start standbys until the key has ``size`` of them (after a command used one)."""
        slot = self._slots.get(Key(user.name, user.uid, cwd, stdin))
        while slot is not None and len(slot.shells) < self.size:
            slot.shells.append(self._start(slot))

    def _start(self, slot: _Slot, stamp: Stamp | None = None) -> asyncio.Future[Standby]:
        """One shell for ``slot``, stamped with ``stamp`` (a ``take``'s, taken this instant)
        or afresh. Taken here, as envd (as ``take`` compares it), before the start: an edit
        during the login makes the shell stale. Taken as the user, a directory the user
        cannot search but envd can would make every shell look stale."""
        cwd, env, stdin = slot.cwd, slot.env, slot.stdin
        stamp = login_stamp(slot.user.home) if stamp is None else stamp
        future = asyncio.ensure_future(
            self._spawner(slot.user, lambda: spawn_standby(cwd, env, stdin, stamp))
        )
        future.add_done_callback(_log_failure)
        return future

    def _return_to(self, slot: _Slot) -> Callable[[asyncio.Future[Standby]], None]:
        """Where a standby goes when the request waiting for it was cancelled."""

        def back(future: asyncio.Future[Standby]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            if self._slots.get(Key(slot.user.name, slot.user.uid, slot.cwd, slot.stdin)) is slot:
                slot.shells.appendleft(future)
            else:
                future.result().discard()

        return back

    def wake(self) -> None:
        """Let every idle standby run for a moment: a ``WAKE`` line on its control pipe, which
        its ``BOOT`` loop reads before it waits again. After a restore, a process's first run
        is slow (gVisor sets its address space up again on the host, ~20 ms here); woken at
        the node's first request (``/init``, ``/health``), the shells pay that beside the
        answer, not in the next commands."""
        for slot in self._slots.values():
            for future in slot.shells:
                if future.done() and not future.cancelled() and future.exception() is None:
                    with contextlib.suppress(OSError):  # it exited: ``take`` will see that
                        os.write(future.result().control, WAKE)

    def _evict(self) -> None:
        while len(self._slots) > self.max_keys:
            _, slot = self._slots.popitem(last=False)
            _discard_all(slot.shells)

    def close(self) -> None:
        for slot in self._slots.values():
            _discard_all(slot.shells)
        self._slots.clear()


def _log_failure(future: asyncio.Future[Standby]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.info("standby shell not started: %s", future.exception())


def _discard_all(shells: collections.deque[asyncio.Future[Standby]]) -> None:
    def discard(future: asyncio.Future[Standby]) -> None:
        if not future.cancelled() and future.exception() is None:
            future.result().discard()

    for future in shells:
        future.add_done_callback(discard)
    shells.clear()
