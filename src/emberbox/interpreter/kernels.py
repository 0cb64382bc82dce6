"""Contexts: one real ``ipykernel`` process each, driven over ZeroMQ by ``jupyter_client``.

A :class:`Context` runs one execution at a time (callers queue on its lock); an execution is a
:class:`Run`, produced by a task the context owns and drained by whoever streams it. The split
matters when the client goes away: the HTTP side calls :meth:`Run.abandon`, and the producer,
still holding the lock, interrupts the kernel (again each second) and waits for it to go idle
(restarting it if it will not) before the next execution may start. So a timed-out or dropped
call never leaves the next one behind a busy kernel, and a call dropped while it still queued
never runs.

A kernel that dies mid-cell (``os._exit``, OOM) is reported as an error event; the context
starts a fresh kernel on its next call. Restarting or deleting a context ends its running cell
the same way, and every process still descended from its kernel. Output past the execution's
budget is dropped as it arrives (:mod:`.budget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from typing import Any

import psutil
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager

from . import events, languages
from .budget import DEFAULT_LIMIT, OutputBudget
from .events import Event

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a silent kernel is checked for death or a cancelled call
INTERRUPT_GRACE_SECONDS = 3.0  # an interrupted cell gets this long to stop before a restart
# The interrupt is sent again this often within the grace: one that lands before the cell has
# started is lost, and a cell may catch one KeyboardInterrupt; a restart would cost its state.
INTERRUPT_REPEAT_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0


class KernelDied(Exception):
    """The kernel process is gone (or was replaced) while a cell ran."""


class KernelStartFailed(Exception):
    """A kernel did not start (its kernelspec, its program, or no answer in time)."""


class Run:
    """One execution's events, from the producing task to the streaming response. Not
    bounded by count: a producer waiting on a slow client would leave the kernel's messages
    unread, and ZeroMQ drops what passes its high-water mark (the cell's idle among them:
    the call then never ended). The output budget bounds their bytes."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.abandoned = asyncio.Event()

    async def put(self, event: Event | None) -> None:
        if not self.abandoned.is_set():
            await self.events.put(event)

    def abandon(self) -> None:
        """The reader is gone: interrupt the cell and stop buffering its output."""
        self.abandoned.set()
        while not self.events.empty():  # (what nobody will read)
            self.events.get_nowait()


class Context:
    """A kernel with its own working directory, state kept between executions."""

    def __init__(
        self,
        language: str,
        cwd: str,
        env: Mapping[str, str],
        *,
        kernel: str = "python3",
        output_limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.kernel = kernel
        self.output_limit = output_limit
        self._env = dict(env)
        self._manager: AsyncKernelManager | None = None
        # The kernel's process, as psutil knows it from its start: a pid reused after the
        # kernel died is never taken for it.
        self._kernel_process: psutil.Process | None = None
        self._client: AsyncKernelClient | None = None
        self._runtime: str | None = None  # private directory of the kernel's sockets
        self._lock = asyncio.Lock()
        # Start, restart and close one at a time: a close amid a restart found no kernel yet,
        # and the restart then started one nobody would ever stop.
        self._switching = asyncio.Lock()
        self._generation = 0  # bumped whenever the kernel is replaced or shut down
        self._tasks: set[asyncio.Task[None]] = set()
        self._sandbox_env: dict[str, str] = {}  # what this kernel was given of the sandbox's env
        self._reseeded = False  # its random generators seeded afresh before its first cell
        self.closed = False

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    # -- kernel lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        async with self._switching:
            if self.closed:
                raise KernelDied("the context was deleted")
            await self._start_kernel()

    async def _start_kernel(self) -> None:
        # IPC sockets in a private directory, not TCP on loopback: nothing else in the sandbox
        # can reach the kernel around this service (and its access token).
        runtime = tempfile.mkdtemp(prefix=f"emberbox-kernel-{self.id[:8]}-")
        manager = AsyncKernelManager(
            kernel_name=self.kernel,
            transport="ipc",
            ip=os.path.join(runtime, "kernel"),
            connection_file=os.path.join(runtime, "connection.json"),
        )
        self._runtime = runtime
        self._sandbox_env = {}
        self._reseeded = False
        try:
            await manager.start_kernel(
                cwd=self.cwd,
                env=self._env,
                extra_arguments=languages.kernel_arguments(self.language),
            )
            client = manager.client()
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=START_TIMEOUT_SECONDS)
            except BaseException:
                client.stop_channels()
                await manager.shutdown_kernel(now=True)
                raise
        except BaseException as exc:
            shutil.rmtree(runtime, ignore_errors=True)  # (one directory per try, else)
            self._runtime = None
            if isinstance(exc, Exception):
                raise KernelStartFailed(f"the {self.kernel} kernel did not start: {exc}") from exc
            raise
        self._manager, self._client = manager, client
        pid = getattr(manager.provisioner, "pid", None)
        if isinstance(pid, int):  # (psutil.Process(None) would be this service itself)
            with contextlib.suppress(psutil.Error):
                self._kernel_process = psutil.Process(pid)

    async def _stop_kernel(self) -> None:
        manager, client = self._manager, self._client
        kernel, self._kernel_process = self._kernel_process, None
        self._manager = self._client = None
        self._generation += 1
        if client is not None:
            client.stop_channels()
        if manager is not None:
            # Listed before the kernel goes: once it is gone they are the init process's
            # children, and a restarted context would leave them running for good. (A kernel
            # that died already has none left to list: they were handed on as it died.)
            started = _descendants(kernel)
            with contextlib.suppress(Exception):
                await manager.shutdown_kernel(now=True)
            for process in started:
                with contextlib.suppress(psutil.Error):
                    process.kill()  # psutil refuses a pid that was reused meanwhile
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    async def restart(self) -> None:
        """A fresh kernel; a cell running now ends with an error event."""
        async with self._switching:
            await self._stop_kernel()
            if self.closed:
                raise KernelDied("the context was deleted")
            await self._start_kernel()

    async def close(self) -> None:
        self.closed = True
        async with self._switching:
            await self._stop_kernel()

    async def _alive(self) -> bool:
        return self._manager is not None and bool(await self._manager.is_alive())

    # -- execution ----------------------------------------------------------------------------

    def execute(
        self,
        code: str,
        env_vars: Mapping[str, str] | None,
        sandbox_env: Mapping[str, str] | None = None,
    ) -> Run:
        """Queue ``code`` after the context's running cell; its events arrive on the Run.

        ``sandbox_env`` is the sandbox's env as envd has it now; the kernel is brought up to
        date with it (for good) before the cell, and ``env_vars`` apply on top for this cell
        only. A kernel may predate the sandbox's identity: one restored from the template's
        snapshot was started before any sandbox existed.
        """
        run = Run()
        sandbox = dict(sandbox_env) if sandbox_env is not None else None
        task = asyncio.create_task(self._produce(run, code, dict(env_vars or {}), sandbox))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _produce(
        self, run: Run, code: str, env_vars: dict[str, str], sandbox_env: dict[str, str] | None
    ) -> None:
        try:
            async with self._lock:
                await self._execute_locked(run, code, env_vars, sandbox_env)
        except Exception as exc:  # never leave the reader hanging
            log.exception("execution failed in context %s", self.id)
            await run.put(events.error_event(type(exc).__name__, str(exc), ""))
        finally:
            await run.put(events.END_OF_EXECUTION)
            await run.put(None)

    async def _execute_locked(
        self, run: Run, code: str, env_vars: dict[str, str], sandbox_env: dict[str, str] | None
    ) -> None:
        if self.closed:
            raise KernelDied("the context was deleted")
        if run.abandoned.is_set():
            return  # its caller gave up while it queued: it must not run behind their back
        if not await self._alive():
            await self.restart()  # first use after a crash (or a failed start)
        if sandbox_env is not None:
            await self._follow_sandbox_env(sandbox_env)
        if not self._reseeded:
            # A kernel started before the sandbox existed (in a template snapshot every sandbox
            # restores) holds the same generator state in all of them: reseed it from the
            # sandbox's own entropy before the first user code. Later copies (forks, user
            # snapshots) keep the user's state as it was.
            reseed = languages.reseed_code(self.language)
            if reseed:
                await self._silent(reseed)
            self._reseeded = True
        if env_vars:
            await self._silent(languages.set_env_code(self.language, env_vars))
        try:
            await self._cell(run, code)
        except KernelDied as exc:
            await run.put(events.error_event("KernelDied", str(exc), ""))
            return
        if env_vars:
            await self._silent(languages.restore_env_code(self.language))

    async def _follow_sandbox_env(self, sandbox_env: dict[str, str]) -> None:
        wanted = languages.settable(self.language, sandbox_env)
        if wanted == self._sandbox_env:
            return
        changed = {k: v for k, v in wanted.items() if self._sandbox_env.get(k) != v}
        removed = [k for k in self._sandbox_env if k not in wanted]
        await self._silent(languages.apply_env_code(self.language, changed, removed))
        self._sandbox_env = wanted

    async def _silent(self, code: str) -> None:
        """Run bookkeeping code that leaves no output, history or execution count."""
        assert self._client is not None
        msg_id = self._client.execute(code, silent=True, store_history=False)
        await self._wait_idle(msg_id, None)

    async def _cell(self, run: Run, code: str) -> None:
        assert self._client is not None
        msg_id = self._client.execute(code, store_history=True, allow_stdin=False)
        await self._wait_idle(msg_id, run, OutputBudget(self.output_limit))

    async def _wait_idle(
        self, msg_id: str, run: Run | None, budget: OutputBudget | None = None
    ) -> None:
        """Forward the cell's IOPub messages until the kernel reports it idle."""
        client, manager, generation = self._client, self._manager, self._generation
        assert client is not None and manager is not None
        interrupted_at: float | None = None
        last_interrupt = 0.0
        while True:
            if run is not None and run.abandoned.is_set():
                now = time.monotonic()
                if interrupted_at is None:
                    interrupted_at = now
                elif now - interrupted_at > INTERRUPT_GRACE_SECONDS:
                    # Checked on every message, not only in silence: a cell printing without
                    # pause would otherwise hold the context for good.
                    log.warning("context %s ignored an interrupt; restarting it", self.id)
                    await self.restart()
                    return
                if now - last_interrupt >= INTERRUPT_REPEAT_SECONDS:
                    last_interrupt = now
                    await manager.interrupt_kernel()
            try:
                message: dict[str, Any] | None = await client.get_iopub_msg(timeout=POLL_SECONDS)
            except queue.Empty:
                message = None
            except (asyncio.CancelledError, Exception):
                # Its channels were closed under it (a restart or a delete): the cell ends with
                # an error, never as a success with half its output. This task's own
                # cancellation is passed on as it is.
                task = asyncio.current_task()
                if self._generation == generation or (task is not None and task.cancelling()):
                    raise
                raise KernelDied("the context was restarted during the execution") from None
            if message is None:
                if self._generation != generation:
                    raise KernelDied("the context was restarted during the execution") from None
                if not await manager.is_alive():
                    raise KernelDied(
                        "the kernel died during the execution; "
                        "the context starts a fresh kernel on its next call"
                    ) from None
                continue
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue  # a stale message from an earlier, abandoned cell
            content = message.get("content", {})
            if message.get("msg_type") == "status" and content.get("execution_state") == "idle":
                await self._drain_reply(msg_id)
                return
            if run is not None:
                event = events.from_iopub(message)
                if event is not None:
                    for admitted in budget.admit(event) if budget else [event]:
                        await run.put(admitted)

    async def _drain_reply(self, msg_id: str) -> None:
        """Read the cell's shell reply so replies do not pile up in the socket."""
        assert self._client is not None
        with contextlib.suppress(queue.Empty):
            while True:
                reply = await self._client.get_shell_msg(timeout=1.0)
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    return


def _descendants(kernel: psutil.Process | None) -> list[psutil.Process]:
    """What the kernel started, however deep (node's children, a cell's background jobs),
    while it runs; nothing once it is gone, or its pid belongs to another process now."""
    if kernel is None or not kernel.is_running():  # (is_running compares start times)
        return []
    try:
        return kernel.children(recursive=True)
    except psutil.Error:
        return []


def kernel_env() -> dict[str, str]:
    """What every kernel starts with: the service's environment minus our own settings (the
    access token among them, and the sandbox's start command)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EMBERBOX_")}
