"""Host commands for template builds: output is kept so a failed step can show it."""

from __future__ import annotations

import asyncio

from .store import TemplateError


class StepFailed(TemplateError):
    """A build step exited non-zero; ``output`` is what it printed."""

    def __init__(self, step: str, code: int, output: str) -> None:
        self.step, self.code, self.output = step, code, output
        super().__init__(f"step {step!r} failed with exit code {code}:\n{output[-4000:]}")


async def run(*argv: str, step: str | None = None, timeout: float = 1800.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise StepFailed(step or " ".join(argv), proc.returncode or -1, text)
    return text
