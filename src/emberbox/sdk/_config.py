"""Connection settings from arguments or the environment (``EMBERBOX_*``, then ``E2B_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..vocabulary import ENVD_PORT as ENVD_PORT  # re-exported for the SDK faces

DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_SANDBOX_TIMEOUT = 300


def _env(name: str) -> str | None:
    return os.environ.get(f"EMBERBOX_{name}") or os.environ.get(f"E2B_{name}")


@dataclass(frozen=True)
class ConnectionConfig:
    """Where the control plane and the sandboxes are, and how patient to be.

    ``debug`` talks straight to one envd on ``localhost:49983`` with no control plane, as E2B's
    SDKs do; it is how envd is tested on its own.
    """

    api_url: str
    api_key: str | None
    sandbox_url: str | None
    domain: str
    debug: bool
    request_timeout: float

    @classmethod
    def create(
        cls,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        domain: str | None = None,
        debug: bool | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        debug = debug if debug is not None else (_env("DEBUG") or "").lower() == "true"
        domain = domain or _env("DOMAIN") or "localhost"
        return cls(
            api_url=(api_url or _env("API_URL") or "http://localhost:3000").rstrip("/"),
            api_key=api_key or _env("API_KEY"),
            sandbox_url=(sandbox_url or _env("SANDBOX_URL") or "").rstrip("/") or None,
            domain=domain,
            debug=debug,
            request_timeout=request_timeout or DEFAULT_REQUEST_TIMEOUT,
        )

    @property
    def scheme(self) -> str:
        """How sandboxes are reached by name: over TLS when the control plane is (a server with
        TLS serves both), plain HTTP otherwise (E2B's SDK assumes https, our default is not)."""
        return "https" if self.api_url.startswith("https://") else "http"

    def envd_url(self, sandbox_id: str, sandbox_domain: str | None) -> str:
        if self.debug:
            return f"http://localhost:{ENVD_PORT}"
        if self.sandbox_url:
            return self.sandbox_url
        return f"{self.scheme}://{ENVD_PORT}-{sandbox_id}.{sandbox_domain or self.domain}"

    def port_url(self, sandbox_id: str, port: int, sandbox_domain: str | None) -> str:
        """Where an HTTP service on ``port`` inside the sandbox (the code interpreter) is reached.

        ``sandbox_url`` wins even in debug mode, as in E2B's SDK: it is one proxy that routes by
        the ``E2b-Sandbox-Id``/``-Port`` headers, or, in tests, the one service under test.
        """
        if self.sandbox_url:
            return self.sandbox_url
        return f"{self.scheme}://{self.host(sandbox_id, port, sandbox_domain)}"

    def host(self, sandbox_id: str, port: int, sandbox_domain: str | None) -> str:
        if self.debug:
            return f"localhost:{port}"
        return f"{port}-{sandbox_id}.{sandbox_domain or self.domain}"

    def routing_headers(self, sandbox_id: str, port: int = ENVD_PORT) -> dict[str, str]:
        return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}
