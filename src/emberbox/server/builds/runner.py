"""The build queue: at most ``max_concurrent`` builds run at once (each step in a sandbox of
``cpu_count`` vCPUs), at most ``max_queued`` wait, so builds cannot starve running sandboxes.

A build moves ``waiting`` → ``building`` → ``ready`` | ``error``. Only a ready build has a
manifest in the store (the builder writes it last), so a failed build leaves no template behind;
its log and ``reason`` say which step failed and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...templates._run import StepFailed
from ...templates.builder import TemplateBuilder
from ...templates.spec import BuildSpec
from ...templates.steps import StepRunner
from ...templates.store import TemplateError, TemplateStore
from ..db.models import utcnow
from ..db.templates import TemplateBuild
from ..lifecycle.errors import QuotaExceeded
from .log import BuildLog

log = logging.getLogger("emberbox.builds")

Prepare = Callable[[BuildLog], Awaitable[BuildSpec]]
Finish = Callable[[str], Awaitable[None]]


@dataclass
class BuildJob:
    build_id: str
    store_name: str
    label: str  # name shown in the log
    prepare: Prepare  # the spec, once the parent exists (an image may need pulling first)
    on_ready: Finish  # tags the build, given the build id


class BuildRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: TemplateStore,
        runner: StepRunner,
        max_concurrent: int = 1,
        max_queued: int = 8,
        cpu_count: int = 1,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.runner = runner
        self.max_queued = max_queued
        self.cpu_count = cpu_count  # of each step's sandbox
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def busy(self, build_id: str) -> bool:
        return build_id in self._tasks

    def submit(self, job: BuildJob) -> None:
        if len(self._tasks) >= self.max_queued:
            raise QuotaExceeded(
                f"{len(self._tasks)} builds are queued or running; wait for one to finish"
            )
        task = asyncio.create_task(self._run(job), name=f"build-{job.build_id}")
        self._tasks[job.build_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job.build_id, None))

    async def _set(self, build_id: str, **values: object) -> None:
        async with self.sessions.begin() as s:
            await s.execute(update(TemplateBuild).where(TemplateBuild.id == build_id)
                            .values(updated_at=utcnow(), **values))  # fmt: skip

    async def _run(self, job: BuildJob) -> None:
        blog = BuildLog(self.sessions, job.build_id)
        flusher = asyncio.create_task(_flush_every(blog, 0.25))
        try:
            blog.add(f"Build {job.build_id} of {job.label} is queued")
            async with self._slots:
                await self._set(job.build_id, status="building")
                started = time.monotonic()
                blog.add(f"Building {job.label}")
                try:
                    spec = await job.prepare(blog)
                    await TemplateBuilder(self.store, self.runner, blog).build(  # type: ignore[arg-type]
                        job.store_name, spec
                    )
                    await job.on_ready(job.build_id)
                except (TemplateError, StepFailed) as exc:
                    await self._fail(job, blog, exc)
                    return
                except Exception as exc:  # a bug or a host failure: still a failed build
                    log.exception("build %s crashed", job.build_id)
                    await self._fail(job, blog, exc)
                    return
                took = time.monotonic() - started
                blog.add(f"Build finished in {took:.1f} s", step="finalize")
                await blog.persist()
                await self._set(job.build_id, status="ready", store_name=job.store_name,
                                finished_at=utcnow())  # fmt: skip
        except asyncio.CancelledError:
            blog.add("the build was stopped (server shutting down)", level="error")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stopped(job, blog))
            raise
        finally:
            flusher.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await blog.persist()

    async def _stopped(self, job: BuildJob, blog: BuildLog) -> None:
        await blog.persist()
        await self._set(job.build_id, status="error", reason="the build was stopped (server "
                        "shutting down)", finished_at=utcnow())  # fmt: skip

    async def _fail(self, job: BuildJob, blog: BuildLog, exc: BaseException) -> None:
        step = blog.step
        if isinstance(exc, StepFailed):
            tail = exc.output.strip().splitlines()[-20:]
            reason = f"{exc.step} failed with exit code {exc.code}" + (
                ":\n" + "\n".join(tail) if tail else ""
            )
        else:
            reason = str(exc) or type(exc).__name__
        blog.add(f"Build failed: {reason}", level="error", step=step)
        await blog.persist()
        self.store.delete(job.store_name)  # never written on failure; be sure
        await self._set(job.build_id, status="error", reason=reason, reason_step=step,
                        finished_at=utcnow())  # fmt: skip

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def recover(self) -> None:
        """Builds a previous process left unfinished failed with it."""
        async with self.sessions.begin() as s:
            await s.execute(
                update(TemplateBuild)
                .where(TemplateBuild.status.in_(["building"]))
                .values(
                    status="error",
                    reason="the server stopped during the build",
                    finished_at=utcnow(),
                )
            )


async def _flush_every(blog: BuildLog, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        with contextlib.suppress(Exception):
            await blog.persist()
