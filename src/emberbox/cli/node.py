"""``emberbox node``: run this machine's node service for a control plane elsewhere."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from typing import Annotated

import typer

from .output import fail


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def node(log_level: Annotated[str, typer.Option(help="log level")] = "info") -> None:
    """Run the node service (sandboxes on this machine) with settings from EMBERBOX_* variables:
    EMBERBOX_NODE_HOST/PORT to listen on, EMBERBOX_NODE_TOKEN as the shared secret, and
    EMBERBOX_RUNTIME. Point a server at it with EMBERBOX_NODE_URL."""
    from ..host.instance_claim import InstanceTaken
    from ..node.offload import OffloadUnavailable
    from ..node.serve import serve_node
    from ..server.config import Settings
    from ..server.instance_lock import AlreadyRunning, InstanceLock

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a setting that cannot be read: named in the message
        raise fail(str(exc)) from None
    if not settings.node_token and not _loopback(settings.node_host):
        raise fail(
            f"refusing to serve the node on {settings.node_host} without EMBERBOX_NODE_TOKEN: "
            "anyone who reaches it could create and kill sandboxes"
        )
    try:
        lock = InstanceLock(settings.data_dir, "node").acquire()
    except AlreadyRunning as exc:
        raise fail(str(exc)) from None
    try:
        asyncio.run(
            serve_node(
                settings.data_dir,
                settings.runtime,
                settings.node_host,
                settings.node_port,
                settings.node_token,
                settings.envd_command or None,
                settings.runsc,
                settings.dead_check_interval_s,
                settings.template_snapshots,
                settings.warm_pool,
                settings.egress_dns,
                settings.egress_ca,
                settings.builds,
                settings.offload,
                settings.pause_keep_s,
            )
        )
    except (InstanceTaken, OffloadUnavailable) as exc:
        raise fail(str(exc)) from None
    finally:
        lock.release()
