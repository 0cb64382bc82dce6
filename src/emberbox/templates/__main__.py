"""``python -m emberbox.templates``: build, list and export templates on this node.

    build-base [--cache-dir DIR]      build or reuse ``base`` (CI caches DIR between runs)
    build-code-interpreter [--cache-dir DIR]   the same for ``code-interpreter`` (and base)
    list | rm NAME | ext4 NAME

Builds from a Dockerfile need a runtime to run their steps: ``emberbox template build``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from .store import TemplateError, TemplateStore


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emberbox.templates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", type=Path, help="default: $EMBERBOX_DATA_DIR or /var/lib/emberbox"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("build-base", help="build or reuse the base template")
    base.add_argument("--cache-dir", type=Path, help="layer tarballs kept between runs")
    base.add_argument("--ext4", action="store_true", help="also write the ext4 image")
    ci = sub.add_parser(
        "build-code-interpreter", help="build or reuse the code-interpreter template (and base)"
    )
    ci.add_argument("--cache-dir", type=Path, help="layer tarballs kept between runs")
    sub.add_parser("list", help="list templates")
    rm = sub.add_parser("rm", help="forget a template (layers stay until gc)")
    rm.add_argument("name")
    ext4 = sub.add_parser("ext4", help="write the flattened ext4 image of a template")
    ext4.add_argument("name")
    sub.add_parser("gc", help="remove layers no template uses")
    return parser  # fmt: skip


async def _main(args: argparse.Namespace) -> int:
    store = TemplateStore(args.data_dir)
    started = time.monotonic()
    if args.command == "build-base":
        from .base import build_base

        template = await build_base(store, args.cache_dir)
        print(f"base {template.id} layers={','.join(k[:12] for k in template.layers)} "
              f"in {time.monotonic() - started:.1f}s")  # fmt: skip
        if args.ext4:
            from .ext4 import build_ext4

            print(await build_ext4(store, template))
    elif args.command == "build-code-interpreter":
        from .code_interpreter import build_code_interpreter

        template = await build_code_interpreter(store, args.cache_dir)
        print(f"code-interpreter {template.id} layers={len(template.layers)} "
              f"in {time.monotonic() - started:.1f}s")  # fmt: skip
    elif args.command == "list":
        for name in store.names():
            t = store.get(name)
            print(f"{name}\t{t.id}\t{len(t.layers)} layers")
    elif args.command == "rm":
        store.delete(args.name)
    elif args.command == "ext4":
        from .ext4 import build_ext4

        print(await build_ext4(store, store.get(args.name)))
    elif args.command == "gc":
        for key in store.gc():
            print(f"removed layer {key}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
