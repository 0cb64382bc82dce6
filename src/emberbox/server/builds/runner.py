"""Builds through the node seam: hand a build to the node, then follow it into the database.

The node runs the build (``node.builds``: queue, steps in build sandboxes, the template store);
this side first sends the COPY steps' files the node lacks (none for an embedded node, which
reads the files where this server stored them), starts the build, then polls its status every
``poll_s`` and copies new log lines and the end state into the build's row, where the API reads
them. A build moves ``waiting`` → ``building`` → ``ready`` | ``error``; ``on_ready`` (tagging)
runs before the row says ``ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._proto.node import node_pb2 as pb
from ...node.client import (
    PIECE_BYTES,
    NodeBadRequest,
    NodeClient,
    NodeError,
    NodeFull,
    NodeSandboxNotFound,
    NodeUnsupported,
)
from ..db.models import utcnow
from ..db.templates import TemplateBuild
from ..lifecycle.errors import (
    Conflict,
    Invalid,
    NodeFailed,
    NotFound,
    QuotaExceeded,
    Unsupported,
)
from .log import BuildLog

log = logging.getLogger("emberbox.builds")

Finish = Callable[[str], Awaitable[None]]
STOPPED = "the build was stopped (server shutting down)"


@dataclass
class BuildJob:
    request: pb.StartBuildRequest
    files: dict[str, Path]  # files hash -> this server's copy of the archive
    on_ready: Finish  # tags the build, given the build id


def node_refusal(exc: NodeError) -> Exception:
    """A node's refusal of a build request as the API's error."""
    if isinstance(exc, NodeFull):
        return QuotaExceeded(exc.message)
    if isinstance(exc, NodeSandboxNotFound):
        return NotFound(exc.message)
    if isinstance(exc, NodeUnsupported):
        return Unsupported(exc.message)
    if isinstance(exc, NodeBadRequest):
        return Invalid(exc.message)
    return NodeFailed(f"the node failed: {exc.message}")


class BuildRunner:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], node: NodeClient, poll_s: float = 0.25
    ) -> None:
        self.sessions = sessions
        self.node = node
        self.poll_s = poll_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._starting: set[str] = set()  # builds whose files are on their way to the node
        self._sending: dict[tuple[str, str], asyncio.Lock] = {}  # kept: a few bytes per file

    def busy(self, build_id: str) -> bool:
        return build_id in self._tasks or build_id in self._starting

    async def submit(self, job: BuildJob) -> None:
        """Returns once the node has queued the build (files it lacked sent first, so a big
        context to a remote node makes this call as long as the transfer); its refusals raise
        API errors."""
        r = job.request
        if self.busy(r.build_id):
            raise Conflict(f"build '{r.build_id}' was already started")
        self._starting.add(r.build_id)
        try:
            await self._send_files(r.template_id, job.files)
            await self.node.start_build(r)
        except NodeError as exc:
            raise node_refusal(exc) from None
        except FileNotFoundError:
            raise Conflict("the template's files were removed while the build started") from None
        finally:
            self._starting.discard(r.build_id)
        task = asyncio.create_task(self._follow(job), name=f"build-{r.build_id}")
        self._tasks[r.build_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(r.build_id, None))

    async def _send_files(self, template_id: str, files: dict[str, Path]) -> None:
        for files_hash in files:
            # One sender per file: two builds of a template may share one.
            key = (template_id, files_hash)
            async with self._sending.setdefault(key, asyncio.Lock()):
                if await self.node.build_files(template_id, [files_hash]):
                    await self._send_file(template_id, files_hash, files[files_hash])

    async def _send_file(self, template_id: str, files_hash: str, path: Path) -> None:
        with path.open("rb") as f:
            offset, last = 0, False
            while not last:
                data = await asyncio.to_thread(f.read, PIECE_BYTES)
                last = len(data) < PIECE_BYTES
                chunk = pb.PutBuildFileRequest(
                    template_id=template_id, files_hash=files_hash, offset=offset, data=data,
                    last=last,
                )  # fmt: skip
                await self.node.put_build_file(chunk)
                offset += len(data)

    async def _set(self, build_id: str, **values: object) -> None:
        async with self.sessions.begin() as s:
            await s.execute(update(TemplateBuild).where(TemplateBuild.id == build_id)
                            .values(updated_at=utcnow(), **values))  # fmt: skip

    async def _follow(self, job: BuildJob) -> None:
        build_id = job.request.build_id
        blog = BuildLog(self.sessions, build_id)
        status, seq = "waiting", 0
        try:
            while True:
                try:
                    answer = await self.node.build_status(build_id, seq)
                except NodeSandboxNotFound:
                    await self._end(blog, build_id, "the node no longer knows this build "
                                    "(it restarted)")  # fmt: skip
                    return
                except (NodeUnsupported, NodeBadRequest) as exc:
                    await self._end(blog, build_id, f"the node refused: {exc.message}")
                    return
                except NodeError as exc:  # unreachable for now: try again
                    log.warning("build %s: node status failed: %s", build_id, exc.message)
                    await asyncio.sleep(1.0)
                    continue
                for line in answer.lines:
                    at = dt.datetime.fromtimestamp(line.at, dt.UTC)
                    blog.add(line.message, line.level, line.step, at)
                    seq = line.seq + 1
                await blog.persist()
                if answer.status != status and answer.status == "building":
                    await self._set(build_id, status="building")
                status = answer.status
                if status == "ready":
                    try:
                        await job.on_ready(build_id)
                    except Exception as exc:  # the node's cancel undoes a finished build
                        log.exception("build %s: tagging failed", build_id)
                        await self._stop(blog, build_id, f"tagging the build failed: {exc}")
                        return
                    await self._set(build_id, status="ready", finished_at=utcnow(),
                                    store_name=job.request.store_name)  # fmt: skip
                    return
                if status == "error":
                    await self._set(build_id, status="error", reason=answer.reason,
                                    reason_step=answer.reason_step or None,
                                    finished_at=utcnow())  # fmt: skip
                    return
                await asyncio.sleep(self.poll_s)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stop(blog, build_id, STOPPED))
            raise
        except Exception as exc:  # a database failure: the build cannot be followed
            log.exception("build %s: following it failed", build_id)
            with contextlib.suppress(Exception):
                await self._stop(blog, build_id, f"the server failed to follow it: {exc}")

    async def _end(self, blog: BuildLog, build_id: str, reason: str) -> None:
        blog.add(f"Build failed: {reason}", level="error")
        await blog.persist()
        await self._set(build_id, status="error", reason=reason, reason_step=blog.step,
                        finished_at=utcnow())  # fmt: skip

    async def _stop(self, blog: BuildLog, build_id: str, reason: str) -> None:
        with contextlib.suppress(NodeError):
            await self.node.cancel_build(build_id)
        await self._end(blog, build_id, reason)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def recover(self) -> None:
        """Builds a previous server process left unfinished failed with it, and the node (which
        may have outlived that process) stops them: those it was running, and those it holds
        that were still waiting (started, but not begun, when the server stopped)."""
        async with self.sessions() as s:
            waiting = (await s.execute(select(TemplateBuild.id)
                       .where(TemplateBuild.status == "waiting"))).scalars().all()  # fmt: skip
        started = []
        for build_id in waiting:
            with contextlib.suppress(NodeError):
                await self.node.build_status(build_id, 1 << 62)
                started.append(build_id)
        async with self.sessions.begin() as s:
            rows = (await s.execute(select(TemplateBuild.id)
                    .where(TemplateBuild.status == "building"))).scalars().all()  # fmt: skip
            rows = [*rows, *started]
            await s.execute(
                update(TemplateBuild)
                .where(TemplateBuild.id.in_(rows))
                .values(
                    status="error",
                    reason="the server stopped during the build",
                    finished_at=utcnow(),
                )
            )
        for build_id in rows:
            with contextlib.suppress(NodeError):
                await self.node.cancel_build(build_id)
