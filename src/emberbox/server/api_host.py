"""``api.<domain>`` on the sandbox proxy's listener.

E2B's SDKs derive the API's address from ``E2B_DOMAIN`` alone (``https://api.<domain>``), the
same wildcard the sandboxes live under. With a domain set, requests naming that host are the
API's and everything else stays the proxy's, so a user needs only ``E2B_DOMAIN`` and
``E2B_API_KEY`` (``<port>-<id>`` can never be ``api``: a sandbox host starts with a port).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .proxy.routing import hostname


class ApiHostDispatch:
    def __init__(self, api: ASGIApp, proxy: ASGIApp, domain_host: str) -> None:
        self.api = api
        self.proxy = proxy
        self.api_host = "api." + domain_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self._for_api(scope):
            await self.api(scope, receive, send)
        else:
            await self.proxy(scope, receive, send)

    def _for_api(self, scope: Scope) -> bool:
        return hostname(Headers(scope=scope).get("host", "")) == self.api_host
