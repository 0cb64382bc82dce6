"""A resolver that has every sandbox running on loopback: the proxy's own tests with plain
upstream servers, no sandbox."""

from __future__ import annotations

from collections.abc import Callable

from emberbox.server.proxy.resolver import Location


class OnLoopback:
    def on_forget(self, _: Callable[[str], None]) -> None:
        pass

    async def lookup(self, _: str) -> Location:
        return Location("http://127.0.0.1:1", "127.0.0.1")

    resolve = lookup
