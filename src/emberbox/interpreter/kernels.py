"""Contexts: one real ``ipykernel`` process each, driven over ZeroMQ by ``jupyter_client``.

A :class:`Context` runs one execution at a time (callers queue on its lock); an execution is a
:class:`Run`, produced by a task the context owns and drained by whoever streams it. The split
matters when the client goes away: the HTTP side calls :meth:`Run.abandon`, and the producer,
still holding the lock, interrupts the kernel and waits for it to go idle (restarting it if it
will not) before the next execution may start. So a timed-out or dropped call never leaves the
next one behind a busy kernel.

A kernel that dies mid-cell (``os._exit``, OOM) is reported as an error event; the context
starts a fresh kernel on its next call. Restarting or deleting a context ends its running cell
the same way.
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

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager

from . import events
from .events import Event

log = logging.getLogger(__name__)

SUPPORTED_LANGUAGES = ("python",)
POLL_SECONDS = 0.1  # how often a silent kernel is checked for death or a cancelled call
INTERRUPT_GRACE_SECONDS = 3.0  # an interrupted cell gets this long to stop before a restart
START_TIMEOUT_SECONDS = 60.0
RUN_QUEUE_EVENTS = 256  # events buffered between the kernel and a slow client


class KernelDied(Exception):
    """The kernel process is gone (or was replaced) while a cell ran."""


class Run:
    """One execution's events, from the producing task to the streaming response."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Event | None] = asyncio.Queue(RUN_QUEUE_EVENTS)
        self.abandoned = asyncio.Event()

    async def put(self, event: Event | None) -> None:
        if not self.abandoned.is_set():
            await self.events.put(event)

    def abandon(self) -> None:
        """The reader is gone: interrupt the cell and stop buffering its output."""
        self.abandoned.set()
        while not self.events.empty():  # unblock a producer waiting on a full queue
            self.events.get_nowait()


class Context:
    """A kernel with its own working directory, state kept between executions."""

    def __init__(self, language: str, cwd: str, env: Mapping[str, str]) -> None:
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self._env = dict(env)
        self._manager: AsyncKernelManager | None = None
        self._client: AsyncKernelClient | None = None
        self._runtime: str | None = None  # private directory of the kernel's sockets
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped whenever the kernel is replaced or shut down
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    # -- kernel lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        # IPC sockets in a private directory, not TCP on loopback: nothing else in the sandbox
        # can reach the kernel around this service (and its access token).
        runtime = tempfile.mkdtemp(prefix=f"emberbox-kernel-{self.id[:8]}-")
        manager = AsyncKernelManager(
            kernel_name="python3",
            transport="ipc",
            ip=os.path.join(runtime, "kernel"),
            connection_file=os.path.join(runtime, "connection.json"),
        )
        self._runtime = runtime
        await manager.start_kernel(cwd=self.cwd, env=self._env)
        client = manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=START_TIMEOUT_SECONDS)
        except BaseException:
            client.stop_channels()
            await manager.shutdown_kernel(now=True)
            raise
        self._manager, self._client = manager, client

    async def _stop_kernel(self) -> None:
        manager, client = self._manager, self._client
        self._manager = self._client = None
        self._generation += 1
        if client is not None:
            client.stop_channels()
        if manager is not None:
            with contextlib.suppress(Exception):
                await manager.shutdown_kernel(now=True)
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    async def restart(self) -> None:
        """A fresh kernel; a cell running now ends with an error event."""
        await self._stop_kernel()
        await self.start()

    async def close(self) -> None:
        self.closed = True
        await self._stop_kernel()

    async def _alive(self) -> bool:
        return self._manager is not None and bool(await self._manager.is_alive())

    # -- execution ----------------------------------------------------------------------------

    def execute(self, code: str, env_vars: Mapping[str, str] | None) -> Run:
        """Queue ``code`` after the context's running cell; its events arrive on the Run."""
        run = Run()
        task = asyncio.create_task(self._produce(run, code, dict(env_vars or {})))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _produce(self, run: Run, code: str, env_vars: dict[str, str]) -> None:
        try:
            async with self._lock:
                await self._execute_locked(run, code, env_vars)
        except Exception as exc:  # never leave the reader hanging
            log.exception("execution failed in context %s", self.id)
            await run.put(events.error_event(type(exc).__name__, str(exc), ""))
        finally:
            await run.put(events.END_OF_EXECUTION)
            await run.put(None)

    async def _execute_locked(self, run: Run, code: str, env_vars: dict[str, str]) -> None:
        if self.closed:
            raise KernelDied("the context was deleted")
        if not await self._alive():
            await self.restart()  # first use after a crash (or a failed start)
        if env_vars:
            await self._silent(_set_env_code(env_vars))
        try:
            await self._cell(run, code)
        except KernelDied as exc:
            await run.put(events.error_event("KernelDied", str(exc), ""))
            return
        if env_vars:
            await self._silent(_RESTORE_ENV_CODE)

    async def _silent(self, code: str) -> None:
        """Run bookkeeping code that leaves no output, history or execution count."""
        assert self._client is not None
        msg_id = self._client.execute(code, silent=True, store_history=False)
        await self._wait_idle(msg_id, None)

    async def _cell(self, run: Run, code: str) -> None:
        assert self._client is not None
        msg_id = self._client.execute(code, store_history=True, allow_stdin=False)
        await self._wait_idle(msg_id, run)

    async def _wait_idle(self, msg_id: str, run: Run | None) -> None:
        """Forward the cell's IOPub messages until the kernel reports it idle."""
        client, manager, generation = self._client, self._manager, self._generation
        assert client is not None and manager is not None
        interrupted_at: float | None = None
        while True:
            if run is not None and run.abandoned.is_set() and interrupted_at is None:
                interrupted_at = time.monotonic()
                await manager.interrupt_kernel()
            try:
                message: dict[str, Any] = await client.get_iopub_msg(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._generation != generation:
                    raise KernelDied("the context was restarted during the execution") from None
                if not await manager.is_alive():
                    raise KernelDied(
                        "the kernel died during the execution; "
                        "the context starts a fresh kernel on its next call"
                    ) from None
                if interrupted_at and time.monotonic() - interrupted_at > INTERRUPT_GRACE_SECONDS:
                    log.warning("context %s ignored an interrupt; restarting it", self.id)
                    await self.restart()
                    return
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
                    await run.put(event)

    async def _drain_reply(self, msg_id: str) -> None:
        """Read the cell's shell reply so replies do not pile up in the socket."""
        assert self._client is not None
        with contextlib.suppress(queue.Empty):
            while True:
                reply = await self._client.get_shell_msg(timeout=1.0)
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    return


def _set_env_code(env_vars: Mapping[str, str]) -> str:
    return (
        "import os as _emberbox_os\n"
        f"_emberbox_env = {dict(env_vars)!r}\n"
        "_emberbox_env_saved = {k: _emberbox_os.environ.get(k) for k in _emberbox_env}\n"
        "_emberbox_os.environ.update(_emberbox_env)\n"
    )


_RESTORE_ENV_CODE = (
    "for _k, _v in _emberbox_env_saved.items():\n"
    "    if _v is None:\n"
    "        _emberbox_os.environ.pop(_k, None)\n"
    "    else:\n"
    "        _emberbox_os.environ[_k] = _v\n"
    "del _k, _v, _emberbox_env, _emberbox_env_saved, _emberbox_os\n"
)


def kernel_env() -> dict[str, str]:
    """What every kernel starts with: the service's environment, minus its own secrets."""
    env = dict(os.environ)
    env.pop("EMBERBOX_INTERPRETER_ACCESS_TOKEN", None)
    return env
