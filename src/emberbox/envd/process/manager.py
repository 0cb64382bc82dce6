"""Running processes: spawn, fan output out to subscribers, buffer it while nobody listens.

Each process runs in its own process group so that a signal reaches the whole command tree
(``bash -c 'a | b'`` included). Exit is observed through a pidfd on the event loop (or its
emulation where the kernel lacks one, see ``exit_fd``), so no SIGCHLD handler is involved.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._connect.errors import Code, ConnectError
from ..._proto.process import process_pb2 as pb
from ..creds import as_user, spawn_as_user
from ..state import EnvdState, default_path
from ..users import User, resolve_path
from . import terminal
from .exit_fd import exit_fd
from .exit_status import describe
from .fdio import READ_LIMIT, FdReader, FdWriter, set_nonblocking
from .standby import REFILL_AFTER_EXIT_S, REFILL_DELAY_S, Standby, StandbyPool, login_command
from .terminal import set_winsize

log = logging.getLogger("emberbox.envd.process")

SPAWN_WAIT_S = 5.0  # at shutdown, for spawns under way in threads (each takes ~1 ms)
RETAIN_EXITED_S = 30.0  # a late Connect still gets start + end (protocol notes §2.4)
BACKLOG_LIMIT = 8 * 1024 * 1024  # output kept for a client that connects later
# A follower this far behind holds the process back (its output fds go unread, so its writes
# block as they would on a full pipe) until every follower is down to FEED_RESUME.
FEED_HOLD = 4 * 1024 * 1024
FEED_RESUME = 1024 * 1024


@dataclass
class Output:
    kind: str  # "stdout" | "stderr" | "pty"
    data: bytes
    # Set as it is published: its place in the process's output (the backlog keeps that
    # order), and how many followers got it and have not given it back (one that sent it
    # keeps it for good). It goes back to the backlog when the last one gives it back: once.
    seq: int = field(default=0, compare=False)
    holders: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Exit:
    exit_code: int
    exited: bool
    status: str

    @property
    def error(self) -> str | None:
        return None if self.exit_code == 0 and self.exited else self.status


@dataclass(frozen=True)
class Detached:
    """Ends a stream that :meth:`ProcessManager.detach_streams` cut loose before a checkpoint:
    its follower gets what was queued for it, then this; the process's later output waits in
    the backlog for the next Connect."""


Event = Output | Exit | Detached


class Feed(asyncio.Queue[Event]):
    """What one follower of a process has yet to take, in order, all of it: a client slower
    than the process (``cat big.log`` over a slow link) must get every byte. Its output bytes
    are counted: past FEED_HOLD the process is held back (:meth:`ManagedProcess._publish`),
    and ``on_caught_up`` is called as a take brings them down to FEED_RESUME."""

    def __init__(self, on_caught_up: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.bytes = 0
        self._on_caught_up = on_caught_up

    def _put(self, item: Event) -> None:
        super()._put(item)
        if isinstance(item, Output):
            self.bytes += len(item.data)

    def _get(self) -> Event:
        item = super()._get()
        if isinstance(item, Output):
            was = self.bytes
            self.bytes -= len(item.data)
            if was > FEED_RESUME >= self.bytes:
                self._on_caught_up()
        return item


async def _popen_as(
    user: User,
    popen: Callable[..., subprocess.Popen[bytes]],
    cwd: str,
    vfork: bool,
    abandon: Callable[[], None],
    spawns: Spawns,
) -> subprocess.Popen[bytes]:
    """``popen()`` as ``user``. Without a ``preexec_fn`` (``vfork``) it runs in a thread that
    holds the user's ids (:func:`spawn_as_user`): ``Popen(user=...)`` cannot vfork, and
    forking envd's whole address space blocks the event loop (~8 ms here, ~40 ms in gVisor).
    A ``cwd`` the user cannot enter starts the ordinary way, entered as root, as it did.

    Cancelled while the thread spawns, it raises at once; the thread goes on with the child's
    stdio fds, so they are closed (``abandon``) only once it is done with them (closed
    before, their numbers would go to the next files envd opens, and the child would get
    those), after what it started, which nobody follows, is killed and reaped. A thread's
    spawn stays in ``spawns`` until it is done, marked once its caller has gone."""
    if user.is_current:
        return popen()
    if vfork:
        spawning = asyncio.ensure_future(spawn_as_user(user, popen))
        spawns[spawning] = caller = Caller()
        spawning.add_done_callback(lambda done: spawns.pop(done, None))
        try:
            return await asyncio.shield(spawning)
        except asyncio.CancelledError:
            caller.left = True  # (its own callback below kills what it starts)

            def done_with_fds(spawned: asyncio.Future[subprocess.Popen[bytes]]) -> None:
                try:
                    _kill_orphan(spawned)
                finally:
                    abandon()

            spawning.add_done_callback(done_with_fds)
            raise
        except PermissionError as exc:
            if exc.filename != cwd:
                raise
    return popen(user=user.uid, group=user.gid, extra_groups=user.groups())


@dataclass
class Caller:
    """Of a spawn under way in a thread: whether the call that asked for it has gone."""

    left: bool = False


Spawns = dict[asyncio.Future[subprocess.Popen[bytes]], Caller]


def _kill_orphan(spawned: asyncio.Future[subprocess.Popen[bytes]], reap: bool = True) -> None:
    """Kill what a spawn started (:func:`_kill_started`), if it started anything."""
    if not spawned.cancelled() and spawned.exception() is None:
        _kill_started(spawned.result(), reap)


def _kill_started(orphan: subprocess.Popen[bytes], reap: bool = True) -> None:
    """Kill a process nobody will follow, and the group it leads: the process first, as it
    may not lead one yet (a PTY's ``setsid`` makes its group a moment after the start)."""
    if orphan.returncode is not None:  # reaped: its number may be another's by now
        return
    for kill in (os.kill, os.killpg):
        with contextlib.suppress(ProcessLookupError):
            kill(orphan.pid, signal.SIGKILL)
    if reap:
        threading.Thread(target=orphan.wait, name=f"reap-{orphan.pid}", daemon=True).start()


class ManagedProcess:
    """A started process envd follows. Its construction takes fds of its own (a copy of the
    PTY's master, one that tells of the exit) and can fail, envd out of them: then it has
    let go of those again, and the caller kills the process and closes the fds it passed."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        config: pb.ProcessConfig,
        tag: str | None,
        pty_master: int | None,
        stdin_fd: int | None,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.tag = tag
        self.pty_master = pty_master
        self._loop = asyncio.get_running_loop()
        # Its input: the PTY's master (a copy of its own: the reader closes the master at the
        # terminal's end, which a process that let go of it outlives), or its stdin pipe.
        pty_input = os.dup(pty_master) if pty_master is not None else None
        try:
            self._exit_fd = exit_fd(self.pid)
        except BaseException:
            if pty_input is not None:
                os.close(pty_input)
            raise
        try:
            self._loop.add_reader(self._exit_fd, self._on_exit)
        except BaseException:
            for fd in (self._exit_fd, pty_input):
                if fd is not None:
                    os.close(fd)
            raise
        self._pty_input = FdWriter(pty_input) if pty_input is not None else None
        self._stdin = FdWriter(stdin_fd) if stdin_fd is not None else None
        # One writer at a time: two inputs at once would interleave their bytes, and the
        # loop keeps one writability callback per fd (the second replaced the first's, which
        # then waited forever).
        self._input = asyncio.Lock()
        self.exit: Exit | None = None
        self.finished = asyncio.Event()
        self.on_exit: Callable[[ManagedProcess], None] | None = None
        self._subscribers: list[Feed] = []
        # Followers ``detach`` ended that may not have sent all they held yet.
        self._detached: list[Feed] = []
        self._backlog: collections.deque[Output] = collections.deque()  # in seq order
        self._published = 0  # the next output's seq
        self._backlog_bytes = 0
        self._readers: list[FdReader] = []
        self._held = False  # its output fds go unread: a follower is behind (see Feed)
        self._deadline: asyncio.TimerHandle | None = None

    def attach_output(self, fd: int, kind: str) -> None:
        self._readers.append(FdReader(fd, lambda data: self._publish(Output(kind, data)), _noop))

    # -- fan-out ---------------------------------------------------------------------------
    def _publish(self, event: Output) -> None:
        event.seq = self._published
        self._published += 1
        event.holders = len(self._subscribers)
        if self._subscribers:
            for queue in self._subscribers:
                queue.put_nowait(event)
            if not self._held and any(q.bytes > FEED_HOLD for q in self._subscribers):
                self._held = True
                for reader in self._readers:
                    reader.pause()
            return
        self._backlog.append(event)
        self._backlog_bytes += len(event.data)
        self._trim_backlog()

    def _trim_backlog(self) -> None:
        while self._backlog_bytes > BACKLOG_LIMIT and self._backlog:
            self._backlog_bytes -= len(self._backlog.popleft().data)

    def _release_if_caught_up(self) -> None:
        """Read the process's output again once no follower is behind any more."""
        if self._held and all(q.bytes <= FEED_RESUME for q in self._subscribers):
            self._held = False
            for reader in self._readers:
                reader.resume()

    def subscribe(self) -> Feed:
        """A queue that first receives output nobody has seen yet, then live events."""
        queue = Feed(self._release_if_caught_up)
        while self._backlog:
            event = self._backlog.popleft()
            event.holders = 1
            queue.put_nowait(event)
        self._backlog_bytes = 0
        if self.exit is not None:
            queue.put_nowait(self.exit)
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: Feed, unsent: Sequence[Output] = ()) -> None:
        """A follower that leaves with output it never took (its client went away), or took
        and never sent (``unsent``), gives it back; what no other follower holds or sent
        (printed before they came, or given back by them too) goes back to the backlog, so
        the next Connect still reads it, once. ``unsent`` may come after the follower has
        left (its stream's last messages leave after its handler ended)."""
        if queue in self._subscribers:
            self._subscribers.remove(queue)
            self._release_if_caught_up()  # (a follower that left holds nothing back)
        elif queue in self._detached:
            self._detached.remove(queue)
        elif not unsent:
            return
        unread = list(unsent)
        while not queue.empty():
            event = queue.get_nowait()
            if isinstance(event, Output):
                unread.append(event)
        for event in unread:
            event.holders -= 1
        unread = [event for event in unread if event.holders <= 0]
        if not unread:
            return
        if not self._backlog or unread[-1].seq < self._backlog[0].seq:
            self._backlog.extendleft(reversed(unread))  # (older than all it holds: usual)
        else:  # (a give-back later than what the backlog took since)
            self._backlog = collections.deque(
                heapq.merge(unread, self._backlog, key=lambda event: event.seq)
            )
        self._backlog_bytes += sum(len(event.data) for event in unread)
        self._trim_backlog()

    def detach(self) -> int:
        """End every stream following the process (see :class:`Detached`); how many."""
        followers, self._subscribers = self._subscribers, []
        for queue in followers:
            queue.put_nowait(Detached())
        self._detached += followers
        self._release_if_caught_up()  # (its output goes to the backlog meanwhile)
        return len(followers)

    # -- lifecycle -------------------------------------------------------------------------
    def _on_exit(self) -> None:
        returncode = self.popen.poll()
        if returncode is None:
            return
        self._loop.remove_reader(self._exit_fd)
        os.close(self._exit_fd)
        if self._deadline is not None:
            self._deadline.cancel()
        for writer in (self._pty_input, self._stdin):  # first: a waiting write must not
            if writer is not None:  # outlive the fd it waits on (the PTY's reader closes it)
                writer.close()
        for reader in self._readers:  # readers own the output fds, the PTY master included
            # (While a follower is behind, at most what the process itself can have left
            # in a pipe or terminal: a daemon that writes on is cut off.)
            reader.drain_and_close(lambda taken: READ_LIMIT - taken if self._held else READ_LIMIT)
        self.exit = Exit(*describe(returncode))
        log.info("process %d ended: %s", self.pid, self.exit.status)
        for queue in self._subscribers:
            queue.put_nowait(self.exit)
        self.finished.set()
        if self.on_exit is not None:
            self.on_exit(self)

    @property
    def running(self) -> bool:
        return self.exit is None

    def _not_running(self) -> ConnectError:
        return ConnectError(Code.NOT_FOUND, f"process with pid {self.pid} is not running")

    def signal(self, sig: int) -> None:
        if not self.running:
            raise self._not_running()
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_at(self, when: float) -> None:
        """The process's lifetime ends at loop time ``when`` (the Start call's deadline)."""
        self._deadline = self._loop.call_at(when, self._kill_quietly)

    def _kill_quietly(self) -> None:
        with contextlib.suppress(ConnectError):
            self.signal(signal.SIGKILL)

    async def send_input(self, data: bytes, to_pty: bool) -> None:
        if not self.running:
            raise self._not_running()
        if to_pty:
            if self._pty_input is None:
                raise ConnectError(Code.INVALID_ARGUMENT, "process has no PTY; send stdin instead")
            writer = self._pty_input
        else:
            if self._pty_input is not None:
                raise ConnectError(Code.INVALID_ARGUMENT, "process runs in a PTY; send pty input")
            if self._stdin is None or self._stdin.closed:
                raise ConnectError(Code.INTERNAL, "stdin not enabled or closed")
            writer = self._stdin
        try:
            async with self._input:
                await writer.write(data)
        except BrokenPipeError as exc:
            raise ConnectError(Code.INTERNAL, "stdin not enabled or closed") from exc

    async def close_stdin(self) -> None:
        """A pipe closes at once (a write waiting is told so); a terminal is sent ^D, its
        line discipline's end of input, after any input still being written: inside that
        input it would end a line, not the input, and a full terminal would refuse it."""
        if not self.running:
            raise self._not_running()
        if self._pty_input is not None:
            if self._pty_input.closed:
                raise ConnectError(Code.INTERNAL, "the terminal is closed")
            try:
                async with self._input:
                    await self._pty_input.write(b"\x04")
            except BrokenPipeError as exc:
                if not self.running:  # (it exited while the input waited)
                    raise self._not_running() from exc
                raise ConnectError(Code.INTERNAL, "the terminal is closed") from exc
            return
        if self._stdin is None or self._stdin.closed:
            raise ConnectError(Code.INTERNAL, "stdin not enabled or closed")
        self._stdin.close()  # (a write waiting is told the pipe is closed)

    def resize(self, cols: int, rows: int) -> None:
        if not self.running:
            raise self._not_running()
        if self._pty_input is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "process has no PTY to resize")
        if self._pty_input.closed:
            raise ConnectError(Code.INTERNAL, "the terminal is closed")
        set_winsize(self._pty_input.fd, cols, rows)

    def info(self) -> pb.ProcessInfo:
        info = pb.ProcessInfo(config=self.config, pid=self.pid)
        if self.tag is not None:
            info.tag = self.tag
        return info


def _noop() -> None:
    pass


def _cannot_start(config: pb.ProcessConfig, exc: OSError) -> ConnectError:
    return ConnectError(
        Code.INVALID_ARGUMENT, f"cannot start '{config.cmd}': {exc.strerror or exc}"
    )


class ProcessManager:
    def __init__(self, state: EnvdState) -> None:
        self.state = state
        self._by_pid: dict[int, ManagedProcess] = {}
        self.standbys = StandbyPool(spawn_as_user, size=state.standby_shells)
        self._spawns: Spawns = {}  # under way in threads
        self._probing: asyncio.Future[str | None] | None = None
        self._closed = False

    def list(self) -> list[ManagedProcess]:
        return [p for p in self._by_pid.values() if p.running]

    def detach_streams(self) -> int:
        """End every process output stream cleanly, asked before a checkpoint: a stream cut by
        the checkpoint loses what was in flight, one ended here loses nothing (its client reads
        on with Connect, first getting what was printed since). How many were ended."""
        return sum(process.detach() for process in self._by_pid.values())

    def get(self, selector: pb.ProcessSelector) -> ManagedProcess:
        which = selector.WhichOneof("selector")
        if which == "pid":
            process = self._by_pid.get(selector.pid)
            if process is not None:
                return process
            raise ConnectError(Code.NOT_FOUND, f"process with pid {selector.pid} not found")
        if which == "tag":  # the newest running one, else the newest ended (kept a while)
            tagged = [p for p in self._by_pid.values() if p.tag == selector.tag]
            if tagged:
                return ([p for p in tagged if p.running] or tagged)[-1]
            raise ConnectError(Code.NOT_FOUND, f"process with tag '{selector.tag}' not found")
        raise ConnectError(Code.INVALID_ARGUMENT, "process selector needs a pid or a tag")

    async def start(
        self,
        config: pb.ProcessConfig,
        user: User,
        *,
        pty: pb.PTY | None,
        stdin: bool,
        tag: str | None,
    ) -> tuple[ManagedProcess, Feed]:
        """Spawn and subscribe in one step, so no early output can slip into the backlog."""
        cwd = self._cwd(config, user)
        base_env = {
            "PATH": default_path(),
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            **self.state.process_env(),
        }
        if self._closed:
            raise ConnectError(Code.UNAVAILABLE, "envd is shutting down")
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process cmd is empty")
        texts = [config.cmd, *config.args, *config.envs.keys(), *config.envs.values()]
        if any("\0" in text for text in texts):  # no exec can carry one: refused, not cut
            raise ConnectError(Code.INVALID_ARGUMENT, "process cmd, args and envs hold no NUL")
        if not user.is_current and os.geteuid() != 0:
            raise ConnectError(
                Code.PERMISSION_DENIED, f"envd is not root and cannot run as '{user.name}'"
            )
        command = login_command(config.cmd, list(config.args), config.envs, pty is not None)
        if command is not None and self.standbys.size > 0:
            standby = await self._standby(user, cwd, base_env, stdin, command, config.envs)
            if standby is not None:
                try:
                    process = ManagedProcess(standby.popen, config, tag, None, standby.stdin)
                except OSError as exc:
                    standby.kill()
                    raise _cannot_start(config, exc) from exc
                except BaseException:
                    standby.kill()
                    raise
                process.attach_output(standby.stdout, "stdout")
                process.attach_output(standby.stderr, "stderr")
                refill = functools.partial(self.standbys.refill, user, cwd, stdin)
                timer = asyncio.get_running_loop().call_later(REFILL_DELAY_S, refill)
                started = self._register(process, user, cwd, "standby shell")
                process.on_exit = functools.partial(self._refill_and_retain, timer, refill)
                return started
        env = {**base_env, **dict(config.envs)}
        return await self._spawn(config, user, cwd, env, pty, stdin, tag)

    async def _standby(
        self,
        user: User,
        cwd: str,
        env: dict[str, str],
        stdin: bool,
        command: str,
        envs: Mapping[str, str],
    ) -> Standby | None:
        """A standby shell that has taken the command; None: start it the ordinary way."""
        for _ in range(3):  # a shell killed while it waited (pkill bash) is replaced
            try:
                standby = await self.standbys.take(user, cwd, env, stdin, given=envs)
            except OSError as exc:  # e.g. cwd not enterable as the user: the old path decides
                log.info("no standby shell for %s in %s: %s", user.name, cwd, exc)
                return None
            if standby is None:  # none fitted (module doc of ``standby``)
                return None
            try:
                standby.hand_over(command, envs)
                return standby
            except OSError:
                standby.discard()
        return None

    async def _spawn(
        self,
        config: pb.ProcessConfig,
        user: User,
        cwd: str,
        env: dict[str, str],
        pty: pb.PTY | None,
        stdin: bool,
        tag: str | None,
    ) -> tuple[ManagedProcess, Feed]:
        argv = [config.cmd, *config.args]
        child_fds: list[int] = []  # the child's ends, closed here once it has them
        ours: list[int] = []  # our ends, closed too if it does not start
        abandoned = False  # (the spawn outlived the call: the fds are its to close)

        def abandon() -> None:
            for fd in (*child_fds, *ours):
                os.close(fd)

        try:
            session: dict[str, Any]
            vfork = True
            if pty is not None:
                if terminal.known() is None:  # (asked as envd started; asked again meanwhile)
                    self.probe_terminals()
                if user.is_current:
                    behind_setsid = await asyncio.to_thread(terminal.wrapped, argv, env["PATH"])
                else:  # (its file checks are the user's)
                    behind_setsid = await as_user(user, terminal.wrapped, argv, env["PATH"])
                master, slave = os.openpty()
                child_fds.append(slave)
                ours.append(master)
                stdio = (slave, slave, slave)
                if behind_setsid is not None:
                    argv, session = behind_setsid, {}
                else:
                    vfork = False
                    session = {"start_new_session": True,
                               "preexec_fn": terminal.set_controlling_tty}  # fmt: skip
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                child_fds += [out_w, err_w]
                ours += [out_r, err_r]
                stdin_r: int = subprocess.DEVNULL
                stdin_w: int | None = None
                if stdin:
                    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                    child_fds.append(stdin_r)
                    ours.append(stdin_w)
                stdio = (stdin_r, out_w, err_w)
                session = {"process_group": 0}
            try:
                if pty is not None:
                    set_winsize(slave, pty.size.cols or 80, pty.size.rows or 24)

                def start(**identity: Any) -> subprocess.Popen[bytes]:
                    return subprocess.Popen(
                        argv,
                        stdin=stdio[0],
                        stdout=stdio[1],
                        stderr=stdio[2],
                        cwd=cwd,
                        env=env,
                        **session,
                        **identity,
                    )

                popen = await _popen_as(user, start, cwd, vfork, abandon, self._spawns)
            except asyncio.CancelledError:
                abandoned = True
                raise
            except BaseException:
                for fd in ours:
                    os.close(fd)
                raise
            try:
                if pty is not None:
                    process = ManagedProcess(popen, config, tag, master, None)
                else:
                    if stdin_w is not None:
                        set_nonblocking(stdin_w)
                    process = ManagedProcess(popen, config, tag, None, stdin_w)
            except BaseException:  # (it started: nobody will follow it)
                _kill_started(popen)
                for fd in ours:
                    os.close(fd)
                raise
            if pty is not None:
                process.attach_output(master, "pty")
            else:
                process.attach_output(out_r, "stdout")
                process.attach_output(err_r, "stderr")
        except OSError as exc:
            raise _cannot_start(config, exc) from exc
        finally:
            if not abandoned:
                for fd in child_fds:
                    os.close(fd)
        return self._register(process, user, cwd, "new process")

    def probe_terminals(self) -> None:
        """Ask in the background whether PTYs may start behind ``setsid`` (``terminal.probe``,
        as root); those started before its answer fork."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(asyncio.to_thread(terminal.probe))

    def _register(
        self, process: ManagedProcess, user: User, cwd: str, how: str
    ) -> tuple[ManagedProcess, Feed]:
        self._by_pid[process.pid] = process
        if self._closed:  # (its spawn outlived close(), which killed it)
            process.signal(signal.SIGKILL)
        log.info(
            "process %d started (%s) as %s in %s: %s",
            process.pid,
            how,
            user.name,
            cwd,
            " ".join([process.config.cmd, *process.config.args])[:500],
        )
        queue = process.subscribe()
        process.on_exit = self._retain
        return process, queue

    def _cwd(self, config: pb.ProcessConfig, user: User) -> str:
        if config.HasField("cwd") and config.cwd:
            cwd = resolve_path(config.cwd, user)
        else:
            cwd = self.state.default_workdir or user.home
        if not os.path.isdir(cwd):
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")
        return cwd

    def _refill_and_retain(
        self, timer: asyncio.TimerHandle, refill: Callable[[], None], process: ManagedProcess
    ) -> None:
        timer.cancel()
        # Not right away: the end event goes out first, and a command that follows at once
        # takes the other pooled shell instead of competing with the start of this one.
        asyncio.get_running_loop().call_later(REFILL_AFTER_EXIT_S, refill)
        self._retain(process)

    def _retain(self, process: ManagedProcess) -> None:
        """Keep an exited process visible to a late ``Connect``, then drop it."""
        asyncio.get_running_loop().call_later(RETAIN_EXITED_S, self._forget, process)

    def _forget(self, process: ManagedProcess) -> None:
        if self._by_pid.get(process.pid) is process:
            del self._by_pid[process.pid]

    async def close(self, spawn_wait_s: float = SPAWN_WAIT_S) -> None:
        """Kill every process, those whose spawn is under way in a thread included: the
        thread goes on without the event loop, so what it starts would run on unseen, no
        longer envd's. Waits for those spawns (at most ``spawn_wait_s``); starts asked for
        from now on are refused."""
        self._closed = True
        self.standbys.close()
        for process in self.list():
            with contextlib.suppress(ConnectError):
                process.signal(signal.SIGKILL)
        deadline = asyncio.get_running_loop().time() + spawn_wait_s
        while self._spawns and (left := deadline - asyncio.get_running_loop().time()) > 0:
            spawning = dict(self._spawns)
            await asyncio.wait(spawning, timeout=left)
            for spawn, caller in spawning.items():
                # A caller that left has its spawn's callback kill it (and reap it); one
                # that waits may never resume to register it, as the loop ends.
                if spawn.done() and not caller.left:
                    _kill_orphan(spawn, reap=False)
        if self._probing is not None:  # (a few ms; at most PROBE_TIMEOUT_S), after the kills
            await asyncio.wait({self._probing})
