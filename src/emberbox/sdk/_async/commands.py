"""``sandbox.commands`` and ``sandbox.pty``: processes over envd's ``process.Process`` service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal, overload

from ..._proto.process import process_pb2 as pb
from .._base import OutputCollector, basic_auth, start_request
from ..exceptions import NotFoundException
from ..models import CommandResult, ProcessInfo, PtySize
from .rpc import AsyncRpc

OutputCallback = Callable[[str], object]
PtyCallback = Callable[[bytes], object]


class AsyncCommandHandle:
    """A started process: wait for it, feed it, kill it, or iterate over its output."""

    def __init__(self, pid: int, events: AsyncIterator[pb.StartResponse], rpc: AsyncRpc) -> None:
        self.pid = pid
        self._events = events
        self._rpc = rpc
        self._output = OutputCollector()

    async def __aiter__(self) -> AsyncIterator[tuple[str | None, str | None, bytes | None]]:
        """Yield ``(stdout, stderr, pty)`` chunks, one of them set, until the process ends."""
        async for message in self._events:
            event = message.event
            kind = event.WhichOneof("event")
            if kind == "data":
                which = event.data.WhichOneof("output")
                if which == "pty":
                    yield None, None, event.data.pty
                elif which is not None:
                    text = self._output.feed(which, getattr(event.data, which))
                    yield (text, None, None) if which == "stdout" else (None, text, None)
            elif kind == "end":
                self._output.end = event.end

    async def wait(
        self,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_pty: PtyCallback | None = None,
    ) -> CommandResult:
        """Block until exit; raise :class:`CommandExitException` for a non-zero exit code."""
        async for stdout, stderr, pty in self:
            if stdout is not None and on_stdout is not None:
                on_stdout(stdout)
            elif stderr is not None and on_stderr is not None:
                on_stderr(stderr)
            elif pty is not None and on_pty is not None:
                on_pty(pty)
        return self._output.checked()

    async def kill(self) -> bool:
        return await _signal(self._rpc, self.pid, pb.SIGNAL_SIGKILL)

    async def send_stdin(self, data: str | bytes) -> None:
        await _send_input(self._rpc, self.pid, data, pty=False)

    async def close_stdin(self) -> None:
        await self._rpc.unary(
            "process.Process/CloseStdin",
            pb.CloseStdinRequest(process=pb.ProcessSelector(pid=self.pid)),
            pb.CloseStdinResponse,
        )

    async def disconnect(self) -> None:
        """Stop receiving output; the process keeps running and can be reconnected by pid."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _signal(rpc: AsyncRpc, pid: int, signal: pb.Signal) -> bool:
    try:
        await rpc.unary(
            "process.Process/SendSignal",
            pb.SendSignalRequest(process=pb.ProcessSelector(pid=pid), signal=signal),
            pb.SendSignalResponse,
        )
    except NotFoundException:
        return False
    return True


async def _send_input(rpc: AsyncRpc, pid: int, data: str | bytes, *, pty: bool) -> None:
    raw = data.encode() if isinstance(data, str) else data
    payload = pb.ProcessInput(pty=raw) if pty else pb.ProcessInput(stdin=raw)
    await rpc.unary(
        "process.Process/SendInput",
        pb.SendInputRequest(process=pb.ProcessSelector(pid=pid), input=payload),
        pb.SendInputResponse,
    )


async def _started(rpc: AsyncRpc, events: AsyncIterator[pb.StartResponse]) -> AsyncCommandHandle:
    first = await events.__anext__()
    if first.event.WhichOneof("event") != "start":
        raise NotFoundException("envd did not report a start event")
    return AsyncCommandHandle(first.event.start.pid, events, rpc)


class AsyncCommands:
    def __init__(self, rpc: AsyncRpc) -> None:
        self._rpc = rpc

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[False] = False,
        envs: dict[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[True],
        envs: dict[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str,
        background: bool = False,
        envs: dict[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
    ) -> CommandResult | AsyncCommandHandle:
        """Run ``cmd`` with ``bash -l -c``; ``timeout`` (seconds, 0 = none) bounds its life.

        In the foreground, returns the :class:`CommandResult` (non-zero exit raises
        :class:`CommandExitException`); with ``background=True`` returns a handle at once.
        """
        events = self._rpc.server_stream(
            "process.Process/Start",
            start_request(cmd, envs=envs, cwd=cwd, stdin=stdin),
            pb.StartResponse,
            headers={**basic_auth(user), "Keepalive-Ping-Interval": "50"},
            timeout=timeout,
        )
        handle = await _started(self._rpc, events)
        if background:
            return handle
        return await handle.wait(on_stdout=on_stdout, on_stderr=on_stderr)

    async def connect(self, pid: int, timeout: float | None = 0) -> AsyncCommandHandle:
        """Re-attach to a running process; output it printed while nobody listened comes first."""
        events = self._rpc.server_stream(
            "process.Process/Connect",
            pb.ConnectRequest(process=pb.ProcessSelector(pid=pid)),
            pb.StartResponse,
            headers={"Keepalive-Ping-Interval": "50"},
            timeout=timeout,
        )
        return await _started(self._rpc, events)

    async def list(self) -> list[ProcessInfo]:
        response = await self._rpc.unary("process.Process/List", pb.ListRequest(), pb.ListResponse)
        return [
            ProcessInfo(
                pid=p.pid,
                tag=p.tag if p.HasField("tag") else None,
                cmd=p.config.cmd,
                args=list(p.config.args),
                envs=dict(p.config.envs),
                cwd=p.config.cwd if p.config.HasField("cwd") else None,
            )
            for p in response.processes
        ]

    async def kill(self, pid: int) -> bool:
        """SIGKILL the process and its children; False if it does not exist."""
        return await _signal(self._rpc, pid, pb.SIGNAL_SIGKILL)

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        await _send_input(self._rpc, pid, data, pty=False)

    async def close_stdin(self, pid: int) -> None:
        await AsyncCommandHandle(pid, _no_events(), self._rpc).close_stdin()


async def _no_events() -> AsyncIterator[pb.StartResponse]:
    return
    yield  # an empty async generator


class AsyncPty:
    """Interactive terminals: a real PTY in the sandbox, raw bytes both ways."""

    def __init__(self, rpc: AsyncRpc) -> None:
        self._rpc = rpc

    async def create(
        self,
        size: PtySize | None = None,
        user: str | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = 0,
    ) -> AsyncCommandHandle:
        size = size or PtySize()
        env = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(envs or {})}
        events = self._rpc.server_stream(
            "process.Process/Start",
            start_request(
                "/bin/bash",
                envs=env,
                cwd=cwd,
                stdin=True,
                pty=(size.rows, size.cols),
                args=["-i", "-l"],
            ),
            pb.StartResponse,
            headers={**basic_auth(user), "Keepalive-Ping-Interval": "50"},
            timeout=timeout,
        )
        return await _started(self._rpc, events)

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        await _send_input(self._rpc, pid, data, pty=True)

    async def resize(self, pid: int, size: PtySize) -> None:
        request = pb.UpdateRequest(process=pb.ProcessSelector(pid=pid))
        request.pty.size.rows = size.rows
        request.pty.size.cols = size.cols
        await self._rpc.unary("process.Process/Update", request, pb.UpdateResponse)

    async def kill(self, pid: int) -> bool:
        return await _signal(self._rpc, pid, pb.SIGNAL_SIGKILL)
