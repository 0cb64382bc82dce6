"""What envd has loaded once it serves: a template's snapshot is taken then, so every module a
request would load later is loaded in each sandbox's first request instead (measured: the
first file download after a restore took ~80 ms in gVisor, the next ~10), and every module it
loads for nothing is memory in every sandbox."""

from __future__ import annotations

import asyncio
import selectors
import subprocess
import sys
import textwrap

# A fresh interpreter: uvicorn builds envd's server as ``emberbox-envd`` does, then envd's
# lifespan starts as uvicorn starts it (the ASGI lifespan protocol), and the modules loaded
# by then are printed.
_PROBE = textwrap.dedent(
    """
    import asyncio, sys
    import uvicorn
    from emberbox.envd.__main__ import parse_args, server_options
    from emberbox.envd.app import create_app

    config = uvicorn.Config(create_app(), **server_options(parse_args([])))
    config.load()

    async def start() -> None:
        events = [{"type": "lifespan.startup"}]
        sent = []

        async def receive():
            return events.pop(0) if events else await asyncio.Event().wait()

        async def send(message):
            sent.append(message["type"])

        task = asyncio.create_task(config.loaded_app({"type": "lifespan"}, receive, send))
        while not sent:
            await asyncio.sleep(0.01)
        assert sent == ["lifespan.startup.complete"], sent
        task.cancel()

    asyncio.run(start())
    print("\\n".join(sys.modules))
    """
)


def _loaded() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_envd_loads_what_its_requests_need_before_it_serves_and_no_websockets() -> None:
    loaded = _loaded()
    # A download's streamed answer runs in an anyio task group, whose backend anyio loads
    # at its first use.
    assert "anyio._backends._asyncio" in loaded
    assert "websockets" not in loaded


def test_envd_runs_on_a_loop_that_polls() -> None:
    """Not epoll, which this runsc can leave corrupt across a checkpoint (``envd/loop.py``; in
    a sandbox: ``test_envd_keeps_serving_after_checkpoints_taken_amid_its_traffic``)."""
    import uvicorn

    from emberbox.envd.__main__ import parse_args, server_options
    from emberbox.envd.app import create_app

    factory = uvicorn.Config(create_app(), **server_options(parse_args([]))).get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, selectors.PollSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()
