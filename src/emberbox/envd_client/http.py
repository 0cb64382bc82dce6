"""HTTP clients for traffic to sandboxes: envd and the ports of their services."""

from __future__ import annotations

from typing import Any

import httpx

from ..sdk._base import tls_context


def sandbox_http(**options: Any) -> httpx.AsyncClient:
    """A client that reaches sandboxes directly, never through an HTTP proxy from the
    environment. Its TLS context is the process's shared one: sandbox traffic is plain HTTP,
    and building a context per client cost 25-40 ms, paid for example by the first request
    the server's proxy sent to each new sandbox."""
    return httpx.AsyncClient(verify=tls_context(), trust_env=False, **options)
