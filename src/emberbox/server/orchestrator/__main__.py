"""``python -m emberbox.server.orchestrator``: run the node orchestrator without the API.

    run [--create N] [--template base] [--timeout S]   adopt/clean, create N, enforce end times
    recover                                             adopt/clean once, print, exit
    kill-all                                            adopt/clean, then kill everything

Every command prints one JSON object per line, so tests and scripts can follow along.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from ...runtimes import select_runtime
from ...templates.store import data_dir
from .orchestrator import Orchestrator


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def _main(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or data_dir() / "orchestrator"
    orch = Orchestrator(select_runtime(args.runtime), state_dir)
    report = await orch.start()
    _emit(event="started", adopted=report.adopted, removed=report.removed)
    if args.command == "recover":
        await orch.close()
        return 0
    if args.command == "kill-all":
        await orch.close(kill_all=True)
        _emit(event="killed-all")
        return 0
    for _ in range(args.create):
        sandbox = await orch.create(
            args.template, timeout_s=args.timeout, allow_internet=not args.no_internet
        )
        _emit(event="created", sandbox_id=sandbox.sandbox_id, address=sandbox.address,
              end_at=sandbox.end_at)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _emit(event="ready")
    await stop.wait()
    await orch.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emberbox.server.orchestrator")
    parser.add_argument("command", choices=("run", "recover", "kill-all"))
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--runtime", default=None, help="auto | gvisor | firecracker")
    parser.add_argument("--create", type=int, default=0)
    parser.add_argument("--template", default="base")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-internet", action="store_true")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
