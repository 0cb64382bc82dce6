"""``process.Process`` RPC handlers on top of :class:`ProcessManager`."""

from __future__ import annotations

import collections
import contextlib
import signal
from collections.abc import AsyncGenerator, AsyncIterator

from ..._connect.errors import Code, ConnectError
from ..._proto.process import process_pb2 as pb
from ..rpc import MAX_UNSENT, Kind, RpcContext, RpcMethod
from ..state import EnvdState
from ..users import resolve_user, username_from_basic
from .manager import Detached, Exit, Feed, ManagedProcess, Output, ProcessManager

# How a stream ended before a checkpoint ends (CANCELED: what E2B's SDKs expect of a stream a
# pause ends; they raise a TimeoutException saying so).
DETACHED = "the sandbox is being paused, snapshotted, forked or rolled back; the process runs on"

_SIGNALS = {pb.SIGNAL_SIGKILL: signal.SIGKILL, pb.SIGNAL_SIGTERM: signal.SIGTERM}


def _event(event: Output | Exit) -> pb.ProcessEvent:
    if isinstance(event, Output):
        data = pb.ProcessEvent.DataEvent()
        setattr(data, event.kind, event.data)
        return pb.ProcessEvent(data=data)
    end = pb.ProcessEvent.EndEvent(
        exit_code=event.exit_code, exited=event.exited, status=event.status
    )
    if event.error is not None:
        end.error = event.error
    return pb.ProcessEvent(end=end)


class ProcessService:
    def __init__(self, state: EnvdState, manager: ProcessManager) -> None:
        self.state = state
        self.manager = manager

    def methods(self) -> dict[str, RpcMethod]:
        def start_keepalive() -> pb.StartResponse:
            return pb.StartResponse(event=pb.ProcessEvent(keepalive=pb.ProcessEvent.KeepAlive()))

        def connect_keepalive() -> pb.ConnectResponse:
            return pb.ConnectResponse(event=pb.ProcessEvent(keepalive=pb.ProcessEvent.KeepAlive()))

        prefix = "/process.Process/"
        return {
            prefix + "Start": RpcMethod(
                Kind.SERVER_STREAM, pb.StartRequest, self.start, start_keepalive
            ),
            prefix + "Connect": RpcMethod(
                Kind.SERVER_STREAM, pb.ConnectRequest, self.connect, connect_keepalive
            ),
            prefix + "List": RpcMethod(Kind.UNARY, pb.ListRequest, self.list),
            prefix + "SendInput": RpcMethod(Kind.UNARY, pb.SendInputRequest, self.send_input),
            prefix + "StreamInput": RpcMethod(
                Kind.CLIENT_STREAM, pb.StreamInputRequest, self.stream_input
            ),
            prefix + "SendSignal": RpcMethod(Kind.UNARY, pb.SendSignalRequest, self.send_signal),
            prefix + "CloseStdin": RpcMethod(Kind.UNARY, pb.CloseStdinRequest, self.close_stdin),
            prefix + "Update": RpcMethod(Kind.UNARY, pb.UpdateRequest, self.update),
        }

    async def start(
        self, request: pb.StartRequest, ctx: RpcContext
    ) -> AsyncIterator[pb.StartResponse]:
        user = resolve_user(self.state, username_from_basic(ctx.headers))
        stdin = request.stdin if request.HasField("stdin") else True
        process, queue = await self.manager.start(
            request.process,
            user,
            pty=request.pty if request.HasField("pty") else None,
            stdin=stdin,
            tag=request.tag if request.HasField("tag") else None,
        )
        if ctx.deadline is not None:
            process.kill_at(ctx.deadline)
        # (closed as the stream ends, not when the loop gets to it: what it never sent goes
        # back to the process before another Connect can subscribe)
        async with contextlib.aclosing(self._follow(process, queue, ctx)) as events:
            async for event in events:
                yield pb.StartResponse(event=event)

    async def connect(
        self, request: pb.ConnectRequest, ctx: RpcContext
    ) -> AsyncIterator[pb.ConnectResponse]:
        process = self.manager.get(request.process)
        queue = process.subscribe()
        async with contextlib.aclosing(self._follow(process, queue, ctx)) as events:
            async for event in events:
                yield pb.ConnectResponse(event=event)

    async def _follow(
        self, process: ManagedProcess, queue: Feed, ctx: RpcContext
    ) -> AsyncGenerator[pb.ProcessEvent, None]:
        # What was yielded lately: a client gone before it got the last few of them leaves
        # that output to the next Connect, not lost between the two (``ctx.give_back``, also
        # after this ended: its last messages leave after it).
        given: collections.deque[Output | None] = collections.deque(maxlen=MAX_UNSENT)

        def give_back(unsent: int) -> None:
            lost = list(given)[max(0, len(given) - unsent) :]
            process.unsubscribe(queue, unsent=[e for e in lost if e is not None])

        ctx.give_back = give_back
        try:
            given.append(None)  # (the start event)
            yield pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=process.pid))
            while True:
                event = await queue.get()
                if isinstance(event, Detached):
                    raise ConnectError(Code.CANCELED, f"{DETACHED} (connect to pid {process.pid})")
                given.append(event if isinstance(event, Output) else None)
                yield _event(event)
                if isinstance(event, Exit):
                    return
        finally:
            process.unsubscribe(queue)

    async def list(self, request: pb.ListRequest, ctx: RpcContext) -> pb.ListResponse:
        return pb.ListResponse(processes=[p.info() for p in self.manager.list()])

    async def _input(self, selector: pb.ProcessSelector, data: pb.ProcessInput) -> None:
        process = self.manager.get(selector)
        which = data.WhichOneof("input")
        if which is None:
            return
        await process.send_input(getattr(data, which), to_pty=which == "pty")

    async def send_input(
        self, request: pb.SendInputRequest, ctx: RpcContext
    ) -> pb.SendInputResponse:
        await self._input(request.process, request.input)
        return pb.SendInputResponse()

    async def stream_input(
        self, requests: AsyncIterator[pb.StreamInputRequest], ctx: RpcContext
    ) -> pb.StreamInputResponse:
        selector: pb.ProcessSelector | None = None
        async for request in requests:
            which = request.WhichOneof("event")
            if which == "start":
                selector = request.start.process
                self.manager.get(selector)  # fail early on an unknown process
            elif which == "data":
                if selector is None:
                    raise ConnectError(Code.INVALID_ARGUMENT, "first message must be 'start'")
                await self._input(selector, request.data.input)
        return pb.StreamInputResponse()

    async def send_signal(
        self, request: pb.SendSignalRequest, ctx: RpcContext
    ) -> pb.SendSignalResponse:
        sig = _SIGNALS.get(request.signal)
        if sig is None:
            raise ConnectError(Code.INVALID_ARGUMENT, f"unsupported signal {request.signal}")
        self.manager.get(request.process).signal(sig)
        return pb.SendSignalResponse()

    async def close_stdin(
        self, request: pb.CloseStdinRequest, ctx: RpcContext
    ) -> pb.CloseStdinResponse:
        await self.manager.get(request.process).close_stdin()
        return pb.CloseStdinResponse()

    async def update(self, request: pb.UpdateRequest, ctx: RpcContext) -> pb.UpdateResponse:
        process = self.manager.get(request.process)
        if request.HasField("pty"):
            process.resize(request.pty.size.cols, request.pty.size.rows)
        return pb.UpdateResponse()
