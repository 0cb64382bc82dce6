"""``python -m emberbox.interpreter``: the code-interpreter service (E2B protocol, port 49999)."""

from __future__ import annotations

import argparse
import logging
import os

from ..vocabulary import DEFAULT_WORKDIR, SERVER_KEEPALIVE_S
from . import INTERPRETER_PORT
from .budget import DEFAULT_LIMIT


def default_cwd() -> str:
    """E2B's contexts start in ``/home/user``; a host without one uses the current directory."""
    return DEFAULT_WORKDIR if os.path.isdir(DEFAULT_WORKDIR) else os.getcwd()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emberbox.interpreter", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=INTERPRETER_PORT)
    parser.add_argument(
        "--access-token",
        default=os.environ.get("EMBERBOX_INTERPRETER_ACCESS_TOKEN"),
        help="require this X-Access-Token",
    )
    parser.add_argument(
        "--envd-url",
        default=None,
        help="accept exactly the X-Access-Token envd at this URL accepts (in a sandbox: "
        "http://127.0.0.1:49983); overrides --access-token",
    )
    parser.add_argument(
        "--prestart",
        action="append",
        default=[],
        metavar="LANGUAGE",
        help="start this language's default context before serving (repeatable)",
    )
    parser.add_argument(
        "--max-output-bytes",
        type=int,
        default=DEFAULT_LIMIT,
        help="output one execution may send before the rest is dropped",
    )
    parser.add_argument("--cwd", default=None, help="working directory of contexts naming none")
    parser.add_argument(
        "--keepalive", type=float, default=5.0, help="seconds of silence before a keepalive line"
    )
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")

    import uvicorn

    from .app import create_app
    from .contexts import Contexts
    from .kernels import kernel_env
    from .tokens import EnvdToken

    contexts = Contexts(args.cwd or default_cwd(), kernel_env(), output_limit=args.max_output_bytes)
    tokens = EnvdToken(args.envd_url) if args.envd_url else None
    app = create_app(
        contexts,
        access_token=args.access_token or None,
        tokens=tokens,
        keepalive=args.keepalive,
        prestart=args.prestart,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=SERVER_KEEPALIVE_S,
    )


if __name__ == "__main__":
    main()
