"""``emberbox-envd``: the daemon inside every sandbox (E2B envd wire protocol, port 49983)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ..vocabulary import DEFAULT_USER, DEFAULT_WORKDIR, SERVER_KEEPALIVE_S, STANDBY_SHELLS
from ..vocabulary import ENVD_PORT as DEFAULT_PORT
from .loop import UVICORN_LOOP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="emberbox-envd", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--access-token",
        default=os.environ.get("EMBERBOX_ENVD_ACCESS_TOKEN"),
        help="require this X-Access-Token (also settable by POST /init)",
    )
    parser.add_argument("--default-user", help="user for requests that name none")
    parser.add_argument("--default-workdir", help="cwd for processes that name none")
    parser.add_argument(
        "--max-upload-mb", type=int, default=None, help="refuse uploads above this size (413)"
    )
    parser.add_argument(
        "--sync-clock", action="store_true", help="set the clock from /init (inside sandboxes)"
    )
    parser.add_argument(
        "--standby-shells",
        type=int,
        default=STANDBY_SHELLS,
        help="login shells kept started per (user, cwd) for commands; 0: none (docs/envd.md)",
    )
    parser.add_argument(
        "--home",
        help="every user's home (the process runtime: its sandbox's directory, so commands' "
        "logins never read or write the host's own dotfiles)",
    )
    parser.add_argument(
        "--guest",
        action="store_true",
        help="envd is the sandbox's daemon: also forward loopback-only ports, serve sudo, guard"
        " memory and run EMBERBOX_START_CMD (envd/guest/duties.py)",
    )
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


GRACEFUL_SHUTDOWN_S = 2.0


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """How uvicorn serves envd. ``loop``: a ``poll(2)`` loop, see ``envd/loop.py``.
    ``ws="none"``: envd serves no WebSockets, and uvicorn's default loads the websockets
    package wherever it is installed (~1.2 MiB; not in our templates, whose envd venv lacks
    it, but in a development venv running envd)."""
    return {
        "host": args.host,
        "port": args.port,
        "loop": UVICORN_LOOP,
        "http": "httptools",
        "ws": "none",
        "lifespan": "on",
        "access_log": False,
        "log_level": args.log_level,
        "timeout_keep_alive": SERVER_KEEPALIVE_S,
        # Streams a client still follows (a process's output) end this long after a SIGTERM,
        # then the lifespan's end kills every process envd started; uvicorn would otherwise
        # wait for those clients for ever, and a SIGKILL after that kills envd alone.
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")

    import uvicorn

    from .app import create_app
    from .state import EnvdState

    state = EnvdState(
        access_token=args.access_token or None,
        default_user=args.default_user,
        default_workdir=args.default_workdir,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024 if args.max_upload_mb else None,
        sync_clock=args.sync_clock,
        standby_shells=max(0, args.standby_shells),
        home=args.home,
    )
    duties = None
    if args.guest:
        from .guest.duties import GuestDuties

        duties = GuestDuties(
            args.port, args.default_user or DEFAULT_USER, args.default_workdir or DEFAULT_WORKDIR
        )
    uvicorn.run(create_app(state, duties), **server_options(args))


if __name__ == "__main__":
    main()
